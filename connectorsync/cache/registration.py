"""Registering a stream inside a write: its row, its policy, and the remotes that route it."""

from __future__ import annotations

from typing import Any

import apsw

from . import routing
from .records import Policy, StreamRow, as_flag

#: Every stream with the given remote's state of it: the columns :func:`stream_rows` reads.
STREAMS = (
    "SELECT s.id, s.name, s.schema, coalesce(p.remote_created, 0), coalesce(p.inflight, 0), "
    "s.out_of_order, coalesce(p.inflight_lo, 0), s.priority, s.thin, s.thinned "
    "FROM streams AS s LEFT JOIN positions AS p ON p.stream = s.id AND p.remote = ?"
)


def stream_rows(rows: list[tuple[Any, ...]]) -> dict[str, StreamRow]:
    """The rows of :data:`STREAMS` by stream name."""
    return {
        r[1]: StreamRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], as_flag(r[8]), r[9])
        for r in rows
    }


def store_stream(
    conn: apsw.Connection, name: str, schema_text: str, out_of_order: str, policy: Policy
) -> None:
    """Inside a write: register ``name``, or replace its schema, ``out_of_order`` and policy
    (``Cache.put_stream``). A changed schema is created on the remotes again."""
    conn.execute(
        "UPDATE positions SET remote_created = 0 WHERE stream = "
        "(SELECT id FROM streams WHERE name = ? AND schema != ?)",
        (name, schema_text),
    )
    conn.execute(
        "INSERT INTO streams (name, schema, out_of_order, priority, thin) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET schema = excluded.schema, "
        "out_of_order = excluded.out_of_order, priority = excluded.priority, thin = excluded.thin",
        (name, schema_text, out_of_order, policy.priority, policy.thin),
    )
    sid = next(conn.execute("SELECT id FROM streams WHERE name = ?", (name,)))[0]
    routing.route_stream(conn, sid, name)
