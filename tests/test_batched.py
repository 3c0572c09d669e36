"""``durability="batched"`` (``cache/batched.py``): insert() returns once the datapoint is
queued in memory; a writer commits the queue at least every ``commit_interval``; what a power
cut loses is bounded by that window, and every datapoint accepted is stored or counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from connectorsync import CacheError, CacheFullError, Logger, TimestampError
from connectorsync.cache import batched
from connectorsync.testing.interrupt import (
    interrupt_after_next_commit,
    interrupt_inside_next_commit,
)
from connectorsync.testing.powercut import FAULTS, PowerCutVFS

from .conftest import ROOT, power_cut_run, wait_for


def _logger(path: str, **options: Any) -> Logger:
    def init(lg: Logger) -> None:
        lg.addStream("n", {"type": "integer"})

    options.setdefault("commit_interval", 3600.0)
    options.setdefault("durability", "batched")
    return Logger(path, on_create=init, **options)


def _committed(path: str) -> int:
    """How many datapoints another connection sees in the file."""
    other = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(other.execute("SELECT count(*) FROM datapoints").fetchall()[0][0])
    finally:
        other.close()


@pytest.fixture
def disk() -> Iterator[PowerCutVFS]:
    """A disk that fails writes on demand (``disk.failing = "eio"``): the default VFS of this
    process for the test; open the Logger inside the test, close it before the end."""
    vfs = PowerCutVFS()
    try:
        yield vfs
    finally:
        vfs.failing = None
        vfs.unregister()


def test_insert_returns_before_the_commit_and_flush_commits(cache_path: str) -> None:
    with _logger(cache_path) as lg:
        lg.insert("n", 1)
        lg.insert("n", 2)
        assert _committed(cache_path) == 0  # queued in memory only
        lg.flush()
        assert _committed(cache_path) == 2
        assert lg.status().commit_latency is not None


def test_reads_see_what_is_queued(cache_path: str) -> None:
    with _logger(cache_path) as lg:
        lg.insert("n", 1)
        assert len(lg) == 1
        lg.insert("n", 2)
        assert lg.latest("n")["d"] == 2
        lg.insert("n", 3)
        assert [dp["d"] for dp in lg.export("n")] == [1, 2, 3]


def test_the_writer_commits_within_the_interval(cache_path: str) -> None:
    with _logger(cache_path, commit_interval=0.05) as lg:
        lg.insert("n", 1)
        wait_for(lambda: _committed(cache_path) == 1, what="the queue committed by the writer")
        lg.commit_interval = 3600.0
        lg.insert("n", 2)
        assert _committed(cache_path) == 1


def test_a_too_old_timestamp_is_refused_at_insert(cache_path: str) -> None:
    with _logger(cache_path) as lg:
        lg.insert("n", 1, 2_000_000_000.0)
        with pytest.raises(TimestampError, match="'n'"):
            lg.insert("n", 2, 1_000_000_000.0)
        lg.insert("n", 3, 2_000_000_000.0)  # a tie: moved 1 µs later, as in the other modes
        stored = [(dp["t"], dp["d"]) for dp in lg.export("n")]
    assert stored == [(2_000_000_000.0, 1), (2_000_000_000.000001, 3)]


def test_a_full_queue_is_committed_by_the_inserting_thread(
    cache_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batched, "MAX_QUEUED", 5)
    with _logger(cache_path) as lg:
        for i in range(5):
            lg.insert("n", i)
        assert _committed(cache_path) == 0
        lg.insert("n", 5)  # the queue is full: this thread commits it, then queues its own
        assert _committed(cache_path) == 5


def test_a_commit_without_room_counts_what_it_drops_then_inserts_raise(cache_path: str) -> None:
    with _logger(cache_path, max_cached=3) as lg:
        for i in range(5):
            lg.insert("n", i)  # accepted: the limit is met only at the commit
        lg.flush()
        assert lg.status().dropped == 2
        assert [dp["d"] for dp in lg.export("n")] == [0, 1, 2]
        with pytest.raises(CacheFullError, match="max_cached"):
            lg.insert("n", 5)  # now inserts commit at once, and their callers hear
        assert len(lg) == 3


def test_an_interrupt_after_the_commit_stores_nothing_twice(cache_path: str) -> None:
    """A Ctrl-C landing in the thread that commits the queue just after its COMMIT: the
    rows are stored, so none goes back in the queue to be stored a second time."""
    with _logger(cache_path) as lg:
        for i in range(5):
            lg.insert("n", i)
        fired = interrupt_after_next_commit(lg)
        with pytest.raises(KeyboardInterrupt):
            lg.flush()
        assert fired.is_set()
        lg.insert("n", 5)
        lg.flush()
        assert [dp["d"] for dp in lg.export("n")] == [0, 1, 2, 3, 4, 5]
    assert _committed(cache_path) == 6


def test_an_interrupt_inside_the_commit_keeps_the_queue(cache_path: str) -> None:
    """A Ctrl-C raised from inside the queue's COMMIT (Python code SQLite calls while it
    commits) makes SQLite roll it back, leaving no transaction open: the rows were not
    committed, so they stay queued, and the next commit stores them (once)."""
    with _logger(cache_path) as lg:
        for i in range(5):
            lg.insert("n", i)
        fired = interrupt_inside_next_commit(lg)
        with pytest.raises(KeyboardInterrupt):
            lg.flush()
        assert fired.is_set()
        lg.flush()
        assert [dp["d"] for dp in lg.export("n")] == [0, 1, 2, 3, 4]
    assert _committed(cache_path) == 5


def test_an_interrupt_while_storing_what_fits_stores_nothing_twice(cache_path: str) -> None:
    """Without room, the queue is stored one by one: an interrupt just after one of those
    commits queues again only the datapoints not stored yet."""
    with _logger(cache_path, max_cached=4) as lg:
        for i in range(6):
            lg.insert("n", i)
        # The queue's commit finds no room (6 > 4) and stores one by one: the first of those
        # commits is interrupted just after it is done.
        fired = interrupt_after_next_commit(lg)
        with pytest.raises(KeyboardInterrupt):
            lg.flush()
        assert fired.is_set()
        lg.flush()
        assert [dp["d"] for dp in lg.export("n")] == [0, 1, 2, 3]
        assert lg.status().dropped == 2


def test_an_insert_racing_close_is_stored_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads insert (a small queue: back-pressure commits) while close() runs: each insert
    either raised or is in the file. An insert that waited behind close()'s last commit used
    to queue its row after it and return: acknowledged, never committed."""
    import json
    import threading

    from connectorsync import ConnectorSyncError

    monkeypatch.setattr(batched, "MAX_QUEUED", 3)
    lost: list[int] = []
    for trial in range(60):
        path = str(tmp_path / f"cache{trial}.db")
        lg = _logger(path)
        returned: list[int] = []
        started = threading.Barrier(4)

        def work(
            k: int,
            lg: Logger = lg,
            returned: list[int] = returned,
            started: threading.Barrier = started,
        ) -> None:
            started.wait()
            for i in range(100_000):
                try:
                    lg.insert("n", k * 1_000_000 + i)
                except ConnectorSyncError:
                    return
                returned.append(k * 1_000_000 + i)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        started.wait()
        wait_for(lambda returned=returned: len(returned) > 30, what="inserts under way")
        lg.close()
        for thread in threads:
            thread.join(timeout=30)
        other = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            stored = {json.loads(d) for (d,) in other.execute("SELECT d FROM datapoints")}
        finally:
            other.close()
        lost += sorted(set(returned) - stored)
    assert not lost, f"insert() returned, never committed: {lost[:10]}"


