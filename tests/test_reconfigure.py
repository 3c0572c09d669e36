"""Changing the configuration of a cache never touches what it holds (issue 19, point 4;
docs/storage.rst, "Changing the configuration of a cache").

A cache is left as a device leaves it: datapoints cached in three streams, a dead letter,
and a batch on the wire when its process was killed (SIGKILL, inside the server's handler).
It is then opened again with one thing changed: an option, the remote (its URL, its kind, its
name), a stream's schema, ``out_of_order`` or properties, a stream no longer registered. Each
change either keeps every cached datapoint and dead letter, and then delivers every datapoint
exactly once (a real loopback server counts them), or is refused with an error naming what
changed, from what to what, and what to do, with the file unchanged (every table compared).
Decisions: a lower limit or a shorter ``max_age`` drops or expires nothing at open (the next
insert or pass does, counted); a remote left out of ``remotes=`` keeps what it holds (a
warning and ``status()`` say so); a removed remote's dead letters stay; a new schema the
cached datapoints do not fit is refused.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connectorsync import (
    ConfigurationError,
    HTTPRemote,
    InfluxDBRemote,
    Logger,
    MQTTRemote,
    SchemaError,
)
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTSubscriber
from connectorsync.testing.probe import CacheProbe
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import PYTHON, ROOT, alice_server, child_env, dump, wait_for
from .test_migration import make_connectordb_cache

N = 20  # datapoints per stream
STREAMS = {"a": {"type": "number"}, "b": {"type": "string"}, "c": {"type": "integer"}}
T0 = time.time() - 3600.0  # an hour ago: old enough for a shorter max_age
DEAD = -1.0  # the value the server refuses: stream a's dead letter

#: The child: makes the cache, gets a dead letter, caches N datapoints per stream, then
#: syncs until the parent kills it with its first batch held on the wire.
PREPARE = """
import sys
from connectorsync import Logger
path, url, key, t0, n = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
def init(lg):
    lg.apikey, lg.serverurl = key, url
    lg.addStream("a", {"type": "number"})
    lg.addStream("b", {"type": "string"})
    lg.addStream("c", {"type": "integer"})
