"""Stream properties in the cache: ConnectorDB's ``nickname``, ``description``... given to
``add_stream``, kept with the stream (``streams.properties``, a JSON object) until the
stream is created on the remote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .records import Policy, StreamRow

if TYPE_CHECKING:  # a function of this package's Cache; no import cycle at run time
    from . import Cache


def put_stream(  # noqa: PLR0913 - a registration's parts, each checked by the caller
    cache: Cache,
    name: str,
    schema_text: str,
    out_of_order: str,
    properties: dict[str, Any],
    policy: Policy,
) -> StreamRow:
    """Register ``name`` with its schema, properties and policy, replacing those of a stream
    registered already (as ``Cache.put_stream``), in one transaction."""
    text = json.dumps(properties, allow_nan=False, sort_keys=True)
    with cache.transaction(f"register stream {name!r}") as conn:
        row = cache.put_stream(name, schema_text, out_of_order, policy)  # a savepoint inside
        conn.execute("UPDATE streams SET properties = ? WHERE id = ?", (text, row.id))
    return row


class _Reads(Protocol):
    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


def stream_properties(cache: _Reads, name: str) -> dict[str, Any]:
    """The properties stream ``name`` was registered with (``{}``: none, or not registered)."""
    rows = cache.read("SELECT properties FROM streams WHERE name = ?", (name,))
    found: dict[str, Any] = json.loads(rows[0][0]) if rows else {}
    return found
