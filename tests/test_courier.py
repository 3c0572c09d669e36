"""A Syncer is a set of couriers, one per remote (issue 17): each with its own thread, backoff
and quiet period, sharing the file's sync lock, held once for the process and released when
the last courier ends.

Each courier delivers through its remote's outbox (the cache keeps a position per remote:
``test_fanout_core.py`` is about what each remote receives); these tests are about threads,
the lock, backoff and the lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connectorsync import ConnectorSyncError, HTTPRemote, Logger, SyncReport
from connectorsync.cache import Cache
from connectorsync.cache.routing import RemoteRow
from connectorsync.options import Options
from connectorsync.syncer import PassHooks, Syncer
from connectorsync.synclock import SharedSyncLock
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import wait_for, within

#: A bound on a hang, not a timing: every wait below ends in well under a second.
PROMPT = 10.0
#: What the failing receiver asks for: longer than any test, so its courier stays quiet.
QUIET = 3600
#: A cache identity for syncers built here without a Logger (a cache's own is 32 hex digits).
IDENTITY = "0" * 32

pytestmark = pytest.mark.timeout(60)  # a hang fails the test instead of blocking the run


@dataclass
class Rig:
    """Two receivers on one cache file: ``good`` takes everything, ``bad`` answers 503 with a
    Retry-After to each request; a Syncer with a courier for each (``default``, ``backup``)."""

    path: str
    good: HTTPReceiver
    bad: HTTPReceiver
    syncer: Syncer
    heard: list[SyncReport] = field(default_factory=list)

    def insert(self, *values: float) -> None:
        """Insert with a Logger of its own that never syncs, and wake the couriers."""
        with Logger(self.path) as lg:
            lg.insert_many("s", list(values))
        self.syncer.wake()

    def delivered(self) -> list[float]:
        return [item["d"] for item in self.good.items("/good/s")]

    def threads(self) -> list[str]:
        """The names of this cache's live courier threads."""
        prefix = "connectorsync-syncer:" + Path(self.path).name
        return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


