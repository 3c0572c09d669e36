"""The Logger's ConnectorDB-compatible API: creation, settings, streams, inserting, closing."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from connectorsync import (
    ClosedError,
    ConfigurationError,
    Logger,
    StreamError,
    TimestampError,
    UnknownStreamError,
)
from connectorsync.testing import ConnectorDBServer


def test_seed_example_end_to_end(cache_path: str, server: ConnectorDBServer) -> None:
    """The example of ConnectorDB's "Logging data" guide, against a real server."""

    def initlogger(lg: Logger) -> None:
        lg.apikey = server.apikey
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.syncperiod = 60 * 60

    lg = Logger(cache_path, on_create=initlogger)
    for value in (20.5, 21.0, 21.5):
        lg.insert("temperature", value)
    assert len(lg) == 3
    report = lg.sync()
    assert report.ok and report.sent == {"temperature": 3}
    assert len(lg) == 0
    lg.close()
    stored = server.datapoints("alice/sensor/temperature")
    assert [p["d"] for p in stored] == [20.5, 21.0, 21.5]
    assert [p["t"] for p in stored] == sorted(p["t"] for p in stored)


def test_settings_and_data_survive_reopen(cache_path: str) -> None:
    lg = Logger(cache_path)
    lg.apikey = "secret"
    lg.serverurl = "http://127.0.0.1:9"
    lg.syncperiod = 42
    lg.data = {"site": "greenhouse", "n": [1, 2]}
    lg.batch_size = 100
    lg.addStream("temperature", {"type": "number"})
    lg.insert("temperature", 1.5)
    lg.lastsynctime = 1234.0
    lg.close()

    lg = Logger(cache_path)
    assert lg.apikey == "secret"
    assert lg.serverurl == "http://127.0.0.1:9"
    assert lg.syncperiod == 42
    assert lg.data == {"site": "greenhouse", "n": [1, 2]}
    assert lg.batch_size == 100
    assert lg.lastsynctime == 1234.0
    assert lg.streams == {"temperature": {"type": "number"}}
    assert "temperature" in lg and "humidity" not in lg
    assert len(lg) == 1
    lg.close()


def test_defaults_of_a_new_cache(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        assert lg.apikey == ""
        assert lg.serverurl == "http://localhost:3124"
        assert lg.syncperiod == 600
        assert lg.lastsynctime == 0
        assert lg.data == {}
        assert lg.streams == {}
        assert (lg.durability, lg.batch_size) == ("full", 5000)


def test_on_create_runs_once(cache_path: str) -> None:
    calls = []
    for _ in range(3):
        Logger(cache_path, on_create=calls.append).close()
    assert len(calls) == 1


@pytest.mark.parametrize("outcome", ["raise", "false"])
def test_failed_on_create_leaves_no_file(cache_path: str, outcome: str) -> None:
    def init(lg: Logger) -> bool:
        lg.apikey = "half-made"
        lg.addStream("temperature", {"type": "number"})
        if outcome == "raise":
            raise RuntimeError("no apikey typed")
        return False

    expected = RuntimeError if outcome == "raise" else ConfigurationError
    with pytest.raises(expected):
        Logger(cache_path, on_create=init)
    assert not [f for f in os.listdir(os.path.dirname(cache_path)) if f.startswith("cache.db")]
    # The next run starts afresh and runs on_create again.
    calls = []
    Logger(cache_path, on_create=calls.append).close()
    assert len(calls) == 1


def test_apikey_constructor_argument_is_stored(cache_path: str) -> None:
    Logger(cache_path, apikey="k1").close()
    with Logger(cache_path) as lg:
        assert lg.apikey == "k1"


def test_cache_file_is_owner_only_and_apikey_never_shown(cache_path: str) -> None:
    with Logger(cache_path, apikey="TOPSECRET") as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1)
        assert "TOPSECRET" not in repr(lg)
        assert "TOPSECRET" not in repr(lg.remote)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(cache_path + suffix):
            assert stat.S_IMODE(os.stat(cache_path + suffix).st_mode) == 0o600, suffix


def test_connectordb_settings_are_keywords_too(cache_path: str, server: ConnectorDBServer) -> None:
    """Where a connectordb 0.3.5 user passes them: Logger(path, serverurl=..., syncperiod=...);
    they are stored in the cache file like the options, and checked the same way."""
    with pytest.raises(ConfigurationError, match="syncperiod"):
        Logger(cache_path, syncperiod=-1)
    with pytest.raises(ConfigurationError, match="serverurl"):
        Logger(cache_path, serverurl="")
    assert not os.path.exists(cache_path)
    with Logger(
        cache_path, apikey=server.apikey, serverurl=server.url, syncperiod=5, data={"a": 1}
    ) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        assert lg.sync().sent == {"temperature": 1}
    with Logger(cache_path) as lg:
        assert (lg.serverurl, lg.syncperiod, lg.data) == (server.url, 5.0, {"a": 1})


