"""The SQLite cache: every SQL statement of connectorsync lives in this module.

Guarantees (each proved by the test named):

- A write method returns only after its transaction committed (``test_durability.py``).
- Datapoint ids are AUTOINCREMENT: they follow commit order and are never reused, so an
  acknowledged id range can never cover a datapoint that was not sent.
- Per stream, cached timestamps strictly increase, also with several processes inserting:
  a trigger checks the order inside the write
  (``test_durability.py::test_processes_inserting_together_never_see_locked``). A stream's
  newest timestamp never goes down: deleting datapoints records it in ``streams.last_t``.
- A failed call changes nothing (each write is one transaction).
- A batch in flight (a stream's datapoints with id <= ``streams.inflight``) is immutable:
  ``drop_oldest``, expiry, :meth:`Cache.clear` and re-anchoring leave it alone until its
  outcome is resolved, so each datapoint is counted in exactly one place: delivered, cached,
  dead-lettered, dropped, expired or cleared (``test_inflight.py``).
- The schema is versioned with ``PRAGMA user_version``; opening an older file, or a cache
  written by ``connectordb`` 0.3.5's Logger, migrates it in place in one transaction
  (``test_migration.py``).
- New cache files are readable by their owner only: they hold the apikey.

Each thread that needs the database opens its own :class:`Cache` (apsw gives no concurrency
from a shared connection); within one :class:`Cache`, a lock keeps transactions whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from .errors import CacheError, CacheFullError, ClosedError, ConfigurationError

log = logging.getLogger("connectorsync.cache")

DURABILITY = {"full": "FULL", "normal": "NORMAL"}
BUSY_TIMEOUT_MS = 60_000
# Below every real timestamp: the "previous t" of a stream that never had a datapoint.
NO_TIME = -1e308
# A tie (or, where allowed, an older time) is moved to just after the stream's newest.
NUDGE = 1e-6


@dataclass(frozen=True)
class StreamRow:
    """A stream as stored: its id in the datapoints table, schema text and remote state."""

    id: int
    name: str
    schema: str
    remote_created: bool
    inflight: int = 0
    out_of_order: str = "reject"


@dataclass(frozen=True)
class Limits:
    """Storage limits, checked inside the write (so several processes cannot overshoot).

    :ivar max_cached: most datapoints the cache may hold
    :ivar max_bytes: most bytes the cache's pages may use
    :ivar min_free_disk: bytes that must stay free on the cache's file system
    :ivar drop_oldest: when full, drop the oldest datapoints (counted) instead of refusing
    """

    max_cached: int | None = None
    max_bytes: int | None = None
    min_free_disk: int | None = None
    drop_oldest: bool = False

    @property
    def active(self) -> bool:
        return bool(self.max_cached or self.max_bytes or self.min_free_disk)


#: Where a datapoint's time came from when it was not trusted yet: (boots row, boot clock).
Untrusted = tuple[int, float]


@dataclass(frozen=True)
class StreamStats:
    """Per-stream counts for ``Logger.status()``."""

    cached: int
    oldest: float | None
    newest: float | None
    deadletters: int


Row = tuple[int, float, str]  # (id, t, d as JSON text)


@dataclass(frozen=True)
class BatchRequest:
    """What a pass asks of :meth:`Cache.take_batch`: its bounds, and what to hold back.

    :ivar upto_id: the newest id the pass delivers (what was cached when it began)
    :ivar limit: most datapoints in a batch (``batch_size``)
    :ivar max_bytes: most bytes of values in a batch (``max_batch_bytes``)
    :ivar hold: ``(boot, since)``: datapoints of that boot stamped by an untrusted clock at
        boot-clock ``since`` or later wait (``hold_unsynced``); None: nothing waits
    """

    upto_id: int
    limit: int
    max_bytes: int
    hold: Untrusted | None = None


# --------------------------------------------------------------------------- schema + migrations

_V1 = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE streams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    schema TEXT NOT NULL,
    last_t REAL NOT NULL DEFAULT -1e308,
    remote_created INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE datapoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream INTEGER NOT NULL,
    t REAL NOT NULL,
    d TEXT NOT NULL
);
CREATE INDEX datapoints_by_stream ON datapoints(stream);
CREATE TRIGGER datapoints_in_order BEFORE INSERT ON datapoints
WHEN NEW.t <= max(
    coalesce((SELECT t FROM datapoints WHERE stream = NEW.stream ORDER BY id DESC LIMIT 1), -1e308),
    (SELECT last_t FROM streams WHERE id = NEW.stream))
BEGIN SELECT RAISE(IGNORE); END;
CREATE TABLE deadletters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    t REAL NOT NULL,
    d TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    failed_at REAL NOT NULL
);
"""


def _migrate_v1(conn: apsw.Connection) -> None:
    """v1: settings, streams, datapoints (id = insertion order) and dead letters.

    The trigger keeps each stream's timestamps strictly increasing whoever writes: a row not
    after the stream's newest (cached, or delivered: ``streams.last_t``) is silently not
    inserted, and the writer sees ``changes() == 0``.
    """
    conn.execute(_V1).fetchall()  # fetchall: run every statement of the script now


def _migrate_v2(conn: apsw.Connection) -> None:
    """v2: exactly-once delivery and dead-letter retries.

    ``streams.inflight`` is the last datapoint id of a batch sent without an answer yet (0:
    none); while it is set, the syncer asks the remote what it stored before sending again.
    ``deadletters.retry_id`` links a dead letter to the datapoint it was queued again as.
    """
    conn.execute(
        "ALTER TABLE streams ADD COLUMN inflight INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE deadletters ADD COLUMN retry_id INTEGER;"
        "CREATE INDEX deadletters_retry ON deadletters(retry_id) WHERE retry_id IS NOT NULL;"
    ).fetchall()


