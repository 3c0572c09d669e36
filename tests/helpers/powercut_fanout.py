"""The power-cut torture's fan-out phases: one cache, several remotes, each with its position.

The child's side: :class:`LosingAnswers`, a ConnectorDB remote whose answers (and requests)
get lost now and then, and :class:`Passes`, the child's passes to each remote through a
cache connection of its own and that remote's outbox (``Cache.outbox(name)``, the entry
point the Logger's own passes use too). The parent's side: :func:`check_positions` (right
after the cut, what the file says each remote holds) and :func:`sync_remote` (one pass to a
remote other than ``default``, which the Logger does not drive yet).

Each remote delivers into a device of its own on the torture's one ConnectorDB server, so
that "each remote got every promised datapoint exactly once" is checked per remote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

import apsw

from connectorsync.batch import Datapoint
from connectorsync.cache import Cache, positions, routing
from connectorsync.cache.routing import RemoteRow
from connectorsync.delivery import PassPlan, SyncReport, run_pass
from connectorsync.errors import AmbiguousRemoteError, TransientRemoteError
from connectorsync.remotes import ConnectorDBRemote

#: Every failure the child injects says this: a pass may fail with it, and with nothing else.
INJECTED = "injected by the power-cut torture"

#: Which of its pushes (1, 2, ... per remote) lose their answer after the server stored the
#: batch (``lost``) or lose the request before it got there (``unsent``), and which calls to
#: ``reconcile`` fail too (``blind``: the batch in flight then waits for the next pass,
#: which resolves it before it sends anything of the stream).
LOSSES: dict[str, dict[str, frozenset[int]]] = {
    "default": {"lost": frozenset({2, 7}), "unsent": frozenset({4}), "blind": frozenset({2})},
    "b": {"lost": frozenset({1, 5, 9}), "unsent": frozenset({3}), "blind": frozenset({1})},
    "c": {"lost": frozenset({2}), "unsent": frozenset(), "blind": frozenset({1})},
    "g": {"lost": frozenset({3}), "unsent": frozenset({1}), "blind": frozenset()},
}
#: Seconds remote ``g`` may fail before it gives up what it holds (to its fallback ``c``).
GIVE_UP = 0.05
#: The remotes a phase may have besides ``default``, as added to its template (in order: a
#: fallback before the remote that falls back to it). ``c`` routes nothing of its own.
ROWS = {
    "b": RemoteRow(0, "b"),
    "c": RemoteRow(0, "c", streams=[]),
    "g": RemoteRow(0, "g", give_up_after=GIVE_UP, fallback="c"),
}


def groups(names: Sequence[str]) -> list[list[str]]:
    """The remotes that together must get every datapoint exactly once: each remote that
    routes the streams (``default`` and those of ``names``), with its fallback."""
    primaries = [ROWS[name] for name in names if ROWS[name].streams is None]
    return [["default"]] + [[r.name] + ([r.fallback] if r.fallback else []) for r in primaries]


PLAN = PassPlan(batch_size=4, max_batch_bytes=1 << 20)


class LosingAnswers(ConnectorDBRemote):
    """A ConnectorDB remote that loses the answers of the pushes numbered in ``lost`` (the
    server stored the batch), the requests of those in ``unsent`` (nothing stored), and
    whose ``reconcile`` fails at the calls numbered in ``blind``: each time an
    :class:`~connectorsync.errors.AmbiguousRemoteError` (or a transient error, for
    ``reconcile``) saying :data:`INJECTED`; while :attr:`down`, every push fails (a
    transient error: nothing stored). Used by one pass at a time."""

    def __init__(
        self,
        serverurl: str,
        apikey: str,
        *,
        lost: Collection[int] = (),
        unsent: Collection[int] = (),
        blind: Collection[int] = (),
    ):
        super().__init__(serverurl, apikey, timeout=10)
        self.lost, self.unsent, self.blind = set(lost), set(unsent), set(blind)
        self.pushes = self.reconciles = 0
        #: set: the remote is down, it refuses every push (503: nothing stored)
        self.down = False

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        if self.down:
            raise TransientRemoteError(f"{INJECTED}: the remote is down", status=503)
        self.pushes += 1
        if self.pushes in self.unsent:
            raise AmbiguousRemoteError(f"{INJECTED}: the request was lost on its way")
        super().push(stream, batch)
        if self.pushes in self.lost:
            raise AmbiguousRemoteError(f"{INJECTED}: the answer was lost on its way back")

    def reconcile(self, stream: str) -> float | None:
        self.reconciles += 1
        if self.reconciles in self.blind:
            raise TransientRemoteError(f"{INJECTED}: no answer to the question what arrived")
        return super().reconcile(stream)


def add_remotes(path: str, names: Sequence[str]) -> None:
    """Add the remotes ``names`` (after ``default``; :data:`ROWS`) to the cache file
    ``path``, with backfill: what the template holds, those that route it hold too."""
    cache = Cache.connect(path, "full")
    try:
        for name in names:
            cache.remotes().add(ROWS[name], backfill=True)
    finally:
        cache.close()


class Passes:
    """The child's passes, each remote through a cache connection of its own (the Logger
    inserts through its own): one remote at a time, or all at once, each in a thread, as
    several remotes' passes overlap."""

    def __init__(self, path: str, durability: str, url: str, apikeys: Mapping[str, str]):
        self.caches = {name: Cache.connect(path, durability) for name in apikeys}
        self.remotes = {
            name: LosingAnswers(url, key, **LOSSES[name]) for name, key in apikeys.items()
        }
        #: the remotes that give up after failing a while: their passes' outcomes are
        #: recorded (``Remotes.failing``), as the syncer does
        self.giving_up = {n for n in apikeys if n in ROWS and ROWS[n].give_up_after is not None}

    def run(self, name: str) -> SyncReport:
        """One pass to the remote ``name``; it may fail only by what was injected.

        :raises AssertionError: the pass failed otherwise
        """
        cache = self.caches[name]
        report = run_pass(cache.outbox(name), self.remotes[name], PLAN)
        if name in self.giving_up:
            cache.remotes().failing(name, None if report.ok else time.time())
        unexpected = {s: e for s, e in report.errors.items() if INJECTED not in e}
        if unexpected:
            raise AssertionError(f"a pass to remote {name!r} failed before the cut: {unexpected}")
        return report

    def give_up(self, name: str) -> int:
        """``give_up_after`` for the remote ``name`` once it has failed that long (as the
        syncer would, later): what it holds older than that goes to its fallback. Returns
        how many datapoints."""
        time.sleep(GIVE_UP)  # failing at least that long now, if its last pass failed
        return self.caches[name].remotes().give_up(name, time.time())

    def run_all(self) -> None:
        """A pass to every remote at once, each in a thread of its own.

        :raises AssertionError: a pass failed by more than what was injected
        """
        failed: list[BaseException] = []

        def one(name: str) -> None:
            try:
                self.run(name)
            except BaseException as exc:  # raised in the caller's thread below
                failed.append(exc)

        threads = [threading.Thread(target=one, args=(name,)) for name in self.remotes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failed:
            raise failed[0]


def sync_remote(path: str, name: str, url: str, apikey: str) -> SyncReport:
    """One pass (nothing injected) to the remote ``name`` of the cache file ``path``: it
    delivers everything that remote holds."""
    cache = Cache.connect(path, "full")
    remote = ConnectorDBRemote(url, apikey, timeout=10)
    try:
        return run_pass(cache.outbox(name), remote, replace(PLAN, batch_size=50))
    finally:
        remote.close()
        cache.close()


def check_positions(
    conn: apsw.Connection,
    promised: Mapping[str, set[int]],
    stored: Mapping[str, Mapping[str, set[int]]],
) -> None:
    """What the cache file says each remote holds, right after the cut, is consistent.

    - each remote has a position in every stream it routes, whose ranges are in order: the
      ones taken out of order above ``done`` (and at most ``upto``), disjoint; its batch in
      flight, if any, a range;
    - every cached datapoint is held by at least one remote (else it would never leave);
    - no remote lost a promised datapoint: each value of ``promised`` (per stream: inserts
      that returned) is on the server of each remote that routes the stream (``stored``:
      remote -> stream -> values) or cached and held by it; for a remote with a fallback,
      on the server of either or held by either (what it gave up went to the fallback).

    :param conn: a connection to the file (only read)
    :raises AssertionError: with what is wrong
    """
    remotes = routing.remotes(conn)
    for stream, sid in conn.execute("SELECT name, id FROM streams"):
        rows = {int(i): int(d) for i, d in conn.execute(_ROWS, (sid,))}
        held: dict[str, set[int]] = {}
        for name, remote in remotes.items():
            where = f"remote {name!r}, stream {stream!r}"
            pos = positions.position(conn, remote.id, sid)
            # A fallback has a position once it was handed something.
            assert pos is not None or not routing.routes(remote.streams, stream), (
                f"{where}: routed, and no position"
            )
            ranges = (
                [] if pos is None else positions.subtract([(1, positions.END)], _ranges(pos, where))
            )
            held[name] = {d for i, d in rows.items() if any(lo <= i <= hi for lo, hi in ranges)}
        for name, remote in remotes.items():
            if not routing.routes(remote.streams, stream):
                continue  # a fallback only: it answers for what it took with its primary
            covering = [name] + ([remote.fallback] if remote.fallback else [])
            have = set().union(*(stored.get(n, {}).get(stream, set()) | held[n] for n in covering))
            gone = promised.get(stream, set()) - have
            assert not gone, (
                f"remote {name!r}, stream {stream!r}: promised, not on the server of "
                f"{' or '.join(covering)} and not held for it: {sorted(gone)[:10]}"
            )
        orphans = set(rows.values()).difference(*held.values())
        assert not orphans, f"stream {stream!r}: cached, held by no remote: {sorted(orphans)[:10]}"


_ROWS = "SELECT id, d FROM datapoints WHERE stream = ? ORDER BY id"


def _ranges(pos: positions.Position, what: str) -> positions.Ranges:
    """The position's not-held ranges, once its rows are checked to be in order."""
    last = pos.done
    for lo, hi in pos.taken:
        assert last < lo <= hi, f"{what}: taken ranges out of order or overlapping: {pos}"
        last = hi
    assert pos.upto is None or last <= pos.upto or not pos.taken, f"{what}: beyond upto: {pos}"
    assert (pos.inflight == 0 and pos.inflight_lo == 0) or 0 < pos.inflight_lo <= pos.inflight, (
        f"{what}: the batch in flight is no range: {pos}"
    )
    return pos.taken_ranges()
