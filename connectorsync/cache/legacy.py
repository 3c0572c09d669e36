"""A connectordb 0.3.5 cache, read as it is: what ``connectorsync status`` shows of a file
the old program still writes, before it is migrated.

Guarantee (``tests/test_migration.py::test_status_shows_a_connectordb_cache_and_leaves_it_alone``):
:func:`connectordb_snapshot` opens the file read-only: it never writes the file (bytes and
modification time stay as they were), never migrates it, and the old program goes on
inserting undisturbed. That program sets no busy timeout: any lock a reader holds while it
commits fails its insert at once with "database is locked" (one in about every ``status``
did). So it is read without a lock (:mod:`.lockfree`)
(``test_migration.py::test_status_never_makes_the_old_program_fail_an_insert``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apsw

from . import lockfree
from .base import wrapped
from .schema import CONNECTORDB, _kind, _table_names, _user_version, open_readonly


@dataclass(frozen=True)
class LegacyStream:
    """One stream of a connectordb 0.3.5 cache: datapoints cached, oldest and newest
    timestamp (None when none is cached)."""

    cached: int
    oldest: float | None
    newest: float | None


@dataclass(frozen=True)
class ConnectorDBSnapshot:
    """What a connectordb 0.3.5 cache holds: its streams, and the settings its ``metadata``
    row keeps (the apikey is not read)."""

    streams: dict[str, LegacyStream] = field(default_factory=dict)
    serverurl: str | None = None
    lastsynctime: float | None = None
    syncperiod: float | None = None

    @property
    def cached(self) -> int:
        return sum(s.cached for s in self.streams.values())


def connectordb_snapshot(path: str) -> ConnectorDBSnapshot | None:
    """What the connectordb 0.3.5 cache at ``path`` holds, or None when the file is not one
    (a connectorsync cache, or no cache at all: :func:`.schema.open_readonly` says which).

    :raises CacheError: the file cannot be read
    """
    image = lockfree.image(path)  # None: a WAL file (whose readers block no writer) or other
    if image is not None:
        conn = lockfree.connect(image, path)
    else:  # or a file that never stopped changing: read it with SQLite's locks
        conn = open_readonly(path, refuse_older=False)
    try:
        return _read(conn, path)
    finally:
        conn.close()


def _read(conn: apsw.Connection, path: str) -> ConnectorDBSnapshot | None:
    with wrapped(f"read cache file {path!r}"):
        conn.execute("BEGIN")  # one snapshot: the counts and the streams agree
        try:
            if _kind(path, _user_version(conn), _table_names(conn)) != CONNECTORDB:
                return None
            counts = {
                str(name): LegacyStream(int(n), oldest, newest)
                for name, n, oldest, newest in conn.execute(
                    "SELECT stream, count(*), min(timestamp), max(timestamp) "
                    "FROM cache GROUP BY stream"
                )
            }
            names = [str(r[0]) for r in conn.execute("SELECT stream FROM streams")]
            meta = conn.execute(
                "SELECT serverurl, lastsynctime, syncperiod FROM metadata LIMIT 1"
            ).fetchone()
        finally:
            conn.execute("COMMIT")
    streams = {name: LegacyStream(0, None, None) for name in names}
    streams.update(counts)
    serverurl, lastsync, period = meta if meta is not None else (None, None, None)
    return ConnectorDBSnapshot(
        streams=dict(sorted(streams.items())),
        serverurl=None if serverurl is None else str(serverurl),
        lastsynctime=float(lastsync) if lastsync else None,
        syncperiod=float(period) if period is not None else None,
    )