def _migrate_v3(conn: apsw.Connection) -> None:
    """v3: device time, out-of-order policy and latest values.

    ``datapoints.boot``/``mono``: for a datapoint stamped before the clock was trusted (no NTP
    answer yet this boot), the boot (a ``boots`` row) and the boot clock at insert, so that
    its time can be fixed exactly once NTP answers; NULL once the time is trusted.
    ``streams.out_of_order``: 'reject' or 'restamp' for explicit timestamps older than the
    newest. ``streams.last_d``: the value that goes with ``last_t`` once the datapoint has
    left the cache, for ``latest()``.
    """
    conn.execute(
        "ALTER TABLE datapoints ADD COLUMN boot INTEGER;"
        "ALTER TABLE datapoints ADD COLUMN mono REAL;"
        "CREATE INDEX datapoints_unanchored ON datapoints(boot) WHERE boot IS NOT NULL;"
        "ALTER TABLE streams ADD COLUMN out_of_order TEXT NOT NULL DEFAULT 'reject';"
        "ALTER TABLE streams ADD COLUMN last_d TEXT;"
        "CREATE TABLE boots (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE);"
    ).fetchall()


# Named, versioned steps: MIGRATIONS[i] takes a file from user_version i to i + 1.
MIGRATIONS: list[tuple[str, Callable[[apsw.Connection], None]]] = [
    ("v1_initial", _migrate_v1),
    ("v2_inflight_and_retries", _migrate_v2),
    ("v3_device_time", _migrate_v3),
]
SCHEMA_VERSION = len(MIGRATIONS)

# The tables of a connectordb 0.3.5 Logger cache (its user_version is 0).
_CONNECTORDB_TABLES = {"cache", "streams", "metadata"}


def _import_connectordb(conn: apsw.Connection) -> None:
    """Move a connectordb 0.3.5 cache into the v1 tables, keeping every datapoint and setting.

    connectordb sent each stream's points sorted by timestamp; they keep that order here and
    ties become strictly increasing (nudged by 1 microsecond) as ConnectorDB needs. A row whose
    data is not JSON (connectordb's ``insert_many`` could store one) becomes a dead letter
    instead of disappearing.
    """
    for old in _CONNECTORDB_TABLES:
        conn.execute(f"ALTER TABLE {old} RENAME TO connectordb_{old}")
    _migrate_v1(conn)
    apikey, serverurl, lastsync, period, userdata = next(
        conn.execute(
            "SELECT apikey, serverurl, lastsynctime, syncperiod, userdatajson "
            "FROM connectordb_metadata LIMIT 1"
        ),
        ("", None, 0, 600, "{}"),
    )
    try:
        data = json.loads(userdata or "{}")
    except ValueError:
        data = {}
    settings = {
        "apikey": apikey or "",
        "serverurl": serverurl,
        "lastsynctime": lastsync or 0,
        "syncperiod": period or 600,
        "data": data,
    }
    for key, value in settings.items():
        if value is not None:
            conn.execute("INSERT INTO settings VALUES (?, ?)", (key, json.dumps(value)))
    for name, schema_text in list(
        conn.execute("SELECT stream, jsonschema FROM connectordb_streams")
    ):
        schema = json.loads(schema_text) if schema_text else None
        conn.execute(
            "INSERT INTO streams (name, schema) VALUES (?, ?)", (name, json.dumps(schema or {}))
        )
    ids = {name: sid for sid, name in conn.execute("SELECT id, name FROM streams")}
    last: dict[str, float] = {}
    moved = lost = 0
    rows = conn.execute(
        "SELECT stream, timestamp, jsondata FROM connectordb_cache "
        "ORDER BY stream, timestamp, rowid"
    )
    for name, t, text in list(rows):
        reason = None
        try:
            json.loads(text)
        except (TypeError, ValueError):
            reason = "connectordb cache held data that is not JSON"
        if name not in ids:
            reason = reason or "connectordb cache held data for an unregistered stream"
        if reason:
            conn.execute(
                "INSERT INTO deadletters (stream, t, d, reason, attempts, failed_at) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                (name, t, json.dumps(str(text)), reason, t),
            )
            lost += 1
            continue
        t = max(float(t), last.get(name, NO_TIME) + NUDGE)
        last[name] = t
        conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (?, ?, ?)", (ids[name], t, text))
        moved += 1
    for old in _CONNECTORDB_TABLES:
        conn.execute(f"DROP TABLE connectordb_{old}")
    log.info("migrated a connectordb cache: %d datapoints, %d dead letters", moved, lost)


def _owner_only(path: str) -> None:
    """Make a migrated connectordb cache (and its journal files) readable by its owner only:
    it holds the apikey, and connectordb left it as the umask made it (often 0644).
    (``test_migration.py::test_migrated_connectordb_cache_is_owner_only``)"""
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:  # not ours to change: say so, the file still works
            log.warning("cache %s holds the apikey but cannot be made owner-only: %s", path, exc)


# --------------------------------------------------------------------------- statements

_INSERT = "INSERT INTO datapoints (stream, t, d, boot, mono) VALUES (?, ?, ?, ?, ?)"

_NEWEST = """
SELECT max(
    coalesce((SELECT t FROM datapoints WHERE stream = ?1 ORDER BY id DESC LIMIT 1), -1e308),
    (SELECT last_t FROM streams WHERE id = ?1))
"""


class TooOldError(Exception):
    """Internal: an explicit timestamp is older than the stream's newest (``newest`` says it)."""

    def __init__(self, newest: float):
        super().__init__(newest)
        self.newest = newest


def _place(t: float, newest: float, restamp: bool) -> float:
    """Where ``t`` goes in a stream whose newest timestamp is ``newest``: ``t`` if after it;
    newest + 1 µs for a tie, or for an older ``t`` when ``restamp``; else TooOldError."""
    if t > newest:
        return t
    if t < newest and not restamp:
        raise TooOldError(newest)
    return newest + NUDGE


# The rows not in a batch in flight: a stream's rows with id <= streams.inflight are on the
# wire (or their outcome is unknown) and stay as they are until it is resolved.
_AT_REST = "id > (SELECT s.inflight FROM streams AS s WHERE s.id = datapoints.stream)"


# Why drop_oldest found nothing to drop: what is left is a batch in flight.
_SENDING = " (what is left is being sent and cannot be dropped: try again once the sync is done)"


