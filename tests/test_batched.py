"""``durability="batched"`` (``cache/batched.py``): insert() returns once the datapoint is
queued in memory; a writer commits the queue at least every ``commit_interval``; what a power
cut loses is bounded by that window, and every datapoint accepted is stored or counted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from connectorsync import CacheFullError, Logger, TimestampError
from connectorsync.cache import Cache, batched

from .conftest import power_cut_run, wait_for


def _logger(path: str, **options: Any) -> Logger:
    def init(lg: Logger) -> None:
        lg.addStream("n", {"type": "integer"})

    options.setdefault("commit_interval", 3600.0)
    return Logger(path, on_create=init, durability="batched", **options)


def _committed(path: str) -> int:
    """How many datapoints another connection sees in the file."""
    other = Cache.connect(path)
    try:
        return int(other._read("SELECT count(*) FROM datapoints")[0][0])
    finally:
        other.close()


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
        for i in range(4):
            lg.insert("n", i)
        assert _committed(cache_path) == 0
        lg.insert("n", 4)
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
