"""The probes tests use instead of private names (``tests/test_private_names.py``):
:class:`connectorsync.testing.probe.CacheProbe` reads the cache file, read-only, and says what
is committed there; :mod:`connectorsync.testing.live` reaches what exists only in a running
Logger (its own connection's pragmas, a full disk for it, its batched commits, its syncer's
wake)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from connectorsync import CacheFullError, HTTPRemote, Logger, UnknownStreamError
from connectorsync.testing.live import (
    commit_latency,
    connection_pragma,
    fill_disk_after,
    wake_pending,
)
from connectorsync.testing.probe import CacheProbe
from connectorsync.testing.receiver import HTTPReceiver


def fingerprint(path: str) -> list[tuple[str, str]]:
    """The bytes of the cache file and its WAL, hashed."""
    found = []
    for name in (path, path + "-wal"):
        if os.path.exists(name):
            with open(name, "rb") as f:
                found.append((name, hashlib.sha256(f.read()).hexdigest()))
    return found


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver().start()
    try:
        yield rcv
    finally:
        rcv.stop()


def test_a_probe_reads_what_is_committed_and_writes_nothing(cache_path: str) -> None:
    with Logger(cache_path, durability="normal") as lg:
        lg.add_stream("s", {"type": "integer"})
        lg.add_stream("other", {"type": "string"})
        lg.insert_many("s", [{"t": 100.0 + i, "d": i} for i in range(3)])
        lg.insert("other", "x")
        lg.data = {"site": "a"}
        before = fingerprint(cache_path)
        with CacheProbe(cache_path) as probe:
            rows = probe.rows("s")
            assert [(t, d) for _, t, d in rows] == [(100.0, "0"), (101.0, "1"), (102.0, "2")]
            assert [i for i, _, _ in rows] == sorted(i for i, _, _ in rows)
            assert probe.values("other") == ["x"]
            assert probe.newest_id() == max(i for i, _, _ in rows) + 1  # "other"'s, later
            assert probe.settings()["data"] == {"site": "a"}
            assert probe.pragma("journal_mode") == "wal"
            assert probe.integrity() == "ok"
            assert probe.used_bytes() > 0
            assert probe.inflight("s") is None
            assert probe.deadletters() == []
            with pytest.raises(UnknownStreamError, match="no stream 'ghost'"):
                probe.rows("ghost")
            lg.insert("s", 3)  # committed after the probe opened: seen by its next read
            assert probe.values("s") == [0, 1, 2, 3]
        assert fingerprint(cache_path) != before  # the insert wrote...
        after = fingerprint(cache_path)
        with CacheProbe(cache_path) as probe:
            probe.rows("s"), probe.settings(), probe.integrity(), probe.used_bytes()
        assert fingerprint(cache_path) == after  # ...the probe did not


def test_a_probe_sees_a_batch_in_flight_and_the_dead_letters(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    with Logger(cache_path, remote=remote, batch_size=10) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", list(range(4)))
        receiver.drop_after_commit(1)  # the batch arrives, its answer is lost
        assert not lg.sync().ok
        with CacheProbe(cache_path) as probe:
            ids = [i for i, _, _ in probe.rows("s")]
            assert probe.inflight("s") == (ids[0], ids[-1])  # kept until resolved
        receiver.reject(lambda path, item: item["d"] == 2)
        report = lg.sync()
        assert report.deadlettered == {"s": 1}
        with CacheProbe(cache_path) as probe:
            assert probe.inflight("s") is None
            assert probe.rows("s") == []
            [letter] = probe.deadletters()
            assert (letter.stream, letter.d) == ("s", "2")
            assert letter.reason == lg.deadletters()[0].reason


def test_the_live_hooks_reach_the_loggers_own_connection(cache_path: str) -> None:
    with Logger(cache_path, durability="normal", sync_threshold=2) as lg:
        lg.add_stream("s", {"type": "integer"})
        assert connection_pragma(lg, "synchronous") == 1  # NORMAL, on the Logger's connection
        with CacheProbe(cache_path) as probe:
            assert probe.pragma("synchronous") == 2  # a connection of its own: its default
        lg.insert("s", 0)
        assert not wake_pending(lg)
        lg.insert("s", 1)  # sync_threshold reached: the (stopped) syncer is woken
        assert wake_pending(lg)
        fill_disk_after(lg, 0)
        with pytest.raises(CacheFullError):
            lg.insert_many("s", list(range(2, 5000)))
        assert len(lg) == 2  # nothing of it was stored
        fill_disk_after(lg, 10_000)  # room again
        lg.insert("s", 2)
        assert commit_latency(lg) is None  # not batched: no batched commit to time
    with Logger(cache_path, durability="batched") as lg:
        lg.insert("s", 3)
        lg.flush()
        latency = commit_latency(lg)
        assert latency is not None and latency >= 0
