"""Invariant 9: bad input raises a clear connectorsync error at insert() and changes nothing."""

from __future__ import annotations

import datetime
import math
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectorsync import (
    ClosedError,
    ConfigurationError,
    ConnectorDBRemote,
    DeliveryKind,
    HTTPRemote,
    InfluxDBRemote,
    Logger,
    RemoteError,
    SchemaError,
    TimestampError,
    UnknownStreamError,
    ValidationError,
)
from connectorsync.testing import ConnectorDBServer

from .conftest import dump, wait_for


@pytest.fixture
def lg(cache_path: str):
    with Logger(cache_path) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.addStream(
            "reading",
            {"type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]},
        )
        lg.addStream_force("anything")
        lg.insert("temperature", 20.0, timestamp=1.7e9)
        yield lg


def nested(depth: int, leaf: object = 1) -> object:
    """``leaf`` inside ``depth`` objects and lists, alternating."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


BAD_INSERTS = [
    # (stream, value, timestamp, error, words the message must contain)
    ("humidity", 1, None, UnknownStreamError, ["'humidity'", "add_stream"]),
    ("temperature", "hot", None, ValidationError, ["'temperature'", "'hot'", "number"]),
    ("temperature", True, None, ValidationError, ["'temperature'", "True", "number"]),
    ("temperature", None, None, ValidationError, ["'temperature'", "None"]),
    ("temperature", math.nan, None, ValidationError, ["'temperature'", "nan", "finite"]),
    ("temperature", math.inf, None, ValidationError, ["'temperature'", "inf"]),
    ("anything", {1, 2}, None, ValidationError, ["'anything'", "JSON"]),
    ("anything", [1, math.nan], None, ValidationError, ["'anything'", "JSON"]),
    ("anything", object(), None, ValidationError, ["'anything'", "JSON"]),
    ("reading", {"v": 1.5}, None, ValidationError, ["'reading'", "1.5", "integer"]),
    ("anything", nested(101), None, ValidationError, ["'anything'", "100 levels"]),
    ("anything", nested(5000), None, ValidationError, ["'anything'", "100 levels"]),
    ("reading", {}, None, ValidationError, ["'reading'", "'v' is a required property"]),
    ("temperature", 1.0, math.nan, TimestampError, ["'temperature'", "finite"]),
    ("temperature", 1.0, math.inf, TimestampError, ["'temperature'", "finite"]),
    ("temperature", 1.0, "now", TimestampError, ["'temperature'", "'now'", "seconds"]),
    ("temperature", 1.0, True, TimestampError, ["'temperature'"]),
    ("temperature", 1.0, 1.7e12, TimestampError, ["milliseconds"]),
    ("temperature", 1.0, 1.6e9, TimestampError, ["older", "1700000000.0"]),
    ("temperature", 1.0, datetime.datetime(2026, 1, 1), TimestampError, ["timezone"]),
    # Issue 9, defect 7: values JSON or UTF-8 cannot carry, timestamps a float cannot hold.
    pytest.param(
        "anything", 10**5000, None, ValidationError, ["'anything'", "bits", "digits"], id="bigint"
    ),
    pytest.param(
        "temperature", 10**5000, None, ValidationError, ["'temperature'", "bits"], id="bigint-num"
    ),
    pytest.param(
        "anything", [1, 10**5000], None, ValidationError, ["'anything'", "bits"], id="bigint-in"
    ),
    pytest.param(
        "anything",
        "\ud800",
        None,
        ValidationError,
        ["'anything'", "'\\ud800'", "surrogate"],
        id="lone-surrogate",
    ),
    pytest.param(
        "anything",
        {"k\udfff": 1},
        None,
        ValidationError,
        ["'anything'", "surrogate"],
        id="surrogate-key",
    ),
    pytest.param(
        "temperature", 1.0, 10**400, TimestampError, ["'temperature'", "too large"], id="huge-t"
    ),
    pytest.param(
        "temperature", 1.0, -(10**5000), TimestampError, ["too large"], id="huge-negative-t"
    ),
]


@pytest.mark.parametrize(("stream", "value", "timestamp", "error", "words"), BAD_INSERTS)
def test_bad_insert_raises_and_changes_nothing(lg, stream, value, timestamp, error, words) -> None:
    before = dump(lg.path)
    with pytest.raises(error) as info:
        lg.insert(stream, value, timestamp)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert dump(lg.path) == before


@pytest.mark.parametrize(("stream", "value", "timestamp", "error", "words"), BAD_INSERTS)
def test_bad_item_in_insert_many_stores_nothing(lg, stream, value, timestamp, error, words) -> None:
    before = dump(lg.path)
    item = value if timestamp is None else {"t": timestamp, "d": value}
    with pytest.raises(error):
        lg.insert_many(stream, [2.0, item] if stream == "temperature" else [item])
    assert dump(lg.path) == before


@pytest.mark.parametrize(
    "values", [5, None.__class__, "hello", b"abc", {"t": 1.8e9, "d": 1}], ids=repr
)
def test_insert_many_refuses_values_that_are_not_a_collection(lg, values) -> None:
    """A str would be stored letter by letter, a dict key by key: a TypeError names
    ``values`` and what it should be, and nothing is stored."""
    before = dump(lg.path)
    with pytest.raises(TypeError, match=r"insert_many.*values.*'anything'.*iterable") as info:
        lg.insert_many("anything", values)
    assert type(values).__name__ in str(info.value)
    with pytest.raises(TypeError, match=r"'anything'.*iterable"):
        lg.insert_many({"anything": values})
    assert dump(lg.path) == before


@pytest.mark.parametrize(
    "schema", [{"$ref": "#"}, {"$ref": "http://example.com/s.json"}, {"$schema": 5}], ids=repr
)
def test_add_stream_refuses_a_schema_no_insert_could_use(lg, schema) -> None:
    before = dump(lg.path)
    with pytest.raises(SchemaError, match="'looping'"):
        lg.add_stream("looping", schema)
    assert "looping" not in lg
    assert dump(lg.path) == before


def test_values_nested_up_to_the_limit_are_stored(lg) -> None:
    lg.insert("anything", nested(100))
    assert lg.latest("anything")["d"] == nested(100)


def test_validation_error_carries_the_details(lg) -> None:
    with pytest.raises(ValidationError) as info:
        lg.insert("reading", {"v": "x"})
    assert info.value.stream == "reading"
    assert info.value.value == {"v": "x"}
    assert "integer" in info.value.reason


def test_aware_datetime_timestamp(lg) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    lg.insert("temperature", 1.0, when)
    assert lg.status().streams["temperature"].newest == when.timestamp()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=5))
def test_values_round_trip_through_the_cache(tmp_path_factory, values) -> None:
    """What comes out of the cache (as the remote receives it) equals what went in."""
    import json

    from connectorsync.cache import Cache

    path = str(tmp_path_factory.mktemp("rt") / "cache.db")
    with Logger(path, durability="normal") as lg:
        lg.addStream_force("anything")
        for value in values:
            lg.insert("anything", value)
    cache = Cache.connect(path)
    try:
        stream_id = cache.streams()["anything"].id
        rows = cache.batch(stream_id, 0, 100)
    finally:
        cache.close()
    assert [json.loads(d) for _, _, d in rows] == values


# Issue 9, defect 7: an apikey HTTP Basic auth cannot carry, and the background syncer's
# unexpected errors. Invariant 15: what crosses the API is a ConnectorSyncError.

BAD_KEY = "clé€"  # '€' is not latin-1


def test_an_apikey_outside_latin1_is_refused_without_echoing_it(cache_path) -> None:
    with Logger(cache_path) as lg:
        before = dump(cache_path)
        with pytest.raises(ConfigurationError, match="latin-1") as info:
            lg.apikey = BAD_KEY
        assert BAD_KEY not in str(info.value) and "€" not in str(info.value)
        assert lg.apikey == ""
        assert dump(cache_path) == before
        lg.apikey = "clé"  # latin-1 is fine
    with pytest.raises(ConfigurationError, match="latin-1") as info:
        Logger(cache_path, apikey=BAD_KEY)
    assert "€" not in str(info.value)
    with pytest.raises(ConfigurationError, match="latin-1") as info:
        ConnectorDBRemote("http://127.0.0.1:9", BAD_KEY)
    assert "€" not in str(info.value)


class _BuggyRemote:
    """A remote with a bug: ping raises a plain RuntimeError while ``broken``."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(self) -> None:
        self.broken = True

    def ping(self) -> str:
        if self.broken:
            raise RuntimeError("a bug in the remote")
        return "alice/sensor"

    def ensure_stream(self, stream, schema) -> None: ...
    def stream_schema(self, stream): ...
    def push(self, stream, batch) -> None: ...
    def reconcile(self, stream): ...
    def close(self) -> None: ...


def test_the_background_syncer_says_why_an_unexpected_error_stopped_a_pass(cache_path) -> None:
    remote = _BuggyRemote()
    with Logger(cache_path, remote=remote, sync_jitter=0) as lg:
        lg.start()
        wait_for(
            lambda: "a bug in the remote" in (lg.status().last_error or ""),
            what="status().last_error to report the RuntimeError",
        )
        assert "RuntimeError" in (lg.status().last_error or "")
        remote.broken = False


# Issue 16: a serverurl without its scheme failed only at the first sync, as an SSL error
# naming no host.


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("localhost:8123", ["'localhost:8123'", "http://", "https://"]),
        ("cdb.example.com", ["'cdb.example.com'", "http://"]),
        ("ftp://cdb.example.com", ["'ftp://cdb.example.com'", "http://"]),
        ("http://", ["'http://'", "no host"]),
        ("http://localhost:port", ["'http://localhost:port'", "not a url"]),
        ("htp://alice:hunter2@cdb.example.com", ["alice:***@cdb.example.com", "http://"]),
    ],
)
def test_a_serverurl_without_scheme_or_host_is_refused(cache_path, url, words) -> None:
    with Logger(cache_path) as lg:
        before = dump(cache_path)
        with pytest.raises(ConfigurationError) as info:
            lg.serverurl = url
        message = str(info.value)
        assert all(word in message for word in words), message
        assert "hunter2" not in message
        assert lg.serverurl == "http://localhost:3124"
        assert dump(cache_path) == before
    with pytest.raises(ConfigurationError) as info:
        Logger(cache_path, serverurl=url)
    assert all(word in str(info.value) for word in words), info.value
    with Logger(cache_path) as lg:
        assert lg.serverurl == "http://localhost:3124"


