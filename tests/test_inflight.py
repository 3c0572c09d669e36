"""A batch in flight is immutable (DESIGN "Delivery kinds").

Until its outcome is resolved, ``drop_oldest``, ``max_age``, ``cleardata()`` and re-anchoring
(NTP) leave the rows of a batch on the wire alone, and every datapoint is counted in exactly
one place: delivered, cached, dead-lettered, dropped, expired or cleared. The batch is held on
the wire inside a real loopback ConnectorDB server's handler while the cache is changed.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import apsw
import pytest

from connectorsync import HTTPRemote, Logger
from connectorsync.cache import BatchRequest, Cache, Limits, StreamRow
from connectorsync.cache.schema import MIGRATIONS
from connectorsync.delivery import SyncReport
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.ntp import NTPServer
from connectorsync.testing.receiver import HTTPReceiver


def stream_row(cache: Cache, stream: int) -> StreamRow:
    """The stream whose id is ``stream``, as a pass reads it."""
    return next(row for row in cache.streams().values() if row.id == stream)


def mark_in_flight(cache: Cache, stream: int, last_id: int) -> None:
    """Read the stream's datapoints up to ``last_id`` as a pass does: recorded in flight."""
    request = BatchRequest(upto_id=last_id, limit=10**6, max_bytes=10**9)
    cache.take_batch(stream_row(cache, stream), 0, request)


STREAM = "alice/sensor/n"


class HeldPush:
    """Holds the next data insert inside the server's handler, before it is stored, until
    :meth:`release`; :attr:`arrived` is set once it is held. (The server's ``reject`` hook
    runs for every datapoint of an insert, before the insert is committed.)"""

    def __init__(self, server: ConnectorDBServer):
        self.arrived = threading.Event()
        self._release = threading.Event()
        self._server = server
        server.reject(self._hold)

    def _hold(self, path: str, point: dict[str, Any]) -> bool:
        self.arrived.set()
        assert self._release.wait(30), "the held push was never released"
        return False  # stored as usual

    def release(self) -> None:
        self._release.set()
        self._server.reject(None)


class PassInThread:
    """``lg.sync()`` run in a thread of its own, the push held on the wire meanwhile."""

    def __init__(self, lg: Logger, server: ConnectorDBServer):
        self.hold = HeldPush(server)
        PASSES.append(self)
        self.report: SyncReport | None = None
        self._thread = threading.Thread(target=self._run, args=(lg,), daemon=True)
        self._thread.start()
        assert self.hold.arrived.wait(10), "the pass never pushed"

    def _run(self, lg: Logger) -> None:
        self.report = lg.sync()

    def finish(self) -> SyncReport:
        self.hold.release()
        self._thread.join(30)
        assert self.report is not None
        return self.report


PASSES: list[PassInThread] = []


@pytest.fixture
def lg(cache_path: str, server: ConnectorDBServer) -> Iterator[Logger]:
    with Logger(cache_path, apikey=server.apikey, durability="normal") as lg:
        lg.serverurl = server.url
        lg.addStream("n", {"type": "integer"})
        try:
            yield lg
        finally:  # a failed test must leave no handler held (close waits for the pass)
            while PASSES:
                PASSES.pop().hold.release()


def delivered(server: ConnectorDBServer, path: str = STREAM) -> list[Any]:
    try:
        return [p["d"] for p in server.datapoints(path)]
    except KeyError:
        return []


def cached(path: str, stream: str = "n") -> list[Any]:
    return [json.loads(d) for _, _, d in rows(path, stream)]


def rows(path: str, stream: str) -> list[tuple[int, float, str]]:
    cache = Cache.connect(path)
    try:
        return cache.batch(cache.streams()[stream].id, 0, 10**6)
    finally:
        cache.close()


def assert_counted_once(sent: list[Any], kept: list[Any], inserted: int, elsewhere: int) -> None:
    """Each datapoint is in exactly one place: delivered (once), cached, or ``elsewhere``."""
    assert len(sent) == len(set(sent)), f"delivered twice: {sent}"
    assert not set(sent) & set(kept), f"delivered and still cached: {set(sent) & set(kept)}"
    assert len(sent) + len(kept) + elsewhere == inserted


# ----------------------------------------------------------------------------- drop_oldest


