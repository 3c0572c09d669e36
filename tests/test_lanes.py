"""Live data first (``connectorsync/lanes.py``): for remotes that do not need order a pass
sends what came since the previous pass began before the backlog; ``ordered`` remotes keep
strict order; ``max_rate`` paces the backlog, never the live lane; a background pass gives
the backlog ``syncperiod`` seconds, then the next pass starts at once, live data first."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectorsync import ConfigurationError, HTTPRemote, InfluxDBRemote, Logger
from connectorsync.cache import Cache
from connectorsync.delivery import PassPlan, run_pass
from connectorsync.lanes import Pacer
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.probe import CacheProbe
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import wait_for

PATH = "/ingest/s"
T0 = 1_600_000_000.0  # a backlog's first timestamp: long before now


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver().start()
    try:
        yield rcv
    finally:
        rcv.stop()


def _http_logger(path: str, receiver: HTTPReceiver, **options: Any) -> Logger:
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    options.setdefault("batch_size", 10)
    lg = Logger(path, remote=remote, **options)
    lg.addStream_force("s", {"type": "integer"})
    return lg


def _sent_in_order(receiver: HTTPReceiver) -> list[list[int]]:
    """The values of each request, in arrival order."""
    return [[item["d"] for item in body] for body in receiver.bodies(PATH)]


def _backlog_then_live(lg: Logger, receiver: HTTPReceiver, backlog: int, live: int) -> int:
    """``backlog`` datapoints that a failed pass saw, then ``live`` new ones. Returns the id
    of the backlog's newest datapoint: where the live lane of the next pass begins."""
    for i in range(backlog):
        lg.insert("s", i)
    with CacheProbe(lg.path) as probe:
        live_after = probe.newest_id()
    receiver.fail_next(1, 503)
    assert not lg.sync().ok  # a pass began: what is cached now is the backlog
    for i in range(backlog, backlog + live):
        lg.insert("s", i)
    return live_after


@contextlib.contextmanager
def _pass_connection(lg: Logger) -> Iterator[Cache]:
    """A connection of its own to ``lg``'s cache, for a pass run by hand (as the syncer's)."""
    cache = Cache.connect(lg.path, "full")
    try:
        yield cache
    finally:
        cache.close()


