"""What a Logger reads back from its cache: ``export()`` (in pages), ``latest()``, ``len()``.

Guarantees (each proved by the test named):

- ``export`` yields every cached datapoint of the stream(s), oldest first, read in keyset
  pages of :data:`PAGE`, never the whole cache at once
  (``test_cli.py::test_export_jsonl_csv_stream_and_file``).
- In a sealed cache a row that does not open is named in a
  :class:`~connectorsync.SealedRowError` raised once every other datapoint was yielded
  (``test_seal.py::test_a_tampered_row_is_named_and_every_other_row_syncs``).
- ``latest`` answers also once the datapoint left the cache, and after a restart
  (``test_archive.py::test_latest_survives_sync_and_restart``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .cache import Cache
from .errors import SealedRowError
from .streams import StreamRegistry

#: Datapoints read at a time by ``export``.
PAGE = 1000


class Reader:
    """The reads of one Logger's cache, by stream name."""

    def __init__(self, cache: Cache, streams: StreamRegistry):
        self.cache, self.streams = cache, streams

    def export(self, stream: str | None) -> Iterator[dict[str, Any]]:
        """The cached datapoints (of one stream, or all), oldest first, as ``{"stream", "t",
        "d"}``, read in pages (a generator: nothing is read before the first item)."""
        failed: list[str] = []
        for name in [stream] if stream is not None else self.streams.names():
            stream_id = self.streams.get(name).id
            after = 0
            while rows := self.cache.batch(stream_id, after, PAGE):
                opened, bad = self.cache.opened_points(name, rows)
                failed += bad
                for _, t, data in opened:
                    yield {"stream": name, "t": t, "d": json.loads(data)}
                after = rows[-1][0]
        if failed:
            raise unopened(failed)

    def latest(self, stream: str) -> dict[str, Any] | None:
        """The newest datapoint inserted in ``stream``, ``{"t": ..., "d": ...}``, or None."""
        found = self.cache.latest(self.streams.get(stream).id)
        if found is None:
            return None
        opened, failed = self.cache.opened_points(stream, [(0, *found)])
        if failed:
            raise SealedRowError(f"latest({stream!r}): " + failed[0])
        return {"t": found[0], "d": json.loads(opened[0][2])}

    def count(self) -> int:
        return self.cache.count()


def unopened(failed: list[str]) -> SealedRowError:
    """The error for the rows of a sealed cache that did not open (every other was read)."""
    shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
    return SealedRowError(
        f"{len(failed)} datapoint(s) do not open, every other one was read: {shown}"
    )
