"""The remote contract beside a second remote that is down (issue 17, point 4).

Every shipped remote kind of the contract suite (:data:`.test_remote_contract.KINDS`, each
against its real server) is the remote under test, named ``tested``; the same Logger also
delivers to a second remote, ``down``, that fails the whole time until it comes back: a
loopback HTTPReceiver answering 503 with a Retry-After, or a ConnectorDB test server that is
stopped (connection refused), then started again on the same port with the same storage.

What each kind must still do beside it (DESIGN.md, "Several remotes"; invariant 17):

- the remote under test gets every datapoint as its delivery kind promises (exactly once,
  or at least once after a lost answer), in manual passes and from the background couriers;
- a datapoint it refuses becomes a dead letter of its own, never of the down one, and is
  sent or queued again to it alone;
- the cache keeps exactly what the down remote holds (``status().remotes``), never more;
- when the down remote comes back it gets everything once, and the remote under test
  nothing twice; or, with ``give_up_after``, it gives up what is older than that (counted)
  and the cache empties as the remote under test delivers: the disk bound holds. "Down for
  an hour" is an hour of fake time: datapoints stamped over the last hour and a
  ``give_up_after`` of a fraction of a second, so no test waits an hour;
- as the down remote's ``fallback``, the remote under test delivers once what it gave up.

``Logger(path, remotes=..., on_create=...)`` is what :func:`beside` builds: its ``on_create``
adds a stream while the remotes are new (it failed, "no remote named ...", until the Logger
recorded its remotes before running ``on_create``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectorsync import ConnectorDBRemote, DeliveryKind, HTTPRemote, Logger
from connectorsync.remotes.base import Remote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import wait_for
from .test_remote_contract import (
    KINDS,
    POISON,
    STREAM,
    Backend,
    check_stored_after_a_lost_answer,
    make_backend,
    pairs,
    points,
)

HOUR = 3600.0
#: give_up_after of the down remote in the hour-long outage (seconds of real time).
GIVE_UP = 0.3
T_POISON = points([POISON], start=5)[0]["t"]


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made = make_backend(request)
    try:
        yield made
    finally:
        made.close()


# ----------------------------------------------------------------------------- the down remote


class Down:
    """The second remote and the server behind it: down from the start until
    :meth:`come_back`."""

    def __init__(self) -> None:
        self._remotes: list[Remote] = []

    def remote(self) -> Remote:
        """A fresh remote to the server (closed with this)."""
        made = self._make()
        self._remotes.append(made)
        return made

    def _make(self) -> Remote:
        raise NotImplementedError

    def come_back(self) -> None:
        """The server works again, from the next request on."""
        raise NotImplementedError

    def arrived(self) -> list[tuple[float, Any]]:
        """``(t, value)`` of every datapoint the server holds for STREAM, in stored order."""
        raise NotImplementedError

    def close(self) -> None:
        for made in self._remotes:
            made.close()


class Answering503(Down):
    """An HTTPRemote to a receiver that answers every request with 503 and a short
    Retry-After (the background courier waits that long, not its backoff)."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver = HTTPReceiver().start()
        self.receiver.fail_next(10**9, status=503, retry_after=0.05)

    def _make(self) -> Remote:
        return HTTPRemote(self.receiver.url + "/down/{stream}", timeout=5)

    def come_back(self) -> None:
        self.receiver.clear_faults()

    def arrived(self) -> list[tuple[float, Any]]:
        return [(item["t"], item["d"]) for item in self.receiver.items(f"/down/{STREAM}")]

    def close(self) -> None:
        super().close()
        self.receiver.stop()


class StoppedConnectorDB(Down):
    """A ConnectorDBRemote to a test server that was started once (its port and device
    made), then stopped: every request is refused a connection until it starts again."""

    def __init__(self) -> None:
        super().__init__()
        self.server = ConnectorDBServer().start()
        self.apikey = self.server.add_device("bob", "gateway")
        self.server.stop()

    def _make(self) -> Remote:
        return ConnectorDBRemote(self.server.url, self.apikey, timeout=5)

    def come_back(self) -> None:
        self.server.start()

    def arrived(self) -> list[tuple[float, Any]]:
        try:
            return pairs(self.server.datapoints(f"bob/gateway/{STREAM}"))
        except KeyError:  # the stream was never created: nothing arrived
            return []

    def close(self) -> None:
        super().close()
        self.server.close()