def _delete(conn: apsw.Connection, where: str, params: Sequence[Any]) -> int:
    """Delete the datapoints matching ``where``; returns how many.

    Every deletion goes through here: per stream, the newest datapoint that leaves is
    remembered (``streams.last_t``/``last_d``), so a stream's timestamps keep increasing after
    its cache empties, and ``latest()`` still has an answer. A dead letter queued again whose
    datapoint leaves is done with (delivered, dropped or expired: counted there); a caller
    that wants it back at rest sets its ``retry_id`` to NULL first (:meth:`Cache.clear`).
    """
    conn.execute(
        "UPDATE streams SET last_t = gone.t, last_d = gone.d FROM ("
        "  SELECT stream, t, d FROM datapoints WHERE id IN ("
        f"    SELECT max(id) FROM datapoints WHERE {where} GROUP BY stream)"
        ") AS gone WHERE streams.id = gone.stream AND gone.t >= streams.last_t",
        params,
    )
    if next(conn.execute("SELECT 1 FROM deadletters WHERE retry_id IS NOT NULL LIMIT 1"), 0):
        conn.execute(
            f"DELETE FROM deadletters WHERE retry_id IN (SELECT id FROM datapoints WHERE {where})",
            params,
        )
    conn.execute(f"DELETE FROM datapoints WHERE {where}", params)
    return conn.changes()


# The anchors (boots row -> [true time, boot clock]) of reanchor, for datapoints that were in
# flight then: {"3": [1700000000.0, 12.5], ...}; the last one is the newest.
_ANCHORS = "clock.reanchor"


def _recorded_anchors(conn: apsw.Connection) -> dict[str, list[float]]:
    row = next(conn.execute("SELECT value FROM settings WHERE key = ?", (_ANCHORS,)), None)
    return {} if row is None else dict(json.loads(row[0]))


def _retime_recorded(conn: apsw.Connection, anchors: dict[str, list[float]]) -> int:
    """Re-time the untrusted datapoints not in flight of every boot in ``anchors``, and
    record the anchors still needed: the newest, and those of boots with untrusted
    datapoints left. Returns how many were re-timed."""
    fixed = 0
    for boot, (true_now, boot_clock_now) in anchors.items():
        fixed += _retime(conn, int(boot), true_now, boot_clock_now)
    newest = list(anchors)[-1:]
    needed = {
        boot: anchor
        for boot, anchor in anchors.items()
        if boot in newest
        or next(conn.execute("SELECT 1 FROM datapoints WHERE boot = ? LIMIT 1", (int(boot),)), 0)
    }
    conn.execute("DELETE FROM settings WHERE key = ?", (_ANCHORS,))
    if needed:
        conn.execute("INSERT INTO settings VALUES (?, ?)", (_ANCHORS, json.dumps(needed)))
    return fixed


def _retime(conn: apsw.Connection, boot: int, true_now: float, boot_clock_now: float) -> int:
    """See :meth:`Cache.reanchor`: re-time ``boot``'s untrusted datapoints not in flight."""
    # Per stream, the re-timed datapoints are all after the ones in flight (ids above
    # streams.inflight), so walking on from the first of them, nudging forward any time not
    # after the one before, keeps the order and never touches a datapoint in flight.
    firsts = list(
        conn.execute(
            f"SELECT stream, min(id) FROM datapoints WHERE boot = ? AND {_AT_REST} GROUP BY stream",
            (boot,),
        )
    )
    conn.execute(
        "UPDATE datapoints SET t = ? - (? - mono), boot = NULL, mono = NULL "
        f"WHERE boot = ? AND {_AT_REST}",
        (true_now, boot_clock_now, boot),
    )
    fixed = conn.changes()
    for stream_id, first_id in firsts:
        before = next(
            conn.execute(
                "SELECT t FROM datapoints WHERE stream = ? AND id < ? ORDER BY id DESC LIMIT 1",
                (stream_id, first_id),
            ),
            None,
        ) or next(conn.execute("SELECT last_t FROM streams WHERE id = ?", (stream_id,)))
        prev = before[0]
        rows = conn.execute(
            "SELECT id, t FROM datapoints WHERE stream = ? AND id >= ? ORDER BY id",
            (stream_id, first_id),
        )
        for point_id, t in list(rows):
            if t <= prev:
                t = prev + NUDGE
                conn.execute("UPDATE datapoints SET t = ? WHERE id = ?", (t, point_id))
            prev = t
    return fixed


def _bump(conn: apsw.Connection, key: str, count: int) -> None:
    """Add ``count`` to the counter setting ``key``, inside the caller's transaction."""
    if count:
        conn.execute(
            "INSERT INTO settings VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (key, str(count)),
        )