lg = Logger(path, on_create=init)
lg.insert("a", -1.0, timestamp=t0)
lg.sync()
lg.insert_many({
    "a": [{"t": t0 + 1 + i, "d": float(i)} for i in range(n)],
    "b": [{"t": t0 + 1 + i, "d": str(i)} for i in range(n)],
    "c": [{"t": t0 + 1 + i, "d": i} for i in range(n)],
})
print("ready", flush=True)
lg.sync()
"""


def expected(stream: str) -> list[Any]:
    return {"a": [float(i) for i in range(N)], "b": [str(i) for i in range(N)]}.get(
        stream, list(range(N))
    )


class HeldOnTheWire:
    """The server refuses :data:`DEAD` (a dead letter) and holds the first other push inside
    its handler until :meth:`release`; :attr:`arrived` is set once one is held."""

    def __init__(self, server: ConnectorDBServer):
        self.arrived, self._release = threading.Event(), threading.Event()
        self.holding = False
        server.reject(self._judge)

    def _judge(self, path: str, point: dict[str, Any]) -> bool:
        if point["d"] == DEAD:
            return True
        if self.holding:
            self.arrived.set()
            assert self._release.wait(30), "never released"
        return False

    def release(self) -> None:
        self._release.set()


def prepare(path: str, server: ConnectorDBServer) -> None:
    """Leave at ``path`` a cache with 3N datapoints, one dead letter and a batch in flight."""
    hold = HeldOnTheWire(server)
    args = [path, server.url, server.apikey, repr(T0), str(N)]  # type: ignore[attr-defined]
    child = subprocess.Popen(
        [PYTHON, "-c", PREPARE, *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        hold.holding = True
        assert hold.arrived.wait(30), "the child never pushed"
        with CacheProbe(path) as probe:
            wait_for(lambda: probe.inflight("a") is not None, what="a batch in flight")
    finally:
        child.kill()  # SIGKILL: the batch stays in flight in the file
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        hold.holding = False
        hold.release()
    # The server stores the batch its dead client sent: reopening must not send it again.
    wait_for(lambda: len(server.datapoints("alice/sensor/a")) == N, what="the held batch")
    server.reject(lambda path, point: point["d"] == DEAD)


@pytest.fixture
def prepared(cache_path: str, server: ConnectorDBServer) -> str:
    prepare(cache_path, server)
    return cache_path


def assert_all_kept(lg: Logger) -> None:
    """Every datapoint cached, the dead letter kept, nothing dropped or expired."""
    assert len(lg) == 3 * N
    for stream in STREAMS:
        assert [p["d"] for p in lg.export(stream)] == expected(stream)
    assert [(d.stream, d.d) for d in lg.deadletters()] == [("a", DEAD)]
    status = lg.status()
    assert (status.dropped, status.expired) == (0, 0)


def drain(lg: Logger) -> None:
    for _ in range(5):
        if len(lg) == 0:
            return
        lg.sync()
    assert len(lg) == 0, lg.status()


def assert_delivered_once(server: ConnectorDBServer, url: str | None = None) -> None:
    for stream in STREAMS:
        got = [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")]
        assert got == expected(stream), stream


# --------------------------------------------------------------------------- options

OPTIONS: list[dict[str, Any]] = [
    {"durability": "normal"},
    {"durability": "batched"},
    {"durability": "full"},
    {"batch_size": 3},  # smaller than the batch in flight
    {"batch_size": 3, "max_batch_bytes": 64},
    {"max_cached": 5},  # far below what is cached: nothing goes at open
    {"max_cached": 5, "on_full": "drop_oldest"},
    {"max_cache_bytes": 4096, "on_full": "drop_oldest"},
    {"on_full": "drop_oldest"},
    {"syncperiod": 1.0, "sync_threshold": 1, "sync_jitter": 0.0},
    {"live_first": False, "max_rate": 1000.0, "http_timeout": 5.0},
    {"commit_interval": 1.0, "durability": "batched"},
]


def case_id(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("options", OPTIONS, ids=case_id)
def test_other_options_keep_everything_and_deliver_it_once(
    prepared: str, server: ConnectorDBServer, options: dict[str, Any]
) -> None:
    with Logger(prepared, **options) as lg:
        assert_all_kept(lg)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    assert_delivered_once(server)
    with Logger(prepared) as lg:  # and the options were kept for the next open
        for name, value in options.items():
            assert getattr(lg, name) == value


def assert_all_kept_after_delivery(lg: Logger) -> None:
    assert [(d.stream, d.d) for d in lg.deadletters()] == [("a", DEAD)]
    status = lg.status()
    assert (status.dropped, status.expired) == (0, 0)


def test_a_lower_max_cached_makes_room_only_at_the_next_insert(
    prepared: str, server: ConnectorDBServer
) -> None:
    """Opening over the limit drops nothing; ``reject`` then refuses an insert (the cache
    stays whole); ``drop_oldest`` drops the oldest at rest to make room, counted, never the
    batch in flight."""
    with Logger(prepared, max_cached=3 * N - 1) as lg:
        assert_all_kept(lg)
        with pytest.raises(Exception, match="max_cached"):
            lg.insert("b", "more")
        assert_all_kept(lg)
    with Logger(prepared, max_cached=3 * N - 1, on_full="drop_oldest") as lg:
        assert_all_kept(lg)
        lg.insert("b", "more", timestamp=T0 + N + 1)
        status = lg.status()
        assert status.dropped == 2 and len(lg) == 3 * N - 1
        kept_a = [p["d"] for p in lg.export("a")]
        assert kept_a == expected("a")  # a's rows are the batch in flight: never dropped
        drain(lg)
        dropped = lg.status().dropped
    delivered = sum(len(server.datapoints(f"alice/sensor/{s}")) for s in STREAMS)
    assert delivered + dropped == 3 * N + 1


def test_a_shorter_max_age_expires_at_the_next_pass_counted(
    prepared: str, server: ConnectorDBServer
) -> None:
    """Opening with a max_age shorter than the backlog's age expires nothing at open; the
    next pass (or insert) does, counted in status().expired, never the batch in flight."""
    flying = in_flight(prepared)
    assert flying["a"] == N
    with Logger(prepared, max_age=60.0) as lg:
        assert_all_kept(lg)  # nothing at open
        lg.sync()
        assert lg.status().expired == 3 * N - sum(flying.values())
        assert len(lg) == 0
        assert [(d.stream, d.d) for d in lg.deadletters()] == [("a", DEAD)]
    for stream in STREAMS:  # the batches in flight are delivered, once
        got = [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")]
        assert got == expected(stream)[: flying[stream]]


def in_flight(path: str) -> dict[str, int]:
    """How many datapoints of each stream are in a batch in flight."""
    with CacheProbe(path) as probe:
        counts = {}
        for stream in STREAMS:
            span = probe.inflight(stream)
            ids = [i for i, _, _ in probe.rows(stream)]
            counts[stream] = 0 if span is None else sum(span[0] <= i <= span[1] for i in ids)
        return counts


# --------------------------------------------------------------------------- remotes


@pytest.fixture
def other_server() -> Iterator[ConnectorDBServer]:
    with alice_server() as srv:
        yield srv


def test_another_url_for_the_same_remote_takes_everything(
    prepared: str, server: ConnectorDBServer, other_server: ConnectorDBServer
) -> None:
    """The default remote moved (another serverurl and apikey): the new server gets every
    cached datapoint once, the batch in flight to the old one included (its outcome there
    says nothing about the new one), its streams created there first."""
    key = other_server.apikey  # type: ignore[attr-defined]
    with Logger(prepared, serverurl=other_server.url, apikey=key) as lg:
        assert_all_kept(lg)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    assert_delivered_once(other_server)


def items(receiver: HTTPReceiver, stream: str) -> list[Any]:
    return [item["d"] for item in receiver.items(f"/r/{stream}")]


def http(receiver: HTTPReceiver) -> HTTPRemote:
    return HTTPRemote(receiver.url + "/r/{stream}", timeout=5)


@pytest.mark.parametrize("how", ["remote=", "remotes={'default': ...}", "batch_size=3"])
def test_another_kind_of_remote_under_the_same_name_takes_everything(
    prepared: str, receiver: HTTPReceiver, how: str
) -> None:
    """ConnectorDB (from the settings) -> HTTP, both named ``default`` (and with batches
    smaller than the one in flight): the backlog, the batch in flight to ConnectorDB
    included, goes to the HTTP remote, once each."""
    given = http(receiver)
    kwargs: dict[str, Any] = (
        {"remotes": {"default": given}} if how.startswith("remotes") else {"remote": given}
    )
    if how == "batch_size=3":
        kwargs["batch_size"] = 3
    with Logger(prepared, **kwargs) as lg:
        assert_all_kept(lg)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    for stream in STREAMS:
        assert items(receiver, stream) == expected(stream)


def test_a_remote_not_given_keeps_what_it_holds_and_says_so(
    prepared: str,
    server: ConnectorDBServer,
    receiver: HTTPReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``remotes={"cloud": ...}`` on a cache whose ``default`` holds a backlog: cloud takes
    the backlog, default keeps holding it (status() shows it, a warning says it) until a
    Logger given it delivers it, or remove_remote releases it."""
    cloud = {"cloud": http(receiver)}
    with caplog.at_level(logging.WARNING), Logger(prepared, remotes=cloud) as lg:
        assert_all_kept(lg)
        drain_remote(lg, "cloud")
        assert lg.status().remotes["default"].held == 3 * N
        assert len(lg) == 3 * N and lg.status().remotes["default"].deadletters == 1
    assert "'default' holds 60 datapoints" in caplog.text
    for stream in STREAMS:
        assert items(receiver, stream) == expected(stream)
    with Logger(prepared) as lg:  # the default remote again: it delivers what it held
        drain(lg)
        assert_all_kept_after_delivery(lg)
    assert_delivered_once(server)