def test_a_serverurl_of_the_wrong_type_is_a_type_error(cache_path) -> None:
    with Logger(cache_path) as lg, pytest.raises(TypeError, match="serverurl") as info:
        lg.serverurl = 8123
    assert isinstance(info.value, ConfigurationError)


def test_a_server_that_cannot_be_reached_is_named_host_and_port(cache_path) -> None:
    """A refused connection says which server: the url's host and port."""
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Logger(cache_path, serverurl=f"http://127.0.0.1:{port}", apikey="k") as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        report = lg.sync()
        assert not report.ok
        message = " ".join(report.errors.values())
        assert f"127.0.0.1:{port}" in message, message
        assert "connection failed" in message, message
        with pytest.raises(RemoteError, match=f"127.0.0.1:{port}"):
            lg.ping()


SECONDS_OPTIONS = (
    "http_timeout",
    "syncperiod",
    "sync_jitter",
    "commit_interval",
    "max_age",
    "max_hold",
)


@pytest.mark.parametrize("name", SECONDS_OPTIONS)
@pytest.mark.parametrize("value", [1e10, 1e300])
def test_seconds_no_wait_can_last_are_refused(cache_path: str, name: str, value: float) -> None:
    """Seconds past what a thread or a socket can wait are refused when given (keyword,
    attribute, a remote's timeout, sync_clock's). They were taken: then ``http_timeout=1e10``
    failed every pass with "unexpected OverflowError", ``syncperiod=1e300`` killed the
    background syncer with a traceback, and ``sync_clock(timeout=1e300)`` raised a bare
    OverflowError."""
    with pytest.raises(ConfigurationError, match=name):
        Logger(cache_path, **{name: value}).close()
    with Logger(cache_path) as lg:
        before = getattr(lg, name)
        with pytest.raises(ConfigurationError, match="at most"):
            setattr(lg, name, value)
        assert getattr(lg, name) == before
        with pytest.raises(ConfigurationError, match="NTP timeout"):
            lg.sync_clock("127.0.0.1", timeout=value)
    for build in (
        lambda: ConnectorDBRemote("http://127.0.0.1:9", "key", timeout=value),
        lambda: HTTPRemote("http://127.0.0.1:9/in", timeout=value),
        lambda: InfluxDBRemote("http://127.0.0.1:9", database="db", timeout=value),
    ):
        with pytest.raises(ConfigurationError, match="timeout"):
            build()


def test_the_longest_seconds_work_and_close_takes_an_endless_timeout(
    cache_path: str, server: ConnectorDBServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """The longest accepted seconds make working passes and a syncer that waits; and
    ``close(float("inf"))`` ("as long as it takes") closes: it raised OverflowError with the
    Logger half closed (its syncer and file never closed, a second close() did nothing)."""
    longest = dict.fromkeys(("http_timeout", "syncperiod", "sync_jitter"), 1e9)
    lg = Logger(cache_path, apikey=server.apikey, serverurl=server.url, **longest)
    lg.add_stream("s", {"type": "number"})
    lg.insert("s", 1.0)
    assert lg.sync().ok
    lg.start()
    lg.close(float("inf"))
    with pytest.raises(ClosedError):
        lg.insert("s", 2.0)
    with Logger(cache_path) as again:  # the sync lock and the file were let go
        again.insert("s", 2.0)
        assert again.sync().ok
        assert again.status().syncer is None
    assert [p["d"] for p in server.datapoints("alice/sensor/s")] == [1.0, 2.0]
    assert "Traceback" not in capfd.readouterr().err
