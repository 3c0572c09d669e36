"""Group commit (``cache/commit.py``): with ``durability="full"``, inserts from several threads
that arrive while a commit is in progress share the next transaction and its one fsync; each
call returns only after its own datapoint is durable, and errors stay per call.

The tests hold the first commit's fsync inside a VFS shim until the other threads wait behind
it, so the group they form is certain, not a matter of scheduling.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import apsw
import pytest

from connectorsync import CacheFullError, ConfigurationError, Logger, TimestampError
from connectorsync.testing.groupcommit import GroupCommitProbe

from .conftest import power_cut_run, wait_for


class _SyncCountingFile(apsw.VFSFile):
    def __init__(self, vfs: _HoldFirstSync, name: Any, flags: list[int]):
        super().__init__(vfs.base, name, flags)
        self.vfs = vfs
        self.is_wal = str(name).endswith("-wal")

    def xSync(self, flags: int) -> None:
        if self.is_wal:
            self.vfs.wal_syncs += 1
            if self.vfs.hold is not None:
                held, self.vfs.hold = self.vfs.hold, None
                self.vfs.holding.set()
                assert held.wait(10), "the held fsync was never released"
        super().xSync(flags)


class _HoldFirstSync(apsw.VFS):
    """The process's default VFS while a test runs: counts the WAL's fsyncs, and can hold the
    next one until released."""

    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]
        super().__init__("holdsync", base=self.base, makedefault=True)
        self.wal_syncs = 0
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        if flags[0] & (apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_WAL):
            return _SyncCountingFile(self, name, flags)
        return super().xOpen(name, flags)


@pytest.fixture
def vfs() -> Iterator[_HoldFirstSync]:
    shim = _HoldFirstSync()
    try:
        yield shim
    finally:
        shim.unregister()


def _logger(path: str, **options: Any) -> Logger:
    def init(lg: Logger) -> None:
        for i in range(8):
            lg.addStream(f"s{i}", {"type": "integer"})

    return Logger(path, on_create=init, durability="full", **options)


def _insert_in_threads(
    lg: Logger, calls: list[tuple[str, int, float | None]]
) -> tuple[list[threading.Thread], list[Any]]:
    """Run each (stream, value, timestamp) insert in its own thread; their outcomes, in order
    ("stored", or what the insert raised, KeyboardInterrupt included)."""
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        stream, value, t = calls[i]
        try:
            lg.insert(stream, value, t)
            outcomes[i] = "stored"
        except BaseException as exc:  # KeyboardInterrupt too: the test looks at each outcome
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, outcomes


def _hold_first_commit(lg: Logger, vfs: _HoldFirstSync) -> tuple[threading.Event, threading.Thread]:
    """Start an insert whose commit's fsync is held; returns the release and its thread."""
    lg.insert("s0", -2)  # the first commit after opening syncs the WAL's header too
    release = threading.Event()
    vfs.hold = release
    first = threading.Thread(target=lg.insert, args=("s0", -1))
    first.start()
    assert vfs.holding.wait(10)
    return release, first


def test_threads_waiting_behind_a_commit_share_the_next_one(
    cache_path: str, vfs: _HoldFirstSync
) -> None:
    with _logger(cache_path) as lg:
        group = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        syncs_before = vfs.wal_syncs
        threads, outcomes = _insert_in_threads(lg, [(f"s{i}", i, None) for i in range(1, 8)])
        wait_for(lambda: group.waiting() == 7, what="seven inserts waiting")
        assert all(o is None for o in outcomes)  # none returned before its commit
        release.set()
        for thread in [first, *threads]:
            thread.join(10)
        assert outcomes == ["stored"] * 7
        # The seven inserts took one commit, one fsync of the WAL, between them.
        assert vfs.wal_syncs - syncs_before == 1
        assert group.groups == 1
        assert [lg.latest(f"s{i}")["d"] for i in range(8)] == [-1, *range(1, 8)]