def http(url: str, **kwargs: object) -> HTTPRemote:
    return HTTPRemote(url, timeout=5, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    good, bad = HTTPReceiver().start(), HTTPReceiver().start()
    # The backup's ping fails, so its passes never take a batch.
    bad.fail_next(10**6, 503, retry_after=QUIET)
    path = str(tmp_path / "couriers.db")
    with Logger(path, remote=http(good.url + "/good/{stream}")) as lg:
        lg.add_stream("s", {"type": "number"})
    cache = Cache.connect(path)
    try:
        cache.remotes().add(RemoteRow(0, "backup"))
    finally:
        cache.close()
    options = Options(syncperiod=3600.0)
    options.sync_jitter = 0  # the first passes at once after start()
    remotes = {
        "default": http(good.url + "/good/{stream}"),
        "backup": http(bad.url + "/bad/{stream}", ping_url=bad.url + "/ping"),
    }
    heard: list[SyncReport] = []
    syncer = Syncer(path, options, remotes, PassHooks(), heard.append, IDENTITY)
    try:
        yield Rig(path, good, bad, syncer, heard)
    finally:
        syncer.close()
        for remote in remotes.values():
            remote.close()
        good.stop()
        bad.stop()


def quiet(rig: Rig) -> bool:
    """The backup courier met the 503 and waits out its Retry-After."""
    backup = rig.syncer.couriers["backup"]
    return "503" in (backup.last_error or "") and (backup.next_attempt or 0) > time.time() + 600


def other_logger_syncs(rig: Rig) -> bool:
    """Whether a second Logger on the file may sync it now (the file's lock is free)."""
    remote = http(rig.good.url + "/other/{stream}")
    try:
        with Logger(rig.path, remote=remote) as other:
            report = within(PROMPT, other.sync, what="another Logger's sync")
    finally:
        remote.close()
    if report.ok:
        return True
    assert "another Logger of this process syncs" in (report.errors.get("*") or ""), report
    return False


def test_a_failing_courier_does_not_delay_the_other(rig: Rig) -> None:
    """The backup's remote fails (503, come back in an hour): its courier waits, in a thread
    of its own, while the default one delivers everything at once, again and again; the
    waiting courier asks nothing meanwhile."""
    rig.insert(1.0, 2.0)
    rig.syncer.start()
    # The default courier's thread keeps the name the syncer's had; the others add theirs.
    name = "connectorsync-syncer:couriers.db"
    assert rig.threads() == [name, name + "[backup]"]
    wait_for(lambda: rig.delivered() == [1.0, 2.0], timeout=PROMPT, what="the first delivery")
    wait_for(lambda: quiet(rig), timeout=PROMPT, what="the backup to back off")
    for value in (3.0, 4.0, 5.0):
        rig.insert(value)
        wait_for(lambda v=value: v in rig.delivered(), timeout=PROMPT, what="delivery")
    assert rig.delivered() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(rig.bad.requests) == 1  # one ping, then quiet: the wakes did not end it
    assert rig.syncer.couriers["default"].last_error is None
    assert any(not r.ok for r in rig.heard) and any(r.sent for r in rig.heard)  # both told
    assert within(PROMPT, rig.syncer.stop, PROMPT, what="stop during the backoff")


def test_a_courier_backing_off_does_not_delay_the_other(rig: Rig) -> None:
    """Without a Retry-After the backup backs off exponentially, in its own thread; the
    default courier delivers each insert meanwhile, and stop() ends the backoff at once."""
    rig.bad.clear_faults()
    rig.bad.fail_next(10**6, 503)
    rig.syncer.start()
    for value in (1.0, 2.0, 3.0):
        rig.insert(value)
        wait_for(lambda v=value: v in rig.delivered(), timeout=PROMPT, what="delivery")
    backup = rig.syncer.couriers["backup"]
    wait_for(
        lambda: "503" in (backup.last_error or "") and backup.next_attempt is not None,
        timeout=PROMPT,
        what="the backup to back off",
    )
    assert rig.delivered() == [1.0, 2.0, 3.0] and backup.running
    assert within(PROMPT, rig.syncer.stop, PROMPT, what="stop during the backoff")
    assert rig.threads() == []


def test_stop_and_close_end_both_couriers_and_free_the_file(rig: Rig) -> None:
    """While the couriers run, the file is this Syncer's; stop() ends both threads (one in a
    long backoff) and frees the file, start() takes it again, close() frees it for good."""
    rig.insert(1.0)
    rig.syncer.start()
    wait_for(lambda: quiet(rig) and rig.delivered() == [1.0], timeout=PROMPT, what="passes")
    assert not other_logger_syncs(rig)

    assert within(PROMPT, rig.syncer.stop, PROMPT, what="stop")
    assert rig.threads() == [] and not rig.syncer.running
    assert other_logger_syncs(rig)

    rig.syncer.start()
    wait_for(lambda: len(rig.threads()) == 2, timeout=PROMPT, what="both threads again")
    wait_for(lambda: not other_logger_syncs(rig), timeout=PROMPT, what="the lock taken again")
    within(PROMPT, rig.syncer.close, what="close")
    wait_for(lambda: rig.threads() == [], timeout=PROMPT, what="both threads to end")
    assert other_logger_syncs(rig)


def test_one_courier_stopping_keeps_the_lock_for_the_other(rig: Rig) -> None:
    """The file's lock is held once for both couriers: the backup stopping leaves it with the
    default one, which delivers on; the last one stopping frees it."""
    rig.syncer.start()
    wait_for(lambda: quiet(rig), timeout=PROMPT, what="the backup's first pass")
    wait_for(lambda: not other_logger_syncs(rig), timeout=PROMPT, what="the lock taken")

    assert rig.syncer.couriers["backup"].stop(PROMPT)
    assert not other_logger_syncs(rig)
    rig.insert(7.0)
    wait_for(lambda: rig.delivered() == [7.0], timeout=PROMPT, what="the default to deliver")

    assert rig.syncer.couriers["default"].stop(PROMPT)
    assert other_logger_syncs(rig)


def test_a_manual_sync_while_both_couriers_run(rig: Rig) -> None:
    """sync() runs a pass of each courier by the side of their threads and returns their
    reports gathered; the threads keep the file's lock after it."""
    rig.syncer.start()
    wait_for(lambda: quiet(rig), timeout=PROMPT, what="the backup's first pass")
    wait_for(lambda: len(rig.heard) == 2, timeout=PROMPT, what="both first passes told")
    with Logger(rig.path) as lg:  # not woken: the manual pass is the one that delivers
        lg.insert_many("s", [8.0, 9.0])
    report = within(PROMPT, rig.syncer.sync, what="a manual sync")
    assert report.sent == {"s": 2} and report.remotes["default"].ok
    assert not report.ok and not report.remotes["backup"].ok  # its 503, in the one report
    assert rig.delivered() == [8.0, 9.0]
    assert len(rig.bad.requests) == 2  # asked for by hand: it goes at once, and fails
    assert rig.syncer.running and len(rig.threads()) == 2
    assert not other_logger_syncs(rig)
    assert len(rig.heard) == 2  # the manual passes told nobody


def test_the_lease_says_how_each_remote_goes(rig: Rig) -> None:
    """The lease keeps today's keys for the default remote (what status() reads) and adds
    each remote's state by name."""
    rig.syncer.start()
    wait_for(lambda: quiet(rig), timeout=PROMPT, what="the backup's first pass")

    def backup() -> dict[str, Any]:
        return rig.syncer.state().get("remotes", {}).get("backup") or {}

    # The failure first, then when it tries next: two writes of the lease.
    wait_for(lambda: (backup().get("next_attempt") or 0) > time.time() + 600, timeout=PROMPT)
    assert "503" in backup()["last_error"] and backup()["running"] is True
    lease = rig.syncer.state()
    assert lease["last_error"] is None and lease["running"] is True  # the default remote's
    assert lease["remotes"]["default"]["last_error"] is None
    with Logger(rig.path) as lg:  # another Logger's status() reads the default remote's keys
        status = lg.status()
    assert status.last_error is None and status.syncer is not None


def test_the_shared_lock_is_released_by_its_last_holder(tmp_path: Path) -> None:
    """Holders are counted: the file's lock is released once, when the last lets go; letting
    go once too often is a bug, and says so."""
    path = tmp_path / "lock.db"
    path.write_bytes(b"")
    shared, other = SharedSyncLock(str(path)), SharedSyncLock(str(path))
    assert shared.acquire() and shared.acquire()
    assert not other.acquire() and other.held_elsewhere() and not shared.held_elsewhere()
    shared.release()
    assert shared.held and not other.acquire()
    shared.release()
    assert not shared.held and other.acquire()
    other.release()
    with pytest.raises(RuntimeError, match="released more often"):
        shared.release()


def test_a_syncer_needs_a_remote(tmp_path: Path) -> None:
    path = str(tmp_path / "none.db")
    Logger(path).close()
    with pytest.raises(ConnectorSyncError, match="at least one remote"):
        Syncer(path, Options(), {}, PassHooks(), lambda report: None, IDENTITY)