def test_close_commits_the_queue(cache_path: str) -> None:
    lg = _logger(cache_path)
    lg.insert("n", 1)
    lg.close()
    assert _committed(cache_path) == 1


def test_leaving_batched_commits_the_queue(cache_path: str) -> None:
    with _logger(cache_path) as lg:
        lg.insert("n", 1)
        lg.durability = "full"
        assert _committed(cache_path) == 1
        lg.insert("n", 2)
        assert _committed(cache_path) == 2


def test_a_power_cut_loses_at_most_the_last_commit_interval(tmp_path: Path) -> None:
    """A child inserts with commit_interval 0.2 s under a disk that keeps only what was
    fsynced, then the power goes. What survives is each stream's oldest datapoints; what is
    lost was returned within the last commit_interval, plus the longest commit, of the cut
    (and a second of scheduling slack for a loaded machine)."""
    path = str(tmp_path / "cut.db")
    Logger(path, on_create=lambda lg: lg.addStream("counter", {"type": "integer"})).close()
    returned, cut = power_cut_run(path, "batched", 300, pace=0.005, timed=True)
    assert len(returned) == 300
    if os.path.exists(path + "-shm"):
        os.remove(path + "-shm")
    with Logger(path) as lg:
        survivors = [dp["d"] for dp in lg.export("counter")]
    assert survivors == list(range(len(survivors)))
    lost = returned[len(survivors) :]
    assert all(at > cut["at"] - (0.2 + cut["latency"] + 1.0) for _, _, at in lost), (cut, lost[:3])


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_inserts_raise_while_commits_fail_and_work_again(
    cache_path: str, disk: PowerCutVFS, fault: str
) -> None:
    """The card goes bad: after the writer's first failed commit every insert raises and
    stores nothing, the queue does not grow, status() and the metrics say why; once writes
    work again, inserts do too, and exactly the accepted datapoints are stored."""
    with _logger(cache_path, commit_interval=0.05) as lg:
        lg.insert("n", 0)
        lg.flush()
        disk.failing = fault
        accepted = [0]

        def refused() -> bool:
            value = accepted[-1] + 1
            try:
                lg.insert("n", value)
            except CacheError as exc:
                assert "not stored" in str(exc)
                return True
            accepted.append(value)
            return False

        wait_for(refused, timeout=30, what="an insert refused while commits fail")
        status = lg.status()
        assert status.commit_error is not None
        waiting = status.uncommitted
        assert 0 < waiting == len(accepted) - 1  # all but the first wait in memory
        for value in range(10_000, 10_050):
            with pytest.raises(CacheError, match="not stored"):
                lg.insert("n", value)
        assert lg.status().uncommitted == waiting  # bounded: nothing refused was queued
        scrape = lg.metrics()
        assert "connectorsync_commit_failing{reason=" in scrape
        assert f"connectorsync_uncommitted_datapoints {float(waiting)}" in scrape
        disk.failing = None
        wait_for(lambda: lg.status().commit_error is None, what="the writer's commit working")
        lg.insert("n", 20_000)
        assert [dp["d"] for dp in lg.export("n")] == [*accepted, 20_000]
        assert lg.status().dropped == 0