def test_connectordb_client_for_the_settings(cache_path: str, server: ConnectorDBServer) -> None:
    """``l.connectordb``, as in connectordb 0.3.5: the package's client for the cache's apikey
    and serverurl, built once, anew when they change."""
    with Logger(cache_path, apikey=server.apikey, serverurl=server.url) as lg:
        client = lg.connectordb
        assert client is lg.connectordb
        assert client.ping() == "alice/sensor"
        lg.apikey = server.add_device("alice", "other")
        assert lg.connectordb is not client and lg.connectordb.ping() == "alice/other"


def test_connectordb_client_names_the_extra_without_the_package(
    cache_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "connectordb", None)  # as if not installed
    with Logger(cache_path) as lg, pytest.raises(ConfigurationError, match=r"\[connectordb\]"):
        lg.connectordb  # noqa: B018 - the attribute access is the call under test


def test_options_are_checked(cache_path: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        Logger(cache_path, batchsize=10)
    with pytest.raises(ConfigurationError, match="batch_size"):
        Logger(cache_path, batch_size=0)
    with pytest.raises(ConfigurationError, match="durability"):
        Logger(cache_path, durability="sometimes")
    assert not os.path.exists(cache_path)
    with Logger(cache_path, durability="normal", batch_size=7) as lg:
        with pytest.raises(ConfigurationError):
            lg.syncperiod = -1
        with pytest.raises(ConfigurationError):
            lg.http_timeout = float("inf")
        assert (lg.durability, lg.batch_size) == ("normal", 7)
    with Logger(cache_path) as lg:
        assert (lg.durability, lg.batch_size) == ("normal", 7)


def test_stream_names_are_checked(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        for bad in ("", "1abc", "has space", "a" * 30, "a/b", "a/b/c/d", 5):
            with pytest.raises(StreamError):
                lg.addStream(bad, {})
        lg.addStream("alice/sensor/temp-1_x", {})
        assert "alice/sensor/temp-1_x" in lg


def test_add_stream_without_schema_asks_the_server(
    logger: Logger, server: ConnectorDBServer
) -> None:
    logger.sync()  # creates alice/sensor/temperature remotely
    logger.addStream_force("temperature2")  # registered locally only
    with pytest.raises(UnknownStreamError, match="not found on the remote"):
        logger.addStream("humidity")
    logger.cleardata()
    logger.addStream("temperature")
    assert logger.streams["temperature"] == {"type": "number"}


def test_insert_many_is_atomic(logger: Logger) -> None:
    logger.insert_many("temperature", [1, 2, {"t": 2e9, "d": 3}])
    assert len(logger) == 3
    with pytest.raises(TimestampError):
        logger.insert_many("temperature", [4, {"t": 1.0, "d": 5}])
    assert len(logger) == 3
    # connectordb's form: {stream: [datapoints]}
    logger.insert_many({"temperature": [{"t": 3e9, "d": 6}]})
    assert len(logger) == 4
    assert logger.insert_many("temperature", []) == 0


def test_timestamps_strictly_increase_per_stream(logger: Logger) -> None:
    logger.insert("temperature", 1, timestamp=1.7e9)
    logger.insert("temperature", 2, timestamp=1.7e9)  # a tie moves 1 µs later
    logger.insert("temperature", 3)  # now, after both
    stats = logger.status().streams["temperature"]
    assert stats.cached == 3 and stats.oldest == 1.7e9
    with pytest.raises(TimestampError, match="older than the stream's newest"):
        logger.insert("temperature", 4, timestamp=1.7e9)


def test_closed_logger_raises(cache_path: str) -> None:
    lg = Logger(cache_path)
    lg.addStream("temperature", {})
    lg.close()
    lg.close()  # twice is fine
    with pytest.raises(ClosedError):
        lg.insert("temperature", 1)
    with pytest.raises(ClosedError):
        len(lg)
    with pytest.raises(ClosedError):
        lg.sync()


def test_foreign_sqlite_file_is_refused_unchanged(tmp_path) -> None:
    import apsw

    path = str(tmp_path / "other.db")
    conn = apsw.Connection(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    before = Path(path).read_bytes()
    with pytest.raises(ConfigurationError, match="not a connectorsync cache"):
        Logger(path)
    assert Path(path).read_bytes() == before


def test_newer_schema_version_is_refused(cache_path: str) -> None:
    import apsw

    Logger(cache_path).close()
    conn = apsw.Connection(cache_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ConfigurationError, match="newer than this connectorsync"):
        Logger(cache_path)


def test_not_a_database_is_a_cache_error(tmp_path) -> None:
    from connectorsync import CacheError

    path = tmp_path / "notes.db"
    path.write_text("just some text, " * 100)
    with pytest.raises(CacheError):
        Logger(str(path))
