"""InfluxDBRemote's tags per stream (``stream_tags=``) and integer fields
(``integer_streams=``), against a real ``influxd`` where the server has a say.

Without ``influxd`` the tests that need it skip, saying how to install it; with
``CONNECTORSYNC_REQUIRE_INFLUXDB=1`` (CI) they fail instead.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger
from connectorsync.errors import ConfigurationError, RejectedError
from connectorsync.remotes.base import Datapoint
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.testing.influx import InfluxDBServer

from .test_remote_contract import AnswerDroppingProxy

T0 = 1_700_000_000.0
URL = "http://127.0.0.1:9"  # nothing is sent in the tests that use it


@pytest.fixture
def db(influxd: InfluxDBServer) -> str:
    name = "tags_" + uuid.uuid4().hex[:12]
    influxd.create_database(name)
    return name


def make_remote(influxd: InfluxDBServer, db: str, url: str = "", **kwargs: Any) -> InfluxDBRemote:
    assert influxd.admin is not None
    user, password = influxd.admin
    return InfluxDBRemote(
        url or influxd.url, db, username=user, password=password, timeout=5, **kwargs
    )


def batch(*values: Any, first_id: int = 1) -> list[Datapoint]:
    return [(first_id + i, T0 + first_id + i, json.dumps(v)) for i, v in enumerate(values)]


def rows(influxd: InfluxDBServer, db: str, q: str) -> list[dict[str, Any]]:
    result = influxd.query(q, db)["results"][0]
    out = []
    for series in result.get("series") or []:
        for values in series["values"]:
            out.append(dict(zip(series["columns"], values, strict=True)))
    return out


def field_types(influxd: InfluxDBServer, db: str, measurement: str) -> dict[str, str]:
    answer = influxd.query(f'SHOW FIELD KEYS FROM "{measurement}"', db)
    return dict(answer["results"][0]["series"][0]["values"])


def count(influxd: InfluxDBServer, db: str, measurement: str) -> int:
    found = rows(influxd, db, f'SELECT count("value") FROM "{measurement}"')
    return int(found[0]["count"]) if found else 0


# ----------------------------------------------------------------------------- tags


def test_stream_tags_are_stored_and_queryable(influxd: InfluxDBServer, db: str) -> None:
    remote = make_remote(
        influxd,
        db,
        tags={"site": "north", "device": "d1"},
        stream_tags={"kitchen": {"room": "kitchen, east=1"}, "hall": {"site": "south"}},
    )
    try:
        remote.push("kitchen", batch(20.5, 21.0))
        remote.push("hall", batch(18.0))
        remote.push("garage", batch(5.0))
    finally:
        remote.close()
    found = rows(influxd, db, """SELECT * FROM "kitchen" WHERE "room" = 'kitchen, east=1'""")
    assert [(r["value"], r["room"], r["site"], r["device"]) for r in found] == [
        (20.5, "kitchen, east=1", "north", "d1"),
        (21.0, "kitchen, east=1", "north", "d1"),
    ]
    # A stream's own value of a tag the remote has too wins; other streams keep the remote's.
    assert [(r["site"], r["device"]) for r in rows(influxd, db, 'SELECT * FROM "hall"')] == [
        ("south", "d1")
    ]
    assert [r["site"] for r in rows(influxd, db, 'SELECT * FROM "garage"')] == ["north"]
    tag_keys = influxd.query('SHOW TAG KEYS FROM "kitchen"', db)["results"][0]["series"][0]
    assert sorted(v[0] for v in tag_keys["values"]) == ["device", "room", "site"]


def test_reconcile_looks_only_at_the_streams_own_series(influxd: InfluxDBServer, db: str) -> None:
    mine = make_remote(influxd, db, stream_tags={"s": {"room": "a"}})
    other = make_remote(influxd, db, stream_tags={"s": {"room": "b"}})
    try:
        mine.push("s", batch(1.0))
        other.push("s", batch(2.0, 3.0, first_id=5))
        assert mine.reconcile("s") == T0 + 1
        assert other.reconcile("s") == T0 + 6
    finally:
        mine.close()
        other.close()


def test_a_resend_after_a_lost_answer_stores_nothing_twice(
    influxd: InfluxDBServer, db: str, cache_path: str
) -> None:
    """A stream's tags are the remote's settings: the batch sent again after a lost answer
    carries the same ones and overwrites itself; counted on the server."""
    proxy = AnswerDroppingProxy(influxd.port)
    remote = make_remote(
        influxd,
        db,
        url=proxy.url,
        stream_tags={"count": {"room": "hall"}},
        integer_streams=["count"],
    )
    lg = Logger(cache_path, remote=remote)
    try:
        lg.add_stream("count", {"type": "integer"})
        lg.insert_many("count", list(range(10)))
        proxy.lose_next_answers(1)
        report = lg.sync()
        assert not report.ok  # stored, but the answer was lost
        assert count(influxd, db, "count") == 10
        lg.insert_many("count", [10, 11])
        report = lg.sync()
        assert report.ok, report.errors
        assert report.sent == {"count": 12} and len(lg) == 0
    finally:
        lg.close()
        proxy.close()
    assert count(influxd, db, "count") == 12
    found = rows(influxd, db, """SELECT "value" FROM "count" WHERE "room" = 'hall'""")
    assert [r["value"] for r in found] == list(range(12))
    assert field_types(influxd, db, "count") == {"value": "integer"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stream_tags": {"s": {"room": "a\\"}}}, r"stream 's'.*tag value 'a\\\\'.*backslash"),
        ({"stream_tags": {"s": {"room": "two\nlines"}}}, "stream 's'.*line break"),
        ({"stream_tags": {"s": {"": "x"}}}, "stream 's'.*tag key '' is empty"),
        ({"stream_tags": {"s": {"room": 3}}}, "stream 's'.*non-empty strings; got 'room': 3"),
        ({"stream_tags": {"s": {"_field": "x"}}}, "stream 's'.*'_field' is InfluxDB's own"),
        ({"stream_tags": {"s": {"time": "x"}}}, "tag key 'time' is InfluxDB's own"),
        ({"stream_tags": {"s": "room=a"}}, "stream 's' needs a dict of tags"),
        ({"stream_tags": ["s"]}, "stream_tags must be a dict of stream name"),
        ({"stream_tags": {"#s": {"a": "b"}}}, "stream '#s' cannot be an InfluxDB measurement"),
        ({"tags": {"_measurement": "x"}}, "'_measurement' is InfluxDB's own"),
        ({"integer_streams": "count"}, "integer_streams must be a list of stream names"),
        ({"integer_streams": [3]}, "a stream name is a str; got 3"),
        ({"integer_streams": ["a\\"]}, "stream 'a\\\\\\\\' cannot be an InfluxDB measurement"),
    ],
)
def test_bad_tags_and_streams_are_refused_at_construction(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        InfluxDBRemote(URL, "db", **kwargs)


def test_stream_tags_and_integer_streams_are_in_the_configuration() -> None:
    remote = InfluxDBRemote(
        URL,
        "db",
        tags={"site": "n"},
        stream_tags={"a b": {"room": "x y"}},
        integer_streams=["count", "a b"],
    )
    config = remote.to_config()
    assert config["stream_tags"] == {"a b": {"room": "x y"}}
    assert config["integer_streams"] == ["a b", "count"]
    again = InfluxDBRemote.from_config(json.loads(json.dumps(config)))
    assert again.to_config() == config
    assert again.tags_of("a b") == {"site": "n", "room": "x y"}
    assert again.tags_of("other") == {"site": "n"}
    assert again.encode("a b", [(1, T0, "3")]) == (
        "a\\ b,room=x\\ y,site=n value=3i 1700000000000000000"
    )
    config["stream_tags"]["a b"]["room"] = "changed"  # a copy: the remote keeps its own
    assert remote.tags_of("a b")["room"] == "x y"
    # The configuration of a remote without them stays as it was.
    assert "stream_tags" not in InfluxDBRemote(URL, "db").to_config()


# ----------------------------------------------------------------------------- integers


def test_integer_streams_store_integers_and_number_streams_floats(
    influxd: InfluxDBServer, db: str
) -> None:
    remote = make_remote(influxd, db, integer_streams=["count"])
    try:
        remote.push("count", batch(1, -7, 2**62, 4.0))
        remote.push("level", batch(1, 2.5))
    finally:
        remote.close()
    assert field_types(influxd, db, "count") == {"value": "integer"}
    assert field_types(influxd, db, "level") == {"value": "float"}
    assert [r["value"] for r in rows(influxd, db, 'SELECT "value" FROM "count"')] == [
        1,
        -7,
        2**62,
        4,
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (21.5, "21.5 is not a whole number"),
        (2**63, "not a whole number from -9223372036854775808 to 9223372036854775807"),
        ("3", '"3" is not a whole number'),
        (True, "true is not a whole number"),
    ],
)
def test_an_integer_stream_refuses_what_is_not_a_whole_number(value: Any, why: str) -> None:
    remote = InfluxDBRemote(URL, "db", integer_streams=["count"])
    with pytest.raises(RejectedError, match=f"stream 'count'.*{why}"):
        remote.encode("count", batch(1, value))


def test_an_integer_stream_with_another_schema_is_refused_at_add_stream(
    influxd: InfluxDBServer, db: str, tmp_path: Path
) -> None:
    remote = make_remote(influxd, db, integer_streams=["count"])
    with Logger(str(tmp_path / "c.db"), remote=remote) as lg:
        with pytest.raises(ConfigurationError, match=r"stream 'count'.*\{\"type\": \"number\"\}"):
            lg.add_stream("count", {"type": "number"})
        assert "count" not in lg.streams
        lg.add_stream("count", {"type": "integer"})
        lg.insert("count", 3)
        assert lg.sync().sent == {"count": 1}
    assert field_types(influxd, db, "count") == {"value": "integer"}
