"""Jittered periodic syncs (``sync_jitter``): a fleet started together does not sync in step,
and passes that were asked for are never delayed by it; the backoff policy of retries
(``schedule.BACKOFF``): full jitter by default, chosen in one place."""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path

import pytest
import tenacity

from connectorsync import ConfigurationError, Logger, SyncReport, TransientRemoteError, schedule
from connectorsync.options import Options
from connectorsync.schedule import jittered
from connectorsync.testing import ConnectorDBServer

from .conftest import wait_for, within

STREAM = "alice/sensor/temperature"


def values(server: ConnectorDBServer) -> list[float]:
    try:
        return [p["d"] for p in server.datapoints(STREAM)]
    except KeyError:
        return []


def connected(path: Path | str, server: ConnectorDBServer, **options: object) -> Logger:
    """A Logger on ``path`` pointed at ``server``, with a number stream ``temperature``."""
    lg = Logger(str(path), apikey=server.apikey, serverurl=server.url, **options)  # type: ignore[attr-defined]
    lg.addStream_force("temperature", {"type": "number"})
    return lg


# ----------------------------------------------------------------------------- the option


@pytest.mark.parametrize("bad", [-1, -0.5, "soon", True, [1], math.nan, math.inf])
def test_a_bad_sync_jitter_is_refused_naming_the_value(cache_path: str, bad: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Logger(cache_path, sync_jitter=bad)
    message = str(caught.value)
    assert "sync_jitter" in message and repr(bad) in message
    assert ">= 0" in message or "finite" in message


def test_a_bad_sync_jitter_set_later_changes_nothing(cache_path: str) -> None:
    with Logger(cache_path, sync_jitter=5) as lg:
        with pytest.raises(ConfigurationError, match=r"sync_jitter must be a number >= 0; got -3"):
            lg.sync_jitter = -3
        assert lg.sync_jitter == 5.0
    with Logger(cache_path) as again:
        assert again.sync_jitter == 5.0  # stored in the cache file, like every option


def test_sync_jitter_defaults_to_a_tenth_of_syncperiod_and_follows_it() -> None:
    options = Options(syncperiod=600.0)
    assert options.sync_jitter is None
    assert options.jitter() == pytest.approx(60.0)
    options.set("syncperiod", 30.0)
    assert options.jitter() == pytest.approx(3.0)  # re-evaluated: not frozen at 60
    options.set("sync_jitter", 0.0)
    assert options.jitter() == 0.0
    options.set("sync_jitter", 7.5)
    assert options.jitter() == 7.5


def test_sync_jitter_none_restores_the_default(cache_path: str) -> None:
    with Logger(cache_path, sync_jitter=0) as lg:
        lg.sync_jitter = None
        assert lg.sync_jitter is None


# ----------------------------------------------------------------------------- the wait


def test_the_wait_is_syncperiod_plus_up_to_sync_jitter() -> None:
    def lowest(a: float, b: float) -> float:
        return a

    def highest(a: float, b: float) -> float:
        return b

    asked: list[tuple[float, float]] = []

    def middle(a: float, b: float) -> float:
        asked.append((a, b))
        return (a + b) / 2

    assert jittered(600.0, 60.0, lowest) == 600.0  # syncperiod is a floor
    assert jittered(600.0, 60.0, highest) == 660.0
    assert jittered(600.0, 60.0, middle) == 630.0
    assert jittered(0.0, 60.0, highest) == 60.0  # the first pass after start()
    assert asked == [(0.0, 60.0)]

    def never(a: float, b: float) -> float:
        raise AssertionError("sync_jitter=0 draws nothing")

    assert jittered(600.0, 0.0, never) == 600.0
    assert jittered(0.0, 0.0, never) == 0.0  # the first pass at once

    # The same seed gives the same waits; all within [syncperiod, syncperiod + jitter].
    first = [jittered(600.0, 60.0, random.Random(7).uniform) for _ in range(3)]
    source = random.Random(7)
    waits = [jittered(600.0, 60.0, source.uniform) for _ in range(200)]
    assert first == [waits[0]] * 3
    assert all(600.0 <= w <= 660.0 for w in waits)
    assert max(waits) - min(waits) > 30.0  # uniform, not a constant


# ----------------------------------------------------------------------------- the fleet


def test_a_fleet_started_together_spreads_its_first_passes(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    # 20 loggers with syncperiod 40 s: the default jitter is 4 s. The spread measured is from
    # the 3rd to the 18th first pass, so a straggler (a slow pass on a busy machine) can neither
    # make nor break it; for 20 uniform draws it falls below 15% of the jitter with probability
    # ~3e-9. Without jitter it is a few hundredths of a second.
    count, syncperiod = 20, 40.0
    jitter = syncperiod / 10
    firsts: dict[int, float] = {}
    done = threading.Lock()

    def recorder(i: int):
        def onsync() -> None:
            with done:
                firsts.setdefault(i, time.monotonic())

        return onsync

    fleet = [
        Logger(str(tmp_path / f"fleet{i}.db"), apikey=server.apikey, onsync=recorder(i))  # type: ignore[attr-defined]
        for i in range(count)
    ]
    try:
        for lg in fleet:
            lg.serverurl = server.url
            lg.syncperiod = syncperiod
        began = time.monotonic()
        for lg in fleet:
            lg.start()
        wait_for(lambda: len(firsts) == count, timeout=jitter + 30, what="every first pass")
        offsets = sorted(t - began for t in firsts.values())
        assert offsets[-3] - offsets[2] > 0.15 * jitter, offsets
    finally:
        for lg in fleet:
            lg.close(timeout=1)


def test_the_first_pass_waits_after_start_and_after_a_restart(tmp_path: Path, server) -> None:
    # syncperiod set in the constructor wakes the syncer, and stop() does too: neither may
    # make the first pass come at once. With 10^6 s of jitter, a first pass due within a
    # second comes with probability 10^-6.
    lg = Logger(str(tmp_path / "later.db"), syncperiod=3600, sync_jitter=1e6)
    try:
        for _ in range(2):
            lg.start()
            wait_for(lambda: lg.status().next_attempt is not None, what="the first wait")
            assert (lg.status().next_attempt or 0) > time.time() + 1
            assert lg.lastsynctime == 0
            lg.stop()
    finally:
        lg.close()


def test_sync_jitter_0_gives_an_immediate_first_pass(tmp_path: Path, server) -> None:
    first = threading.Event()
    lg = Logger(
        str(tmp_path / "nojitter.db"),
        apikey=server.apikey,
        serverurl=server.url,
        syncperiod=3600,
        sync_jitter=0,
        onsync=first.set,
    )
    try:
        lg.start()
        # A jittered first pass would come up to 360 s later (10% of an hour).
        assert first.wait(10), "no first pass within 10 s of start()"
    finally:
        lg.close()


# ----------------------------------------------------------------------------- not delayed


def test_asked_for_passes_are_not_delayed_by_sync_jitter(tmp_path: Path, server) -> None:
    # An hour of jitter: any pass that waited for it would time the test out.
    lg = connected(tmp_path / "asked.db", server, syncperiod=3600, sync_jitter=3600)
    try:
        lg.start()
        lg.insert("temperature", 1.0)
        report = within(10, lg.sync, what="a manual sync() while the first pass waits")
        assert report.sent == {"temperature": 1}
        lg.insert("temperature", 2.0)
        lg.close(timeout=10)  # close's drain
        assert values(server) == [1.0, 2.0]
    finally:
        lg.close()


def test_a_threshold_sync_is_not_delayed_by_sync_jitter(tmp_path: Path, server) -> None:
    lg = connected(
        tmp_path / "threshold.db", server, syncperiod=3600, sync_jitter=3600, sync_threshold=2
    )
    try:
        lg.start()
        lg.insert_many("temperature", [1.0, 2.0])
        wait_for(lambda: values(server) == [1.0, 2.0], what="the threshold sync")
    finally:
        lg.close()


def test_retries_are_not_delayed_by_sync_jitter(
    tmp_path: Path, server: ConnectorDBServer, fast_backoff: None
) -> None:
    lg = connected(
        tmp_path / "retries.db", server, syncperiod=3600, sync_jitter=3600, sync_threshold=3
    )
    try:
        server.fail_next(4, status=503)
        lg.start()
        lg.insert_many("temperature", [1.0, 2.0, 3.0])
        wait_for(lambda: values(server) == [1.0, 2.0, 3.0], what="delivery after retries")
    finally:
        lg.close()


def test_after_an_outage_the_next_pass_is_a_period_after_the_one_that_got_through(
    tmp_path: Path, server: ConnectorDBServer, fast_backoff: None
) -> None:
    """Retries that outlast ``syncperiod`` end with a pass that gets through; the next
    periodic pass comes a period after it began, not at once (found by bench_fleet.py: a
    fleet back after an outage hit the server twice in a row)."""
    passes: list[float] = []
    lg = connected(tmp_path / "outage.db", server, syncperiod=1.5, sync_jitter=0)
    lg.onsync = lambda: passes.append(time.monotonic())
    try:
        server.stop()
        lg.start()
        lg.insert("temperature", 1.0)
        time.sleep(2.0)  # an outage longer than the period: the syncer keeps retrying
        server.start()
        wait_for(lambda: passes, what="a pass after the server came back")
        time.sleep(0.75)  # half a period: a pass here would be the one too many
        assert len(passes) == 1, passes
        wait_for(lambda: len(passes) == 2, what="the next periodic pass")
        assert passes[1] - passes[0] > 1.0
    finally:
        lg.close()


# ----------------------------------------------------------------------------- the backoff


def attempt_state(attempt: int, report: SyncReport | None = None) -> tenacity.RetryCallState:
    """tenacity's state of retry ``attempt``, with the pass's ``report`` as its outcome."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_result(report or SyncReport())
    return state


def test_full_jitter_is_uniform_up_to_the_doubling_ceiling() -> None:
    ceilings = [schedule.backoff_ceiling(n, 5.0) for n in (1, 2, 3, 4, 5, 2000)]
    assert ceilings == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]  # doubling, capped at syncperiod
    assert schedule.backoff_ceiling(3, 0.5) == 1.0  # a syncperiod under the base caps at it

    asked: list[tuple[float, float]] = []

    def highest(a: float, b: float) -> float:
        asked.append((a, b))
        return b

    assert [schedule.full_jitter(n, 5.0, highest) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert asked == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0)]  # from 0: full jitter
    assert schedule.BACKOFF is schedule.full_jitter  # the default policy


def test_full_jitter_draws_as_tenacity_did() -> None:
    """The policy moved out of tenacity keeps its waits: the same draw from the same random
    state as ``wait_random_exponential`` (what couriers used before), at every attempt."""
    for syncperiod in (0.5, 5.0, 600.0):
        before = tenacity.wait_random_exponential(
            multiplier=schedule.BACKOFF_BASE, max=max(schedule.BACKOFF_BASE, syncperiod)
        )
        for attempt in (1, 2, 3, 8, 11, 40, 1100):
            random.seed(attempt)
            expected = before(attempt_state(attempt))
            random.seed(attempt)
            assert schedule.full_jitter(attempt, syncperiod) == expected
            random.seed(attempt)
            assert schedule.backoff(attempt_state(attempt), syncperiod) == expected


def test_retry_after_wins_over_the_backoff_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "BACKOFF", schedule.backoff_ceiling)
    asked = SyncReport()
    asked.fail("*", TransientRemoteError("busy", retry_after=42.0))
    assert schedule.backoff(attempt_state(1, asked), 5.0) == 42.0
    assert schedule.backoff(attempt_state(3, SyncReport()), 5.0) == 4.0  # the ceiling itself


def test_couriers_retry_with_the_backoff_chosen_in_schedule(
    tmp_path: Path, server: ConnectorDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``schedule.BACKOFF`` is the one place the policy is chosen: a courier asks it for
    every retry, with the attempt and the Logger's syncperiod (how bench_fleet.py compares
    backoff without jitter)."""
    asked: list[tuple[int, float]] = []

    def record(attempt: int, syncperiod: float) -> float:
        asked.append((attempt, syncperiod))
        return 0.0  # at once: the test needs no wait

    monkeypatch.setattr(schedule, "BACKOFF", record)
    lg = connected(tmp_path / "policy.db", server, syncperiod=30, sync_jitter=0)
    try:
        server.fail_next(3, status=503)
        lg.insert("temperature", 1.0)
        lg.start()
        wait_for(lambda: values(server) == [1.0], what="delivery after three failures")
        assert asked == [(1, 30.0), (2, 30.0), (3, 30.0)]
    finally:
        lg.close()
