"""The sync engine under faults, against a real loopback server that injects them.

Bisection of poison, dead letters, lost acknowledgements, backoff and stop, auth pause,
sync triggers, and one syncer per cache file.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from connectorsync import CacheError, ConnectorDBRemote, Logger, TransientRemoteError
from connectorsync.cache import Batch, Cache
from connectorsync.remotes.base import Datapoint
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.live import wake_pending

from .conftest import syncing_child, wait_for

STREAM = "alice/sensor/temperature"


def values(server: ConnectorDBServer, path: str = STREAM) -> list[float]:
    """The values stored in the stream; [] while it does not exist."""
    try:
        return [p["d"] for p in server.datapoints(path)]
    except KeyError:
        return []


def inserts(server: ConnectorDBServer) -> int:
    return sum(1 for method, path in server.requests if method == "POST" and "/data" in path)


# ----------------------------------------------------------------------------- poison


def test_poison_is_bisected(logger: Logger, server: ConnectorDBServer) -> None:
    bad = {13.0, 57.0, 58.0}
    server.reject(lambda stream, point: point["d"] in bad)
    logger.insert_many("temperature", [float(i) for i in range(100)])
    report = logger.sync()
    assert report.ok, report.errors
    assert report.sent == {"temperature": 97}
    assert report.deadlettered == {"temperature": 3}
    assert values(server) == [float(i) for i in range(100) if i not in bad]
    letters = logger.deadletters()
    assert [(d.stream, d.d, d.attempts) for d in letters] == [
        ("temperature", 13.0, 1),
        ("temperature", 57.0, 1),
        ("temperature", 58.0, 1),
    ]
    assert all("did not conform" in d.reason and d.failed_at > 0 for d in letters)
    assert logger.status().streams["temperature"].deadletters == 3
    assert len(logger) == 0
    # Bisection costs O(bad * log n) requests, not one per datapoint.
    assert inserts(server) < 3 * 2 * 8


def test_dead_letters_retry_and_purge(logger: Logger, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] < 0)
    logger.insert_many("temperature", [1.0, -1.0, 2.0, -2.0, 3.0])
    logger.sync()
    letters = logger.deadletters("temperature")
    assert [d.d for d in letters] == [-1.0, -2.0]
    assert logger.deadletters("humidity") == []

    # Refused again: the same letter, one more attempt.
    # Queued again with new times (restamp): test_deadletters.py sends them with their own.
    assert logger.retry_deadletters([letters[0].id], restamp=True) == 1
    assert [d.d for d in logger.deadletters()] == [-2.0]  # the other one rests meanwhile
    report = logger.sync()
    assert report.deadlettered == {"temperature": 1}
    again = logger.deadletters()
    assert sorted((d.d, d.attempts) for d in again) == [(-2.0, 1), (-1.0, 2)]

    # The remote accepts them now: retried letters are delivered, after the newest point.
    server.reject(None)
    assert logger.retry_deadletters(restamp=True) == 2
    report = logger.sync()
    assert report.sent == {"temperature": 2}
    assert logger.deadletters() == []
    assert values(server) == [1.0, 2.0, 3.0, -1.0, -2.0]
    times = [p["t"] for p in server.datapoints(STREAM)]
    assert times == sorted(times)

    server.reject(lambda stream, point: True)
    logger.insert("temperature", 4.0)
    logger.sync()
    assert logger.purge_deadletters() == 1
    assert logger.deadletters() == []
    assert logger.purge_deadletters([12345]) == 0


def test_oversized_datapoint_becomes_a_dead_letter(logger: Logger, server) -> None:
    logger.addStream("blob", {"type": "string"})
    logger.insert("blob", "x" * (9 * 1024 * 1024))
    logger.insert("blob", "small")
    report = logger.sync()
    assert report.sent == {"blob": 1} and report.deadlettered == {"blob": 1}
    assert "byte limit" in logger.deadletters()[0].reason


# ----------------------------------------------------------------------------- exactly once


def test_lost_acknowledgement_is_reconciled(logger: Logger, server: ConnectorDBServer) -> None:
    logger.insert_many("temperature", [1.0, 2.0, 3.0])
    server.drop_after_commit(1)
    report = logger.sync()
    assert not report.ok  # the answer was lost...
    assert report.sent == {"temperature": 3}  # ...but reconciliation proved it delivered
    assert len(logger) == 0
    logger.insert("temperature", 4.0)
    assert logger.sync().ok
    assert values(server) == [1.0, 2.0, 3.0, 4.0]  # once each
    assert logger.deadletters() == []


def test_request_dropped_before_commit_is_sent_again(logger: Logger, server) -> None:
    logger.insert_many("temperature", [1.0, 2.0])
    server.drop_before(1)
    report = logger.sync()
    assert not report.ok and report.sent == {}
    assert len(logger) == 2
    assert logger.sync().sent == {"temperature": 2}
    assert values(server) == [1.0, 2.0]


def test_unresolved_batch_is_reconciled_before_anything_is_sent(logger: Logger, server) -> None:
    """The answer was lost and the reconciling read failed too: the in-flight record stays,
    and the next pass asks the remote first instead of sending a duplicate."""
    logger.insert_many("temperature", [1.0, 2.0])
    server.drop_after_commit(1)
    server.fail_next(1, status=503, methods={"GET"}, path="/data")  # the reconciling read
    logger.sync()
    assert len(logger) == 2  # not known to be delivered yet
    logger.insert("temperature", 3.0)
    report = logger.sync()
    assert report.ok and report.sent == {"temperature": 3} and not report.deadlettered
    assert values(server) == [1.0, 2.0, 3.0]
    assert len(logger) == 0 and logger.deadletters() == []


# ----------------------------------------------------------------------------- background


def test_background_sync_retries_transient_failures(
    cache_path: str, server: ConnectorDBServer, fast_backoff: None
) -> None:
    lg = Logger(cache_path, apikey=server.apikey, sync_threshold=3)
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    server.fail_next(4, status=503)
    lg.start()
    lg.insert_many("temperature", [1.0, 2.0, 3.0])
    wait_for(lambda: len(values(server)) == 3, what="delivery after retries")
    assert values(server) == [1.0, 2.0, 3.0]
    lg.close()


def test_stop_returns_at_once_during_a_long_backoff(cache_path: str, server) -> None:
    lg = Logger(cache_path, apikey=server.apikey, sync_jitter=0)
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.insert("temperature", 1.0)
    server.fail_next(100, status=503, retry_after=60)
    lg.start()
    wait_for(lambda: (lg.status().next_attempt or 0) > time.time() + 50, what="a 60 s backoff")
    assert "503" in (lg.status().last_error or "")
    began = time.monotonic()
    lg.stop()
    assert time.monotonic() - began < 1.0
    assert lg.status().next_attempt is None
    assert len(lg) == 1  # nothing was given up on
    lg.close()


def test_auth_failure_pauses(cache_path: str, server: ConnectorDBServer) -> None:
    failures: list[Exception] = []
    lg = Logger(
        cache_path, apikey="wrong", sync_threshold=1, onsyncfail=failures.append, sync_jitter=0
    )
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.start()
    wait_for(lambda: lg.status().paused, what="the pause")
    status = lg.status()
    assert "credentials refused" in (status.last_error or "")
    assert failures and failures[0].status == 401  # type: ignore[attr-defined]
    asked = len(server.requests)
    # Inserts over the threshold wake the syncer, which stays paused: no hammering.
    for i in range(5):
        lg.insert("temperature", float(i))
        wait_for(lambda: not wake_pending(lg), what="the wake to be handled")
    assert len(server.requests) == asked
    # A new apikey resumes at once.
    lg.apikey = server.apikey
    wait_for(lambda: len(values(server)) == 5, what="delivery after resume")
    assert not lg.status().paused
    lg.close()


def test_sync_threshold_and_syncperiod_wake_the_syncer(cache_path: str, server) -> None:
    lg = Logger(cache_path, apikey=server.apikey, sync_threshold=10, sync_jitter=0)
    lg.serverurl = server.url
    lg.syncperiod = 3600
    lg.addStream("temperature", {"type": "number"})
    lg.start()
    wait_for(lambda: lg.lastsynctime > 0, what="the first pass")
    lg.insert_many("temperature", [float(i) for i in range(9)])
    lg.insert("temperature", 9.0)  # the tenth: the threshold
    wait_for(lambda: len(values(server)) == 10, what="threshold sync")
    lg.insert("temperature", 10.0)
    lg.syncperiod = 3600  # setting the period starts it afresh, with a pass now
    wait_for(lambda: len(values(server)) == 11, what="period sync")
    status = lg.status()
    assert status.next_attempt is not None and status.next_attempt > time.time() + 3000
    lg.close()


def test_start_never_blocks_on_the_network(cache_path: str, server) -> None:
    lg = Logger(cache_path, apikey=server.apikey, http_timeout=5)
    lg.serverurl = server.url
    server.delay(3, n=1)
    began = time.monotonic()
    lg.start()
    lg.start()  # twice is harmless
    assert time.monotonic() - began < 1.0
    server.delay(0)
    lg.close()


def started(cache_path: str, server: ConnectorDBServer) -> Logger:
    """A Logger with a started background syncer (period an hour) past its first pass."""
    lg = Logger(cache_path, apikey=server.apikey, sync_jitter=0)
    lg.serverurl = server.url
    lg.syncperiod = 3600
    lg.addStream("temperature", {"type": "number"})
    lg.start()
    wait_for(lambda: lg.lastsynctime > 0, what="the first pass")
    return lg


def test_close_makes_one_last_bounded_drain(cache_path: str, server) -> None:
    lg = started(cache_path, server)
    lg.insert_many("temperature", [1.0, 2.0])
    lg.close(timeout=5)
    lg.close()
    assert values(server) == [1.0, 2.0]
    with Logger(cache_path) as again:
        assert len(again) == 0


def test_manual_sync_does_not_retry(logger: Logger, server) -> None:
    logger.insert("temperature", 1.0)
    server.fail_next(1, status=503)
    report = logger.sync()
    assert isinstance(report.exception, TransientRemoteError)
    assert inserts(server) == 0


# ----------------------------------------------------------------------------- one syncer


@pytest.fixture
def other_syncer(cache_path: str, server: ConnectorDBServer) -> Iterator[subprocess.Popen]:
    """Another process with a background syncer on the same cache file."""
    Logger(
        cache_path,
        apikey=server.apikey,
        on_create=lambda lg: lg.addStream_force("temperature", {"type": "number"}),
    ).close()
    with syncing_child(cache_path, server.url) as proc:
        yield proc


def test_one_syncer_per_cache_file(cache_path: str, server, other_syncer) -> None:
    with Logger(cache_path) as lg:
        lg.insert("temperature", 1.0)  # inserting is free
        report = lg.sync()
        assert f"pid {other_syncer.pid}" in report.errors["*"]
        assert len(lg) == 1
        other_syncer.kill()  # the lease dies with its process...
        other_syncer.wait()
        assert lg.sync().sent == {"temperature": 1}  # ...and is taken over


def test_second_logger_in_one_process_does_not_sync_concurrently(logger: Logger, server) -> None:
    logger.syncperiod = 3600
    logger.sync_jitter = 0
    logger.start()
    wait_for(lambda: logger.lastsynctime > 0, what="the first pass")
    with Logger(logger.path) as second:
        second.insert("temperature", 1.0)
        assert "another Logger of this process syncs" in second.sync().errors["*"]
    logger.stop()
    with Logger(logger.path) as second:
        assert second.sync().sent == {"temperature": 1}


def test_close_with_no_time_left_keeps_the_backlog(cache_path: str, server) -> None:
    lg = started(cache_path, server)
    lg.insert_many("temperature", [1.0, 2.0])
    lg.close(timeout=0)
    assert values(server) == []
    with Logger(cache_path) as again:
        assert len(again) == 2
        report = again.sync()
        assert report.ok and report.sent == {"temperature": 2}


class NotingRemote(ConnectorDBRemote):
    """The real ConnectorDB remote; ``before(first_id)`` runs before each push."""

    def __init__(self, server: ConnectorDBServer, before: Callable[[int], None]):
        super().__init__(server.url, server.apikey)
        self.before = before

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        self.before(batch[0][0])
        super().push(stream, batch)


def test_a_delivered_batch_is_deleted_while_the_next_is_sent(
    cache_path: str, server: ConnectorDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete of batch 1 waits until batch 2 is on the wire: a syncer that deleted
    batch 1 before sending batch 2 would never get there (the delete gives up after 5 s)."""
    second_sent = threading.Event()
    overlapped: list[bool] = []
    ack = Cache.ack

    def waiting_ack(self: Cache, batch: Batch, *, sent: int = 0) -> int:
        if batch.first_id == 1:
            overlapped.append(second_sent.wait(5))
        return ack(self, batch, sent=sent)

    monkeypatch.setattr(Cache, "ack", waiting_ack)
    remote = NotingRemote(server, lambda first: first == 3 and second_sent.set())
    with Logger(cache_path, remote=remote, batch_size=2) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [1.0, 2.0, 3.0, 4.0, 5.0])
        report = lg.sync()
        assert report.ok and report.sent == {"temperature": 5} and len(lg) == 0
    remote.close()
    assert overlapped == [True]
    assert values(server) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_lost_answer_while_the_previous_delete_runs_loses_and_duplicates_nothing(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """Batch 1's delete runs after batch 2 is recorded in flight, and batch 2's answer is
    lost: the record must still be batch 2's, so that the reconcile finds it delivered."""
    remote = NotingRemote(server, lambda first: first == 3 and server.drop_after_commit(1))
    with Logger(cache_path, remote=remote, batch_size=2) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [1.0, 2.0, 3.0, 4.0, 5.0])
        report = lg.sync()
        assert not report.ok  # the lost answer ends the pass...
        assert report.sent == {"temperature": 4} and len(lg) == 1  # ...reconciled
        assert lg.sync().ok
        assert lg.deadletters() == []
    remote.close()
    assert values(server) == [1.0, 2.0, 3.0, 4.0, 5.0]  # once each