def test_drop_oldest_leaves_the_batch_on_the_wire_alone(lg: Logger, server) -> None:
    lg.max_cached = 10
    lg.on_full = "drop_oldest"
    lg.insert_many("n", list(range(6)))
    sync = PassInThread(lg, server)  # 0..5 on the wire
    lg.insert_many("n", list(range(6, 10)))  # full now
    for i in range(10, 13):
        lg.insert("n", i)  # each drops the oldest datapoint that is not on the wire
    report = sync.finish()
    assert report.ok and report.sent == {"n": 6}
    sent, kept = delivered(server), cached(lg.path)
    assert sent == list(range(6))
    assert kept == [9, 10, 11, 12]  # 6, 7, 8 were dropped, not 0, 1, 2
    assert lg.status().dropped == 3
    assert_counted_once(sent, kept, 13, lg.status().dropped)


def test_drop_oldest_stores_on_top_when_only_the_batch_on_the_wire_is_left(
    lg: Logger, server
) -> None:
    """drop_oldest never refuses an insert: when all that is cached is being sent (and so
    cannot be dropped), the new datapoints go on top of max_cached until the batch is
    settled, and nothing is counted twice."""
    lg.max_cached = 5
    lg.on_full = "drop_oldest"
    lg.insert_many("n", list(range(5)))
    sync = PassInThread(lg, server)
    lg.insert("n", 5)
    assert len(lg) == 6 and lg.status().dropped == 0  # over the cap by the batch on the wire
    lg.insert_many("n", [6, 7])  # what is not on the wire makes room: 5 goes
    assert cached(lg.path) == [0, 1, 2, 3, 4, 6, 7] and lg.status().dropped == 1
    assert sync.finish().sent == {"n": 5}
    lg.insert("n", 8)
    assert cached(lg.path) == [6, 7, 8]
    assert_counted_once(delivered(server), cached(lg.path), 9, lg.status().dropped)


def test_drop_oldest_at_the_cache_level_skips_rows_in_flight(cache_path: str) -> None:
    cache, _ = Cache.open(cache_path)
    cache.finish_create("normal")
    try:
        a = cache.put_stream("a", "{}").id
        b = cache.put_stream("b", "{}").id
        ids = [
            cache.append_many([(s, float(i), False, str(i), None)])[0][0]
            for i, s in enumerate([a, b, a, b, a, b])
        ]
        mark_in_flight(cache, a, ids[2])  # a's first two rows are on the wire; b has none
        limits = Limits(max_cached=6, drop_oldest=True)
        cache.append(b, 10.0, "10", restamp=False, limits=limits)
        cache.append(b, 11.0, "11", restamp=False, limits=limits)
        left = {r[0] for r in cache.batch(a, 0, 100)} | {r[0] for r in cache.batch(b, 0, 100)}
        assert ids[0] in left and ids[2] in left  # in flight: kept
        assert ids[1] not in left and ids[3] not in left  # b's oldest went instead
        assert cache.statistics()["dropped"] == 2
    finally:
        cache.close()


# ----------------------------------------------------------------------------- max_age, clear


def test_max_age_leaves_the_batch_on_the_wire_alone(lg: Logger, server) -> None:
    lg.addStream("other", {"type": "integer"})
    old = time.time() - 1000
    lg.insert_many("n", [{"t": old + i, "d": i} for i in range(5)])
    sync = PassInThread(lg, server)  # n's 0..4 on the wire (other has nothing to send yet)
    lg.insert_many("other", [{"t": old + i, "d": 10 + i} for i in range(3)])
    lg.max_age = 500
    lg.insert("other", 13)  # inserts expire now and then: the first one at once
    assert cached(lg.path, "other") == [13]  # old datapoints not in flight expire
    report = sync.finish()
    assert report.sent == {"n": 5}  # a pass delivers what was cached when it began
    assert lg.sync().sent == {"other": 1}
    assert lg.status().expired == 3
    assert delivered(server) == list(range(5))
    assert_counted_once(delivered(server), cached(lg.path), 5, 0)
    other = delivered(server, "alice/sensor/other")
    assert_counted_once(other, cached(lg.path, "other"), 4, lg.status().expired)


