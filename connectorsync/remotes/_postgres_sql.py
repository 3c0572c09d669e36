"""What PostgresRemote says to PostgreSQL: its statements and the COPY payload of a batch.

The table (created when missing)::

    device text, stream text, t timestamptz, id bigint, value jsonb,
    [number double precision,] UNIQUE (device, stream, t, id)

``id`` is the datapoint's id in its cache file (never reused there, the same on every
resend). It is in the key because ``timestamptz`` keeps microseconds and the cache does not
round: two datapoints of a stream can fall in one microsecond (the cache's 1 µs nudge of a
tie is 0.88 to 1.12 µs in floating point), and a key of (device, stream, t) alone would take
the second for a resend of the first and drop it.

A batch is staged in a temporary table by ``COPY`` (text format: one ``t<TAB>id<TAB>value``
line per datapoint, ``t`` in seconds) and moved with ``INSERT ... SELECT ... ON CONFLICT
(device, stream, t, id) DO NOTHING``: a row already stored (a batch sent again after a lost
answer) is left as it is, so nothing is stored twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .base import Datapoint

#: The temporary table a connection stages its batches in (emptied at each commit).
STAGING = "connectorsync_staging"

# A table name: an identifier, or schema.identifier, unquoted (so what the user writes is
# what psql shows). Anything else is refused when the remote is built.
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
# COPY's text format gives backslash, tab, newline and carriage return a meaning.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def valid_table(name: object) -> bool:
    return isinstance(name, str) and _TABLE.fullmatch(name) is not None


def table_identifier(sql: Any, table: str) -> Any:
    """``table`` (``name`` or ``schema.name``) as a psycopg ``sql.Identifier``."""
    return sql.Identifier(*table.split("."))


def create_table(sql: Any, table: str, *, typed: bool) -> list[Any]:
    """The statements that make ``table`` when missing (and its ``number`` column, when
    ``typed``, on a table made without it)."""
    name = table_identifier(sql, table)
    number = sql.SQL(", number double precision") if typed else sql.SQL("")
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (device text NOT NULL, stream text NOT NULL, "
            "t timestamptz NOT NULL, id bigint NOT NULL, value jsonb NOT NULL{}, "
            "UNIQUE (device, stream, t, id))"
        ).format(name, number)
    ]
    if typed:
        statements.append(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS number double precision").format(name)
        )
    return statements


#: Whether the TimescaleDB extension is installed in the database (a row when it is).
TIMESCALEDB_INSTALLED = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"


def make_hypertable(sql: Any, table: str) -> Any:
    """TimescaleDB: ``table`` partitioned by ``t`` (a no-op when it is a hypertable)."""
    return sql.SQL(
        "SELECT create_hypertable({}, 't', if_not_exists => TRUE, migrate_data => TRUE)"
    ).format(sql.Literal(table))


def create_staging(sql: Any) -> Any:
    return sql.SQL(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {} (t double precision, id bigint, value jsonb) "
        "ON COMMIT DELETE ROWS"
    ).format(sql.Identifier(STAGING))


def copy_staging(sql: Any) -> Any:
    return sql.SQL("COPY {} (t, id, value) FROM STDIN").format(sql.Identifier(STAGING))


def insert_staged(sql: Any, table: str, *, typed: bool) -> Any:
    """Move the staged rows into ``table``, parameters ``(device, stream)``; rows it holds
    already are left alone. With ``typed``, a number also goes into ``number`` (as double
    precision: one beyond its range is refused by the server), anything else leaves it NULL."""
    columns = sql.SQL("device, stream, t, id, value")
    values = sql.SQL("%s, %s, to_timestamp(t), id, value")
    if typed:
        columns += sql.SQL(", number")
        values += sql.SQL(
            ", CASE WHEN jsonb_typeof(value) = 'number' THEN value::double precision END"
        )
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (device, stream, t, id) DO NOTHING"
    ).format(table_identifier(sql, table), columns, values, sql.Identifier(STAGING))


def newest(sql: Any, table: str) -> Any:
    """The newest ``t`` (seconds) of ``(device, stream)`` in ``table``, or NULL."""
    return sql.SQL(
        "SELECT extract(epoch FROM max(t))::double precision FROM {} "
        "WHERE device = %s AND stream = %s"
    ).format(table_identifier(sql, table))


def copy_payload(batch: Sequence[Datapoint]) -> bytes:
    """The COPY text of ``batch``: ``t<TAB>id<TAB>value`` lines, ``t`` as Python's shortest
    exact repr (PostgreSQL parses it back to the same double), the value as the cache's JSON
    text with COPY's special characters escaped."""
    lines = []
    for point in batch:
        d = point[2]
        if "\\" in d or "\t" in d or "\n" in d or "\r" in d:
            d = d.translate(_COPY_ESCAPES)
        lines.append(f"{float(point[1])!r}\t{int(point[0])}\t{d}\n")
    return "".join(lines).encode()