def test_a_refused_datapoint_fails_alone_in_its_group(cache_path: str, vfs: _HoldFirstSync) -> None:
    with _logger(cache_path) as lg:
        lg.insert("s1", 0, 2_000_000_000.0)
        group = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        calls = [("s2", 1, None), ("s1", 2, 1_000_000_000.0), ("s3", 3, None)]
        threads, outcomes = _insert_in_threads(lg, calls)
        wait_for(lambda: group.waiting() == 3, what="three inserts waiting")
        release.set()
        for thread in [first, *threads]:
            thread.join(10)
        assert outcomes[0] == "stored" and outcomes[2] == "stored"
        assert isinstance(outcomes[1], TimestampError)
        assert "s1" in str(outcomes[1])
        assert group.groups == 1
        assert len(lg) == 5  # s1's earlier one, s0's two, s2 and s3


def test_a_datapoint_over_a_limit_fails_alone_in_its_group(
    cache_path: str, vfs: _HoldFirstSync
) -> None:
    with _logger(cache_path, max_cached=4) as lg:
        group = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        threads, outcomes = _insert_in_threads(lg, [(f"s{i}", i, None) for i in range(1, 4)])
        wait_for(lambda: group.waiting() == 3, what="three inserts waiting")
        release.set()
        for thread in [first, *threads]:
            thread.join(10)
        refused = [o for o in outcomes if isinstance(o, CacheFullError)]
        assert len(refused) == 1 and outcomes.count("stored") == 2
        assert "max_cached" in str(refused[0])
        assert len(lg) == 4


def test_normal_durability_does_not_group(cache_path: str) -> None:
    with _logger(cache_path) as lg:
        lg.durability = "normal"
        with pytest.raises(ConfigurationError, match="durability='full'"):
            GroupCommitProbe(lg)
        lg.durability = "full"
        assert GroupCommitProbe(lg).groups == 0


def test_threads_lose_nothing_returned_in_a_power_cut(tmp_path: Any) -> None:
    """Eight threads insert with durability "full" in a child process whose disk keeps only
    what was fsynced; after the cut, every datapoint whose insert() returned is there."""
    path = str(tmp_path / "cut.db")
    returned = power_cut_run(path, "full", 40, threads=8)
    assert len(returned) == 8 * 40
    if os.path.exists(path + "-shm"):
        os.remove(path + "-shm")
    with Logger(path) as lg:
        stored = {(dp["stream"], dp["d"]) for dp in lg.export()}
    assert set(returned) <= stored


@pytest.mark.parametrize("at", ["gather", "begun", "before_commit", "after_commit"])
def test_an_interrupt_in_the_leader_loses_and_doubles_nothing(
    cache_path: str, vfs: _HoldFirstSync, at: str
) -> None:
    """A KeyboardInterrupt in the thread leading a group of seven, before it takes the queue,
    just after its BEGIN, before its COMMIT or just after it: the six others return and are
    stored exactly once, the interrupted one is stored only if its COMMIT was done, and later
    inserts are committed (read back through a fresh connection after close). Just after
    BEGIN, the transaction was left open: the others stored theirs in it, returned, and were
    lost at close, with every later insert (the power-cut torture: "s0: returned, then lost")."""
    with _logger(cache_path) as lg:
        probe = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        probe.interrupt_next_group(at)
        threads, outcomes = _insert_in_threads(lg, [(f"s{i}", i, None) for i in range(1, 8)])
        wait_for(lambda: probe.waiting() == 7, what="seven inserts waiting")
        release.set()
        for thread in [first, *threads]:
            thread.join(10)
        assert probe.interrupted.is_set()
        interrupted = [i + 1 for i, o in enumerate(outcomes) if isinstance(o, KeyboardInterrupt)]
        assert len(interrupted) == 1, outcomes
        assert outcomes.count("stored") == 6, outcomes
        # Inserting goes on, grouped or alone, and is committed.
        threads, later = _insert_in_threads(lg, [(f"s{i}", 100 + i, None) for i in range(1, 8)])
        for thread in threads:
            thread.join(10)
        assert later == ["stored"] * 7
    with Logger(cache_path) as reopened:
        stored = sorted((dp["stream"], dp["d"]) for dp in reopened.export())
    expected = [("s0", -2), ("s0", -1)]
    expected += [(f"s{i}", i) for i in range(1, 8) if i not in interrupted]
    if at == "after_commit":  # its COMMIT was done: stored, once
        expected += [(f"s{i}", i) for i in interrupted]
    expected += [(f"s{i}", 100 + i) for i in range(1, 8)]
    assert stored == sorted(expected)


