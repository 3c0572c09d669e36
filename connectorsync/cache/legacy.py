"""A connectordb 0.3.5 cache, read as it is: what ``connectorsync status`` shows of a file
the old program still writes, before it is migrated.

Guarantee (``tests/test_migration.py::test_status_shows_a_connectordb_cache_and_leaves_it_alone``):
:func:`connectordb_snapshot` opens the file read-only: it never writes the file (bytes and
modification time stay as they were), never migrates it, and the old program goes on
inserting undisturbed. That program sets no busy timeout: any lock a reader holds while it
commits fails its insert at once with "database is locked" (one in about every ``status``
did). So the file's bytes are read without a lock and kept only if the file did not change
meanwhile: the same change counter (which every commit of a rollback-journal file
increments) before and after, and no journal (a write under way) at either moment; else
read again. SQLite reads that copy, in memory
(``test_migration.py::test_status_never_makes_the_old_program_fail_an_insert``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import apsw

from .base import wrapped
from .schema import CONNECTORDB, _kind, _table_names, _user_version, open_readonly

#: Lock-free reads tried before reading under SQLite's locks (which may then fail an insert
#: of the old program), and the pause between two.
ATTEMPTS, PAUSE = 100, 0.01
#: The largest file read into memory to be looked at without a lock.
MAX_IMAGE = 256 * 1024 * 1024


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
    for _ in range(ATTEMPTS):
        before = _header(path)
        if before is None:  # WAL (a connectorsync cache: readers never block a writer), or
            break  # not an SQLite file: read as any other, SQLite says what it is
        image = _image(path, before)
        if image is not None:
            conn = apsw.Connection(":memory:")
            try:
                with wrapped(f"read cache file {path!r}"):
                    conn.deserialize("main", image)
                return _read(conn, path)
            finally:
                conn.close()
        time.sleep(PAUSE)
    conn = open_readonly(path, refuse_older=False)  # it never stopped changing: with locks
    try:
        return _read(conn, path)
    finally:
        conn.close()


def _header(path: str) -> bytes | None:
    """The header of a rollback-journal SQLite file up to its change counter (bytes 24-27,
    which every commit increments), or None for any other file (bytes 18-19 are 1 for a
    rollback journal, 2 for WAL)."""
    try:
        with open(path, "rb") as f:
            header = f.read(28)
    except OSError:
        return None
    ok = len(header) == 28 and header.startswith(b"SQLite format 3\0") and header[18] == 1
    return header if ok else None


def _image(path: str, header: bytes) -> bytes | None:
    """The file's bytes, read without a lock, if no write was under way or done meanwhile:
    no journal before or after, and the same header (change counter) before and after;
    else None. None too for a file too large to hold in memory: then SQLite's locks."""
    try:
        if os.path.exists(path + "-journal") or os.path.getsize(path) > MAX_IMAGE:
            return None
        with open(path, "rb") as f:
            image = f.read(MAX_IMAGE + 1)
    except OSError:
        return None
    if len(image) > MAX_IMAGE or not image.startswith(header):
        return None
    if os.path.exists(path + "-journal") or _header(path) != header:
        return None
    return image


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