def test_a_failed_delete_of_a_delivered_batch_is_reconciled(
    cache_path: str, server: ConnectorDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting batch 1 fails (an I/O error, say) while batch 2 is sent: the pass reports
    it, and the next pass finds batches 1 and 2 delivered instead of sending them again."""
    ack = Cache.ack
    failed: list[int] = []

    def failing_ack(self: Cache, batch: Batch, *, sent: int = 0) -> int:
        if batch.first_id == 1 and not failed:
            failed.append(batch.first_id)
            raise CacheError("disk I/O error (injected)")
        return ack(self, batch, sent=sent)

    monkeypatch.setattr(Cache, "ack", failing_ack)
    remote = ConnectorDBRemote(server.url, server.apikey)
    with Logger(cache_path, remote=remote, batch_size=2) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [1.0, 2.0, 3.0, 4.0, 5.0])
        report = lg.sync()
        assert "disk I/O error" in report.errors["temperature"]
        assert len(lg) == 5  # batch 2 was sent, but neither it nor batch 1 is deleted
        report = lg.sync()
        assert report.ok and report.sent == {"temperature": 5}  # 4 reconciled, 1 sent
        assert len(lg) == 0 and lg.deadletters() == []
    remote.close()
    assert values(server) == [1.0, 2.0, 3.0, 4.0, 5.0]  # once each


def test_close_during_a_bisection_keeps_the_stored_half_marked(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """A manual sync() bisects a refused batch; close() lands while the remote stores its
    first half, so the pass may not delete it. The half stays marked in flight and the next
    pass reconciles it: each datapoint is on the server once and only the refused one is a
    dead letter. Before the fix the failed delete settled the batch, its mark was released,
    and the next pass resent the stored half, which the server refused as older than what
    it holds: four false dead letters."""
    closed = threading.Event()

    def refuse(stream: str, point: dict) -> bool:  # type: ignore[type-arg]
        if point["d"] == 0.0 and inserts(server) == 2 and not closed.is_set():
            closed.set()  # the first half, on the server: the Logger closes meanwhile
            logger.close()
        return point["d"] == 7.0

    server.reject(refuse)
    logger.insert_many("temperature", [float(i) for i in range(10)])
    report = logger.sync()
    assert closed.is_set() and not report.ok
    assert values(server) == [0.0, 1.0, 2.0, 3.0, 4.0]
    with Logger(logger.path) as again:
        report = again.sync()
        assert report.ok, report.errors
        assert [d.d for d in again.deadletters()] == [7.0]
        assert len(again) == 0
    assert values(server) == [float(i) for i in range(10) if i != 7]
