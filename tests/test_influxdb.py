"""InfluxDBRemote end to end against a real ``influxd`` (InfluxDB 1.x), plus its configuration
and the v2 request shape against a loopback stand-in.

Without ``influxd`` the tests that need it skip, saying how to install it; with
``CONNECTORSYNC_REQUIRE_INFLUXDB=1`` (CI) they fail instead.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectorsync import Logger
from connectorsync.errors import (
    AmbiguousRemoteError,
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from connectorsync.remotes.base import Datapoint
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.remotes.line_protocol import ns_to_seconds, rfc3339_ns, seconds_to_ns
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import start_influxd, wait_for

T0 = 1_700_000_000.0


@pytest.fixture
def db(influxd: InfluxDBServer) -> str:
    """A fresh, empty database for one test."""
    name = "test_" + uuid.uuid4().hex[:12]
    influxd.create_database(name)
    return name


@pytest.fixture
def remote(influxd: InfluxDBServer, db: str) -> Iterator[InfluxDBRemote]:
    assert influxd.admin is not None
    user, password = influxd.admin
    r = InfluxDBRemote(influxd.url, db, username=user, password=password, timeout=5)
    try:
        yield r
    finally:
        r.close()


def batch(*values: Any, start: float = T0, step: float = 1.0) -> list[Datapoint]:
    return [(i + 1, start + i * step, json.dumps(v)) for i, v in enumerate(values)]


def fields(row: dict[str, Any], tags: Sequence[str] = ()) -> dict[str, Any]:
    """A row's fields: no time, no tags, no null columns (other points' fields)."""
    return {k: v for k, v in row.items() if k != "time" and k not in tags and v is not None}


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "float" if isinstance(value, int | float) else "string"


def field_types(influxd: InfluxDBServer, measurement: str, db: str) -> dict[str, str]:
    quoted = measurement.replace("\\", "\\\\").replace('"', '\\"')
    answer = influxd.query(f'SHOW FIELD KEYS FROM "{quoted}"', db)
    return dict(answer["results"][0]["series"][0]["values"])


def writes(receiver: HTTPReceiver) -> int:
    return sum(1 for r in receiver.requests if r.method == "POST" and "/write" in r.path)


# ----------------------------------------------------------------------------- values


SPECIAL_TAGS = {"site": "north wing, floor=3", "ünï cödé": "✓ ok", "plain": "x"}

CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("number", 21.5, {"value": 21.5}),
    ("integer", 21, {"value": 21.0}),
    ("huge", 1e300, {"value": 1e300}),
    ("big integer", 2**70, {"value": float(2**70)}),
    ("negative", -0.125, {"value": -0.125}),
    (
        "string",
        'he said "hi", a=b \\ back\\slash\\ tab\t end\\',
        {"value": 'he said "hi", a=b \\ back\\slash\\ tab\t end\\'},
    ),
    ("multiline", "line one\nline two", {"value": "line one\nline two"}),
    ("unicode", "ünïcödé ✓ 日本 𝄞", {"value": "ünïcödé ✓ 日本 𝄞"}),
    ("empty string", "", {"value": ""}),
    ("true", True, {"value": True}),
    ("false", False, {"value": False}),
    ("list", [1, "two", None, True], {"value.0": 1.0, "value.1": "two", "value.3": True}),
    (
        "object",
        {
            "temp": 21.5,
            "ok": True,
            "name": 'x y,z=w "q"',
            "nested": {"a": {"b": 1}},
            "list": [1, {"x": 3}],
            "skipped": None,
        },
        {
            "temp": 21.5,
            "ok": True,
            "name": 'x y,z=w "q"',
            "nested.a.b": 1.0,
            "list.0": 1.0,
            "list.1.x": 3.0,
        },
    ),
    (
        "special keys",
        {"a key, with=specials": 1, "ünï": 2},
        {"a key, with=specials": 1.0, "ünï": 2.0},
    ),
    ("my room, north", 1.5, {"value": 1.5}),
    ("with=equals", 2.5, {"value": 2.5}),
    ('say "hi"', 3.5, {"value": 3.5}),
    ("back\\slash", 4.5, {"value": 4.5}),
]


def test_values_of_every_kind_round_trip(influxd: InfluxDBServer, db: str) -> None:
    """Each case is its own measurement (so field types never meet), with awkward tags."""
    assert influxd.admin is not None
    user, password = influxd.admin
    with_tags = InfluxDBRemote(influxd.url, db, username=user, password=password, tags=SPECIAL_TAGS)
    try:
        for i, (measurement, value, _) in enumerate(CASES):
            with_tags.push(measurement, batch(value, start=T0 + i))
        for i, (measurement, _, expected) in enumerate(CASES):
            rows = influxd.points(measurement, db)
            assert len(rows) == 1, measurement
            row = rows[0]
            assert row["time"] == round((T0 + i) * 1e9), measurement
            assert {k: row[k] for k in SPECIAL_TAGS} == SPECIAL_TAGS, measurement
            assert fields(row, SPECIAL_TAGS) == expected, measurement
            # InfluxDB's JSON prints 21.0 as 21 and Python has True == 1: compare types too
            assert field_types(influxd, measurement, db) == {
                k: kind(v) for k, v in expected.items()
            }, measurement
            # reconcile finds the point under our tags, whatever the measurement's name
            assert with_tags.reconcile(measurement) == T0 + i, measurement
            assert with_tags.stream_schema(measurement) == {}
    finally:
        with_tags.close()


def test_all_numbers_are_floats(remote: InfluxDBRemote, influxd: InfluxDBServer, db: str) -> None:
    """21 then 21.5 in one field: no type conflict, because integers go out as floats."""
    remote.push("reading", batch(21, 21.5, 22, {"value": 1}))
    answer = influxd.query('SHOW FIELD KEYS FROM "reading"', db)
    assert answer["results"][0]["series"][0]["values"] == [["value", "float"]]
    assert [r["value"] for r in influxd.points("reading", db)] == [21.0, 21.5, 22.0, 1.0]


NUMBERS = [0, -0.0, 21, -7, 0.1, 1e16, -1e-5, 2.5e-300, 1.7976931348623157e308, -(10**23)]
NUMBERS += [10**24, 123456789012345678901234567890, -2.2250738585072014e-308]


def test_numbers_of_every_form_arrive_as_the_same_floats(
    remote: InfluxDBRemote, influxd: InfluxDBServer, db: str, cache_path: str
) -> None:
    """Whatever form a number's JSON text takes (digits, a fraction, an exponent, more digits
    than the fast path passes through as they are), InfluxDB stores float(value)."""
    with Logger(cache_path, remote=remote) as lg:
        lg.add_stream("numbers", {"type": "number"})
        lg.insert_many("numbers", [{"t": T0 + i, "d": v} for i, v in enumerate(NUMBERS)])
        assert lg.sync().ok
    rows = influxd.points("numbers", db)
    assert [(r["time"], r["value"]) for r in rows] == [
        (round((T0 + i) * 1e9), float(v)) for i, v in enumerate(NUMBERS)
    ]
    answer = influxd.query('SHOW FIELD KEYS FROM "numbers"', db)
    assert answer["results"][0]["series"][0]["values"] == [["value", "float"]]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "no field"),
        ({}, "no field"),
        ([], "no field"),
        ({"a": None, "b": [None]}, "no field"),
        ({"a.b": 1, "a": {"b": 2}}, "appears twice"),
        ({"": 1}, "is empty"),
        ({"two\nlines": 1}, "line break"),
        ({"ends with\\": 1}, "backslash"),
        (10**400, "does not fit a float"),
    ],
)
def test_unwritable_datapoints_are_refused_before_sending(value: Any, why: str) -> None:
    with HTTPReceiver() as receiver:
        r = InfluxDBRemote(receiver.url, "db")
        try:
            with pytest.raises(RejectedError) as info:
                r.push("m", batch(1.0, value))
            assert why in info.value.body and "t=1700000001.0" in str(info.value)
            assert writes(receiver) == 0
            with pytest.raises(RejectedError, match="time range"):
                r.push("m", batch(1.0, start=1e10))  # after 2262
        finally:
            r.close()


def test_refused_datapoints_become_dead_letters(
    cache_path: str, remote: InfluxDBRemote, influxd: InfluxDBServer, db: str
) -> None:
    """A point InfluxDB cannot hold (null) and one it refuses (400 partial write: a string
    in a float field) are each isolated by bisection; the rest arrive once each."""
    with Logger(cache_path, remote=remote, batch_size=8) as lg:
        lg.add_stream("mixed", {})
        lg.insert_many(
            "mixed", [{"t": T0 + i, "d": v} for i, v in enumerate([0, 1, None, 3, "four", 5, 6])]
        )
        report = lg.sync()
        assert report.ok, report.errors
        assert report.sent == {"mixed": 5} and report.deadlettered == {"mixed": 2}
        letters = lg.deadletters()
        assert [d.d for d in letters] == [None, "four"]
        assert "no field" in letters[0].reason
        assert "field type conflict" in letters[1].reason
    assert [(r["time"], r["value"]) for r in influxd.points("mixed", db)] == [
        (round((T0 + i) * 1e9), float(i)) for i in (0, 1, 3, 5, 6)
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"k":' * 3000 + "1" + "}" * 3000, "nested too deeply"),
        ("-Infinity", "not a finite number"),
        ("Infinity", "not a finite number"),
    ],
)
def test_cached_text_no_insert_lets_in_is_refused_before_sending(text: str, why: str) -> None:
    """Caches written before inserts were limited in depth, or by connectordb 0.3.5 (whose
    JSON writes infinities), may hold such values: each is refused with its reason (a dead
    letter), never an unwrapped error that would stop the sync."""
    r = InfluxDBRemote("http://127.0.0.1:9", "db")
    try:
        with pytest.raises(RejectedError) as info:
            r.encode("m", [(1, T0, "1.0"), (2, T0 + 1, text)])
        assert why in info.value.body and f"t={T0 + 1!r}" in str(info.value)
    finally:
        r.close()


@pytest.mark.parametrize("name", ["#comment", "ends\\", "two\nlines", "a\\,b", ""])
def test_names_that_line_protocol_cannot_write(name: str) -> None:
    r = InfluxDBRemote("http://127.0.0.1:9", "db")
    try:
        with pytest.raises(ConfigurationError, match="measurement"):
            r.push(name, batch(1.0))
        with pytest.raises(ConfigurationError, match="measurement"):
            r.ensure_stream(name, {})
    finally:
        r.close()


# ----------------------------------------------------------------------------- time


def test_nanosecond_timestamps_round_trip_to_the_microsecond(
    remote: InfluxDBRemote, influxd: InfluxDBServer, db: str
) -> None:
    times = [-86400.000001, 0.5, 1.000001, T0 + 0.123456, T0 + 0.123457, 4102444800.654321]
    remote.push("clock", [(i, t, "1") for i, t in enumerate(times)])
    stored = [row["time"] for row in influxd.points("clock", db)]
    assert stored == [round(exact_ns(t)) for t in times]
    for ns, t in zip(stored, times, strict=True):
        assert round(ns / 1000) == round(t * 1e6)  # to the microsecond
    assert remote.reconcile("clock") == times[-1]  # exactly the cached float


def exact_ns(t: float) -> Fraction:
    return Fraction(t) * 10**9


@given(st.floats(min_value=-9e9, max_value=9e9, allow_nan=False))
def test_nanoseconds_are_exact_and_reconcile_compares_like_them(t: float) -> None:
    """seconds_to_ns rounds t's exact value (not the float t * 1e9); ns_to_seconds(ns) is the
    largest float whose nanoseconds are ns at most: a cached t is at or below it exactly when
    InfluxDB holds t at or below ns."""
    ns = seconds_to_ns(t)
    assert ns == round(exact_ns(t))  # Fraction rounds half to even too
    s = ns_to_seconds(ns)
    assert seconds_to_ns(s) <= ns and t <= s
    assert seconds_to_ns(math.nextafter(s, math.inf)) > ns


@given(st.floats(min_value=2.0**20, max_value=2.0**40))
def test_nanoseconds_of_todays_timestamps_are_exact(t: float) -> None:
    """The fast branch of seconds_to_ns (t >= 2**20 s) gives the exact rounding too."""
    assert seconds_to_ns(t) == round(exact_ns(t))
    for near in (math.nextafter(t, 0), math.nextafter(t, math.inf)):
        assert seconds_to_ns(near) == round(exact_ns(near))


def test_nanoseconds_at_the_fast_branch_edges() -> None:
    for t in (2.0**20, math.nextafter(2.0**20, 0), 2.0**20 + 0.5e-9, 2.0**33 + 0.25, T0 + 0.75):
        assert seconds_to_ns(t) == round(exact_ns(t)), t


def test_neighbouring_timestamps_keep_their_own_nanoseconds() -> None:
    """t * 1e9 in floats would put these two on one nanosecond (256 ns steps): InfluxDB would
    keep one point of the two."""
    t = T0 + 0.75
    after = math.nextafter(t, math.inf)
    assert round(t * 1e9) == round(after * 1e9)  # the naive way collides
    assert seconds_to_ns(t) < seconds_to_ns(after)
    assert ns_to_seconds(seconds_to_ns(t)) == t and ns_to_seconds(seconds_to_ns(after)) == after


def test_rfc3339_with_nanoseconds() -> None:
    assert rfc3339_ns("2023-11-14T22:13:20.123456789Z") == 1_700_000_000_123_456_789
    assert rfc3339_ns("2023-11-14T22:13:20Z") == 1_700_000_000_000_000_000
    assert rfc3339_ns("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert rfc3339_ns("1969-12-31T23:59:59.999999999Z") == -1
    with pytest.raises(RemoteError):
        rfc3339_ns("yesterday")


# ----------------------------------------------------------------------------- database


def test_missing_database_is_a_remote_error_that_says_what_to_do(
    influxd: InfluxDBServer,
) -> None:
    assert influxd.admin is not None
    user, password = influxd.admin
    name = "absent_" + uuid.uuid4().hex[:8]
    r = InfluxDBRemote(influxd.url, name, username=user, password=password)
    try:
        with pytest.raises(RemoteError, match=r"database not found.*create_database=True"):
            r.push("m", batch(1.0))
        assert r.reconcile("m") is None and r.stream_schema("m") is None
        r.ensure_stream("m", {})  # creates nothing without create_database
        with pytest.raises(RemoteError):
            r.push("m", batch(1.0))
    finally:
        r.close()


def test_create_database(influxd: InfluxDBServer, cache_path: str) -> None:
    assert influxd.admin is not None
    user, password = influxd.admin
    first, second = ("made_" + uuid.uuid4().hex[:8] for _ in range(2))
    # By ensure_stream (the syncer calls it first)...
    r = InfluxDBRemote(influxd.url, first, username=user, password=password, create_database=True)
    try:
        with Logger(cache_path, remote=r) as lg:
            lg.add_stream("temperature", {"type": "number"})
            lg.insert("temperature", 21.5)
            assert lg.sync().sent == {"temperature": 1}
        assert [p["value"] for p in influxd.points("temperature", first)] == [21.5]
    finally:
        r.close()
    # ...and by push, when the database vanished after the stream was ensured.
    r = InfluxDBRemote(influxd.url, second, username=user, password=password, create_database=True)
    try:
        r.push("m", batch(1.0, 2.0))
        assert [p["value"] for p in influxd.points("m", second)] == [1.0, 2.0]
        influxd.query(f'DROP DATABASE "{second}"')
        r.push("m", batch(3.0))  # 404 database not found: created again, and retried once
        assert [p["value"] for p in influxd.points("m", second)] == [3.0]
    finally:
        r.close()


# ----------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "admin", "password": "WRONGPASSWORD"},
        {"username": "nobody", "password": "NOBODYPASSWORD"},
        {},
        {"token": "admin:WRONGTOKEN"},
    ],
)
def test_refused_credentials_raise_auth_error(
    influxd: InfluxDBServer, db: str, credentials: dict[str, str]
) -> None:
    r = InfluxDBRemote(influxd.url, db, timeout=5, **credentials)
    try:
        if credentials:
            with pytest.raises(AuthError):
                r.ping()  # /ping itself needs no credentials; ping checks them too
        with pytest.raises(AuthError) as info:
            r.push("m", batch(1.0))
        assert info.value.status == 401
        with pytest.raises(AuthError):
            r.reconcile("m")
        for secret in ("WRONGPASSWORD", "NOBODYPASSWORD", "WRONGTOKEN"):
            assert secret not in str(info.value) and secret not in repr(r)
    finally:
        r.close()
    assert influxd.points("m", db) == []


def test_a_user_without_admin_rights_cannot_create_databases(influxd: InfluxDBServer) -> None:
    influxd.query("CREATE USER writer WITH PASSWORD 'writerpw'")
    r = InfluxDBRemote(
        influxd.url,
        "never_" + uuid.uuid4().hex[:8],
        username="writer",
        password="writerpw",
        create_database=True,
    )
    try:
        assert r.ping().startswith("influxdb 1.")
        with pytest.raises(AuthError, match="admin"):
            r.ensure_stream("m", {})
    finally:
        r.close()
        influxd.query("DROP USER writer")


# ----------------------------------------------------------------------------- restart


def test_restart_during_a_big_backlog_loses_nothing(
    tmp_path: Path, cache_path: str, fast_backoff: None
) -> None:
    """20,000 points in batches of 500, background syncer; influxd goes down after 4,500 were
    delivered and comes back: every value arrives, once."""
    server = start_influxd(tmp_path / "influxd")
    pause_at = 10  # the 10th push waits until influxd is down
    reached, resume = threading.Event(), threading.Event()

    class PausingRemote(InfluxDBRemote):
        pushes = 0

        def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
            self.pushes += 1
            if self.pushes == pause_at:
                reached.set()
                resume.wait(10)
            super().push(stream, batch)

    remote = PausingRemote(server.url, "backlog", create_database=True, timeout=5)
    total = 20_000
    try:
        with Logger(
            cache_path, remote=remote, batch_size=500, durability="normal", sync_jitter=0
        ) as lg:
            lg.add_stream("reading", {"type": "number"})
            for start in range(0, total, 5000):
                lg.insert_many("reading", [float(i) for i in range(start, start + 5000)])
            lg.start()
            wait_for(reached.is_set, what="the 10th batch")
            # Part was delivered: the 9th batch's delete runs beside the 10th push (in a
            # thread of its own), so it may finish just after that push began.
            delivered = total - (pause_at - 1) * 500
            wait_for(lambda: len(lg) == delivered, what="the 9th batch's delete")
            server.stop()
            resume.set()  # the 10th batch meets a stopped server
            wait_for(lambda: lg.status().last_error, what="the failure to be noticed")
            assert "connection failed" in (lg.status().last_error or "")
            server.start()
            wait_for(lambda: len(lg) == 0, timeout=30, what="the backlog to drain")
            assert lg.deadletters() == []
        count = server.query('SELECT count("value") FROM "reading"', "backlog")
        assert count["results"][0]["series"][0]["values"][0][1] == total
        values = sorted(p["value"] for p in server.points("reading", "backlog"))
        assert values == [float(i) for i in range(total)]
    finally:
        resume.set()
        remote.close()
        server.stop()


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("http://h:8086",), {}, "needs database="),
        (("http://h:8086", "db"), {"org": "o", "bucket": "b", "token": "t"}, "not both"),
        (("http://h:8086",), {"org": "o", "bucket": "b"}, "token="),
        (("http://h:8086",), {"bucket": "b", "token": "t"}, "org="),
        (("http://h:8086",), {"org": "o", "bucket": "b", "token": "t", "username": "u"}, "token="),
        (("http://h:8086", "db"), {"password": "p"}, "needs username"),
        (("http://h:8086", "db"), {"username": "u", "token": "t"}, "not both"),
        (
            ("http://h:8086",),
            {"org": "o", "bucket": "b", "token": "t", "create_database": True},
            "create",
        ),
        (("h:8086", "db"), {}, "scheme"),
        (("http://u:SECRET@h:8086", "db"), {}, "not credentials in the url"),
        (("http://h:8086", "db"), {"tags": {"time": "x"}}, "'time'"),
        (("http://h:8086", "db"), {"tags": {"k": ""}}, "empty"),
        (("http://h:8086", "db"), {"tags": {"k": "a\nb"}}, "line break"),
        (("http://h:8086", "db"), {"tags": {"k": 1}}, "strings"),
        (("http://h:8086", "db"), {"timeout": 0}, "timeout"),
        (("http://h:8086", ""), {}, "empty"),
    ],
)
def test_configuration_errors(args: tuple[str, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        InfluxDBRemote(*args, **kwargs)
    assert "SECRET" not in str(info.value)


def test_repr_shows_no_secret() -> None:
    r1 = InfluxDBRemote("http://h:8086", "db", username="u", password="PASSWORD")
    r2 = InfluxDBRemote("http://h:8086/", org="o", bucket="b", token="TOKEN")
    try:
        assert repr(r1) == "InfluxDBRemote('http://h:8086', database='db')"
        assert repr(r2) == "InfluxDBRemote('http://h:8086', org='o', bucket='b')"
    finally:
        r1.close()
        r2.close()


# ----------------------------------------------------------------------------- stand-in


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (408, None, TransientRemoteError),
        (429, "3", TransientRemoteError),
        (500, None, TransientRemoteError),
        (503, "7", TransientRemoteError),
        (504, None, TransientRemoteError),
        (400, None, RejectedError),
        (413, None, RejectedError),
        (401, None, AuthError),
        (403, None, AuthError),
        (404, None, RemoteError),
        (409, None, RemoteError),
    ],
)
def test_write_status_mapping(status: int, retry_after: str | None, expected: type) -> None:
    """The statuses InfluxDB does not give on demand, from a loopback stand-in."""
    with HTTPReceiver() as receiver:
        r = InfluxDBRemote(receiver.url, "db", username="u", password="PASSWORD", timeout=5)
        try:
            receiver.fail_next(1, status, retry_after=retry_after)
            with pytest.raises(expected) as info:
                r.push("m", batch(1.0))
            assert type(info.value) is expected and info.value.status == status
            assert getattr(info.value, "retry_after", None) == (
                None if retry_after is None else float(retry_after)
            )
            assert "PASSWORD" not in str(info.value)
        finally:
            r.close()


def test_connection_refused_is_transient_and_a_lost_answer_ambiguous() -> None:
    receiver = HTTPReceiver().start()
    r = InfluxDBRemote(receiver.url, "db", timeout=5)
    try:
        receiver.drop_after_commit(1)
        with pytest.raises(AmbiguousRemoteError):
            r.push("m", batch(1.0))
        receiver.stop()
        with pytest.raises(TransientRemoteError, match="connection failed"):
            r.push("m", batch(1.0))
    finally:
        r.close()
        receiver.stop()


def test_v2_write_and_reconcile_request_shape() -> None:
    with HTTPReceiver() as receiver:
        r = InfluxDBRemote(
            receiver.url, org="my org", bucket="sensors", token="SECRET", tags={"site": "a b"}
        )
        try:
            r.push("room temp", batch(21.5, {"x": "y"}))
            sent = receiver.requests[-1]
            assert sent.path == "/api/v2/write?org=my+org&bucket=sensors&precision=ns"
            assert sent.headers["authorization"] == "Token SECRET"
            assert sent.content.decode() == (  # gzip, decompressed
                "room\\ temp,site=a\\ b value=21.5 1700000000000000000\n"
                'room\\ temp,site=a\\ b x="y" 1700000001000000000'
            )
            receiver.respond(
                "/api/v2/query",
                200,
                b",result,table,_time\r\n,_result,0,2023-11-14T22:13:21Z\r\n\r\n",
                "text/csv",
            )
            assert r.reconcile("room temp") == T0 + 1
            assert r.stream_schema("room temp") == {}
            query = receiver.requests[-1]
            assert query.path == "/api/v2/query?org=my+org"
            flux = json.loads(query.body)["query"]
            assert 'from(bucket: "sensors")' in flux
            assert 'r._measurement == "room temp" and r["site"] == "a b"' in flux
            receiver.respond("/api/v2/query", 200, b"\r\n", "text/csv")
            assert r.reconcile("room temp") is None
            receiver.respond(
                "/api/v2/write",
                404,
                b'{"code":"not found","message":"bucket \\"sensors\\" not found"}',
                "application/json",
            )
            with pytest.raises(RemoteError, match="create the bucket"):
                r.push("m", batch(1.0))
            assert "SECRET" not in repr(r)
        finally:
            r.close()
