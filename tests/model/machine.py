"""The model of delivery: a hypothesis state machine over a real Logger and cache file.

Rules insert, sync, inject every fault the servers have (5xx with Retry-After, connections
dropped before and after commit, refusal of chosen values, delay; for MQTT broker restarts,
lost PUBACKs, refusals and oversized datapoints), crash (the Logger is abandoned without
close and the file reopened), answer NTP with an offset, cap the cache with ``drop_oldest``,
expire by ``max_age``, retry (keeping or renewing timestamps) and purge dead letters, clear
the cache, change the apikey, fail every write and fsync for a while (EIO, read-only) and
recover, fork a child that inserts, drain, and run some of these while a batch is on the
wire. A variant sets the durability (``full`` or ``batched``) and the lanes (``live_first``
with a ``max_rate``).

Each datapoint is identified by a unique counter in its value (``n``, or ``"s<n>"`` for one
the remote may be told to refuse), never by its timestamp (NTP re-times datapoints). The
invariant after every step is tests/model/checks.py.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from connectorsync import Logger, SyncReport
from connectorsync.errors import CacheFullError, ConnectorSyncError, RemoteError
from connectorsync.testing.ntp import NTPServer

from ..helpers.failing_vfs import MODES, FailingVFS
from .backends import HTTP_TIMEOUT, STREAMS, Backend, ident
from .checks import check

DELAY = 0.15
FAULTS = st.sampled_from(
    [None, "fail", "drop_before", "lose_answer", "lose_answer_unreconciled", "delay"]
)  # below HTTP_TIMEOUT: a delayed request still answers in time
COMMIT_INTERVAL = 0.05  # durability="batched"
SEAL_KEY = bytes(range(32))  # the sealed variant's key
#: An insert raises within commit_interval + one failed commit attempt of a failing disk;
#: generous, for a loaded machine (this is a bound on a hang, not a speed target).
FAIL_WITHIN = 10.0
FORK_WITHIN = 10.0  # a forked child inserts one datapoint; batched: it commits it

#: Per machine: examples started and invariant checks made (one after each step and one
#: after the start), for the figures ``make soak`` prints.
RUNS: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)


class DeliveryModel(RuleBasedStateMachine):
    """One example: a fresh cache file and a fresh namespace on the class's server."""

    backend: Backend
    tmpdir: Path
    ntp: NTPServer
    vfs: FailingVFS
    durability = "full"
    #: on_full refuses an insert when the cache is full (tests/model/priorities.py's
    #: "thin_or_reject"): a refused insert is recorded as raised (never stored).
    refuses_when_full = False
    lanes = False  # live_first with a max_rate: the stored order is by lane, not insertion
    sealed = False  # a cache sealed at rest (issue 19): every value and credential sealed

    def __init__(self) -> None:
        super().__init__()
        self.backend.clear_faults()
        self.backend.new_example()
        self.backend.props = {}  # plain streams; tests/model/priorities.py gives its own
        self.path = str(self.tmpdir / f"cache-{uuid.uuid4().hex[:8]}.db")
        self.options: dict[str, Any] = {}
        self.lg: Logger | None = None
        self.abandoned: list[Logger] = []
        self.counter = 0
        self.stream_of: dict[int, str] = {}
        self.value_of: dict[int, Any] = {}  # as inserted: a cached one must stay the same
        self.t_of: dict[int, float] = {}  # as first seen cached (NTP and retries re-time)
        self.poison: set[int] = set()
        self.retried: set[int] = set()  # requeued out of order: left out of order checks
        self.kept_t: set[int] = set()  # retried with their own timestamps
        self.raised: set[int] = set()  # insert() raised: never stored anywhere
        self.present: set[int] = set()  # in the cache, a dead letter, or stored remotely
        self.local: set[int] = set()  # in the cache or a dead letter
        self.gone: set[int] = set()  # counted dropped, expired, cleared or purged
        self.sunk = 0  # datapoints this step counted as cleared or purged
        self.purged: set[int] = set()  # dead letters purged this step
        self.dropped = 0
        self.expired = 0
        self.thinned = 0  # status().thinned at the last check
        self.thinned_per: dict[str, int] = {}  # status().streams[s].thinned at the last check
        # A pass reported an error since the last clean one: a batch may be in flight
        # (never dropped nor thinned until it is settled).
        self.maybe_in_flight = False
        self.concurrent = False  # a step ran something while a pass had a batch on the wire
        self.refusing = self.backend.refuses_always or self.backend.refusal_only_lifts
        # A lost answer whose reconciliation failed was armed: stored-and-cached may last.
        # Sticky, since an armed fault may wait passes for a write to hit.
        self.unresolved = False
        # A lost answer may have happened: at_least_once may store a datapoint twice.
        self.may_duplicate = False
        self.ntp_mode = False
        self.clean_pass: bool | None = None  # set by a sync step: report.ok

    # -- plumbing ---------------------------------------------------------------------

    @property
    def logger(self) -> Logger:
        assert self.lg is not None
        return self.lg

    def open(self) -> None:
        self.lg = self.backend.logger(self.path, **self.options)

    def value(self, stream: str, poison: bool, pad: int = 0) -> Any:
        self.counter += 1
        n = self.counter
        self.stream_of[n] = stream
        value: Any = n
        if poison:
            self.poison.add(n)
            value = f"s{n}:" + "x" * pad if pad else f"s{n}"
        self.value_of[n] = value
        return value

    def put(self, stream: str, values: list[Any], *, many: bool = False) -> None:
        """``insert`` (or ``insert_many``) ``values``; refused when full (when the variant's
        ``on_full`` may refuse): recorded as raised."""
        try:
            if many:
                self.logger.insert_many(stream, values)
            else:
                (value,) = values
                self.logger.insert(stream, value)
        except CacheFullError as exc:
            if not (self.refuses_when_full or self.spares_a_higher_priority(stream, exc)):
                raise
            RUNS[type(self).__name__]["seen: inserts refused when full"] += 1
            for value in values:
                self.failed(value)

    def spares_a_higher_priority(self, stream: str, refusal: CacheFullError) -> bool:
        """Whether ``refusal`` is the cache sparing datapoints of a priority higher than
        ``stream``'s, which a datapoint never displaces (every stream is priority 0 here)."""
        return False

    def failed(self, value: Any) -> None:
        """``insert()`` of ``value`` raised: it must never be stored."""
        n = ident(value)
        del self.stream_of[n]
        self.poison.discard(n)
        self.raised.add(n)

    def teardown(self) -> None:
        self.backend.clear_faults()
        self.backend.delay(0)
        self.ntp.silent = True
        for lg in [*self.abandoned, *([self.lg] if self.lg is not None else [])]:
            lg.close(timeout=1)

    # -- rules ------------------------------------------------------------------------

    @initialize(ntp=st.booleans(), cap=st.sampled_from([None, 3]))
    def start(self, ntp: bool, cap: int | None) -> None:
        RUNS[type(self).__name__]["examples"] += 1
        self.ntp_mode = ntp
        self.options = {"batch_size": 2, "http_timeout": HTTP_TIMEOUT, "on_full": "drop_oldest"}
        self.options["durability"] = self.durability
        if self.durability == "batched":
            self.options["commit_interval"] = COMMIT_INTERVAL
        if self.lanes:
            self.options.update(live_first=True, max_rate=500.0)
        else:
            # live_first is on by default: after a failed pass, what came since it began
            # goes before the backlog (the lanes variant checks that). Here the order on the
            # remote must be the order of insertion.
            self.options["live_first"] = False
        if cap is not None:
            self.options["max_cached"] = cap
        if self.sealed:
            self.options["key"] = SEAL_KEY
        if ntp:
            # Silent until the ntp rule: datapoints are stamped untrusted, to be re-timed.
            self.ntp.silent = True
            self.ntp.offset = 0.0
            self.options["ntp_server"] = self.ntp.address
        self.open()

    @rule(stream=st.sampled_from(STREAMS), poison=st.booleans())
    def insert(self, stream: str, poison: bool) -> None:
        self.put(stream, [self.value(stream, poison)])

    @rule(stream=st.sampled_from(STREAMS), poisons=st.lists(st.booleans(), min_size=1, max_size=4))
    def insert_many(self, stream: str, poisons: list[bool]) -> None:
        values = [self.value(stream, p) for p in poisons]
        cap = self.options.get("max_cached")
        if cap is not None and len(values) > cap:
            # More at once than the cap can never fit: refused whole, nothing stored.
            try:
                self.logger.insert_many(stream, values)
            except CacheFullError:
                for value in values:
                    self.failed(value)
                return
            raise AssertionError(f"{len(values)} datapoints at once stored into max_cached={cap}")
        self.put(stream, values, many=True)

    def pass_(self) -> None:
        self.clean_pass = self.seen(self.logger.sync()).ok

    def seen(self, report: SyncReport) -> SyncReport:
        """A pass that reported an error may have lost an answer (a timeout): at least once
        may then store a datapoint twice."""
        if not report.ok:
            self.may_duplicate = True
        self.maybe_in_flight = not report.ok
        return report

    def arm_fault(self, fault: str, n: int, status: int, retry_after: str | None) -> None:
        if fault in ("lose_answer", "lose_answer_unreconciled") or (
            fault in ("fail", "drop_before") and self.backend.restarts
        ):
            self.may_duplicate = True
        if fault == "fail":
            self.backend.fail(n, status, retry_after)
        elif fault == "drop_before":
            self.backend.drop_before()
        elif fault == "lose_answer":
            self.backend.lose_answer()
        elif fault == "lose_answer_unreconciled":
            self.backend.lose_answer_unreconciled()
            self.unresolved = True

    @rule(
        fault=FAULTS,
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
        retry_after=st.sampled_from([None, "0.01", "0"]),
    )
    def sync(self, fault: str | None, n: int, status: int, retry_after: str | None) -> None:
        """One pass, after arming ``fault`` (faults not used up stay for later passes)."""
        if fault == "delay":
            self.backend.delay(DELAY)
            try:
                self.pass_()
            finally:
                self.backend.delay(0)
            return
        if fault is not None:
            self.arm_fault(fault, n, status, retry_after)
        self.pass_()

    @rule(
        fault=FAULTS.filter(lambda f: f not in (None, "delay")),
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
        retry_after=st.sampled_from([None, "0.01", "0"]),
    )
    def arm(self, fault: str, n: int, status: int, retry_after: str | None) -> None:
        """A fault for a later pass (or one running while something else happens)."""
        self.arm_fault(fault, n, status, retry_after)

    @precondition(lambda self: not self.backend.refuses_always)
    @rule(on=st.booleans())
    def refuse_strings(self, on: bool) -> None:
        if on and self.backend.refusal_only_lifts:
            return  # lifted only (see Backend.refusal_only_lifts)
        self.backend.refuse(on)
        self.refusing = on

    @rule()
    def clear_faults(self) -> None:
        self.backend.clear_faults()
        self.backend.refuse(self.refusing)

    @rule()
    def crash(self) -> None:
        """The Logger is abandoned, never closed (its syncer never ran in the background,
        so nothing of it runs on), and the file opened again as after a kill."""
        self.abandoned.append(self.logger)
        self.open()

    @precondition(lambda self: self.ntp_mode)
    @rule(offset=st.sampled_from([0.5, 30.0, 3600.0]), now=st.booleans())
    def ntp_answers(self, offset: float, now: bool) -> None:
        """NTP answers with ``offset``: asked now (sync_clock), or by the next pass, which
        asks before it reconciles what a lost answer left in flight."""
        self.ntp.offset = offset
        self.ntp.silent = False
        if now:
            self.logger.sync_clock(timeout=2.0)

    @rule(cap=st.sampled_from([None, 1, 3, 6]))
    def cap(self, cap: int | None) -> None:
        """max_cached with on_full="drop_oldest": the next insert drops the oldest."""
        self.logger.max_cached = cap
        self.options["max_cached"] = cap

    @rule()
    def expire(self) -> None:
        """max_age expires everything cached at the next pass (its first step)."""
        self.logger.max_age = 0.001
        try:
            self.pass_()
        finally:
            self.logger.max_age = None

    @rule(some=st.booleans(), keep_t=st.booleans())
    def retry_deadletters(self, some: bool, keep_t: bool) -> None:
        """Retry dead letters (some or all), keeping their timestamps (``restamp=False``) or
        not; with a ``max_cached``, the retried ones stay within it (dropping the oldest)."""
        lg = self.logger
        letters = lg.deadletters()
        chosen = letters[::2] if some else letters
        ids = [d.id for d in chosen] if some else None
        cap = self.options.get("max_cached")
        within = cap is not None and lg.status().cached <= cap
        try:
            lg.retry_deadletters(ids, restamp=not keep_t)
        except CacheFullError:
            # More letters at once than max_cached can never fit: refused whole (or a full
            # cache, when on_full may refuse).
            never_fits = not keep_t and cap is not None and len(chosen) > cap
            assert never_fits or self.refuses_when_full, (len(chosen), cap)
            assert {d.id for d in chosen} <= {d.id for d in lg.deadletters()}, "changed"
            return
        except RemoteError:
            # Sent straight to the remote, which failed: what it took left the dead letters
            # with its own time, out of order (the places are checked by the invariant), the
            # rest stays.
            assert keep_t, "retry_deadletters(restamp=True) asked the remote"
            self.maybe_in_flight = True
            self.kept_t |= {ident(d.d) for d in chosen}
            self.retried |= {ident(d.d) for d in chosen}
            return
        if keep_t:
            self.kept_t |= {ident(d.d) for d in chosen}
            cached: dict[int, float | None] = collections.defaultdict(lambda: None)
            cached.update((ident(p["d"]), p["t"]) for p in lg.export())
            moved = [(ident(d.d), d.t, cached[ident(d.d)]) for d in chosen]
            changed = [m for m in moved if m[2] is not None and m[1] != m[2]]
            assert not changed, f"restamp=False changed t (value, was, now): {changed}"
        self.retried |= {ident(d.d) for d in chosen}
        if within:
            # A batch in flight (its answer lost) cannot be dropped: it comes on top of the
            # cap until it is settled, at most batch_size per stream (cache/limits.py).
            over = cap + self.options["batch_size"] * len(STREAMS)
            assert lg.status().cached <= over, (
                f"retried dead letters left {lg.status().cached} cached, over max_cached={cap}"
                " and a batch in flight per stream"
            )

    @rule(some=st.booleans())
    def purge_deadletters(self, some: bool) -> None:
        letters = self.logger.deadletters()
        chosen = letters[1::2] if some else letters
        self.purge([d.id for d in chosen] if some else None)

    def purge(self, ids: list[int] | None) -> None:
        before = {ident(d.d) for d in self.logger.deadletters()}
        self.sunk += self.logger.purge_deadletters(ids)
        self.purged |= before - {ident(d.d) for d in self.logger.deadletters()}

    @rule()
    def cleardata(self) -> None:
        """Clear the cache: all of it goes but a batch in flight (one per stream, at most
        ``batch_size`` datapoints, its answer lost), which stays until it is resolved."""
        lg = self.logger
        self.sunk += lg.cleardata()
        # Exactly the rows of a batch in flight stay (at most a batch per stream).
        left = collections.Counter(p["stream"] for p in lg.export())
        size = self.options["batch_size"]
        assert all(k <= size for k in left.values()), (
            f"cleardata() left {dict(left)} cached: more than a batch in flight "
            f"(batch_size={size}) per stream"
        )

    @rule()
    def apikey_change(self) -> None:
        """A wrong apikey for one pass (ConnectorDB refuses it: nothing may move), then the
        right one again."""
        good = self.logger.apikey
        self.logger.apikey = "wrong-" + uuid.uuid4().hex[:8]
        try:
            # Through seen(): a remote that ignores the apikey (HTTP) makes a real pass,
            # whose lost answer may leave a batch in flight.
            self.seen(self.logger.sync())
        finally:
            self.logger.apikey = good

    @rule(
        op=st.sampled_from(["cleardata", "insert", "expire", "ntp", "retry", "purge"]),
        stream=st.sampled_from(STREAMS),
    )
    def during_a_pass(self, op: str, stream: str) -> None:
        """Run ``op`` while a pass has a batch on the wire (held back by a delay)."""
        lg = self.logger
        self.concurrent = True
        before = self.backend.writes()
        self.backend.delay(DELAY)
        result: list[Any] = []
        thread = threading.Thread(
            target=lambda: result.append(self.seen(lg.sync())), name="model-pass"
        )
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while self.backend.writes() == before and thread.is_alive():
                assert time.monotonic() < deadline, "the pass sent nothing within 5 s"
                time.sleep(0.005)
            if op == "cleardata":
                self.sunk += lg.cleardata()
            elif op == "insert":
                self.put(stream, [self.value(stream, False)])
            elif op == "expire":
                lg.max_age = 0.001
                try:
                    self.put(stream, [self.value(stream, False)])
                finally:
                    lg.max_age = None
            elif op == "ntp" and self.ntp_mode:
                self.ntp.offset, self.ntp.silent = 30.0, False
                lg.sync_clock(timeout=2.0)
            elif op == "retry":
                # Sent straight to the remote with their own time, ahead of the pass's
                # batches; a failing remote (a fault armed for the pass) raises, and the
                # letters it did not take stay (as the retry_deadletters rule).
                letters = {ident(d.d) for d in lg.deadletters()}
                self.retried |= letters
                self.kept_t |= letters
                try:
                    lg.retry_deadletters()
                except RemoteError:
                    self.maybe_in_flight = True
            elif op == "purge":
                self.purge(None)
        finally:
            self.backend.delay(0)
            thread.join(30)
        assert not thread.is_alive(), "a pass did not end within 30 s"

    # -- failing disks, fork, oversized datapoints, drain --------------------------------

    def failing_ok(self) -> bool:
        return self.lg is not None

    @precondition(failing_ok)
    @rule(mode=st.sampled_from(MODES), count=st.integers(1, 3), stream=st.sampled_from(STREAMS))
    def failing_commits(self, mode: str, count: int, stream: str) -> None:
        """Every write and fsync of the cache fails (EIO or read-only) until ``count`` inserts
        have raised, then the disk recovers. An insert that raised is never stored; one that
        returned is durable once a later commit succeeds (the invariant's reads commit)."""
        lg, raised = self.logger, 0
        deadline = time.monotonic() + FAIL_WITHIN
        self.vfs.fail(self.path, mode)
        try:
            while raised < count:
                value = self.value(stream, False)
                try:
                    lg.insert(stream, value)
                except ConnectorSyncError:
                    self.failed(value)
                    raised += 1
                    continue
                assert time.monotonic() < deadline, (
                    f"inserts kept returning for {FAIL_WITHIN} s while every commit failed "
                    f"({mode}, durability={self.durability!r})"
                )
                time.sleep(COMMIT_INTERVAL / 2)
        finally:
            self.vfs.recover()

    @precondition(lambda self: self.lg is not None)
    @rule(stream=st.sampled_from(STREAMS))
    def fork_insert(self, stream: str) -> None:
        """A child forked from this process inserts one datapoint through the inherited
        Logger, says whether insert() returned or raised, and lives on (as a worker would)
        until this process has looked: what returned must be committed (batched: within
        its commit_interval) and then counted; what raised must be nowhere."""
        lg = self.logger
        value = self.value(stream, False)
        n = ident(value)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                answer = b"crash"
                try:
                    lg.insert(stream, value)
                    answer = b"ok"
                except ConnectorSyncError:
                    answer = b"raised"
                except BaseException as exc:  # said to the parent, which fails on it
                    answer = b"crash: " + repr(exc).encode()[:300]
                os.write(write_end, answer)
                time.sleep(FORK_WITHIN)
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], FORK_WITHIN)
            answer = os.read(read_end, 512) if ready else b""
            assert answer, f"a forked child's insert did not return within {FORK_WITHIN} s"
            assert answer in (b"ok", b"raised"), f"a forked child's insert failed: {answer!r}"
            if answer == b"raised":
                self.failed(value)
                return
            deadline = time.monotonic() + FORK_WITHIN
            while n not in {ident(p["d"]) for p in lg.export(stream)}:
                assert time.monotonic() < deadline, (
                    f"a forked child's insert() returned, yet its datapoint was not committed "
                    f"within {FORK_WITHIN} s (durability={self.durability!r})"
                )
                time.sleep(0.02)
        finally:
            os.close(read_end)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    @precondition(lambda self: self.backend.max_payload is not None)
    @rule(stream=st.sampled_from(STREAMS))
    def insert_oversized(self, stream: str) -> None:
        """A datapoint bigger than the broker takes, and one after it: the big one becomes a
        dead letter, the stream is not blocked (a drain settles both)."""
        assert self.backend.max_payload is not None
        self.logger.insert(stream, self.value(stream, True, pad=self.backend.max_payload + 100))
        self.logger.insert(stream, self.value(stream, False))
        self.drain()

    @precondition(lambda self: self.options.get("max_cached") is not None)
    @rule(stream=st.sampled_from(STREAMS))
    def retry_into_a_full_cache(self, stream: str) -> None:
        """A dead letter retried into a cache at its ``max_cached``: it stays within it (the
        oldest dropped and counted), as an insert would."""
        lg = self.logger
        if not self.refusing:
            self.refuse_strings(on=True)
        self.put(stream, [self.value(stream, True)])
        self.pass_()
        self.clean_pass = None  # inserted after it
        cap = self.options["max_cached"]
        for _ in range(max(0, cap - lg.status().cached)):
            lg.insert(stream, self.value(stream, False))
        self.retry_deadletters(some=False, keep_t=False)

    @precondition(lambda self: self.lanes)
    @rule(stream=st.sampled_from(STREAMS), backlog=st.integers(3, 6))
    def lose_a_live_answer(self, stream: str, backlog: int) -> None:
        """A backlog (its pass failed), then new datapoints: the live lane sends them first and
        their answer is lost. The batch in flight is that live batch alone: clearing the cache
        leaves at most it."""
        lg = self.logger
        for _ in range(backlog):
            lg.insert(stream, self.value(stream, False))
        self.backend.fail(100, 503, None)
        self.pass_()
        self.backend.clear_faults()
        self.backend.refuse(self.refusing)
        for _ in range(2):
            lg.insert(stream, self.value(stream, False))
        self.backend.lose_answer()
        self.may_duplicate = True
        self.pass_()
        self.clean_pass = None
        self.cleardata()

    @rule()
    def drain(self) -> None:
        """Faults cleared (refusals stay): a few passes settle everything that is cached,
        delivered or dead-lettered; nothing stays behind for good."""
        self.backend.clear_faults()
        self.backend.refuse(self.refusing)
        self.backend.delay(0)
        errors: dict[str, str] = {}
        for _ in range(4):
            report = self.seen(self.logger.sync())
            errors = report.errors
            if report.ok and len(self.logger) == 0:
                break
        left = sorted(ident(p["d"]) for p in self.logger.export())
        assert not left, f"passes without faults left {left} cached: {errors}"
        self.clean_pass = True

    # -- the invariant ------------------------------------------------------------------

    @invariant()
    def every_datapoint_is_in_exactly_one_place(self) -> None:
        """tests/model/checks.py"""
        RUNS[type(self).__name__]["checks"] += 1
        if self.lg is not None:
            check(self)