def test_a_full_queue_that_cannot_commit_refuses_and_never_stores_the_refused(
    cache_path: str, disk: PowerCutVFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inserting thread commits a full queue; when that commit fails, its caller hears
    and its datapoint is not queued: retrying it later stores it once."""
    monkeypatch.setattr(batched, "MAX_QUEUED", 5)
    with _logger(cache_path) as lg:  # commit_interval 3600 s: only the queue commits
        disk.failing = "eio"
        accepted: list[int] = []
        refused = None
        for value in range(20):
            try:
                lg.insert("n", value)
            except CacheError:
                refused = value
                break
            accepted.append(value)
        assert refused is not None
        with pytest.raises(CacheError):
            lg.insert("n", refused)  # still failing: refused again, still not queued
        disk.failing = None
        lg.flush()  # the writer would try again within commit_interval; flush() tries now
        lg.insert("n", refused)  # the caller retries
        assert [dp["d"] for dp in lg.export("n")] == [*accepted, refused]


KILLED_CHILD = r"""
import os, sys, time
from connectorsync import CacheError, Logger
from connectorsync.testing.powercut import PowerCutVFS

vfs = PowerCutVFS()  # the disk keeps what was fsynced only; fails writes when told
lg = Logger(sys.argv[1], durability="batched", commit_interval=0.2)
say = lambda *words: os.write(1, (" ".join(map(str, words)) + "\n").encode())
value = refusals = 0
while True:
    if value == 150:
        vfs.failing = sys.argv[2]
        say("failing")
    try:
        lg.insert("n", value)
        say("ok", value)
    except CacheError:
        refusals += 1
        if refusals == 1:
            try:
                waiting = lg.status().uncommitted
            except Exception:
                waiting = -1
            say("refused", value, waiting)
        elif refusals == 300:
            say("kill me")
    if value == 150 + 5000:
        say("kill me")  # never refused: stop anyway
    value += 1
    time.sleep(0.002)
"""


@pytest.mark.parametrize("fault", ["eio", "readonly"])
def test_a_kill_while_commits_fail_loses_only_what_was_queued_before(
    tmp_path: Path, fault: str
) -> None:
    """A child inserts with commit_interval 0.2 s on a disk that keeps only what was
    fsynced; the disk starts failing every write; the child goes on inserting and is killed
    (SIGKILL) once inserts are refused. Nothing was acknowledged after the first refusal,
    and what the kill lost is exactly what waited in memory then (``uncommitted``): the
    datapoints of the last interval before the failure, never those of the outage."""
    path = str(tmp_path / "failing.db")
    Logger(path, on_create=lambda lg: lg.addStream("n", {"type": "integer"})).close()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, path, fault],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("kill me"):
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        if child.stdout is not None:
            child.stdout.close()
    acked = [int(line.split()[1]) for line in lines if line.startswith("ok ")]
    refusals = [line.split() for line in lines if line.startswith("refused ")]
    assert refusals, f"never refused after {len(acked)} acknowledged inserts"
    first_refused, waiting = int(refusals[0][1]), int(refusals[0][2])
    assert [v for v in acked if v > first_refused] == []  # nothing acknowledged after
    with Logger(path) as lg:
        stored = [dp["d"] for dp in lg.export("n")]
    assert stored == acked[: len(stored)]  # in order, no gaps, nothing unacknowledged
    lost = acked[len(stored) :]
    assert len(lost) == waiting, (lost, waiting)


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_the_committing_modes_raise_at_once_while_writes_fail(
    cache_path: str, disk: PowerCutVFS, durability: str
) -> None:
    """For comparison (docs/guarantees.rst): "full" and "normal" commit before returning, so
    an insert on a failing disk raises at once, stores nothing, and the next one after the
    disk recovers works."""
    with _logger(cache_path, durability=durability) as lg:
        lg.insert("n", 1)
        disk.failing = "eio"
        with pytest.raises(CacheError):
            lg.insert("n", 2)
        disk.failing = None
        lg.insert("n", 3)
        assert [dp["d"] for dp in lg.export("n")] == [1, 3]


def test_close_while_commits_fail_says_how_many_it_loses(
    cache_path: str, disk: PowerCutVFS
) -> None:
    lg = _logger(cache_path)
    for value in range(3):
        lg.insert("n", value)  # accepted: no commit has failed yet
    disk.failing = "readonly"
    with pytest.raises(CacheError, match="3 datapoints accepted by insert"):
        lg.close()
    disk.failing = None
    with Logger(cache_path) as again:  # the file is sound; the 3 were never committed
        assert len(again) == 0