def drain_remote(lg: Logger, name: str) -> None:
    for _ in range(5):
        if lg.status().remotes[name].held == 0:
            return
        lg.sync()
    assert lg.status().remotes[name].held == 0


def test_a_named_remote_left_out_keeps_what_it_holds_and_says_so(
    cache_path: str, receiver: HTTPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Of ``remotes={"x", "y"}``, reopened with ``{"x"}`` only: y keeps its backlog and its
    dead letter (status() and a warning say so) until it is given again, which delivers
    them, or removed with remove_remote (which says how many it releases)."""
    x, y = (HTTPRemote(receiver.url + f"/{n}/{{stream}}", timeout=5) for n in "xy")
    receiver.reject(lambda path, item: path.startswith("/y/") and item["d"] == -1)
    with Logger(cache_path, remotes={"x": x, "y": y}) as lg:
        lg.add_stream("s", {"type": "integer"})
        lg.insert("s", -1)
        lg.sync()
        assert lg.status().remotes["y"].deadletters == 1
        receiver.fail_next(10**6, 503, path="/y/")
        lg.insert_many("s", [0, 1, 2])
        lg.sync()
        assert lg.status().remotes["y"].held == 3
    with caplog.at_level(logging.WARNING), Logger(cache_path, remotes={"x": x}) as lg:
        lg.insert("s", 3)
        lg.sync()
        status = lg.status()
        assert status.remotes["y"].held == 4 and status.remotes["y"].deadletters == 1
        assert len(lg) == 4 and len(lg.deadletters()) == 1
    assert "remote 'y' holds 3 datapoints and 1 dead letters" in caplog.text
    assert "give it (remotes=, add_remote) to deliver them, or remove_remote('y')" in caplog.text
    receiver.clear_faults()
    with Logger(cache_path, remotes={"x": x, "y": y}) as lg:
        lg.sync()
        assert len(lg) == 0 and len(lg.deadletters()) == 1
    assert [item["d"] for item in receiver.items("/y/s")] == [0, 1, 2, 3]
    caplog.clear()
    with caplog.at_level(logging.WARNING), Logger(cache_path, remotes={"x": x}) as lg:
        assert lg.remove_remote("y") == 0
        assert lg.retry_deadletters() == 0  # x had it: y's letter is not x's to take
        assert lg.retry_deadletters(restamp=True) == 0
        assert [letter.d for letter in lg.deadletters()] == [-1]
        lg.sync()
    assert "1 dead letters of remote 'y' stay at rest: that remote was removed" in caplog.text
    assert [item["d"] for item in receiver.items("/x/s")] == [-1, 0, 1, 2, 3]


# --------------------------------------------------------------------------- streams

#: What a program registers at its next start, as ``(stream, schema, keywords)``.
STREAM_CHANGES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("a", {"type": "number"}, {"out_of_order": "restamp"}),
    ("b", {"type": "string"}, {"nickname": "B", "description": "other properties"}),
    ("b", {"type": ["string", "number"]}, {}),  # wider: every cached value fits
    ("c", {}, {}),  # any JSON value
    ("c", {"type": "integer", "minimum": 0}, {}),
]


@pytest.mark.parametrize(("stream", "schema", "keywords"), STREAM_CHANGES)
@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
def test_stream_changes_keep_everything_and_deliver_it_once(
    prepared: str,
    server: ConnectorDBServer,
    stream: str,
    schema: dict[str, Any],
    keywords: dict[str, Any],
    online: bool,
) -> None:
    """A stream registered again with other properties, ``out_of_order`` or a schema its
    cached datapoints fit, by a program that registers no other stream (the others stay
    registered in the cache): everything is kept and delivered once."""
    if not online:
        server.fail_next(10**6, 503)
    with Logger(prepared) as lg:
        lg.add_stream(stream, schema, **keywords)
        assert_all_kept(lg)
        server.clear_faults()
        server.reject(lambda path, point: point["d"] == DEAD)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    assert_delivered_once(server)


@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
@pytest.mark.parametrize("force", [False, True], ids=["add_stream", "addStream_force"])
def test_a_schema_the_cached_datapoints_do_not_fit_is_refused(
    prepared: str, server: ConnectorDBServer, online: bool, force: bool
) -> None:
    """Stream b holds strings; registered again as numbers, it is refused, saying from what
    to what, which datapoint does not fit, and what to do; the file is unchanged and the
    remote was not asked. Once b's datapoints are delivered, the new schema is taken."""
    if not online:
        server.fail_next(10**6, 503)
    with Logger(prepared) as lg:
        register = lg.addStream_force if force else lg.add_stream
        before = dump(prepared)
        asked = len(server.requests)
        with pytest.raises(SchemaError) as refused:
            register("b", {"type": "number"})
        message = str(refused.value)
        assert "stream 'b' cannot change its schema from" in message
        assert '{"type":"string"} to {"type":"number"}' in message
        assert f"its cache holds {N} datapoints not delivered yet" in message
        assert "got '0' (str)" in message and "Nothing was changed" in message
        assert "sync() until status().streams['b'].cached is 0" in message
        assert dump(prepared) == before and len(server.requests) == asked
        assert lg.status().streams["b"].cached == N
        server.clear_faults()
        server.reject(lambda path, point: point["d"] == DEAD)
        drain(lg)
        assert_delivered_once(server)
        register("b", {"type": "number"})  # nothing cached of b now: not refused


def test_another_kind_of_remote_influxdb_takes_everything(
    prepared: str, influxd: InfluxDBServer
) -> None:
    """ConnectorDB (from the settings) -> InfluxDB, named ``default``: every cached
    datapoint, the batch in flight to ConnectorDB included, is written once."""
    assert influxd.admin is not None
    db = "reconf_" + uuid.uuid4().hex[:12]
    influxd.create_database(db)
    user, password = influxd.admin
    remote = InfluxDBRemote(influxd.url, db, username=user, password=password, timeout=5)
    with Logger(prepared, remote=remote) as lg:
        assert_all_kept(lg)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    for stream in STREAMS:
        assert [row["value"] for row in influxd.points(stream, db)] == expected(stream)


# --------------------------------------------------------------------------- an older cache

OLDER_OPENS: list[dict[str, Any]] = [
    {"max_cached": 5, "on_full": "drop_oldest", "durability": "normal"},
    {"max_cached": 5, "batch_size": 2, "durability": "batched"},
    {"max_age": 365 * 86400.0, "syncperiod": 5.0},
]


@pytest.mark.parametrize("options", OLDER_OPENS, ids=case_id)
def test_an_older_cache_opened_with_other_options_keeps_everything(
    cache_path: str, server: ConnectorDBServer, options: dict[str, Any]
) -> None:
    """A cache connectordb 0.3.5 wrote (the oldest schema), opened with options it never
    had: it migrates, every datapoint stays (none dropped at open, whatever the limit),
    and each is delivered once."""
    rows = make_connectordb_cache(cache_path, server.apikey, server.url)  # type: ignore[attr-defined]
    with Logger(cache_path, **options) as lg:
        assert len(lg) == len(rows) == 51
        assert (lg.status().dropped, lg.status().expired) == (0, 0)
        drain(lg)
        assert (lg.status().dropped, lg.status().expired) == (0, 0)
    for stream in ("temperature", "status"):
        got = [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")]
        assert got == [v for s, _, v in rows if s == stream]


def test_another_url_is_what_another_process_delivers_to(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """A named remote given with another URL, the program stopped before any pass:
    ``connectorsync sync`` (another process, building the remotes the cache records)
    delivers its backlog to the new URL, not the old one. (The default remote is the one
    its last pass used: see ``test_cli_remotes.py``, the remote a pass used last.)"""
    old, new = (HTTPRemote(receiver.url + f"/{p}/{{stream}}", timeout=5) for p in ("old", "new"))
    receiver.fail_next(10**6, 503, path="/old/")
    with Logger(cache_path, remotes={"x": old}) as lg:
        lg.add_stream("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
        lg.sync()
    with Logger(cache_path, remotes={"x": new}) as lg:
        lg.insert_many("s", [2])
    receiver.clear_faults()
    sync = subprocess.run(
        [PYTHON, "-m", "connectorsync", "sync", cache_path],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert sync.returncode == 0, sync.stderr
    assert [i["d"] for i in receiver.items("/new/s")] == [0, 1, 2]
    assert receiver.items("/old/s") == []


# --------------------------------------------------------------------------- refused opens

REFUSED_OPENS: list[tuple[dict[str, Any], str]] = [
    ({"max_cached": 0}, "max_cached"),
    ({"durability": "sometimes"}, "durability"),
    ({"on_full": "thin_out"}, "on_full"),
    ({"max_age": -5}, "max_age"),
    ({"batch_size": 2, "hold_unsynced": True}, "hold_unsynced=True holds datapoints until"),
    ({"max_cahced": 5}, "unknown option"),
]


@pytest.mark.parametrize(("options", "named"), REFUSED_OPENS, ids=[n for _, n in REFUSED_OPENS])
def test_a_refused_open_names_the_option_and_changes_nothing(
    prepared: str, server: ConnectorDBServer, options: dict[str, Any], named: str
) -> None:
    """Options refused at open (a bad value, a contradiction, a misspelt name) say which and
    leave the file as it was, the batch in flight and the dead letter included; the next
    open delivers everything once."""
    before = dump(prepared)
    with pytest.raises(ConfigurationError, match=named):
        Logger(prepared, **options)
    assert dump(prepared) == before
    with Logger(prepared) as lg:
        assert_all_kept(lg)
        assert lg.batch_size == 5000 and lg.max_cached is None
        drain(lg)
    assert_delivered_once(server)


def test_another_kind_of_remote_mqtt_takes_everything(
    prepared: str, broker: MosquittoBroker, subscriber: MQTTSubscriber
) -> None:
    """ConnectorDB (from the settings) -> MQTT (at least once), named ``default``: every
    cached datapoint, the batch in flight to ConnectorDB included, is published once."""
    remote = MQTTRemote(broker.url, topic="dev/{stream}", timeout=5)
    with Logger(prepared, remote=remote) as lg:
        assert_all_kept(lg)
        drain(lg)
        assert_all_kept_after_delivery(lg)
    subscriber.flush()
    for stream in STREAMS:
        got = [json.loads(payload)["d"] for _, payload in subscriber.messages(f"dev/{stream}")]
        assert got == expected(stream)