@pytest.fixture(params=["503", "stopped_connectordb"])
def down(request: pytest.FixtureRequest) -> Iterator[Down]:
    made = Answering503() if request.param == "503" else StoppedConnectorDB()
    try:
        yield made
    finally:
        made.close()


def beside(backend: Backend, down: Down, path: str, *, down_first: bool, **options: Any) -> Logger:
    """A Logger delivering to the remote under test (``tested``) and the down one (``down``),
    given in that order (``down_first``: the other way round, the down one its first)."""
    remotes = {"tested": backend.remote(), "down": down.remote()}
    if down_first:
        remotes = {"down": remotes["down"], "tested": remotes["tested"]}
    lg = Logger(path, remotes=remotes, on_create=lambda lg: lg.add_stream(STREAM, {}), **options)
    return backend.closing(lg)  # type: ignore[no-any-return]


def held(lg: Logger) -> dict[str, int]:
    """What each remote holds, by name."""
    return {name: r.held for name, r in lg.status().remotes.items()}


# ----------------------------------------------------------------------------- the contract


def test_beside_a_down_remote_every_datapoint_arrives_as_promised(
    backend: Backend, down: Down, cache_path: str
) -> None:
    """Three passes while the down remote (the Logger's first) fails: the remote under test
    takes each round, refuses the poison into a dead letter of its own, and the cache keeps
    what the down remote holds, no more. Back, the down remote gets all twelve once."""
    backend.refuse(POISON)
    values: list[Any] = [float(i) for i in range(12)]
    values[5] = POISON
    sent = points(values)
    lg = beside(backend, down, cache_path, down_first=True)
    for start in (0, 4, 8):
        lg.insert_many(STREAM, sent[start : start + 4])
        report = lg.sync()
        assert not report.ok and set(report.remotes) == {"tested", "down"}
        tested = report.remotes["tested"]
        assert tested.ok, tested.errors
        assert report.remotes["down"].sent == {} and not report.remotes["down"].ok
        assert report.sent == tested.sent and report.deadlettered == tested.deadlettered
        assert held(lg) == {"tested": 0, "down": start + 4}
        assert len(lg) == start + 4  # exactly what the down remote holds
    status = lg.status().remotes
    assert status["down"].failing_since is not None and status["down"].last_error
    assert status["tested"].failing_since is None
    assert backend.stored() == [p for p in pairs(sent) if p[1] != POISON]
    if backend.refusals_seen:
        (letter,) = lg.deadletters()
        assert (letter.t, letter.d) == (T_POISON, POISON) and letter.reason
        assert (status["tested"].deadletters, status["down"].deadletters) == (1, 0)
        # Sent again, to the remote that refused it only: refused again, it stays a letter.
        assert lg.retry_deadletters() == 0
        (again,) = lg.deadletters()
        # (ConnectorDB is not sent it: it refuses times older than its newest, as it says.)
        ordered = lg.remotes["tested"].delivery_kind is DeliveryKind.ORDERED
        assert (again.t, again.d, again.attempts) == (T_POISON, POISON, 1 if ordered else 2)
        assert ("not sent again" in again.reason) is ordered
        # Queued again: held by that remote only (the down one has it still), refused again.
        assert lg.retry_deadletters(restamp=True) == 1
        assert held(lg) == {"tested": 1, "down": 12} and len(lg) == 13
        report = lg.sync()
        assert report.remotes["tested"].deadlettered == {STREAM: 1}
        assert held(lg) == {"tested": 0, "down": 12} and len(lg) == 12
        (letter,) = lg.deadletters()
        assert letter.d == POISON and lg.status().remotes["tested"].deadletters == 1
    else:  # MQTT 3.1.1 cannot see a refusal (test_remote_contract.py says so)
        assert lg.deadletters() == []
        assert (status["tested"].deadletters, status["down"].deadletters) == (0, 0)

    down.come_back()
    report = lg.sync()
    assert report.ok, report.errors
    assert report.remotes["down"].sent == {STREAM: 12} and report.remotes["tested"].sent == {}
    assert len(lg) == 0 and held(lg) == {"tested": 0, "down": 0}
    assert down.arrived() == pairs(sent)  # the poison too: the down remote refuses nothing
    assert backend.stored() == [p for p in pairs(sent) if p[1] != POISON]  # nothing twice
    assert lg.status().remotes["down"].failing_since is None
    assert len(lg.deadletters()) == (1 if backend.refusals_seen else 0)
    assert lg.sync().sent == {}


