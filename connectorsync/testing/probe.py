"""A read-only look into a cache file, for tests: :class:`CacheProbe`.

Tests check what is on disk, not what a live object holds: a probe opens the cache file with
a second, read-only apsw connection and answers what they ask (the rows of a stream with
their ids and times, a batch in flight, the dead letters, the settings, pragmas, the pages
in use, the integrity check). It never writes, never migrates, and sees what is committed
(in WAL mode, a snapshot per call), whoever else has the file open meanwhile. Tests use it
instead of a Logger's or a cache's private names (``tests/test_private_names.py``);
``tests/test_probe.py`` proves what each method says, and that probing writes nothing.

What exists only in a running Logger (a pragma of its own connection, a full disk for it)
is in :mod:`.live`.
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import Any, NamedTuple

import apsw

from ..cache.limits import used_bytes
from ..errors import UnknownStreamError

__all__ = ["CacheProbe", "ProbedLetter"]


class ProbedLetter(NamedTuple):
    """A dead letter as stored (``d``: the value's JSON text)."""

    id: int
    stream: str
    t: float
    d: str
    reason: str


class CacheProbe:
    """A read-only connection to the cache file ``path``; close it (or use ``with``).

    Every method reads the file as committed when it is called; none writes.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        self._conn.close()

    def __enter__(self) -> CacheProbe:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params))

    # ----------------------------------------------------------------------- the file

    def pragma(self, name: str) -> Any:
        """``PRAGMA name`` as the file answers it (``journal_mode``, ``page_count``...). A
        pragma that is per connection (``synchronous``) says this probe's own: ask a
        running Logger's with :func:`connectorsync.testing.live.connection_pragma`."""
        return self._all(f"PRAGMA {name}")[0][0]

    def integrity(self) -> str:
        """SQLite's ``integrity_check``: ``"ok"`` for a sound file, else its first finding."""
        return str(self.pragma("integrity_check"))

    def used_bytes(self) -> int:
        """Bytes of the file's pages in use, free pages not counted (what the storage
        limits measure)."""
        return used_bytes(self._conn)

    # ----------------------------------------------------------------------- contents

    def settings(self) -> dict[str, Any]:
        """Every setting, decoded from its JSON (a sealed one as the blob it is)."""
        return {
            key: json.loads(value) if isinstance(value, str) else value
            for key, value in self._all("SELECT key, value FROM settings")
        }

    def stream_id(self, stream: str) -> int:
        """The id of a registered stream.

        :raises UnknownStreamError: no stream of that name is registered in the file
        """
        rows = self._all("SELECT id FROM streams WHERE name = ?", (stream,))
        if not rows:
            raise UnknownStreamError(f"the cache {self.path!r} has no stream {stream!r}")
        return int(rows[0][0])

    def rows(self, stream: str) -> list[tuple[int, float, str]]:
        """The cached datapoints of ``stream``, oldest first, as ``(id, t, d as JSON text)``
        (the text as stored: a probe tells what the file holds, not what it decodes to)."""
        return [
            (int(i), float(t), str(d))
            for i, t, d in self._all(
                "SELECT id, t, d FROM datapoints WHERE stream = ? ORDER BY id",
                (self.stream_id(stream),),
            )
        ]

    def values(self, stream: str) -> list[Any]:
        """The cached values of ``stream``, oldest first, decoded."""
        return [json.loads(d) for _, _, d in self.rows(stream)]

    def newest_id(self) -> int:
        """The id of the newest cached datapoint, all streams together (0: none)."""
        return int(self._all("SELECT coalesce(max(id), 0) FROM datapoints")[0][0])

    def inflight(self, stream: str, remote: str = "default") -> tuple[int, int] | None:
        """The ids ``(first, last)`` of the stream's batch in flight to ``remote``, or None
        when none is."""
        rows = self._all(
            "SELECT p.inflight_lo, p.inflight FROM positions AS p JOIN remotes AS r "
            "ON r.id = p.remote WHERE r.name = ? AND p.stream = ?",
            (remote, self.stream_id(stream)),
        )
        return None if not rows or not rows[0][1] else (int(rows[0][0]), int(rows[0][1]))

    def deadletters(self) -> list[ProbedLetter]:
        """Every dead letter at rest or queued again, oldest first."""
        return [
            ProbedLetter(int(i), str(s), float(t), str(d), str(reason))
            for i, s, t, d, reason in self._all(
                "SELECT id, stream, t, d, reason FROM deadletters ORDER BY id"
            )
        ]
