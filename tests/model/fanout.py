"""The model of delivery to several remotes at once (issue 17): a hypothesis state machine.

A Logger delivers to two or three remotes of different delivery kinds, each one a real
loopback server of tests/model/backends.py with faults of its own:

- ``default``: the ConnectorDB test server (ordered), given with ``remotes=``;
- ``cloud``: an HTTP receiver (at least once), added with ``add_remote`` with a small
  ``give_up_after`` and the fallback ``spare`` (another HTTP receiver, ``streams=[]``: it
  holds only what the cloud hands over);
- ``influx`` (three remotes): influxd behind a fault proxy (idempotent), added with a
  ``give_up_after`` and no fallback (what it gives up is released).

Rules insert, sync after arming a fault on one remote (5xx with Retry-After, connections
dropped before and after commit, lost answers whose reconciliation fails, delay, refusals
of chosen values), take the remotes that give up down long enough to give up, crash (the
Logger abandoned, the file reopened with the same remotes), cap the cache with
``drop_oldest``, expire, clear, retry and purge dead letters, and drain. After every step
tests/model/fanout_checks.py checks each remote on its own: what each datapoint became for
it (held, delivered, its dead letter, released or handed over, or gone from the cache for
all), counted once.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from connectorsync import Logger, SyncReport
from connectorsync.errors import CacheFullError, RemoteError

from .backends import HTTP_TIMEOUT, STREAMS, Backend, add_streams, ident
from .fanout_checks import check, observe_cache
from .machine import RUNS

#: give_up_after of the remotes that give up: small, so that a datapoint a step old is older.
GIVE_UP = 0.3
FAULTS = st.sampled_from(
    [None, "fail", "drop_before", "lose_answer", "lose_answer_unreconciled", "delay"]
)
DELAY = 0.15


@dataclass
class Target:
    """One remote of the Logger and what the model knows of it."""

    name: str
    backend: Backend
    routes: bool = True  # takes every stream (False: a fallback, holding handovers only)
    give_up_after: float | None = None
    fallback: str | None = None
    refusing: bool = False
    #: what it held, stored or had as dead letters at the last check
    present: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    stored: set[int] = field(default_factory=set)
    letters: set[int] = field(default_factory=set)
    twice: set[int] = field(default_factory=set)
    handed_in: set[int] = field(default_factory=set)  # a fallback: what was handed to it
    gone: set[int] = field(default_factory=set)  # left it, counted (released, dropped, ...)
    purged: set[int] = field(default_factory=set)  # its dead letters purged this step
    released: int = 0
    handed_over: int = 0
    may_duplicate: bool = False  # a lost answer may have happened (at least once)
    unresolved: bool = False  # a lost answer whose reconciliation failed was armed

    @property
    def kind(self) -> str:
        return self.backend.kind


class FanoutModel(RuleBasedStateMachine):
    """One example: a fresh cache file and a fresh namespace on each remote's server."""

    #: (name, backend, add_remote keywords or None for ``remotes=``), first is the primary
    layout: list[tuple[str, Backend, dict[str, Any] | None]]
    tmpdir: Path

    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[str, Target] = {}
        for name, backend, added in self.layout:
            backend.clear_faults()
            backend.new_example()
            added = added or {}
            self.targets[name] = Target(
                name,
                backend,
                routes=added.get("streams") != [],
                give_up_after=added.get("give_up_after"),
                fallback=added.get("fallback"),
                refusing=backend.refuses_always,
            )
        self.path = str(self.tmpdir / f"fanout-{uuid.uuid4().hex[:8]}.db")
        self.options: dict[str, Any] = {}
        self.lg: Logger | None = None
        self.abandoned: list[Logger] = []
        self.counter = 0
        self.stream_of: dict[int, str] = {}
        self.poison: set[int] = set()
        self.raised: set[int] = set()
        self.retried: set[int] = set()  # sent again out of order: left out of order checks
        self.requeued: set[int] = set()  # queued again: may be cached once per holder
        self.seen: set[int] = set()  # inserted datapoints the last check knew of
        self.cached: collections.Counter[int] = collections.Counter()  # at the last check
        self.queued: collections.Counter[int] = collections.Counter()  # queued again, this step
        self.cleared = 0  # cleared this step (cleardata's count)
        self.dropped = 0
        self.expired = 0
        self.clean: bool = False  # set by drain: nothing may stay cached

    # -- plumbing ---------------------------------------------------------------------

    @property
    def logger(self) -> Logger:
        assert self.lg is not None
        return self.lg

    def open(self) -> None:
        given = {n: b.remote() for n, b, added in self.layout if added is None}
        lg = Logger(self.path, remotes=given, on_create=add_streams, **self.options)
        for name, backend, added in self.layout:
            if added is not None:
                lg.add_remote(name, backend.remote(), **added)
        self.lg = lg

    def value(self, stream: str, poison: bool) -> Any:
        self.counter += 1
        n = self.counter
        self.stream_of[n] = stream
        if poison:
            self.poison.add(n)
            return f"s{n}"
        return n

    def target(self, index: int) -> Target:
        return list(self.targets.values())[index % len(self.targets)]

    def pass_(self) -> SyncReport:
        report = self.logger.sync()
        for name, t in self.targets.items():
            if not report.remotes.get(name, report).ok:
                t.may_duplicate = True  # a timeout may have lost an answer
        return report

    def restore(self, t: Target) -> None:
        t.backend.clear_faults()
        t.backend.delay(0)
        t.backend.refuse(t.refusing)

    def teardown(self) -> None:
        for t in self.targets.values():
            self.restore(t)
        for lg in [*self.abandoned, *([self.lg] if self.lg is not None else [])]:
            lg.close(timeout=1)

    # -- rules ------------------------------------------------------------------------

    @initialize(cap=st.sampled_from([None, 3]))
    def start(self, cap: int | None) -> None:
        RUNS[type(self).__name__]["examples"] += 1
        self.options = {
            "batch_size": 2,
            "http_timeout": HTTP_TIMEOUT,
            "on_full": "drop_oldest",
            "live_first": False,  # the order on each remote is the order of insertion
        }
        if cap is not None:
            self.options["max_cached"] = cap
        self.open()

    @rule(stream=st.sampled_from(STREAMS), poison=st.booleans())
    def insert(self, stream: str, poison: bool) -> None:
        self.logger.insert(stream, self.value(stream, poison))

    @rule(stream=st.sampled_from(STREAMS), poisons=st.lists(st.booleans(), min_size=1, max_size=4))
    def insert_many(self, stream: str, poisons: list[bool]) -> None:
        values = [self.value(stream, p) for p in poisons]
        cap = self.options.get("max_cached")
        if cap is not None and len(values) > cap:
            try:
                self.logger.insert_many(stream, values)
            except CacheFullError:
                for value in values:
                    n = ident(value)
                    del self.stream_of[n]
                    self.poison.discard(n)
                    self.raised.add(n)
                return
            raise AssertionError(f"{len(values)} datapoints at once stored into max_cached={cap}")
        self.logger.insert_many(stream, values)

    def arm_fault(self, t: Target, fault: str, n: int, status: int) -> None:
        if fault in ("lose_answer", "lose_answer_unreconciled"):
            t.may_duplicate = True
        if fault == "fail":
            t.backend.fail(n, status, None)
        elif fault == "drop_before":
            t.backend.drop_before()
        elif fault == "lose_answer":
            t.backend.lose_answer()
        elif fault == "lose_answer_unreconciled":
            t.backend.lose_answer_unreconciled()
            t.unresolved = True

    @rule(
        which=st.integers(0, 3),
        fault=FAULTS,
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
    )
    def sync(self, which: int, fault: str | None, n: int, status: int) -> None:
        """One pass of every remote, after arming ``fault`` on one of them."""
        t = self.target(which)
        if fault == "delay":
            t.backend.delay(DELAY)
            try:
                self.pass_()
            finally:
                t.backend.delay(0)
            return
        if fault is not None:
            self.arm_fault(t, fault, n, status)
        self.pass_()

    @rule(
        which=st.integers(0, 3),
        fault=FAULTS.filter(lambda f: f not in (None, "delay")),
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
    )
    def arm(self, which: int, fault: str, n: int, status: int) -> None:
        """A fault for a later pass of one remote."""
        self.arm_fault(self.target(which), fault, n, status)

    @rule(which=st.integers(0, 3), on=st.booleans())
    def refuse_strings(self, which: int, on: bool) -> None:
        t = self.target(which)
        if not t.backend.refuses_always:
            t.backend.refuse(on)
            t.refusing = on

    @rule(which=st.integers(0, 3))
    def clear_faults(self, which: int) -> None:
        self.restore(self.target(which))

    @rule(passes=st.integers(1, 2), stream=st.sampled_from(STREAMS), poison=st.booleans())
    def give_up(self, passes: int, stream: str, poison: bool) -> None:
        """The remotes with a ``give_up_after`` are down for longer than it: after their
        next failed pass they let go of what is older (released, or handed to a fallback),
        the datapoint inserted first among it."""
        self.insert(stream, poison)
        quitters = [t for t in self.targets.values() if t.give_up_after is not None]
        for t in quitters:
            t.backend.fail(10**6, 503, None)
        try:
            self.pass_()
            for _ in range(passes):
                time.sleep(GIVE_UP + 0.05)
                self.pass_()
        finally:
            for t in quitters:
                self.restore(t)

    @rule()
    def crash(self) -> None:
        """The Logger is abandoned, never closed, and the file opened again with the same
        remotes, as after a kill."""
        self.abandoned.append(self.logger)
        self.open()

    @rule(cap=st.sampled_from([None, 1, 3, 6]))
    def cap(self, cap: int | None) -> None:
        self.logger.max_cached = cap
        self.options["max_cached"] = cap

    @rule()
    def expire(self) -> None:
        self.logger.max_age = 0.001
        try:
            self.pass_()
        finally:
            self.logger.max_age = None

    @rule(some=st.booleans(), restamp=st.booleans())
    def retry_deadletters(self, some: bool, restamp: bool) -> None:
        """Dead letters sent again, each to the remote that refused it, with its own time, or
        queued again with a new time (``restamp``) for that remote alone (the others have
        them: a value refused by one remote may then be cached twice, once per holder)."""
        lg = self.logger
        letters = lg.deadletters()
        chosen = letters[::2] if some else letters
        ids = [d.id for d in chosen] if some else None
        self.retried |= {ident(d.d) for d in chosen}
        try:
            lg.retry_deadletters(ids, restamp=restamp)
        except CacheFullError:
            cap = self.options.get("max_cached")
            assert restamp and cap is not None and len(chosen) > cap, (len(chosen), cap)
            return
        except RemoteError:
            assert not restamp, "retry_deadletters(restamp=True) asked a remote"
            return  # a remote failed (an armed fault): what it did not take stays
        if restamp:
            self.requeued |= {ident(d.d) for d in chosen}
            self.queued.update(ident(d.d) for d in chosen)

    @rule(some=st.booleans())
    def purge_deadletters(self, some: bool) -> None:
        lg = self.logger
        letters = lg.deadletters()
        chosen = letters[1::2] if some else letters
        before = self.letters()
        lg.purge_deadletters([d.id for d in chosen] if some else None)
        after = self.letters()
        for name, t in self.targets.items():
            t.purged |= before[name] - after[name]

    def letters(self) -> dict[str, set[int]]:
        return {name: seen.letters for name, seen in observe_cache(self).items()}

    @rule()
    def cleardata(self) -> None:
        self.cleared += self.logger.cleardata()

    @rule(
        which=st.integers(0, 3),
        op=st.sampled_from(["cleardata", "insert", "purge", "crash"]),
        stream=st.sampled_from(STREAMS),
    )
    def during_a_pass(self, which: int, op: str, stream: str) -> None:
        """Run ``op`` while a pass has a batch on the wire to one remote (held back by a
        delay); ``crash``: the file opened again meanwhile, by a second Logger that goes on."""
        t, lg = self.target(which), self.logger
        before = t.backend.writes()
        t.backend.delay(DELAY)
        thread = threading.Thread(target=self.pass_, name="fanout-pass")
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while t.backend.writes() == before and thread.is_alive():
                assert time.monotonic() < deadline, f"the pass sent {t.name} nothing in 5 s"
                time.sleep(0.005)
            if op == "cleardata":
                self.cleared += lg.cleardata()
            elif op == "insert":
                lg.insert(stream, self.value(stream, False))
            elif op == "purge":
                self.purge_deadletters(some=False)
            else:
                self.crash()
        finally:
            t.backend.delay(0)
            thread.join(30)
        assert not thread.is_alive(), "a pass did not end within 30 s"

    @rule()
    def drain(self) -> None:
        """Faults cleared (refusals stay): a few passes deliver everything cached, to every
        remote; nothing stays behind for good."""
        for t in self.targets.values():
            self.restore(t)
        errors: dict[str, str] = {}
        for _ in range(4):
            report = self.pass_()
            errors = report.errors
            if report.ok and len(self.logger) == 0:
                break
        left = sorted(ident(p["d"]) for p in self.logger.export())
        assert not left, f"passes without faults left {left} cached: {errors}"
        self.clean = True

    @precondition(lambda self: self.lg is not None)
    @invariant()
    def every_datapoint_is_in_one_place_per_remote(self) -> None:
        """tests/model/fanout_checks.py"""
        RUNS[type(self).__name__]["checks"] += 1
        check(self)