def test_a_lost_answer_beside_a_down_remote_loses_nothing(
    backend: Backend, down: Down, cache_path: str
) -> None:
    """The remote under test (the Logger's first) loses an answer while the other is down:
    settled by its own kind (ordered: reconciled; idempotent: once; at least once: sent
    again), and the down remote, back, gets each datapoint once."""
    backend.lose_next_answer()
    first, second = points([1.0, 2.0, 3.0]), points([4.0], start=3)
    lg = beside(backend, down, cache_path, down_first=False)
    assert lg.remote is lg.remotes["tested"]
    lg.insert_many(STREAM, first)
    report = lg.sync()
    tested = report.remotes["tested"]
    assert not tested.ok  # the answer was lost
    ordered = lg.remotes["tested"].delivery_kind is DeliveryKind.ORDERED
    assert tested.sent == ({STREAM: 3} if ordered else {})  # reconciled, or sent again
    lg.insert_many(STREAM, second)
    report = lg.sync()
    assert report.remotes["tested"].ok, report.remotes["tested"].errors
    assert not report.remotes["down"].ok
    assert held(lg) == {"tested": 0, "down": 4} and len(lg) == 4
    assert lg.deadletters() == []
    check_stored_after_a_lost_answer(backend, first, second)
    stored = backend.stored()

    down.come_back()
    report = lg.sync()
    assert report.ok, report.errors
    assert report.remotes["down"].sent == {STREAM: 4} and report.remotes["tested"].sent == {}
    assert len(lg) == 0
    assert down.arrived() == pairs(first + second)
    assert backend.stored() == stored


def test_the_background_couriers_deliver_beside_a_down_remote(
    backend: Backend, down: Down, cache_path: str, fast_backoff: None
) -> None:
    """Each remote has its own courier: the down one retrying never holds back the other,
    and once back it catches up by itself."""
    sent = points([1.0, 2.0, 3.0, 4.0, 5.0])
    lg = beside(backend, down, cache_path, down_first=True, sync_jitter=0)
    lg.insert_many(STREAM, sent)
    lg.start()
    wait_for(lambda: held(lg)["tested"] == 0, what="the remote under test to take them")
    wait_for(lambda: lg.status().remotes["down"].last_error, what="the outage to be noticed")
    assert backend.stored() == pairs(sent)
    assert len(lg) == held(lg)["down"] == 5
    down.come_back()
    wait_for(lambda: len(lg) == 0, what="the down remote to catch up")
    lg.close()
    assert down.arrived() == pairs(sent)
    assert backend.stored() == pairs(sent)


def test_a_remote_down_for_an_hour_of_fake_time_gives_up_and_the_disk_stays_bounded(
    backend: Backend, down: Down, cache_path: str
) -> None:
    """An hour-long outage without waiting an hour: the datapoints are stamped over the
    last hour, one a minute, and the down remote has ``give_up_after`` of GIVE_UP seconds.
    Once it has failed that long (a real wait of GIVE_UP seconds), each failed pass lets go
    of what it holds stamped longer ago than that, counted in ``status().remotes``: the cache
    empties as the remote under test delivers, as it would an hour into a real outage with
    ``give_up_after`` under an hour. A datapoint stamped later it keeps, and once back it
    gets that, not what it gave up."""
    lg = backend.logger(cache_path)  # the remote under test is "default"
    lg.add_remote("down", down.remote(), give_up_after=GIVE_UP)
    assert set(lg.remotes) == {"default", "down"}
    hour_ago = float(int(time.time() - HOUR))  # whole seconds: exact in ms and ns too
    minutes = [{"t": hour_ago + 60 * i, "d": float(i)} for i in range(60)]
    lg.insert_many(STREAM, minutes[:15])
    report = lg.sync()  # the down remote's first failure: it holds them
    assert report.remotes["default"].sent == {STREAM: 15} and not report.remotes["down"].ok
    assert len(lg) == held(lg)["down"] == 15
    time.sleep(GIVE_UP)  # wall time, not a thread: it has failed longer than give_up_after
    for start in (15, 30, 45):
        lg.insert_many(STREAM, minutes[start : start + 15])
        report = lg.sync()
        assert report.remotes["default"].sent == {STREAM: 15} and not report.remotes["down"].ok
        assert len(lg) == 0  # the bound: nothing is kept for a remote that gave up
    status = lg.status().remotes["down"]
    assert (status.released, status.held, status.handed_over) == (60, 0, 0)
    assert status.deadletters == 0 and status.failing_since is not None
    assert backend.stored() == pairs(minutes)

    # A minute from now: younger than give_up_after however slow the next passes are.
    later = hour_ago + HOUR + 60
    lg.insert(STREAM, -1.0, timestamp=later)
    assert lg.sync().remotes["default"].sent == {STREAM: 1}
    assert len(lg) == held(lg)["down"] == 1
    down.come_back()
    report = lg.sync()
    assert report.ok, report.errors
    assert report.remotes["down"].sent == {STREAM: 1} and len(lg) == 0
    assert down.arrived() == [(later, -1.0)]  # what it gave up stays given up
    assert lg.status().remotes["down"].released == 60
    assert backend.stored() == [*pairs(minutes), (later, -1.0)]


