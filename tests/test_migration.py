"""A cache written by connectordb 0.3.5's own Logger migrates in place and syncs completely."""

from __future__ import annotations

import io
import itertools
import json
import os
import stat

import apsw
import connectordb
import connectordb.logger
import pytest

from connectorsync import Logger
from connectorsync.cache import SCHEMA_VERSION, Cache
from connectorsync.testing import ConnectorDBServer


def make_connectordb_cache(path: str, apikey: str, url: str) -> list[tuple[str, float, object]]:
    """Fill a cache with connectordb 0.3.5's Logger; return (stream, t, value) it holds."""

    def init(lg: connectordb.logger.Logger) -> None:
        lg.apikey = apikey
        lg.serverurl = url
        lg.addStream_force("temperature", {"type": "number"})
        lg.addStream_force("status", {"type": "object"})
        lg.syncperiod = 30

    old = connectordb.logger.Logger(path, on_create=init)
    old.data = {"site": "greenhouse"}
    for i in range(50):
        old.insert("temperature", 20 + i / 10)
    old.insert("status", {"door": "open"})
    old.database.close()
    conn = apsw.Connection(path)
    rows = [
        (s, t, json.loads(d))
        for s, t, d in conn.execute("SELECT stream, timestamp, jsondata FROM cache ORDER BY rowid")
    ]
    conn.close()
    return rows


def test_connectordb_cache_migrates_and_syncs(cache_path: str, server: ConnectorDBServer) -> None:
    rows = make_connectordb_cache(cache_path, server.apikey, server.url)

    lg = Logger(cache_path)
    assert lg.apikey == server.apikey
    assert lg.serverurl == server.url
    assert lg.syncperiod == 30
    assert lg.data == {"site": "greenhouse"}
    assert lg.streams == {"temperature": {"type": "number"}, "status": {"type": "object"}}
    assert len(lg) == len(rows) == 51
    conn = apsw.Connection(cache_path)
    assert list(conn.execute("PRAGMA user_version")) == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & {"cache", "metadata", "connectordb_cache"}
    conn.close()

    report = lg.sync()
    assert report.ok, report.errors
    assert report.sent == {"temperature": 50, "status": 1}
    assert len(lg) == 0
    lg.close()
    for stream in ("temperature", "status"):
        expected = [(t, v) for s, t, v in rows if s == stream]
        stored = server.datapoints(f"alice/sensor/{stream}")
        assert [p["d"] for p in stored] == [v for _, v in expected]
        # Timestamps kept (ties moved by at most a microsecond each).
        for p, (t, _) in zip(stored, expected, strict=True):
            assert abs(p["t"] - t) < 1e-3

    # The real connectordb client reads back what connectorsync synced.
    cdb = connectordb.ConnectorDB(server.apikey, url=server.url)
    try:
        assert [p["d"] for p in cdb["temperature"][:]] == [20 + i / 10 for i in range(50)]
        assert cdb["status"][-1]["d"] == {"door": "open"}
    finally:
        cdb.close()


def test_migration_keeps_ties_in_order_and_bad_rows_as_dead_letters(cache_path: str) -> None:
    rows = make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    conn = apsw.Connection(cache_path)
    t = rows[-1][1] + 10
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, '1')", (t,))
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, '2')", (t,))  # a tie
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, 'not json')", (t + 1,))
    conn.execute("INSERT INTO cache VALUES ('ghost', ?, '3')", (t + 2,))  # unregistered stream
    conn.close()

    with Logger(cache_path) as lg:
        assert len(lg) == 51 + 2
        assert lg.status().streams["temperature"].deadletters == 1
    cache = Cache.connect(cache_path)
    try:
        points = cache.batch(cache.streams()["temperature"].id, 0, 1000)
        times = [p[1] for p in points]
        assert all(a < b for a, b in itertools.pairwise(times))
        assert [p[2] for p in points[-2:]] == ["1", "2"]
        reasons = [r[0] for r in cache._read("SELECT reason FROM deadletters ORDER BY id")]
    finally:
        cache.close()
    assert sorted(reasons) == [
        "connectordb cache held data for an unregistered stream",
        "connectordb cache held data that is not JSON",
    ]


def test_real_connectordb_client_reads_what_connectorsync_synced(
    logger: Logger, server: ConnectorDBServer
) -> None:
    logger.addStream("status", {"type": "object", "properties": {"ok": {"type": "boolean"}}})
    logger.insert_many("temperature", [{"t": 1.7e9 + i, "d": i * 1.5} for i in range(10)])
    logger.insert("status", {"ok": True})
    assert logger.sync().ok
    cdb = connectordb.ConnectorDB(server.apikey, url=server.url)
    try:
        temp = cdb["temperature"]
        assert temp.exists() and temp.schema == {"type": "number"}
        assert len(temp) == 10
        assert [(p["t"], p["d"]) for p in temp[:]] == [(1.7e9 + i, i * 1.5) for i in range(10)]
        assert cdb["status"][-1]["d"] == {"ok": True}
    finally:
        cdb.close()


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_migrated_cache_uses_wal(cache_path: str, durability: str) -> None:
    make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    with Logger(cache_path, durability=durability) as lg:
        assert list(lg._cache._conn.execute("PRAGMA journal_mode")) == [("wal",)]


def test_migrated_connectordb_cache_is_owner_only(
    cache_path: str, server: ConnectorDBServer
) -> None:
    make_connectordb_cache(cache_path, server.apikey, server.url)
    os.chmod(cache_path, 0o644)  # connectordb left it readable by all, apikey and all
    with Logger(cache_path) as lg:
        lg.insert("temperature", 30.0)  # WAL files exist now
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(cache_path + suffix):
                assert stat.S_IMODE(os.stat(cache_path + suffix).st_mode) == 0o600, suffix
    assert stat.S_IMODE(os.stat(cache_path).st_mode) == 0o600


def test_status_leaves_a_connectordb_cache_alone_while_its_program_runs(
    cache_path: str, server: ConnectorDBServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from connectorsync.cli import main

    rows = make_connectordb_cache(cache_path, server.apikey, server.url)
    old = connectordb.logger.Logger(cache_path)  # the 0.3.5 program, still running
    try:
        with open(cache_path, "rb") as f:
            before = f.read(), os.stat(cache_path).st_mtime_ns
        for argv in (["status", cache_path], ["export", cache_path]):
            out = io.StringIO()
            assert main(argv, out=out) != 0
            err = capsys.readouterr().err
            assert "connectordb 0.3.5" in err and "connectorsync.Logger" in err
            assert "stop the old program first" in err
            assert server.apikey not in out.getvalue() + err
        with open(cache_path, "rb") as f:
            assert (f.read(), os.stat(cache_path).st_mtime_ns) == before
        old.insert("temperature", 99.5)  # it still works on its file
        assert len(old) == len(rows) + 1
    finally:
        old.database.close()
