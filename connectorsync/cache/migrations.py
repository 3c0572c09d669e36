"""The cache file's tables and their versioned migrations (opening is :mod:`.schema`'s job).

``MIGRATIONS[i]`` takes a file from ``PRAGMA user_version`` i to i + 1; each step runs inside
the one transaction that migrates the file (see :func:`.schema.open_file`), so a failure
leaves the file as it was (``test_migration.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import apsw

from .base import NO_TIME, NUDGE

log = logging.getLogger(__name__)


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


def _migrate_v4(conn: apsw.Connection) -> None:
    """v4: stream properties.

    ``streams.properties``: ConnectorDB's stream properties given to ``add_stream``
    (``nickname``, ``description``...) as a JSON object, sent when the stream is created on
    the remote; ``'{}'`` for the streams registered before.
    """
    conn.execute("ALTER TABLE streams ADD COLUMN properties TEXT NOT NULL DEFAULT '{}';").fetchall()


def _migrate_v5(conn: apsw.Connection) -> None:
    """v5: a batch in flight marks exactly its own rows.

    ``streams.inflight_lo``: the first datapoint id of the rows in flight, whose last is
    ``streams.inflight`` (0 and 0: none). Before, a mark meant every id up to ``inflight``, so
    a batch of new datapoints without answer held the whole unsent backlog below it. A mark
    left by an older version keeps that meaning (``inflight_lo`` 1): what it covers may have
    been sent, and it is sent again first.
    """
    conn.execute(
        "ALTER TABLE streams ADD COLUMN inflight_lo INTEGER NOT NULL DEFAULT 0;"
        "UPDATE streams SET inflight_lo = 1 WHERE inflight > 0;"
    ).fetchall()


_V6 = """
CREATE TABLE remotes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT,
    streams TEXT,
    give_up_after REAL,
    fallback TEXT,
    failing_since REAL
);
CREATE TABLE positions (
    remote INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    upto INTEGER,
    inflight_lo INTEGER NOT NULL DEFAULT 0,
    inflight INTEGER NOT NULL DEFAULT 0,
    remote_created INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (remote, stream)
) WITHOUT ROWID;
CREATE INDEX positions_by_stream ON positions(stream);
CREATE TABLE taken (
    remote INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (remote, stream, lo)
) WITHOUT ROWID;
ALTER TABLE deadletters ADD COLUMN remote TEXT NOT NULL DEFAULT 'default';
INSERT INTO remotes (id, name) VALUES (1, 'default');
INSERT INTO positions (remote, stream, inflight_lo, inflight, remote_created)
    SELECT 1, id, inflight_lo, inflight, remote_created FROM streams;
ALTER TABLE streams DROP COLUMN inflight;
ALTER TABLE streams DROP COLUMN inflight_lo;
ALTER TABLE streams DROP COLUMN remote_created;
"""


def _migrate_v6(conn: apsw.Connection) -> None:
    """v6: several remotes per cache, each with its own position per stream.

    ``remotes``: one row per named remote (``config``: its ``to_config()`` as JSON, NULL for
    the one the Logger builds from its settings; ``streams``: a JSON list of names and glob
    patterns it routes, NULL for every stream; ``give_up_after``, ``fallback`` by name;
    ``failing_since``: when its passes began to fail, NULL while they succeed).

    ``positions``: a row per remote and stream it routes. The remote *holds* the stream's
    datapoints with ids above ``done`` (and at most ``upto``, when set: a fallback holds
    only what was handed to it), except the ranges in ``taken`` (acknowledged out of order:
    the live lane). The batch in flight to it is ``inflight_lo`` to ``inflight``. A datapoint
    leaves the cache once no remote that routes its stream holds it (:mod:`.positions`).

    An existing cache's remote becomes ``default`` (id 1) and keeps its batch in flight,
    what it knows of the streams on the remote (``remote_created``) and its dead letters
    (``deadletters.remote``); those columns of ``streams`` go.
    """
    conn.execute(_V6).fetchall()


def _migrate_v7(conn: apsw.Connection) -> None:
    """v7: what the cache does for a stream when it is full, and what it sends first.

    ``streams.priority``: higher is sent first and made room for last (default 0).
    ``streams.thin``: 1 the stream may be thinned when the cache is full, 0 never, NULL as
    ``on_full`` decides (``"thin"`` thins number streams). ``streams.thinned``: how many of
    its datapoints thinning removed, ever.
    """
    conn.execute(
        "ALTER TABLE streams ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE streams ADD COLUMN thin INTEGER;"
        "ALTER TABLE streams ADD COLUMN thinned INTEGER NOT NULL DEFAULT 0;"
    ).fetchall()


# Named, versioned steps: MIGRATIONS[i] takes a file from user_version i to i + 1.
MIGRATIONS: list[tuple[str, Callable[[apsw.Connection], None]]] = [
    ("v1_initial", _migrate_v1),
    ("v2_inflight_and_retries", _migrate_v2),
    ("v3_device_time", _migrate_v3),
    ("v4_stream_properties", _migrate_v4),
    ("v5_inflight_range", _migrate_v5),
    ("v6_remotes_and_positions", _migrate_v6),
    ("v7_priority_and_thinning", _migrate_v7),
]
SCHEMA_VERSION = len(MIGRATIONS)


# The tables of a connectordb 0.3.5 Logger cache (its user_version is 0).
CONNECTORDB_TABLES = {"cache", "streams", "metadata"}


def import_connectordb(conn: apsw.Connection) -> None:
    """Move a connectordb 0.3.5 cache into the v1 tables, keeping every datapoint and setting.

    connectordb sent each stream's points sorted by timestamp; they keep that order here and
    ties become strictly increasing (nudged by 1 microsecond) as ConnectorDB needs. A row whose
    data is not JSON (connectordb's ``insert_many`` could store one) becomes a dead letter
    instead of disappearing
    (``test_migration.py::test_migration_keeps_ties_in_order_and_bad_rows_as_dead_letters``).
    """
    for old in CONNECTORDB_TABLES:
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
    for old in CONNECTORDB_TABLES:
        conn.execute(f"DROP TABLE connectordb_{old}")
    log.info("migrated a connectordb cache: %d datapoints, %d dead letters", moved, lost)