def test_the_remote_under_test_takes_over_as_the_fallback_of_the_down_one(
    backend: Backend, down: Down, cache_path: str
) -> None:
    """The remote under test takes only handovers (``streams=[]``) as the fallback of the
    down one: what that gave up (an hour old) it delivers once, as its kind promises; the
    first remote (a healthy HTTP receiver) gets everything; nothing reaches both the down
    remote and its fallback."""
    gateway = HTTPReceiver().start()
    try:
        lg = backend.logger(cache_path, remote=HTTPRemote(gateway.url + "/{stream}", timeout=5))
        lg.add_remote("tested", backend.remote(), streams=[])
        lg.add_remote("down", down.remote(), give_up_after=GIVE_UP, fallback="tested")
        hour_ago = float(int(time.time() - HOUR))
        minutes = [{"t": hour_ago + 60 * i, "d": float(i)} for i in range(10)]
        lg.insert_many(STREAM, minutes)
        report = lg.sync()
        assert report.remotes["default"].sent == {STREAM: 10} and not report.remotes["down"].ok
        assert held(lg) == {"default": 0, "tested": 0, "down": 10}
        time.sleep(GIVE_UP)  # wall time, not a thread: it has failed longer than give_up_after
        lg.sync()  # the down remote gives up: its fallback holds them now
        status = lg.status().remotes
        assert (status["down"].handed_over, status["down"].released) == (10, 0)
        assert held(lg) == {"default": 0, "tested": 10, "down": 0} and len(lg) == 10
        report = lg.sync()  # ...and delivers them
        assert report.remotes["tested"].sent == {STREAM: 10} and len(lg) == 0
        assert backend.stored() == pairs(minutes)
        down.come_back()
        later = hour_ago + HOUR + 60  # new data: the down remote's, not its fallback's
        lg.insert(STREAM, -1.0, timestamp=later)
        report = lg.sync()
        assert report.ok, report.errors
        assert report.remotes["down"].sent == {STREAM: 1} and report.remotes["tested"].sent == {}
        assert down.arrived() == [(later, -1.0)]
        assert backend.stored() == pairs(minutes)
        assert [(item["t"], item["d"]) for item in gateway.items(f"/{STREAM}")] == [
            *pairs(minutes),
            (later, -1.0),
        ]
    finally:
        gateway.stop()


@pytest.mark.parametrize("down", ["503"], indirect=True)  # how it is down does not matter
def test_a_fallback_that_has_the_data_already_gets_nothing_twice(
    backend: Backend, down: Down, cache_path: str
) -> None:
    """The remote under test routes every stream and is the fallback of the down one too:
    what the down one gives up it has delivered already, so it must not hold it again (it
    would send it twice: a duplicate where InfluxDB does not overwrite it, a refusal as
    older at ConnectorDB)."""
    lg = backend.logger(cache_path)  # the remote under test is "default"
    lg.add_remote("down", down.remote(), give_up_after=GIVE_UP, fallback="default")
    hour_ago = float(int(time.time() - HOUR))
    minutes = [{"t": hour_ago + 60 * i, "d": float(i)} for i in range(10)]
    lg.insert_many(STREAM, minutes)
    assert lg.sync().remotes["default"].sent == {STREAM: 10}
    time.sleep(GIVE_UP)  # wall time, not a thread: it has failed longer than give_up_after
    lg.sync()  # the down remote gives up: the fallback holds none of it again
    status = lg.status().remotes
    assert (status["down"].handed_over, status["down"].released) == (0, 10)
    assert len(lg) == 0 and held(lg) == {"default": 0, "down": 0}
    lg.sync()
    assert lg.deadletters() == []
    assert backend.stored() == pairs(minutes)
