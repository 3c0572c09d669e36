"""A stream registered again with another schema: the datapoints its cache holds must fit it.

A program that changes a stream's schema (``add_stream("t", {"type": "string"})`` where it
was ``{"type": "number"}``) while datapoints of it wait in the cache would leave values the
new schema refuses: the remote would refuse them (dead letters), and readers of the stream
would get values its schema says cannot be there. So the new schema is checked against every
datapoint the cache holds for the stream before anything is changed or the remote is asked;
one that does not fit refuses the registration with a
:class:`~connectorsync.errors.SchemaError` naming the stream, both schemas, a datapoint that
does not fit and what to do, and the cache is left as it was
(``tests/test_reconfigure.py::test_a_schema_the_cached_datapoints_do_not_fit_is_refused``).
A schema they all fit (a wider one) is taken, and they are delivered as they are
(``tests/test_reconfigure.py::test_stream_changes_keep_everything_and_deliver_it_once``).

Dead letters are not checked: they were refused already, and stay as they are. In a sealed
cache the values are opened to be checked; one that does not open is left to the sync, which
makes it a dead letter naming the row
(``tests/test_seal.py::test_a_schema_change_checks_the_sealed_values``).
Re-registering with the same schema costs nothing: only a changed schema reads the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import SchemaError, ValidationError

if TYPE_CHECKING:  # the registry hands it in: a type only
    from .cache import Cache


class StreamSchema(Protocol):
    """What is checked: a :class:`~connectorsync.streams.StreamDef` (which imports this
    module, so it is a Protocol here)."""

    name: str
    schema: dict[str, Any]
    schema_text: str

    def encode(self, value: Any) -> str: ...


def refuse_misfits(cache: Cache, new: StreamSchema) -> None:
    """Refuse ``new`` if the stream is registered with another schema and a datapoint the
    cache holds for it does not fit ``new``.

    :raises SchemaError: one does not fit; nothing was changed
    """
    row = cache.streams().get(new.name)
    if row is None or row.schema == new.schema_text or not new.schema:
        return  # nothing registered, nothing changed, or any JSON value: all fit
    cache.flush()  # durability "batched": what waits in memory is the stream's too
    for t, text in _cached_values(cache, new.name, row.id):
        try:
            new.encode(json.loads(text))
        except ValidationError as exc:
            held = cache.stream_stats()[new.name].cached
            raise SchemaError(
                f"stream {new.name!r} cannot change its schema from {row.schema} to "
                f"{new.schema_text}: its cache holds {held} datapoints not delivered yet, "
                f"and the one at t={t!r} does not fit it: {exc}. Nothing was changed: "
                f"deliver them first (sync() until status().streams[{new.name!r}].cached is "
                "0), or register a schema they fit, or the new one under another stream name"
            ) from None


def _cached_values(cache: Cache, name: str, stream_id: int) -> Iterator[tuple[float, str]]:
    """The stream's cached datapoints, oldest first, as ``(t, value as JSON text)``, opened
    when sealed (one that does not open is left out); read a page at a time (each page a
    read of its own), so a large backlog never sits in memory."""
    after = 0
    while rows := cache.batch(stream_id, after, _PAGE):
        opened, _ = cache.opened_points(name, rows)
        yield from ((float(t), text) for _, t, text in opened)
        after = int(rows[-1][0])


_PAGE = 10_000