def test_a_pass_sends_what_is_new_before_the_backlog(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    with _http_logger(cache_path, receiver) as lg:
        _backlog_then_live(lg, receiver, backlog=30, live=5)
        report = lg.sync()
        assert report.ok and report.sent == {"s": 35}
    assert _sent_in_order(receiver) == [
        [30, 31, 32, 33, 34],
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]


def test_live_first_false_keeps_strict_order(cache_path: str, receiver: HTTPReceiver) -> None:
    with _http_logger(cache_path, receiver, live_first=False) as lg:
        _backlog_then_live(lg, receiver, backlog=15, live=5)
        assert lg.sync().ok
    assert _sent_in_order(receiver) == [list(range(0, 10)), list(range(10, 20))]


def test_an_ordered_remote_keeps_strict_order(cache_path: str, server: ConnectorDBServer) -> None:
    with Logger(cache_path, apikey=server.apikey, serverurl=server.url, batch_size=10) as lg:  # type: ignore[attr-defined]
        lg.addStream("s", {"type": "integer"})
        for i in range(30):
            lg.insert("s", i)
        server.fail_next(1, 503)
        assert not lg.sync().ok
        for i in range(30, 35):
            lg.insert("s", i)
        assert lg.sync().ok
    # ConnectorDB refuses an older timestamp after a newer one: everything in order.
    assert [p["d"] for p in server.datapoints("alice/sensor/s")] == list(range(35))


def test_a_batch_without_answer_is_sent_again_first_then_the_live_lane(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """A batch whose answer was lost is sent again first, exactly its rows (at least once);
    once settled, the stream takes its live lane, then the backlog. The batch read ahead
    while it was on the wire (10..19) was never sent: it is backlog, not sent again first."""
    with _http_logger(cache_path, receiver) as lg:
        for i in range(20):
            lg.insert("s", i)
        receiver.drop_after_commit(1)  # the first batch arrives; its answer is lost
        assert not lg.sync().ok
        for i in range(20, 25):
            lg.insert("s", i)
        assert lg.sync().ok
    sent = _sent_in_order(receiver)
    assert sent[0] == list(range(10))  # the one whose answer was lost
    assert sent[1] == list(range(10))  # sent again, first
    assert sent[2:] == [list(range(20, 25)), list(range(10, 20))]


def test_max_rate_paces_the_backlog_never_the_live_lane(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """With ``max_rate`` 10/s, backlog batches hold at most 10 datapoints and wait for their
    tokens; the live batch goes first and waits for nothing."""
    with _http_logger(cache_path, receiver, batch_size=100) as lg:
        live_after = _backlog_then_live(lg, receiver, backlog=40, live=7)
        pauses: list[tuple[float, int]] = []

        def pause(seconds: float) -> bool:
            pauses.append((seconds, len(receiver.bodies(PATH))))
            return True

        plan = PassPlan(
            batch_size=100,
            max_batch_bytes=1 << 20,
            live_after=live_after,
            pacer=Pacer(10.0),
            pause=pause,
        )
        with _pass_connection(lg) as cache:
            report = run_pass(cache.outbox(), lg.remote, plan)
        assert report.ok and report.sent == {"s": 47}
    sent = _sent_in_order(receiver)
    assert sent[0] == list(range(40, 47))  # live, whole, before any wait
    assert sent[1:] == [list(range(k, k + 10)) for k in range(0, 40, 10)]
    # A bucket of one second (10 tokens) lets the first backlog batch go at once; each of
    # the other three waits for about a second of tokens, after the live batch was sent.
    assert len(pauses) == 3, pauses
    assert all(0.5 < seconds <= 1.0 and before >= 2 for seconds, before in pauses), pauses


def test_a_pass_out_of_budget_leaves_the_backlog_for_the_next(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    with _http_logger(cache_path, receiver) as lg:
        live_after = _backlog_then_live(lg, receiver, backlog=30, live=5)
        plan = PassPlan(batch_size=10, max_batch_bytes=1 << 20, live_after=live_after, budget=0)
        with _pass_connection(lg) as cache:
            report = run_pass(cache.outbox(), lg.remote, plan)
        assert report.ok and report.more and report.sent == {"s": 5}
        assert len(lg) == 30


@pytest.mark.parametrize("live_first", [True, False])
def test_new_datapoints_arrive_while_the_backlog_drains(
    cache_path: str, receiver: HTTPReceiver, live_first: bool
) -> None:
    """A stream with a backlog drained at ``max_rate`` by the background syncer, in passes
    of ``syncperiod`` seconds, while a sensor loop goes on inserting into it: each pass
    begins with what came meanwhile, so new datapoints reach the remote long before the
    backlog is through. With ``live_first=False`` they all wait for the backlog."""
    backlog = 800
    with _http_logger(cache_path, receiver, batch_size=50, live_first=live_first) as lg:
        lg.insert_many("s", list(range(backlog)))
        lg.max_rate = 200.0  # a four-second drain, in batches of 50
        lg.syncperiod = 0.5
        lg.sync_jitter = 0
        done = threading.Event()

        def sensor() -> None:
            value = backlog
            while not done.wait(0.05):
                lg.insert("s", value)
                value += 1

        loop = threading.Thread(target=sensor)
        lg.start()
        loop.start()
        try:
            wait_for(lambda: _has(receiver, backlog - 1), timeout=60, what="the backlog drained")
        finally:
            done.set()
            loop.join()
        wait_for(lambda: len(lg) == 0, timeout=30, what="everything delivered")
    requests = _sent_in_order(receiver)
    last_backlog = max(i for i, values in enumerate(requests) if backlog - 1 in values)
    new_before = [i for i, values in enumerate(requests[:last_backlog]) if max(values) >= backlog]
    if live_first:
        assert len(new_before) >= 3, " ".join(f"{v[0]}+{len(v)}" for v in requests)
    else:
        assert new_before == [], requests
    delivered = sorted(v for values in requests for v in values)
    assert delivered == list(range(len(delivered)))  # each once (no answer was lost)


def _has(receiver: HTTPReceiver, value: int) -> bool:
    return any(item["d"] == value for item in receiver.items(PATH))


BIG_BACKLOG = 1_000_000 if os.environ.get("CONNECTORSYNC_SOAK") == "1" else 100_000


def test_a_live_stream_stays_current_while_a_large_backlog_drains_into_influxd(
    tmp_path: Path, influxd: InfluxDBServer
) -> None:
    """A stream with a backlog of 100,000 datapoints (1,000,000 in ``make soak``) drains at
    ``max_rate`` into a real influxd while a sensor loop goes on inserting into it: the new
    datapoints are there, one after the other, long before the backlog is through."""
    assert influxd.admin is not None
    user, password = influxd.admin
    db = "lanes_" + uuid.uuid4().hex[:8]
    influxd.create_database(db)
    remote = InfluxDBRemote(influxd.url, db, username=user, password=password, timeout=10)
    path = str(tmp_path / "big.db")
    with Logger(path, durability="normal") as lg:  # a device offline for days
        lg.addStream_force("temperature", {"type": "number"})
        for start in range(0, BIG_BACKLOG, 100_000):
            lg.insert_many(
                "temperature", [{"t": T0 + (start + i) * 1e-3, "d": 1.0} for i in range(100_000)]
            )
    with Logger(path, remote=remote, durability="normal") as lg:  # ... restarted, online
        rate = BIG_BACKLOG / 4  # a four-second drain, whatever the size
        lg.max_rate, lg.syncperiod, lg.sync_jitter = rate, 0.5, 0
        lg.start()
        arrived_while_draining = 0
        for k in range(40):
            t = time.time()
            lg.insert("temperature", 2.0, t)
            wait_for(lambda t=t: _in_influx(influxd, db, t), timeout=30, what=f"new datapoint {k}")
            if len(lg) <= 1:
                break  # the backlog is through
            arrived_while_draining += 1
    assert arrived_while_draining >= 3


def _in_influx(influxd: InfluxDBServer, db: str, t: float) -> bool:
    answer = influxd.query(
        f"SELECT value FROM temperature WHERE time >= {int((t - 1e-3) * 1e9)}", db
    )
    return bool(answer["results"][0].get("series"))


# ----------------------------------------------------------------- issue 16: lanes hold


def _values_of(receiver: HTTPReceiver, path: str = PATH) -> list[int]:
    return [item["d"] for item in receiver.items(path)]


def test_the_backlog_gets_its_share_when_the_live_lane_takes_the_whole_period(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """The backlog's budget counts from when the backlog begins: a live lane slower than
    the whole budget (two requests of 0.6 s against a budget of 0.5 s) still leaves the
    backlog its first batch in that pass. (On b064757 the budget began with the pass, so
    no backlog batch went while the live lane took the period.)"""
    with _http_logger(cache_path, receiver) as lg:
        for i in range(30):
            lg.insert("s", i)
        receiver.fail_next(1, 503)
        first = lg.sync()  # what is cached now is the backlog
        assert not first.ok
        lg.insert_many("s", list(range(30, 50)))  # the live lane: two batches
        receiver.delay(0.6)
        cache = Cache.connect(cache_path, "full")
        try:
            plan = PassPlan(
                batch_size=10, max_batch_bytes=1 << 20, live_after=first.upto, budget=0.5
            )
            report = run_pass(cache.outbox(), lg.remote, plan)
        finally:
            cache.close()
            receiver.delay(0)
    assert report.ok and report.more
    sent = _sent_in_order(receiver)
    assert sent[:2] == [list(range(30, 40)), list(range(40, 50))]  # live first
    assert sent[2:] == [list(range(0, 10))], sent  # then the backlog's share


def test_streams_take_turns_across_passes_cut_short(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """When a pass's time box is shorter than one request, each background pass sends one
    batch; the next pass goes on with the next stream, so every stream drains, also the
    last one (``live_first=False``). On b064757 each pass began again at the first stream:
    the first four requests all went to stream "a"."""
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=10)
    with Logger(cache_path, remote=remote, batch_size=10, live_first=False) as lg:
        for name in ("a", "b", "c"):
            lg.addStream_force(name, {"type": "integer"})
            lg.insert_many(name, list(range(50)))  # five batches each
        lg.syncperiod, lg.sync_jitter = 0.1, 0
        receiver.delay(0.3)  # each request outlasts the pass's time box
        lg.start()
        wait_for(lambda: len(receiver.requests) >= 4, timeout=60, what="four requests")
        lg.stop()
        receiver.delay(0)
    paths = [request.path for request in receiver.requests[:4]]
    assert paths == ["/ingest/a", "/ingest/b", "/ingest/c", "/ingest/a"], paths


def test_what_was_cached_while_stopped_is_backlog_after_start(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """After stop() and start(), what was cached while stopped is backlog: paced by
    ``max_rate`` (batches of at most a second's worth, 10), not sent as one live batch
    (as on b064757: one request of 30)."""
    with _http_logger(cache_path, receiver, batch_size=100) as lg:
        lg.max_rate, lg.sync_jitter = 10.0, 0
        lg.start()
        lg.stop()
        lg.insert_many("s", list(range(30)))  # cached while stopped
        lg.start()
        wait_for(lambda: len(lg) == 0, timeout=60, what="everything delivered")
    sent = _sent_in_order(receiver)
    assert sorted(v for values in sent for v in values) == list(range(30))
    assert all(len(values) <= 10 for values in sent), sent


def test_retry_after_pauses_every_stream_of_the_remote(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """A ``Retry-After`` met by one stream holds for the whole remote: the other streams of
    the pass are not sent, and the pass reports the Retry-After (the background syncer
    waits for it). On b064757 only the stream that got it stopped; the others went on."""
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    with Logger(cache_path, remote=remote) as lg:
        for name in ("a", "b"):
            lg.addStream_force(name, {"type": "integer"})
            lg.insert_many(name, [1, 2, 3])
        receiver.fail_next(1, 429, retry_after=120, path="/ingest/a")
        report = lg.sync()
        assert set(report.errors) == {"a", "b"} and not report.sent, report
        assert report.exception is not None
        assert getattr(report.exception, "retry_after", None) == 120
        assert len(lg) == 6
    assert receiver.bodies("/ingest/b") == [] and receiver.bodies("/ingest/a") == []


def test_close_stops_a_paced_manual_sync(cache_path: str, receiver: HTTPReceiver) -> None:
    """A ``sync()`` paced by ``max_rate`` in another thread ends when ``close()`` is called,
    and once ``close()`` has returned nothing more is deleted from the cache. On b064757
    the pass slept on through close() and went on deleting afterwards."""
    with _http_logger(cache_path, receiver, batch_size=100) as lg:
        lg.max_rate = 2.0  # batches of two, one second apart
        lg.insert_many("s", list(range(40)))
        reports: list[Any] = []
        sync = threading.Thread(target=lambda: reports.append(lg.sync()), daemon=True)
        sync.start()
        wait_for(lambda: len(receiver.requests) >= 2, timeout=30, what="pacing under way")
        lg.close()
        left_at_close = _cached_count(cache_path)
        sync.join(60)
        assert not sync.is_alive(), "the paced sync went on after close()"
    assert _cached_count(cache_path) == left_at_close > 0
    assert reports and not reports[0].ok


def _cached_count(path: str) -> int:
    cache = Cache.connect(path, "full")
    try:
        return cache.count()
    finally:
        cache.close()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e-10, True, "fast"])
def test_a_max_rate_that_cannot_work_is_refused(
    cache_path: str, receiver: HTTPReceiver, bad: object
) -> None:
    """Refused when set (keyword or attribute), naming the value and what is expected, and
    nothing changes. On b064757 ``max_rate=1e-10`` was taken, then every pass failed with an
    OverflowError traceback."""
    with pytest.raises(ConfigurationError, match="max_rate") as info:
        _http_logger(cache_path, receiver, max_rate=bad).close()
    assert repr(bad) in str(info.value)
    with _http_logger(cache_path, receiver, max_rate=5.0) as lg:
        with pytest.raises(ConfigurationError, match="datapoints per second"):
            lg.max_rate = bad
        assert lg.max_rate == 5.0
        lg.insert("s", 1)
        assert lg.sync().ok


def test_refusals_give_one_warning_per_stream_and_pass(
    cache_path: str, receiver: HTTPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """98 refused datapoints: one WARNING for the stream (how many, the first reason), each
    datapoint at DEBUG (on b064757: 98 WARNING lines)."""
    receiver.reject(lambda path, item: item["d"] % 2 == 1)
    with _http_logger(cache_path, receiver, batch_size=200) as lg:
        lg.insert_many("s", list(range(196)))
        with caplog.at_level(logging.DEBUG, logger="connectorsync"):
            report = lg.sync()
    assert report.deadlettered == {"s": 98} and report.sent == {"s": 98}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "98" in warnings[0].getMessage() and "'s'" in warnings[0].getMessage()
    refused = [r for r in caplog.records if r.levelno == logging.DEBUG and "refused" in r.msg]
    assert len(refused) == 98


def test_a_max_rate_wait_longer_than_the_period_does_not_hold_back_the_live_lane(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """``max_rate`` so slow that the backlog's first batch waits for days: a background pass
    waits until the end of its backlog's budget (``syncperiod``) at most, and the next pass
    sends the live lane first, so a new datapoint arrives, and the backlog still waits its
    turn. (Before, the pass slept through the whole wait, days, holding the live lane, and
    every ``sync()`` behind it.)"""
    with _http_logger(cache_path, receiver, batch_size=10) as lg:
        _backlog_then_live(lg, receiver, backlog=20, live=0)
        lg.max_rate, lg.sync_jitter, lg.syncperiod = 1e-6, 0, 0.2  # one per 11 days
        lg.start()
        lg.insert("s", 1000)
        wait_for(lambda: _sent_in_order(receiver) == [[1000]], timeout=30, what="live data")
        lg.insert("s", 1001)
        wait_for(lambda: len(_sent_in_order(receiver)) == 2, timeout=30, what="more live data")
        lg.stop()
        assert _sent_in_order(receiver) == [[1000], [1001]]
        assert len(lg) == 20  # the backlog waits for its tokens


def test_a_retry_after_met_by_a_manual_sync_holds_the_background_syncer(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """A ``Retry-After`` holds for the whole remote, whichever pass met it: after a
    ``sync()`` asked for by hand got one of an hour, the background syncer (a period of
    0.1 s) says its next attempt is an hour away and sends nothing, however many inserts
    wake it. (Before, it went on every period: the remote got requests at once.)"""
    with _http_logger(cache_path, receiver) as lg:
        lg.syncperiod, lg.sync_jitter, lg.sync_threshold = 0.1, 0, 1
        lg.start()
        receiver.fail_next(1, 429, retry_after=3600)
        lg.insert("s", 1)
        report = lg.sync()
        if report.ok:  # the background pass took the 429 first: ask again by hand
            receiver.fail_next(1, 429, retry_after=3600)
            lg.insert("s", 1)
            report = lg.sync()
        assert getattr(report.exception, "retry_after", None) == 3600
        before = len(receiver.requests)

        def next_attempt() -> float:
            return lg.status().next_attempt or 0.0

        wait_for(lambda: next_attempt() > time.time() + 3000, what="the Retry-After's end")
        for i in range(5):
            lg.insert("s", 10 + i)  # each wakes the syncer (sync_threshold=1)
        time.sleep(1.0)
        assert len(receiver.requests) == before
        assert next_attempt() > time.time() + 3000
        lg.stop()