def _translate(exc: apsw.Error, action: str) -> CacheError | ClosedError:
    """Our error for an apsw error, naming what we were doing."""
    if isinstance(exc, apsw.ConnectionClosedError):
        return ClosedError(f"cannot {action}: the cache is closed")
    if isinstance(exc, apsw.FullError):
        return CacheFullError(f"cannot {action}: the disk or the cache is full ({exc})")
    return CacheError(f"cannot {action}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """Turn apsw errors into ours (see :func:`_translate`)."""
    try:
        yield
    except apsw.Error as exc:
        raise _translate(exc, action) from exc


class Cache:
    """One connection to a cache file.

    Use :meth:`open` to open (creating or migrating) a cache, and :meth:`connect` for a
    further connection to a cache that exists (the syncer thread's, say).
    """

    def __init__(self, conn: apsw.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._closed = False
        # Each stream's newest timestamp as this connection last saw it: a hint that saves a
        # query per insert. The trigger catches it when another connection wrote since.
        self._newest: dict[int, float] = {}

    # ----------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str, durability: str = "full") -> tuple[Cache, bool]:
        """Open ``path``, creating, migrating or checking it. Returns ``(cache, created)``.

        When ``created`` is true the file is new and a transaction is still open, so that the
        caller can fill it (``on_create``) before :meth:`finish_create` commits it, or
        :meth:`abort_create` rolls back and removes the file. Another process opening the same
        path meanwhile waits, then sees the finished file.

        :raises ConfigurationError: not a connectorsync cache, or written by a newer version
        :raises CacheError: the file cannot be opened
        """
        path = os.fspath(path)
        for _ in range(5):
            try:
                # Owner-only from the first byte: the file will hold the apikey. SQLite gives
                # the -wal and -shm files the same permissions.
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise CacheError(f"cannot create cache file {path!r}: {exc}") from exc
            before = os.stat(path)
            with _wrapped(f"open cache file {path!r}"):
                conn = apsw.Connection(path)
            cache = cls(conn, path)
            try:
                cache._configure(durability, wal=False)
                with _wrapped(f"open cache file {path!r}"):
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    after = os.stat(path)
                except FileNotFoundError:
                    after = None
                if after is None or (after.st_ino, after.st_dev) != (before.st_ino, before.st_dev):
                    # Another process removed the file while we waited (its on_create failed).
                    conn.execute("ROLLBACK")
                    cache.close()
                    continue
                created = cache._prepare()
                if not created:
                    conn.execute("COMMIT")
                    cache._configure(durability, wal=True)
                return cache, created
            except BaseException:
                cache.close()
                raise
        raise CacheError(f"cannot open cache file {path!r}: it keeps being replaced")

    @classmethod
    def open_readonly(cls, path: str) -> Cache:
        """Open an existing, current cache to look only: the file is never written (no
        migration, no setting), whoever else uses it meanwhile (``test_cli.py``).

        :raises ConfigurationError: not a current connectorsync cache: an older schema or a
            connectordb 0.3.5 cache (the message says how to migrate it), or not a cache
        :raises CacheError: the file cannot be opened
        """
        path = os.fspath(path)
        with _wrapped(f"open cache file {path!r}"):
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        cache = cls(conn, path)
        try:
            with _wrapped(f"open cache file {path!r}"):
                conn.setbusytimeout(BUSY_TIMEOUT_MS)
                version = cache._pragma("user_version")
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            migrate = "open it with connectorsync.Logger to migrate it (stop the old program first)"
            if version == 0 and tables >= _CONNECTORDB_TABLES:
                raise ConfigurationError(
                    f"{path!r} is a connectordb 0.3.5 cache, not migrated yet: {migrate}"
                )
            if 0 < version < SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{path!r} has schema version {version}, older than this connectorsync's "
                    f"({SCHEMA_VERSION}): {migrate}"
                )
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"cache file {path!r} has schema version {version}, newer than this "
                    f"connectorsync ({SCHEMA_VERSION}): upgrade connectorsync"
                )
            if version == 0:
                raise ConfigurationError(f"{path!r} is not a connectorsync cache")
        except BaseException:
            cache.close()
            raise
        return cache

    def find_boot(self, boot_id: str) -> int | None:
        """The key of ``boot_id`` (see :meth:`boot_key`) if recorded, else None; writes nothing."""
        rows = self._read("SELECT id FROM boots WHERE boot_id = ?", (boot_id,))
        return rows[0][0] if rows else None

    @classmethod
    def connect(cls, path: str, durability: str = "full") -> Cache:
        """A further connection to an existing, current cache file (for another thread)."""
        with _wrapped(f"open cache file {path!r}"):
            conn = apsw.Connection(os.fspath(path), flags=apsw.SQLITE_OPEN_READWRITE)
        cache = cls(conn, os.fspath(path))
        cache._configure(durability, wal=True)
        return cache

    def _configure(self, durability: str, wal: bool) -> None:
        if durability not in DURABILITY:
            raise ConfigurationError(
                f"durability must be one of {sorted(DURABILITY)}; got {durability!r}"
            )
        # apsw runs a multi-statement string lazily: one PRAGMA per execute, read back.
        with _wrapped(f"configure cache file {self.path!r}"):
            self._conn.setbusytimeout(BUSY_TIMEOUT_MS)
            if wal:
                mode = self._pragma("journal_mode", "WAL")
                if str(mode).lower() != "wal":
                    raise CacheError(f"cache file {self.path!r}: cannot use WAL (got {mode!r})")
            self._pragma("synchronous", DURABILITY[durability])
            level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[self._pragma("synchronous")]
            if level != DURABILITY[durability]:
                raise CacheError(f"cache file {self.path!r}: synchronous is {level}")

    def set_durability(self, durability: str) -> None:
        """Apply ``durability`` to this connection (at once, or when creation commits)."""
        if not self._conn.in_transaction:
            self._configure(durability, wal=True)

    def _pragma(self, name: str, value: str | None = None) -> Any:
        sql = f"PRAGMA {name}" if value is None else f"PRAGMA {name}={value}"
        rows = list(self._conn.execute(sql))
        if value is not None:
            rows = list(self._conn.execute(f"PRAGMA {name}"))
        return rows[0][0] if rows else None

    def _prepare(self) -> bool:
        """Inside the opening transaction: create, migrate or check. True if created."""
        conn = self._conn
        version = self._pragma("user_version")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"cache file {self.path!r} has schema version {version}, newer than this "
                f"connectorsync ({SCHEMA_VERSION}): upgrade connectorsync"
            )
        created = False
        found = version
        if version == 0:
            if tables >= _CONNECTORDB_TABLES:
                _import_connectordb(conn)  # leaves a v1 schema; later steps follow below
                _owner_only(self.path)
                version = 1
            elif tables:
                raise ConfigurationError(
                    f"{self.path!r} is an SQLite database but not a connectorsync cache "
                    f"(tables: {', '.join(sorted(tables))}); refusing to change it"
                )
            else:
                created = True
        for number in range(version, SCHEMA_VERSION):
            name, step = MIGRATIONS[number]
            log.info("cache %s: migration %s", self.path, name)
            step(conn)
        if found != SCHEMA_VERSION:
            self._pragma("user_version", str(SCHEMA_VERSION))
        return created

    def finish_create(self, durability: str) -> None:
        """Commit the creation transaction opened by :meth:`open`."""
        with _wrapped("create the cache"):
            self._conn.execute("COMMIT")
        self._configure(durability, wal=True)

    def abort_create(self) -> None:
        """Roll back the creation transaction, close, and remove the half-made file."""
        with contextlib.suppress(apsw.Error):
            self._conn.execute("ROLLBACK")
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # ----------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[apsw.Connection]:
        """A write transaction: BEGIN IMMEDIATE (so the write lock is taken up front and the
        busy timeout applies, never "database is locked" half way), COMMIT or ROLLBACK.
        Inside an open transaction (the creation one), a SAVEPOINT instead."""
        with self._lock, _wrapped(action):
            conn = self._conn
            if conn.in_transaction:
                with conn:
                    yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _wrapped("read the cache"):
            return list(self._conn.execute(sql, params))

    # ----------------------------------------------------------------------- settings

    def get_setting(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON) under ``key``; committed on return."""
        text = json.dumps(value, allow_nan=False)
        with self.transaction(f"save setting {key!r}") as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, text))

    def settings(self) -> dict[str, Any]:
        """Every setting, decoded."""
        return {k: json.loads(v) for k, v in self._read("SELECT key, value FROM settings")}

    # ----------------------------------------------------------------------- streams

    def streams(self) -> dict[str, StreamRow]:
        """Every registered stream by name."""
        rows = self._read(
            "SELECT id, name, schema, remote_created, inflight, out_of_order FROM streams"
        )
        return {r[1]: StreamRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows}

    def put_stream(self, name: str, schema_text: str, out_of_order: str = "reject") -> StreamRow:
        """Register ``name`` with ``schema_text``, or replace its schema. Cached data stays."""
        with self.transaction(f"register stream {name!r}") as conn:
            conn.execute(
                "INSERT INTO streams (name, schema, out_of_order) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET schema = excluded.schema, "
                "out_of_order = excluded.out_of_order, "
                "remote_created = remote_created AND schema = excluded.schema",
                (name, schema_text, out_of_order),
            )
            sid, created, inflight = next(
                conn.execute(
                    "SELECT id, remote_created, inflight FROM streams WHERE name = ?", (name,)
                )
            )
        return StreamRow(sid, name, schema_text, bool(created), inflight, out_of_order)

    def set_remote_created(self, name: str, created: bool = True) -> None:
        """Remember whether the stream is known to exist on the remote."""
        with self.transaction(f"update stream {name!r}") as conn:
            conn.execute("UPDATE streams SET remote_created = ? WHERE name = ?", (created, name))

    # ----------------------------------------------------------------------- datapoints

    def append(
        self,
        stream_id: int,
        t: float,
        data: str,
        *,
        restamp: bool,
        untrusted: Untrusted | None = None,
        limits: Limits | None = None,
    ) -> float:
        """Append one datapoint and commit. Returns the ``t`` stored.

        ``t`` must be finite. If it is not after the stream's newest timestamp it becomes
        newest + 1 µs when equal, or when older and ``restamp``; an older ``t`` without
        ``restamp`` raises :class:`TooOldError` and stores nothing. ``untrusted`` marks a
        time to fix once the clock is trusted (:meth:`reanchor`).

        :raises CacheFullError: a limit is reached (and ``limits.drop_oldest`` is off), or
            the disk is full; nothing was stored
        """
        boot, mono = untrusted or (None, None)
        if limits is not None and (limits.active or limits.drop_oldest):
            # Checked inside a transaction; a full disk makes room and tries again.
            with self._lock:
                return self._append_limited(stream_id, t, data, restamp, boot, mono, limits)
        # The hot path: a plain try (no context manager) is measurably cheaper here.
        with self._lock:
            try:
                conn = self._conn
                newest = self._newest.get(stream_id)
                while True:
                    if newest is None or t <= newest:
                        # Ties and clock steps are rare: read the real newest before nudging.
                        newest = next(conn.execute(_NEWEST, (stream_id,)))[0]
                    stored = _place(t, newest, restamp)
                    # One statement, one implicit write transaction, committed on return. The
                    # trigger re-checks the order under the write lock: if another connection
                    # stored a newer point since we looked, nothing is inserted: look again.
                    conn.execute(_INSERT, (stream_id, stored, data, boot, mono))
                    if conn.changes():
                        self._newest[stream_id] = stored
                        return stored
                    newest = None
            except apsw.Error as exc:
                raise _translate(exc, "store the datapoint") from exc

    def _append_limited(
        self,
        stream_id: int,
        t: float,
        data: str,
        restamp: bool,
        boot: int | None,
        mono: float | None,
        limits: Limits,
    ) -> float:
        while True:
            try:
                with self.transaction("store the datapoint") as conn:
                    if limits.active:
                        self._make_room(conn, 1, limits)
                    newest = next(conn.execute(_NEWEST, (stream_id,)))[0]
                    stored = _place(t, newest, restamp)
                    conn.execute(_INSERT, (stream_id, stored, data, boot, mono))
                self._newest[stream_id] = stored
                return stored
            except CacheFullError:
                # The disk itself is full (SQLITE_FULL). With drop_oldest, free the oldest
                # datapoints (1% at a time: a page frees only once all its rows are gone) and
                # try again; freed pages are reused, so the file does not grow.
                if not limits.drop_oldest:
                    raise
                with self.transaction("drop the oldest datapoints") as conn:
                    if not self._drop_oldest(conn, self._one_percent(conn)):
                        raise

    def _make_room(self, conn: apsw.Connection, incoming: int, limits: Limits) -> int:
        """Inside a write: make room for ``incoming`` datapoints, or raise CacheFullError.
        Returns how many datapoints were dropped (counted in the ``dropped`` statistic)."""
        dropped = 0
        if limits.max_cached:
            lowest, highest = next(conn.execute("SELECT min(id), max(id) FROM datapoints"))
            # Ids are never reused, so the id span bounds the count from above: only when it
            # reaches the limit is the exact (O(n)) count needed.
            span = 0 if lowest is None else highest - lowest + 1
            if span + incoming > limits.max_cached:
                cached = next(conn.execute("SELECT count(*) FROM datapoints"))[0]
                excess = cached + incoming - limits.max_cached
                if excess > 0:
                    if not limits.drop_oldest:
                        raise CacheFullError(
                            f"the cache holds {cached} datapoints and max_cached is "
                            f"{limits.max_cached}: nothing was stored (sync, raise max_cached, "
                            "or use on_full='drop_oldest')"
                        )
                    # Some headroom, so that the next inserts need no count.
                    dropped += self._drop_oldest(conn, max(excess, limits.max_cached // 100))
                    if dropped < excess:  # the rest is a batch in flight: it stays
                        raise CacheFullError(
                            f"the cache holds {cached} datapoints and max_cached is "
                            f"{limits.max_cached}: nothing was stored{_SENDING}"
                        )
        if limits.max_bytes:
            while (used := self._used_bytes(conn)) > limits.max_bytes:
                freed = (
                    self._drop_oldest(conn, self._one_percent(conn)) if limits.drop_oldest else 0
                )
                if not freed:
                    raise CacheFullError(
                        f"the cache uses {used} bytes and max_cache_bytes is {limits.max_bytes}:"
                        f" nothing was stored{_SENDING if limits.drop_oldest else ''}"
                    )
                dropped += freed
        if limits.min_free_disk:
            stat = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            free = stat.f_bavail * stat.f_frsize
            if free < limits.min_free_disk:
                # Dropped rows free pages inside the file for reuse: it then need not grow.
                has_room = next(conn.execute("PRAGMA freelist_count"))[0] > 0
                while not has_room and limits.drop_oldest:
                    freed = self._drop_oldest(conn, self._one_percent(conn))
                    if not freed:
                        break
                    dropped += freed
                    has_room = next(conn.execute("PRAGMA freelist_count"))[0] > 0
                if not has_room:
                    raise CacheFullError(
                        f"{free} bytes free on the disk, under min_free_disk "
                        f"({limits.min_free_disk}): nothing was stored"
                        f"{_SENDING if limits.drop_oldest else ''}"
                    )
        return dropped

    @staticmethod
    def _used_bytes(conn: apsw.Connection) -> int:
        pages = next(conn.execute("PRAGMA page_count"))[0]
        free = next(conn.execute("PRAGMA freelist_count"))[0]
        size = next(conn.execute("PRAGMA page_size"))[0]
        return int((pages - free) * size)

    @staticmethod
    def _one_percent(conn: apsw.Connection) -> int:
        return max(1, next(conn.execute("SELECT count(*) FROM datapoints"))[0] // 100)

    def _drop_oldest(self, conn: apsw.Connection, count: int) -> int:
        """Delete the ``count`` oldest datapoints (all streams) and count them as dropped.
        Datapoints of a batch in flight are left alone: the oldest of the others go."""
        edge = next(
            conn.execute(
                f"SELECT id FROM datapoints WHERE {_AT_REST} ORDER BY id LIMIT 1 OFFSET ?",
                (count - 1,),
            ),
            None,
        )
        if edge is None:
            edge = next(conn.execute(f"SELECT max(id) FROM datapoints WHERE {_AT_REST}"))
            if edge[0] is None:
                return 0
        dropped = _delete(conn, f"id <= ? AND {_AT_REST}", (edge[0],))
        _bump(conn, "stats.dropped", dropped)
        log.warning("cache full: dropped the %d oldest datapoints", dropped)
        return dropped

    def expire(self, before: float) -> int:
        """Delete datapoints with ``t`` < ``before`` (``max_age``), counted as expired.
        Datapoints of a batch in flight are left alone (``test_inflight.py``)."""
        with self.transaction("expire old datapoints") as conn:
            expired = _delete(conn, f"t < ? AND {_AT_REST}", (before,))
            _bump(conn, "stats.expired", expired)
        if expired:
            log.warning("expired %d datapoints older than max_age", expired)
        return expired

    def append_many(
        self,
        points: Sequence[tuple[int, float, bool, str, Untrusted | None]],
        *,
        limits: Limits | None = None,
    ) -> list[tuple[int, float]]:
        """Append ``(stream_id, t, restamp, data, untrusted)`` points in one transaction: all
        or none.

        Timestamps are resolved as in :meth:`append`, each point against the one before it in
        its stream. Returns ``(id, t)`` per point, in order.

        :raises TooOldError: a point's explicit ``t`` is older than its stream's newest
        :raises CacheFullError: as :meth:`append`
        """
        rows = []
        with self.transaction("store the datapoints") as conn:
            if limits is not None and limits.active:
                self._make_room(conn, len(points), limits)
            newest: dict[int, float] = {}
            for stream_id, t, restamp, data, untrusted in points:
                boot, mono = untrusted or (None, None)
                prev = newest.get(stream_id)
                if prev is None:
                    prev = next(conn.execute(_NEWEST, (stream_id,)))[0]
                t = _place(t, prev, restamp)
                rows.append((stream_id, t, data, boot, mono))
                newest[stream_id] = t
            before = conn.total_changes()
            conn.executemany(_INSERT, rows)
            if conn.total_changes() - before != len(rows):
                raise CacheError("insert_many: the cache refused out-of-order rows; none stored")
            last_id = conn.last_insert_rowid()
        self._newest.update(newest)
        # One statement, one writer: the ids are consecutive, ending at the last one.
        first_id = last_id - len(rows) + 1
        return [(first_id + i, row[1]) for i, row in enumerate(rows)]

    def newest(self, stream_id: int) -> float | None:
        """The newest timestamp the stream ever cached, or None."""
        t = self._read(_NEWEST, (stream_id,))[0][0]
        return None if t is None or t <= NO_TIME else t

    def latest(self, stream_id: int) -> tuple[float, str] | None:
        """The newest datapoint of the stream as ``(t, d as JSON text)``: the newest cached
        one, else the newest that left the cache (delivered, dead-lettered, dropped)."""
        rows = self._read(
            "SELECT t, d FROM datapoints WHERE stream = ? ORDER BY id DESC LIMIT 1", (stream_id,)
        ) or self._read(
            "SELECT last_t, last_d FROM streams WHERE id = ? AND last_d IS NOT NULL", (stream_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def count(self) -> int:
        """How many datapoints are cached, all streams together."""
        return self._read("SELECT count(*) FROM datapoints")[0][0]

    def statistics(self) -> dict[str, int]:
        """Counters kept in the cache: ``dropped`` and ``expired`` datapoints."""
        return {
            name: int(self.get_setting("stats." + name, 0) or 0) for name in ("dropped", "expired")
        }

    def batch(
        self, stream_id: int, after_id: int, limit: int, hold: Untrusted | None = None
    ) -> list[Row]:
        """Up to ``limit`` cached datapoints of the stream with id > ``after_id``, oldest first.

        Keyset paging: memory is O(limit) whatever the backlog. ``hold=(boot, since)``: stop
        before the first datapoint of that boot stamped by an untrusted clock at boot-clock
        time ``since`` or later (it waits for NTP; the stream's order forbids skipping it).
        """
        if hold is None:  # the usual case, and the sync's hot path: rows as they come
            return self._read(
                "SELECT id, t, d FROM datapoints WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
                (stream_id, after_id, limit),
            )
        rows = self._read(
            "SELECT id, t, d, boot, mono FROM datapoints WHERE stream = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (stream_id, after_id, limit),
        )
        batch: list[Row] = []
        for point_id, t, data, boot, mono in rows:
            if hold is not None and boot == hold[0] and mono is not None and mono >= hold[1]:
                break
            batch.append((point_id, t, data))
        return batch

    # ----------------------------------------------------------------------- device time

    def boot_key(self, boot_id: str) -> int:
        """The small integer that stands for ``boot_id`` in datapoint rows."""
        with self.transaction("record the boot") as conn:
            conn.execute("INSERT OR IGNORE INTO boots (boot_id) VALUES (?)", (boot_id,))
            return next(conn.execute("SELECT id FROM boots WHERE boot_id = ?", (boot_id,)))[0]

    def reanchor(self, boot: int, true_now: float, boot_clock_now: float) -> int:
        """Fix the times of the datapoints of ``boot`` stamped by an untrusted clock: each
        becomes ``true_now - (boot_clock_now - its boot clock)``, exact whatever the wall clock
        said. Per stream, strictly increasing order is kept (ties nudged by 1 µs). Returns how
        many datapoints were fixed.

        A batch in flight is left as it was sent (still untrusted): re-timing it before its
        outcome is known would make a reconcile miss what the remote holds, and send it twice.
        The anchor is recorded in the cache, and the batch's datapoints that turn out not
        delivered are re-timed when it is resolved (:meth:`ack_reconciled`), or by
        :meth:`reanchor_leftovers`. Safe to call again (``test_inflight.py``).
        """
        with self.transaction("fix timestamps stamped before the clock was trusted") as conn:
            anchors = _recorded_anchors(conn)
            anchors.pop(str(boot), None)  # the newest anchor goes last: it is kept
            anchors[str(boot)] = [true_now, boot_clock_now]
            fixed = _retime_recorded(conn, anchors)
        self._newest.clear()
        return fixed

    def reanchor_leftovers(self) -> int:
        """Fix, with the anchors :meth:`reanchor` recorded, the times of datapoints it left
        untrusted because they were in flight then and are not now. Cheap when there are
        none; safe to call any time no batch of this connection is being read or sent.
        Returns how many were fixed."""
        with self.transaction("fix timestamps left untrusted while in flight") as conn:
            fixed = _retime_recorded(conn, _recorded_anchors(conn))
        if fixed:
            self._newest.clear()
        return fixed

    def untrusted_count(self, boot: int) -> int:
        """How many cached datapoints of ``boot`` wait for a trusted clock."""
        return self._read("SELECT count(*) FROM datapoints WHERE boot = ?", (boot,))[0][0]

    # ----------------------------------------------------------------------- delivery

    def ack(self, stream_id: int, first_id: int, last_id: int) -> int:
        """Delete the stream's datapoints with ids in ``[first_id, last_id]`` (the remote stored
        them) in one transaction, and clear the batch in flight. Returns how many."""
        with self.transaction("delete delivered datapoints") as conn:
            return self._delete_delivered(conn, stream_id, first_id, last_id)

    @staticmethod
    def _delete_delivered(
        conn: apsw.Connection, stream_id: int, first_id: int, last_id: int
    ) -> int:
        delivered = _delete(
            conn, "stream = ? AND id BETWEEN ? AND ?", (stream_id, first_id, last_id)
        )
        # Clear the record of the batch in flight, unless it is already the next batch's
        # (the syncer records that one before this ack is done, see Syncer._deliver).
        conn.execute(
            "UPDATE streams SET inflight = 0 WHERE id = ? AND inflight <= ?", (stream_id, last_id)
        )
        return delivered

    def take_batch(self, stream_id: int, after_id: int, request: BatchRequest) -> list[Row]:
        """The stream's next batch, recorded as in flight in the same transaction.

        Up to ``request.limit`` cached datapoints with ``after_id`` < id <= ``request.upto_id``,
        oldest first, together at most ``request.max_bytes`` bytes of values (the first one
        always comes, whatever its size). Keyset paging: memory is bounded by both caps,
        whatever the backlog. ``request.hold=(boot, since)``: stop before the first datapoint
        of that boot stamped by an untrusted clock at boot-clock time ``since`` or later (it
        waits for NTP; the stream's order forbids skipping it).

        The stream's in-flight mark is raised to the batch's last id before the rows are
        handed out, so from the moment they are read they are immutable: not dropped, expired,
        re-timed or cleared until :meth:`ack`, :meth:`ack_reconciled` or
        :meth:`release_inflight` resolves them (and a crash leaves the mark for the next
        pass to resolve).
        """
        batch: list[Row] = []
        size = 0
        hold = request.hold
        with self.transaction("read the next batch") as conn:
            rows = conn.execute(
                "SELECT id, t, d, boot, mono FROM datapoints "
                "WHERE stream = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                (stream_id, after_id, request.upto_id, request.limit),
            )
            for point_id, t, data, boot, mono in rows:
                if hold is not None and boot == hold[0] and mono is not None and mono >= hold[1]:
                    break
                size += len(data)
                if batch and size > request.max_bytes:
                    break
                batch.append((point_id, t, data))
            if batch:
                conn.execute(
                    "UPDATE streams SET inflight = ? WHERE id = ? AND inflight < ?",
                    (batch[-1][0], stream_id, batch[-1][0]),
                )
        return batch

    def release_inflight(self, stream_id: int) -> None:
        """Clear the stream's in-flight mark: nothing of it is on the wire, and whatever was
        is resolved (stored and acked, or known not stored, or to be sent again)."""
        with self.transaction("clear the batch in flight") as conn:
            conn.execute("UPDATE streams SET inflight = 0 WHERE id = ?", (stream_id,))

    def max_id(self) -> int:
        """The id of the newest cached datapoint (0: none): a pass delivers up to here."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM datapoints")[0][0])

    def ack_reconciled(self, stream_id: int, remote_newest: float | None) -> int:
        """Resolve the batch in flight: its datapoints at or below ``remote_newest`` (the
        newest timestamp the remote holds) were delivered and are deleted; the rest stay to be
        sent again. Only datapoints that were in flight are considered. Returns how many."""
        with self.transaction("reconcile the batch in flight") as conn:
            upto = next(conn.execute("SELECT inflight FROM streams WHERE id = ?", (stream_id,)))[0]
            delivered = 0
            if upto and remote_newest is not None:
                first, last = next(
                    conn.execute(
                        "SELECT min(id), max(id) FROM datapoints "
                        "WHERE stream = ? AND id <= ? AND t <= ?",
                        (stream_id, upto, remote_newest),
                    )
                )
                if first is not None:
                    delivered = self._delete_delivered(conn, stream_id, first, last)
            conn.execute("UPDATE streams SET inflight = 0 WHERE id = ?", (stream_id,))
            # What was left untrusted while in flight (NTP answered meanwhile) and was not
            # delivered gets its true time now, before it is sent again.
            if _retime_recorded(conn, _recorded_anchors(conn)):
                self._newest.clear()
            return delivered

    # ----------------------------------------------------------------------- dead letters

    def deadletter(self, stream_id: int, name: str, row: Row, reason: str, now: float) -> None:
        """Move one datapoint the remote refused to the dead-letter table, in one transaction.

        A datapoint that was a dead letter queued again keeps its letter, with one more attempt.
        """
        point_id, t, data = row
        with self.transaction("move a datapoint to the dead letters") as conn:
            conn.execute(
                "UPDATE deadletters SET attempts = attempts + 1, reason = ?, failed_at = ?, "
                "retry_id = NULL WHERE retry_id = ?",
                (reason, now, point_id),
            )
            if not conn.changes():
                conn.execute(
                    "INSERT INTO deadletters (stream, t, d, reason, attempts, failed_at) "
                    "VALUES (?, ?, ?, ?, 1, ?)",
                    (name, t, data, reason, now),
                )
            _delete(conn, "id = ?", (point_id,))

    def deadletters(self, stream: str | None = None) -> list[tuple[Any, ...]]:
        """Dead letters at rest (not queued again): (id, stream, t, d, reason, attempts,
        failed_at), oldest first."""
        sql = (
            "SELECT id, stream, t, d, reason, attempts, failed_at FROM deadletters "
            "WHERE retry_id IS NULL"
        )
        if stream is None:
            return self._read(sql + " ORDER BY id")
        return self._read(sql + " AND stream = ? ORDER BY id", (stream,))

    def retry_deadletters(self, ids: Sequence[int] | None, streams: dict[str, int]) -> int:
        """Queue dead letters (all, or those of ``ids``) again as new datapoints, in one
        transaction. A letter older than its stream's newest timestamp is queued at newest +
        1 µs (the stream's order must hold). Letters of unregistered streams stay. Returns how
        many were queued."""
        queued = 0
        with self.transaction("queue dead letters again") as conn:
            letters = list(
                conn.execute(
                    "SELECT id, stream, t, d FROM deadletters WHERE retry_id IS NULL ORDER BY id"
                )
            )
            wanted = None if ids is None else set(ids)
            for letter_id, name, t, data in letters:
                if (wanted is not None and letter_id not in wanted) or name not in streams:
                    continue
                stream_id = streams[name]
                newest = next(conn.execute(_NEWEST, (stream_id,)))[0]
                t = _place(t, newest, restamp=True)
                conn.execute(_INSERT, (stream_id, t, data, None, None))
                self._newest[stream_id] = t
                conn.execute(
                    "UPDATE deadletters SET retry_id = ? WHERE id = ?",
                    (conn.last_insert_rowid(), letter_id),
                )
                queued += 1
        return queued

    def purge_deadletters(self, ids: Sequence[int] | None) -> int:
        """Delete dead letters at rest (all, or those of ``ids``). Returns how many."""
        with self.transaction("purge dead letters") as conn:
            if ids is None:
                conn.execute("DELETE FROM deadletters WHERE retry_id IS NULL")
                return conn.changes()
            purged = 0
            for letter_id in ids:
                conn.execute(
                    "DELETE FROM deadletters WHERE id = ? AND retry_id IS NULL", (letter_id,)
                )
                purged += conn.changes()
            return purged

    def clear(self) -> int:
        """Delete every cached datapoint (connectordb's ``cleardata``) but those of a batch in
        flight, which are delivered or stay cached. A dead letter queued again goes back to
        the dead letters (at rest). Returns how many datapoints were cleared: neither of those.
        """
        with self.transaction("clear the cache") as conn:
            conn.execute(
                "UPDATE deadletters SET retry_id = NULL WHERE retry_id IN ("
                f"  SELECT id FROM datapoints WHERE {_AT_REST})"
            )
            letters = conn.changes()
            return _delete(conn, _AT_REST, ()) - letters

    def stream_stats(self) -> dict[str, StreamStats]:
        """Cached count, oldest and newest cached t, and dead letters, per registered stream."""
        cached = {
            r[0]: r[1:]
            for r in self._read(
                "SELECT s.name, count(d.id), min(d.t), max(d.t) FROM streams s "
                "JOIN datapoints d ON d.stream = s.id GROUP BY s.id"
            )
        }
        dead = dict(
            self._read(
                "SELECT stream, count(*) FROM deadletters WHERE retry_id IS NULL GROUP BY stream"
            )
        )
        stats = {}
        for name in self.streams():
            count, oldest, newest = cached.get(name, (0, None, None))
            stats[name] = StreamStats(count, oldest, newest, dead.get(name, 0))
        return stats
