"""Trustworthy timestamps: NTP over real UDP, exact re-anchoring, hold, clock jumps.

The NTP server is a real responder on 127.0.0.1 whose time is the system's plus an offset,
so "the system clock is 1000 s slow" is simulated without touching the machine's clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from connectorsync import ConfigurationError, Logger, TimestampError, TransientRemoteError
from connectorsync import clock as clock_module
from connectorsync.cache import Cache
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.ntp import NTPServer

from .conftest import dump

OFFSET = 1000.0
# An NTP offset is exact up to half the exchange's round trip, which a loaded machine can
# stretch to many milliseconds: far below OFFSET all the same.
SLACK = 0.5
STAMP_SLACK = 0.05


@pytest.fixture
def ntp() -> Iterator[NTPServer]:
    with NTPServer(offset=OFFSET) as server:
        yield server


def cached_times(path: str, stream: str) -> list[float]:
    cache = Cache.connect(path)
    try:
        return [t for _, t, _ in cache.batch(cache.streams()[stream].id, 0, 10**6)]
    finally:
        cache.close()


def stamped_between(lg: Logger, started: float, ended: float) -> bool:
    """The stream's newest datapoint was stamped with true time (the system clock + the
    offset measured from the NTP server, which is OFFSET, to its millisecond) while its
    insert ran."""
    t = lg.latest("temperature")["t"]  # type: ignore[index]
    offset = lg.status().clock_offset
    assert offset is not None and abs(offset - OFFSET) < SLACK
    return bool(started + offset - 0.001 <= t <= ended + offset + 0.001)


def test_reanchoring_is_exact_to_the_millisecond(cache_path: str, ntp: NTPServer) -> None:
    with Logger(cache_path, ntp_server=ntp.address) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        before, after = [], []
        for i in range(20):
            before.append(time.time())
            lg.insert("temperature", float(i))
            after.append(time.time())
            time.sleep(0.002)
        status = lg.status()
        assert status.untrusted == 20 and status.clock_offset is None
        stamped = cached_times(cache_path, "temperature")
        assert all(b <= s <= a for s, b, a in zip(stamped, before, after, strict=True))

        offset = lg.sync_clock()
        assert abs(offset - OFFSET) < SLACK
        fixed = cached_times(cache_path, "temperature")
        # Each datapoint moves by exactly what the clock was measured off by: it is re-timed
        # from the boot clock it recorded, not guessed (up to the moment between reading the
        # two clocks at insert, which another thread taking the GIL can stretch).
        for old, new in zip(stamped, fixed, strict=True):
            assert abs((new - old) - offset) < STAMP_SLACK
        status = lg.status()
        assert status.untrusted == 0
        assert abs(status.clock_offset - OFFSET) < SLACK  # type: ignore[operator]
        assert abs(status.clock_measured - (time.time() + OFFSET)) < 1  # type: ignore[operator]

        # From now on timestamps are true time, trusted: nothing more to fix.
        started = time.time()
        lg.insert("temperature", 99.0)
        assert stamped_between(lg, started, time.time())
        assert lg.status().untrusted == 0


def test_the_anchor_survives_a_restart_in_the_same_boot(cache_path: str, ntp: NTPServer) -> None:
    with Logger(cache_path, ntp_server=ntp.address) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.sync_clock()
    with Logger(cache_path) as lg:
        started = time.time()
        lg.insert("temperature", 1.0)
        assert stamped_between(lg, started, time.time())
        assert lg.status().untrusted == 0


def test_an_anchor_from_another_boot_is_not_trusted(cache_path: str, ntp, monkeypatch) -> None:
    with Logger(cache_path, ntp_server=ntp.address) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.sync_clock()
    monkeypatch.setattr(clock_module, "boot_id", lambda: "a-later-boot")
    with Logger(cache_path) as lg:
        lg.insert("temperature", 1.0)
        assert lg.status().untrusted == 1
        assert lg.status().clock_offset is None


def test_hold_unsynced_until_ntp_answers(cache_path: str, ntp: NTPServer, server) -> None:
    ntp.silent = True  # NTP does not answer yet
    lg = Logger(
        cache_path,
        apikey=server.apikey,
        ntp_server=ntp.address,
        hold_unsynced=True,
        http_timeout=0.3,
    )
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.insert_many("temperature", [1.0, 2.0, 3.0])
    report = lg.sync()
    assert report.sent == {}  # held: their times are not known yet
    assert lg.status().untrusted == 3
    ntp.silent = False
    report = lg.sync()  # the pass asks NTP first, re-times them, then sends
    assert report.sent == {"temperature": 3}
    stored = server.datapoints("alice/sensor/temperature")
    assert all(abs(p["t"] - (time.time() + OFFSET)) < 5 for p in stored)
    lg.close()


def test_hold_is_bounded_by_max_hold(cache_path: str, ntp: NTPServer, server) -> None:
    ntp.silent = True
    lg = Logger(
        cache_path,
        apikey=server.apikey,
        ntp_server=ntp.address,
        hold_unsynced=True,
        max_hold=0.05,
        http_timeout=0.3,
    )
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.insert("temperature", 1.0)
    time.sleep(0.1)  # older than max_hold: released as stamped
    assert lg.sync().sent == {"temperature": 1}
    lg.close()


def test_without_hold_untrusted_points_go_at_once(cache_path: str, ntp, server) -> None:
    ntp.silent = True
    lg = Logger(cache_path, apikey=server.apikey, ntp_server=ntp.address, http_timeout=0.3)
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.insert("temperature", 1.0)
    assert lg.sync().sent == {"temperature": 1}
    lg.close()


class SteppedClock:
    """Stands in for the time module inside connectorsync.clock: a wall clock we can step."""

    def __init__(self) -> None:
        self.step = 0.0

    def time(self) -> float:
        return time.time() + self.step

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_wall_clock_jumping_back_never_fails_or_reorders(cache_path: str, monkeypatch) -> None:
    wall = SteppedClock()
    monkeypatch.setattr(clock_module, "time", wall)
    with Logger(cache_path) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        wall.step = -3600.0  # the clock is set back an hour
        lg.insert("temperature", 2.0)
        lg.insert("temperature", 3.0)
        times = cached_times(cache_path, "temperature")
        assert times[0] < times[1] < times[2]
        assert times[1] - times[0] < 1  # moved just after the newest, not an hour back


def test_anchored_clock_ignores_wall_clock_steps(cache_path, ntp, monkeypatch) -> None:
    wall = SteppedClock()
    monkeypatch.setattr(clock_module, "time", wall)
    with Logger(cache_path, ntp_server=ntp.address) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.sync_clock()
        wall.step = -7200.0  # stepped back after NTP answered: the boot clock carries on
        started = time.time()
        lg.insert("temperature", 1.0)
        assert stamped_between(lg, started, time.time())


def test_out_of_order_policy(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        lg.addStream_force("strict", {"type": "number"})
        lg.addStream_force("lenient", {"type": "number"}, out_of_order="restamp")
        for stream in ("strict", "lenient"):
            lg.insert(stream, 1.0, timestamp=2e9)
        with pytest.raises(TimestampError, match="out_of_order='restamp'"):
            lg.insert("strict", 2.0, timestamp=1e9)
        lg.insert("lenient", 2.0, timestamp=1e9)  # moved just after the newest
        assert lg.latest("lenient") == {"t": 2e9 + 1e-6, "d": 2.0}
        assert lg.latest("strict") == {"t": 2e9, "d": 1.0}
    with Logger(cache_path) as lg:  # the policy is kept in the cache
        lg.insert("lenient", 3.0, timestamp=1e9)


def test_ntp_failures_are_clear(cache_path: str, ntp: NTPServer) -> None:
    ntp.silent = True
    with Logger(cache_path) as lg:
        with pytest.raises(ConfigurationError, match="no NTP server"):
            lg.sync_clock()
        with pytest.raises(TransientRemoteError, match="NTP server"):
            lg.sync_clock(ntp.address, timeout=0.2)
        assert lg.status().clock_offset is None


def test_background_syncer_asks_ntp(cache_path: str, ntp: NTPServer, server: ConnectorDBServer):
    from .conftest import wait_for

    lg = Logger(cache_path, apikey=server.apikey, ntp_server=ntp.address, sync_jitter=0)
    lg.serverurl = server.url
    lg.start()
    wait_for(lambda: lg.status().clock_offset is not None, what="an NTP answer")
    assert ntp.requests >= 1
    lg.close()


# ----------------------------------------------------------------------------- no silent no-ops


def test_hold_unsynced_without_ntp_server_is_refused(cache_path: str, ntp: NTPServer) -> None:
    """Without ntp_server the system clock is trusted: hold_unsynced would hold nothing."""
    with pytest.raises(ConfigurationError, match="set ntp_server"):
        Logger(cache_path, hold_unsynced=True)
    assert not os.path.exists(cache_path)  # a failed constructor leaves no file behind

    def init(lg: Logger) -> None:
        lg.hold_unsynced = True

    with pytest.raises(ConfigurationError, match="ntp_server"):
        Logger(cache_path, on_create=init)
    # Together, in either order, they are fine.
    Logger(cache_path, hold_unsynced=True, ntp_server=ntp.address).close()
    Logger(cache_path, ntp_server=ntp.address, hold_unsynced=True).close()
    before = dump(cache_path)
    with pytest.raises(ConfigurationError, match="ntp_server"):
        Logger(cache_path, ntp_server=None)  # hold_unsynced is stored on
    assert dump(cache_path) == before  # nothing was changed

    with Logger(cache_path) as lg:
        with pytest.raises(ConfigurationError, match="ntp_server"):
            lg.ntp_server = None  # while hold_unsynced is on
        assert lg.ntp_server == ntp.address
        lg.hold_unsynced = False
        lg.ntp_server = None
        with pytest.raises(ConfigurationError, match="ntp_server"):
            lg.hold_unsynced = True
        assert lg.hold_unsynced is False
    with Logger(cache_path, ntp_server=None, hold_unsynced=False) as lg:
        assert (lg.ntp_server, lg.hold_unsynced) == (None, False)


def test_a_stored_hold_without_ntp_server_is_reported(cache_path: str, caplog) -> None:
    Logger(cache_path).close()
    cache = Cache.connect(cache_path)
    cache.set_setting("option.hold_unsynced", True)  # as an older version let it be stored
    cache.close()
    with Logger(cache_path, batch_size=10) as lg:  # opens: the data must stay reachable
        assert lg.hold_unsynced is True
    assert "hold_unsynced=True" in caplog.text and "set ntp_server" in caplog.text


def test_sync_clock_without_ntp_server_retimes_nothing_and_says_so(
    cache_path: str, ntp: NTPServer, caplog
) -> None:
    """Without ntp_server the system clock is trusted: sync_clock cannot re-time what it
    stamped (no boot clock was kept), only later timestamps follow the answer."""
    with Logger(cache_path) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        stamped = cached_times(cache_path, "temperature")
        caplog.set_level("INFO", logger="connectorsync")
        assert abs(lg.sync_clock(ntp.address) - OFFSET) < SLACK
        assert cached_times(cache_path, "temperature") == stamped
        assert "re-timed 0 datapoints" in caplog.text
        assert "ntp_server is not set" in caplog.text
        started = time.time()
        lg.insert("temperature", 2.0)
        assert stamped_between(lg, started, time.time())