def test_cleardata_leaves_the_batch_on_the_wire_alone(lg: Logger, server) -> None:
    lg.insert_many("n", list(range(5)))
    sync = PassInThread(lg, server)
    lg.insert_many("n", list(range(5, 8)))
    cleared = lg.cleardata()
    assert cleared == 3
    assert sync.finish().sent == {"n": 5}
    assert_counted_once(delivered(server), cached(lg.path), 8, cleared)
    assert delivered(server) == list(range(5)) and len(lg) == 0


# ----------------------------------------------------------------------------- dead letters


def letters_stored(path: str) -> int:
    """Rows of the dead-letter table, queued again or not."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return next(conn.execute("SELECT count(*) FROM deadletters"))[0]
    finally:
        conn.close()


def one_requeued_letter(lg: Logger, server: ConnectorDBServer, points: list[Any]) -> None:
    """Insert ``points``; the server refuses the value 2, which is then queued again."""
    server.reject(lambda path, point: point["d"] == 2)
    lg.insert_many("n", points)
    assert lg.sync().deadlettered == {"n": 1}
    server.reject(None)
    assert lg.retry_deadletters(restamp=True) == 1
    assert lg.deadletters() == [] and len(lg) == 1


def test_cleardata_puts_a_requeued_dead_letter_back(lg: Logger, server) -> None:
    one_requeued_letter(lg, server, [1, 2, 3])
    assert lg.cleardata() == 0  # not cleared: a dead letter again, as "dead letters stay"
    assert len(lg) == 0
    (letter,) = lg.deadletters()
    assert (letter.d, letter.attempts) == (2, 1)
    assert lg.status().streams["n"].deadletters == 1
    assert lg.retry_deadletters(restamp=True) == 1  # and it can be retried...
    assert lg.sync().sent == {"n": 1}
    assert delivered(server) == [1, 3, 2] and letters_stored(lg.path) == 0
    one_requeued_letter(lg, server, [4, 2])
    lg.cleardata()
    assert lg.purge_deadletters() == 1  # ...or purged
    assert letters_stored(lg.path) == 0


def test_a_requeued_dead_letter_dropped_is_counted_once(lg: Logger, server) -> None:
    one_requeued_letter(lg, server, [1, 2, 3])
    lg.max_cached = 1
    lg.on_full = "drop_oldest"
    lg.insert("n", 4)  # drops the queued letter's datapoint
    assert lg.status().dropped == 1
    assert lg.deadletters() == [] and letters_stored(lg.path) == 0  # counted as dropped only


def test_a_requeued_dead_letter_expired_is_counted_once(lg: Logger, server) -> None:
    old = time.time() - 1000
    one_requeued_letter(lg, server, [{"t": old + i, "d": i} for i in range(1, 4)])
    lg.max_age = 500
    lg.sync()  # a pass expires first
    assert lg.status().expired == 1
    assert lg.deadletters() == [] and letters_stored(lg.path) == 0  # counted as expired only
    assert delivered(server) == [1, 3]


# ----------------------------------------------------------------------------- re-anchoring


@pytest.fixture
def cache(cache_path: str) -> Iterator[Cache]:
    cache, _ = Cache.open(cache_path)
    cache.finish_create("normal")
    try:
        yield cache
    finally:
        cache.close()


def untrusted_rows(cache: Cache, monos: list[float], wall: float = 1000.0) -> tuple[int, int]:
    """A stream with a datapoint per boot-clock reading in ``monos``, stamped ``wall + mono``
    by an untrusted clock (kept increasing). Returns (stream id, boot)."""
    stream = cache.put_stream("s", "{}").id
    boot = cache.boot_key("boot-1")
    for i, mono in enumerate(monos):
        cache.append(stream, wall + mono, str(i), restamp=True, untrusted=(boot, mono))
    return stream, boot


def times(cache: Cache, stream: int) -> list[float]:
    return [t for _, t, _ in cache.batch(stream, 0, 100)]


def test_reanchor_leaves_rows_in_flight_alone_and_retimes_them_once_resolved(
    cache: Cache,
) -> None:
    stream, boot = untrusted_rows(cache, [10, 11, 12, 13, 14, 15])
    ids = [i for i, _, _ in cache.batch(stream, 0, 100)]
    mark_in_flight(cache, stream, ids[2])  # the first three are on the wire
    assert cache.reanchor(boot, true_now=5020.0, boot_clock_now=20.0) == 3
    assert times(cache, stream) == pytest.approx([1010, 1011, 1012, 5013, 5014, 5015])
    assert cache.untrusted_count(boot) == 3  # still as sent: a reconcile compares with them
    assert cache.reanchor(boot, 5020.0, 20.0) == 0  # again: still in flight, still alone
    # The remote holds the first two: they are delivered; the third was not, and it gets its
    # true time as the batch is resolved.
    assert cache.ack_reconciled(stream, remote_newest=1011.5) == 2
    assert times(cache, stream) == pytest.approx([5012, 5013, 5014, 5015])
    assert cache.untrusted_count(boot) == 0
    assert cache.reanchor_leftovers() == 0


def test_reanchor_retimes_the_backlog_below_a_batch_in_flight_and_leaves_the_batch(
    cache: Cache,
) -> None:
    """A live batch (13, 14) on the wire above an unsent backlog (10..12): NTP re-times the
    backlog and what is above, never the batch; once resolved it is re-timed too, and the
    stream is in order. On b064757 the mark held every id up to 14: only 15 was re-timed."""
    stream, boot = untrusted_rows(cache, [10, 11, 12, 13, 14, 15])
    ids = [i for i, _, _ in cache.batch(stream, 0, 100)]
    request = BatchRequest(upto_id=ids[4], limit=10, max_bytes=10**9)
    cache.take_batch(stream_row(cache, stream), ids[2], request)
    assert cache.reanchor(boot, true_now=5020.0, boot_clock_now=20.0) == 4
    assert times(cache, stream) == pytest.approx([5010, 5011, 5012, 1013, 1014, 5015])
    assert cache.ack_reconciled(stream, remote_newest=None) == 0  # nothing arrived
    after = times(cache, stream)
    assert after == pytest.approx([5010, 5011, 5012, 5013, 5014, 5015])
    assert all(a < b for a, b in itertools.pairwise(after))


def test_retimed_leftovers_keep_the_stream_in_order(cache: Cache) -> None:
    """The wall clock was ahead (true time 500 s behind it): rows re-timed while others are in
    flight go just after those; the leftovers, re-timed later, after the delivered ones; and
    a leftover re-timed past a later row pushes that row on (the nudge only moves forward)."""
    stream, boot = untrusted_rows(cache, [10, 12, 11.5, 13])  # two processes: mono 11.5 late
    ids = [i for i, _, _ in cache.batch(stream, 0, 100)]
    mark_in_flight(cache, stream, ids[1])
    cache.reanchor(boot, true_now=520.0, boot_clock_now=20.0)
    before = times(cache, stream)
    assert before[:2] == pytest.approx([1010, 1012])  # in flight: as sent
    assert before[1] < before[2] < before[3] and before[2] - before[1] < 1e-5  # nudged after
    assert cache.ack_reconciled(stream, remote_newest=None) == 0  # nothing arrived
    after = times(cache, stream)
    assert after[0] == pytest.approx(510) and after[1] == pytest.approx(512)
    assert all(a < b for a, b in itertools.pairwise(after))  # 511.5 became 512 + 1 µs

    # Another stream, the wall clock behind: leftovers land before the rows re-timed earlier.
    other = cache.put_stream("o", "{}").id
    for mono in (30, 31, 32):
        cache.append(other, 1000 + mono, "1", restamp=True, untrusted=(boot, mono))
    first = cache.batch(other, 0, 1)[0][0]
    mark_in_flight(cache, other, first)
    cache.reanchor(boot, true_now=5040.0, boot_clock_now=40.0)
    assert cache.reanchor_leftovers() == 0  # still in flight
    cache.release_inflight(other)  # resolved: not sent (a refused batch is bisected, say)
    assert cache.reanchor_leftovers() == 1
    assert times(cache, other) == pytest.approx([5030, 5031, 5032])


def test_the_anchor_survives_for_leftovers_of_an_earlier_boot(cache_path: str) -> None:
    cache, _ = Cache.open(cache_path)
    cache.finish_create("normal")
    stream, boot = untrusted_rows(cache, [10, 11])
    mark_in_flight(cache, stream, cache.batch(stream, 0, 1)[0][0])
    cache.reanchor(boot, true_now=5020.0, boot_clock_now=20.0)
    cache.close()  # kill -9 with the batch on the wire, say; the device reboots
    cache = Cache.connect(cache_path)
    try:
        later = cache.boot_key("boot-2")
        cache.reanchor(later, true_now=9000.0, boot_clock_now=5.0)
        assert cache.ack_reconciled(stream, remote_newest=None) == 0
        assert times(cache, stream) == pytest.approx([5010, 5011])
    finally:
        cache.close()


OFFSET = 1000.0  # the system clock is this much slow: the NTP server says so


@pytest.fixture
def ntp() -> Iterator[NTPServer]:
    with NTPServer(offset=OFFSET) as server:
        server.silent = True  # no answer until a test says so
        yield server


def unresolved_push(lg: Logger, server: ConnectorDBServer, *, stored: bool) -> None:
    """A pass whose push gets no answer (the server stored the batch, or not) and whose
    reconciling read fails too: the batch stays in flight, as after a kill -9 mid-push."""
    if stored:
        server.drop_after_commit(1)
    else:
        server.drop_before(1)
    server.fail_next(1, status=503, methods={"GET"}, path="/data")
    report = lg.sync()
    assert not report.ok and report.sent == {}
    cache = Cache.connect(lg.path)
    try:
        assert cache.streams()["n"].inflight  # the record stays: the next pass asks first
    finally:
        cache.close()


@pytest.mark.parametrize("stored", [True, False], ids=["answer-lost", "not-stored"])
def test_ntp_answering_while_a_batch_is_unresolved_sends_nothing_twice(
    cache_path: str, server: ConnectorDBServer, ntp: NTPServer, stored: bool
) -> None:
    """NTP answers between a lost answer and the next pass: the pass re-times the cached
    datapoints before it reconciles. The batch in flight must keep the times it was sent
    with, or the reconcile misses that the server holds it, and sends it again."""
    with Logger(cache_path, apikey=server.apikey, ntp_server=ntp.address, http_timeout=1) as lg:
        lg.serverurl = server.url
        lg.addStream("n", {"type": "integer"})
        lg.insert_many("n", [1, 2, 3])  # stamped by the untrusted (slow) clock
        unresolved_push(lg, server, stored=stored)
        lg.insert("n", 4)
        ntp.silent = False
        report = lg.sync()  # NTP first, then the reconcile, then the rest
        assert report.ok and report.sent == {"n": 4}
        assert lg.status().untrusted == 0 and len(lg) == 0
    points = server.datapoints(STREAM)
    assert [p["d"] for p in points] == [1, 2, 3, 4]  # once each
    now = time.time()
    if stored:  # delivered as they were stamped: only 4 is in true time
        assert [abs(p["t"] - now) < 60 for p in points] == [True, True, True, False]
    assert abs(points[-1]["t"] - (now + OFFSET)) < 60
    if not stored:  # sent again after the reconcile: every one in true time
        assert all(abs(p["t"] - (now + OFFSET)) < 60 for p in points)


# ------------------------------------------------- issue 16: a mark holds only its own rows


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver().start()
    try:
        yield rcv
    finally:
        rcv.stop()


def _live_batch_without_answer(path: str, receiver: HTTPReceiver) -> Logger:
    """A Logger whose stream "s" holds a backlog of 90 old datapoints (0..89, never sent)
    and, above it, a live batch of 10 (90..99) that went out and whose answer was lost."""
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    lg = Logger(path, remote=remote, batch_size=10, durability="normal")
    lg.addStream_force("s", {"type": "integer"})
    old = time.time() - 10_000
    lg.insert_many("s", [{"t": old + i, "d": i} for i in range(90)])
    receiver.fail_next(1, 503)
    assert not lg.sync().ok  # a pass began: what is cached now is the backlog
    lg.insert_many("s", list(range(90, 100)))
    receiver.drop_after_commit(1)  # the live batch arrives; its answer is lost
    report = lg.sync()
    assert not report.ok and not report.sent
    assert [item["d"] for item in receiver.items("/ingest/s")] == list(range(90, 100))
    return lg


def test_a_live_batch_without_answer_holds_only_its_own_rows(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """The in-flight mark is exactly the batch's rows: ``drop_oldest`` drops the unsent
    backlog below it first, then the oldest new readings, and keeps the batch. On b064757
    the mark covered every id up to the batch's last, backlog included: 295 of the 300
    new readings were dropped and the 90 old, never-sent ones kept."""
    with _live_batch_without_answer(cache_path, receiver) as lg:
        lg.max_cached, lg.on_full = 100, "drop_oldest"
        for value in range(100, 400):
            lg.insert("s", value)
        assert cached(cache_path, "s") == list(range(90, 100)) + list(range(310, 400))
        assert lg.status().dropped == 300
        report = lg.sync()  # the batch without answer first, then the rest
        assert report.ok and report.sent == {"s": 100} and len(lg) == 0
    sent = [item["d"] for item in receiver.items("/ingest/s")]
    assert sent[10:20] == list(range(90, 100))  # sent again first (at least once)
    assert sorted(sent[10:]) == list(range(90, 100)) + list(range(310, 400))


def test_an_ordered_batch_without_answer_unreconciled_holds_only_its_own_rows(
    lg: Logger, server: ConnectorDBServer
) -> None:
    """A lost answer whose reconciliation fails too keeps the mark of the batch sent, not
    of the next one read ahead meanwhile (never sent): ``cleardata()`` clears that one. On
    5740d66 an ordered remote kept the read-ahead rows marked (the model test, batched:
    ``cleardata() left {'b': 3} cached`` with ``batch_size=2``)."""
    lg.batch_size = 2
    lg.insert_many("n", [0, 1, 2])
    server.drop_after_commit(1)  # [0, 1] stored, its answer lost
    server.fail_next(1, status=503, methods=["GET"], path="/data")  # so is the reconcile
    report = lg.sync()
    assert not report.ok and not report.sent
    assert lg.cleardata() == 1  # 2 was read ahead, never sent
    assert cached(lg.path) == [0, 1]
    server.clear_faults()
    report = lg.sync()  # reconciled: [0, 1] had arrived
    assert report.ok and report.sent == {"n": 2} and len(lg) == 0
    assert delivered(server) == [0, 1]
    assert_counted_once(delivered(server), cached(lg.path), 3, 1)


@pytest.mark.parametrize("how", ["cleardata", "max_age"])
def test_cleardata_and_max_age_pass_by_only_the_batch_without_answer(
    cache_path: str, receiver: HTTPReceiver, how: str
) -> None:
    """``cleardata()`` and ``max_age`` leave the live batch without answer alone and act on
    the backlog below it (on b064757 they skipped that backlog too: nothing was cleared
    or expired)."""
    with _live_batch_without_answer(cache_path, receiver) as lg:
        if how == "cleardata":
            assert lg.cleardata() == 90
        else:
            lg.max_age = 1000
            lg.insert("s", 100)  # inserts expire now and then: the first one at once
            assert lg.status().expired == 90
        assert cached(cache_path, "s")[:10] == list(range(90, 100))
        assert len(lg) == (10 if how == "cleardata" else 11)
        assert lg.sync().ok and len(lg) == 0


def test_a_mark_of_an_older_cache_keeps_its_meaning_after_the_migration(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """A v4 cache's mark meant every id up to it: after the migration (backup first) those
    rows are still in flight, sent again first; what is above is at rest."""
    conn = apsw.Connection(cache_path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    for _, step in MIGRATIONS[:4]:
        step(conn)
    conn.execute("PRAGMA user_version=4")
    conn.execute(
        "INSERT INTO streams (name, schema, remote_created, inflight) "
        "VALUES ('s', '{\"type\":\"integer\"}', 1, 3)"
    )
    for i in range(6):
        conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)", (1.7e9 + i, str(i)))
    conn.close()
    os.chmod(cache_path, 0o600)
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    with Logger(cache_path, remote=remote, batch_size=2) as lg:
        assert os.path.exists(cache_path + ".v4-backup")
        assert lg.cleardata() == 3  # 3, 4, 5: 0, 1, 2 are in flight
        assert lg.sync().sent == {"s": 3}
    assert [item["d"] for item in receiver.items("/ingest/s")] == [0, 1, 2]
