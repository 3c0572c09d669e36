"""Priorities in sending (issue 19, point 2; ``connectorsync/priority.py``): each lane of a
pass goes highest priority first, ``max_rate`` is spent on higher priorities first, an
ordered remote gets each stream in order whatever the priorities, each remote of a fan-out
does the same, and a low priority is never starved by a high one."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from connectorsync import HTTPRemote, Logger
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import wait_for

T0 = 1_600_000_000.0  # the outage's first timestamp: long before now
#: The backlog of the issue's test: 1,000,000 datapoints in ``make soak`` (about 30 s on two
#: busy cores, most of it building the backlog); in ``make test`` a tenth (same test), which
#: still takes several passes of 0.25 s to drain.
BIG_BACKLOG = 1_000_000 if os.environ.get("CONNECTORSYNC_SOAK") == "1" else 100_000
PING = ("GET", "/api/v1/?q=this")  # how each pass to ConnectorDB begins


def _data_push(stream: str) -> tuple[str, str]:
    return ("POST", f"/api/v1/crud/alice/sensor/{stream}/data")


def _http(receiver: HTTPReceiver, name: str = "r") -> HTTPRemote:
    return HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=10)


def _streams_in_order(receiver: HTTPReceiver, name: str = "r") -> list[str]:
    """The stream of each data request to the remote ``name``, in arrival order."""
    prefix = f"/{name}/"
    return [r.path[len(prefix) :] for r in receiver.requests if r.path.startswith(prefix)]


def test_an_alarm_inserted_during_a_large_drain_goes_in_the_next_pass(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """The issue's test. After an outage, a backlog of 1,000,000 datapoints of priority 0
    (100,000 in ``make test``) drains to ConnectorDB (an ordered remote) in background
    passes of ``syncperiod`` = 0.25 s; an alarm (priority 9) is inserted while it drains.

    "Within one pass", by what the server receives (each pass begins with a ping; what is
    cached when the ping has been answered is that pass's): the alarm's push comes before
    the second ping after its insert, it is the first data push of its pass, and the
    backlog's rest comes after it. Before priorities, an ordered remote's pass sent all
    that it began with: the alarm waited for the whole backlog."""
    path = str(tmp_path / "outage.db")
    with Logger(path, durability="normal") as lg:  # offline: the outage's backlog
        lg.addStream_force("temp", {"type": "number"})
        for start in range(0, BIG_BACKLOG, 100_000):
            lg.insert_many(
                "temp", [{"t": T0 + (start + i) * 1e-3, "d": 1.0} for i in range(100_000)]
            )
    apikey: str = server.apikey  # type: ignore[attr-defined]
    with Logger(path, apikey=apikey, serverurl=server.url, durability="normal") as lg:
        lg.addStream_force("alarm", {"type": "integer"}, priority=9)
        lg.syncperiod, lg.sync_jitter = 0.25, 0
        lg.start()
        temp = _data_push("temp")
        wait_for(lambda: server.requests.count(temp) >= 2, timeout=60, what="the drain")
        inserted_at = len(server.requests)
        lg.insert("alarm", 1)
        wait_for(lambda: _data_push("alarm") in server.requests, timeout=60, what="the alarm")
        wait_for(lambda: len(lg) == 0, timeout=300, what="the backlog drained")
    requests = server.requests
    alarm_at = requests.index(_data_push("alarm"))
    assert alarm_at > inserted_at
    pings = [i for i, r in enumerate(requests) if r == PING and i > inserted_at]
    assert alarm_at < pings[1], "the alarm went in the first pass that began after it"
    pushes = [r for r in requests[:alarm_at] if r[1].endswith("/data") or r == PING]
    assert pushes[-1] == PING, "the alarm is the first data push of its pass"
    assert temp in requests[alarm_at:], "the backlog's rest came after the alarm"
    assert len(server.datapoints("alice/sensor/temp")) == BIG_BACKLOG
    assert [p["d"] for p in server.datapoints("alice/sensor/alarm")] == [1]


def test_max_rate_is_spent_on_the_higher_priority_first(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """``max_rate`` 40/s: the backlog goes in batches of at most 40, paced; the alarm's
    datapoints take the tokens first, though "temp" was added first (without priorities
    the streams took turns: temp, alarm, temp, ...)."""
    with Logger(cache_path, remote=_http(receiver), batch_size=100) as lg:
        lg.addStream_force("temp", {"type": "integer"})
        lg.addStream_force("alarm", {"type": "integer"}, priority=9)
        lg.insert_many("temp", list(range(80)))
        lg.insert_many("alarm", list(range(60)))
        lg.max_rate = 40.0
        report = lg.sync()
        assert report.ok and report.sent == {"temp": 80, "alarm": 60}
    assert _streams_in_order(receiver) == ["alarm", "alarm", "temp", "temp"]
    assert all(len(body) <= 40 for body in receiver.bodies("/r/temp") + receiver.bodies("/r/alarm"))


def test_an_ordered_remote_gets_each_stream_in_order_whatever_the_priorities(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """Three streams of priorities 0, 5 and 9, their datapoints interleaved in time, drained
    by background passes that their time box cuts short (each request takes 20 ms, the
    backlog has 100 ms a pass) while new datapoints keep coming: ConnectorDB (which refuses
    an older timestamp after a newer one) gets every datapoint of each stream, in order;
    the first data it gets is the highest priority's."""
    apikey: str = server.apikey  # type: ignore[attr-defined]
    names = {"low": 0, "mid": 5, "high": 9}
    with Logger(cache_path, apikey=apikey, serverurl=server.url, batch_size=10) as lg:
        for name, priority in names.items():
            lg.addStream_force(name, {"type": "integer"}, priority=priority)
        for i in range(100):
            for name in names:
                lg.insert(name, i)
        server.delay(0.02)
        lg.syncperiod, lg.sync_jitter = 0.1, 0
        lg.start()
        for i in range(100, 150):
            for name in names:
                lg.insert(name, i)
            time.sleep(0.005)
        wait_for(lambda: len(lg) == 0, timeout=120, what="everything delivered")
        server.delay(0)
    for name in names:
        assert [p["d"] for p in server.datapoints(f"alice/sensor/{name}")] == list(range(150))
    pushes = [r for r in server.requests if r[1].endswith("/data")]
    assert pushes[0] == _data_push("high")


def test_the_live_lane_goes_highest_priority_first(cache_path: str, receiver: HTTPReceiver) -> None:
    """A backlog (seen by a failed pass) then new datapoints in two streams: the live lane
    sends the high priority's new data, then the low one's, then the backlog the same way.
    Without priorities the streams took turns in each lane ("low" was added first)."""
    with Logger(cache_path, remote=_http(receiver), batch_size=10) as lg:
        lg.addStream_force("low", {"type": "integer"})
        lg.addStream_force("high", {"type": "integer"}, priority=3)
        for name in ("low", "high"):
            lg.insert_many(name, list(range(20)))
        receiver.fail_next(2, 503)  # each stream's first batch
        assert not lg.sync().ok  # a pass began: what is cached now is the backlog
        assert len(lg) == 40
        for name in ("low", "high"):
            lg.insert_many(name, list(range(100, 120)))
        assert lg.sync().ok
    sent = [(r.path, json.loads(r.content)[0]["d"]) for r in receiver.requests[2:]]
    assert sent == [
        ("/r/high", 100),
        ("/r/high", 110),
        ("/r/low", 100),
        ("/r/low", 110),
        ("/r/high", 0),
        ("/r/high", 10),
        ("/r/low", 0),
        ("/r/low", 10),
    ], sent


def test_each_remote_of_a_fan_out_sends_priorities_first(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """Two remotes, each with its own pass: each gets the high priority's batches first."""
    remotes = {"gateway": _http(receiver, "gateway"), "cloud": _http(receiver, "cloud")}
    with Logger(cache_path, remotes=remotes, batch_size=10) as lg:
        lg.addStream_force("low", {"type": "integer"})
        lg.addStream_force("high", {"type": "integer"}, priority=1)
        for name in ("low", "high"):
            lg.insert_many(name, list(range(30)))
        assert lg.sync().ok
        assert len(lg) == 0
    for name in remotes:
        assert _streams_in_order(receiver, name) == ["high"] * 3 + ["low"] * 3, name


def test_a_low_priority_moves_while_a_high_one_outpaces_the_remote(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """A high-priority stream inserts about 1000 datapoints a second, more than the remote
    drains (10 a request, each request delayed 20 ms: about 500 a second), so each pass's
    time box (0.1 s) goes by on the high priority's share. A low-priority stream's
    100 datapoints still arrive, all of them, while the high one outpaces the remote: a
    stream a pass passed over gets the first batch of the next one. (Higher first alone,
    the low one waited as long as the high one had data, as Azure IoT Edge's do.)"""
    apikey: str = server.apikey  # type: ignore[attr-defined]
    with Logger(cache_path, apikey=apikey, serverurl=server.url, batch_size=10) as lg:
        lg.addStream_force("low", {"type": "integer"})
        lg.addStream_force("high", {"type": "integer"}, priority=9)
        lg.insert_many("low", list(range(100)))
        lg.insert_many("high", list(range(1000)))
        server.delay(0.02)
        lg.syncperiod, lg.sync_jitter = 0.1, 0
        done = threading.Event()

        def high_priority_sensor() -> None:
            value, until = 1000, time.monotonic() + 120  # bounded, whatever happens
            while not done.wait(0.05) and time.monotonic() < until:
                lg.insert_many("high", list(range(value, value + 50)))
                value += 50

        sensor = threading.Thread(target=high_priority_sensor)
        lg.start()
        sensor.start()
        try:
            wait_for(
                lambda: (
                    len(server.datapoints("alice/sensor/low")) == 100
                    if server.stream_schema("alice/sensor/low")
                    else False
                ),
                timeout=60,
                what="the low priority's datapoints",
            )
            high_cached = lg.status().streams["high"].cached
        finally:
            done.set()
            sensor.join()
            server.delay(0)
    assert high_cached > 1000, "the high priority still outpaced the remote"
    assert [p["d"] for p in server.datapoints("alice/sensor/low")] == list(range(100))


def test_a_new_priority_takes_effect_at_the_next_pass(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    with Logger(cache_path, remote=_http(receiver), batch_size=10) as lg:
        lg.addStream_force("a", {"type": "integer"}, priority=2)
        lg.addStream_force("b", {"type": "integer"})
        for name in ("a", "b"):
            lg.insert_many(name, list(range(20)))
        assert lg.sync().ok
        lg.addStream_force("b", {"type": "integer"}, priority=5)
        for name in ("a", "b"):
            lg.insert_many(name, list(range(20)))
        assert lg.sync().ok
    assert _streams_in_order(receiver) == ["a", "a", "b", "b", "b", "b", "a", "a"]