def test_an_interrupt_that_fails_the_commit_acknowledges_nothing_rolled_back(
    cache_path: str, vfs: _HoldFirstSync
) -> None:
    """A KeyboardInterrupt raised inside the leader's COMMIT (from Python code SQLite calls
    while it commits: here a commit hook, in the power-cut torture the VFS): SQLite rolls the
    group back, so no transaction is open any more, yet nothing was committed. The six others
    must store theirs alone, not return the t of a rolled-back group: before the fix they
    returned and their datapoints were gone (the torture's group_commit_interrupt phase:
    "insert() returned for them", then missing)."""
    with _logger(cache_path) as lg:
        probe = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        probe.interrupt_next_group("during_commit")
        threads, outcomes = _insert_in_threads(lg, [(f"s{i}", i, None) for i in range(1, 8)])
        wait_for(lambda: probe.waiting() == 7, what="seven inserts waiting")
        release.set()
        for thread in [first, *threads]:
            thread.join(10)
        assert probe.interrupted.is_set()
        interrupted = [i + 1 for i, o in enumerate(outcomes) if isinstance(o, KeyboardInterrupt)]
        assert len(interrupted) == 1, outcomes
        assert outcomes.count("stored") == 6, outcomes
        # Each insert that returned is in the cache now, before anything else commits.
        stored_now = {(dp["stream"], dp["d"]) for dp in lg.export()}
        returned = {(f"s{i}", i) for i in range(1, 8) if i not in interrupted}
        assert returned <= stored_now, f"returned, not stored: {sorted(returned - stored_now)}"
    with Logger(cache_path) as reopened:
        stored = sorted((dp["stream"], dp["d"]) for dp in reopened.export())
    # The interrupted one's group was rolled back and it raised: not stored.
    assert stored == sorted([("s0", -2), ("s0", -1), *returned])


def test_an_insert_interrupted_while_it_waits_is_never_stored(
    cache_path: str, vfs: _HoldFirstSync
) -> None:
    """A real SIGINT in the main thread while its insert waits behind a commit: the insert
    raises KeyboardInterrupt and its datapoint is never stored (b064757 stored it with the
    next group); the others go on."""
    with _logger(cache_path) as lg:
        probe = GroupCommitProbe(lg)
        release, first = _hold_first_commit(lg, vfs)
        main = threading.main_thread().ident
        assert main == threading.get_ident()

        def interrupt() -> None:
            wait_for(lambda: probe.waiting() == 1, what="the main thread's insert waiting")
            signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                lg.insert("s1", 1)
        finally:
            interrupter.join(10)
            release.set()
            first.join(10)
        assert probe.waiting() == 0
        threads, outcomes = _insert_in_threads(lg, [(f"s{i}", i, None) for i in range(2, 5)])
        for thread in threads:
            thread.join(10)
        assert outcomes == ["stored"] * 3
    with Logger(cache_path) as reopened:
        stored = sorted((dp["stream"], dp["d"]) for dp in reopened.export())
    assert stored == [("s0", -2), ("s0", -1), ("s2", 2), ("s3", 3), ("s4", 4)]
