"""The invariant of the fan-out model (tests/model/fanout.py), checked per remote.

What the cache file says each remote holds (its position: ids above ``done``, at most
``upto``, outside the ranges ``taken``) and which dead letters are its own is read from the
file with a read-only connection (:func:`observe_cache`); what each remote stored, from its
server. Then, for every remote on its own:

- it holds only what is cached, nothing twice, and ``status().remotes[name]`` says as much
  (``held``, ``deadletters``); the cache holds exactly what some remote still holds;
- each datapoint is at most once among its held and its dead letters, and stored at most
  once on an ordered or idempotent remote (more than once on an at-least-once remote only
  after a lost answer); a dead letter only of what was refused;
- nothing lost: every datapoint it took part in and that left every place of it since the
  last check (held, stored, its dead letter) is counted, by its ``released`` or
  ``handed_over`` (exactly those that left it while still cached), or by the cache's own
  ``dropped``, ``expired`` and cleared counts, or was purged; and no counter counts more
  than left;
- a fallback takes nothing but what was handed over to it, and nothing reaches both;
- what it stored of each stream is in insertion order (but what was sent again).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import apsw

from .backends import STREAMS, ident
from .machine import RUNS

if TYPE_CHECKING:
    from .fanout import FanoutModel

# Per remote: the cached datapoints its position holds (see connectorsync/cache/positions.py).
_HELD = """
SELECT r.name, d.d FROM datapoints AS d
JOIN positions AS p ON p.stream = d.stream
JOIN remotes AS r ON r.id = p.remote
WHERE d.id > p.done AND (p.upto IS NULL OR d.id <= p.upto)
  AND NOT EXISTS (
      SELECT 1 FROM taken AS k WHERE k.remote = p.remote AND k.stream = p.stream
      AND d.id BETWEEN k.lo AND k.hi)
"""
_LETTERS = "SELECT remote, d FROM deadletters WHERE retry_id IS NULL"


@dataclass
class Seen:
    """One remote's part of the cache file."""

    held: list[int] = field(default_factory=list)
    letters: set[int] = field(default_factory=set)
    letter_rows: int = 0


def observe_cache(model: FanoutModel) -> dict[str, Seen]:
    """Each remote's held datapoints and dead letters, as committed in the cache file."""
    seen = {name: Seen() for name in model.targets}
    conn = apsw.Connection(model.path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        for name, d in conn.execute(_HELD):
            seen.setdefault(name, Seen()).held.append(ident(json.loads(d)))
        for name, d in conn.execute(_LETTERS):
            part = seen.setdefault(name, Seen())
            part.letters.add(ident(json.loads(d)))
            part.letter_rows += 1
    finally:
        conn.close()
    return seen


def check(model: FanoutModel) -> None:
    lg = model.logger
    lg.flush()
    status = lg.status()
    exported = [ident(p["d"]) for p in lg.export()]
    cached = set(exported)
    twice = sorted(n for n, k in Counter(exported).items() if k > 1 and n not in model.requeued)
    assert not twice, f"a datapoint cached twice: {twice}"
    assert status.cached == len(exported), f"status().cached {status.cached} != {len(exported)}"
    seen = observe_cache(model)
    assert set(seen) == set(model.targets), f"remotes in the cache: {sorted(seen)}"
    assert set(status.remotes) == set(model.targets), f"status().remotes: {set(status.remotes)}"
    inserted = set(model.stream_of)
    new = inserted - model.seen
    # A multiset: a dead letter queued again is a second row of its value (another remote
    # may hold the first).
    left_cache = (model.cached + Counter(new) + model.queued) - Counter(exported)
    wide = (status.dropped - model.dropped) + (status.expired - model.expired) + model.cleared
    assert wide <= left_cache.total(), (
        f"the cache counted {wide} dropped, expired or cleared, but only "
        f"{left_cache.total()} left it: {sorted(left_cache.elements())}"
    )

    holders: set[int] = set()
    vanished: dict[str, set[int]] = {}
    kept: dict[str, set[int]] = {}
    for name, t in model.targets.items():
        mine, rs = seen[name], status.remotes[name]
        held = set(mine.held)
        holders |= held
        assert len(mine.held) == len(held), f"{name}: holds a datapoint twice"
        assert held <= cached, f"{name}: holds what is not cached: {sorted(held - cached)}"
        assert rs.held == len(held), f"{name}: status().remotes held {rs.held} != {len(held)}"
        letters = mine.letters
        assert mine.letter_rows == len(letters), f"{name}: a dead letter twice"
        assert rs.deadletters == len(letters), (
            f"{name}: status().remotes deadletters {rs.deadletters} != {len(letters)}"
        )
        assert not held & letters, f"{name}: held and a dead letter: {sorted(held & letters)}"
        assert letters <= model.poison, f"{name}: dead letters never refused: {letters}"

        t.backend.observe()
        stored = {s: [ident(v) for v in t.backend.stored(s)] for s in STREAMS}
        counts = Counter(n for values in stored.values() for n in values)
        s = set(counts)
        assert s <= inserted, f"{name}: stores values never inserted: {sorted(s - inserted)}"
        raised = sorted((held | letters | s) & model.raised)
        assert not raised, f"{name}: insert() raised, yet it has {raised}"
        for stream in STREAMS:
            assert all(model.stream_of[n] == stream for n in stored[stream]), "wrong stream"
        twice = sorted(n for n, k in counts.items() if k > 1)
        if t.kind in ("ordered", "idempotent") or not t.may_duplicate:
            assert not twice, f"{name} ({t.kind}): stored more than once: {twice}"
        if t.kind in ("ordered", "idempotent"):
            assert not s & letters, f"{name}: stored and a dead letter: {sorted(s & letters)}"
        if t.kind == "ordered" and not t.unresolved:
            assert not s & held, f"{name}: stored yet held after reconciliation: {s & held}"

        # Nothing lost: what left every place of this remote was counted.
        now = held | letters | s
        before = t.present | (new if t.routes else set())
        gone = before - now
        vanished[name] = gone
        purged = t.purged
        assert purged <= gone | s, f"{name}: purged letters still there: {purged - gone - s}"
        lost = gone - purged
        own = (rs.released - t.released) + (rs.handed_over - t.handed_over)
        if t.give_up_after is None:
            assert own == 0, f"{name} gave up {own} datapoints without give_up_after"
        if t.fallback is None:
            assert rs.handed_over == 0, f"{name} handed over without a fallback"
        else:
            assert rs.released == 0, f"{name} released though it has a fallback"
        # Left this remote, yet cached: only giving up does that (but a value queued again
        # may be cached twice: its other row may stay while this remote's row was dropped).
        still = (lost & cached) - model.requeued
        kept[name] = still
        copies = len((t.held - held) & s)  # gave up what it had stored (an answer lost)
        assert len(still) <= own <= len(lost) + copies, (
            f"{name}: {sorted(lost)} left it ({sorted(still)} still cached) but it counted "
            f"{own} released or handed over"
        )
        uncounted = len(lost) - own
        assert uncounted <= min(wide, len(lost - still)), (
            f"{name}: {len(lost)} datapoints left it uncounted ({sorted(lost)}): released or "
            f"handed over +{own}, dropped, expired or cleared +{wide}"
        )
        t.gone |= gone
        # What the runs exercised, for the figures the fan-out tests print.
        runs = RUNS[type(model).__name__]
        runs[f"{name}: gave up"] += own
        runs[f"{name}: stored"] += len(s - t.stored)
        runs[f"{name}: dead letters"] += len(letters - t.letters)
        runs[f"{name}: left uncounted by it"] += uncounted
        runs[f"{name}: stored twice"] += len(twice) > len(t.twice)
        t.letters, t.twice = letters, set(twice)
        t.present, t.held = now, held
        t.purged = set()
        t.released, t.handed_over = rs.released, rs.handed_over
        t.stored = s

        # Order: what was not sent again is stored in insertion order, per stream.
        for stream in STREAMS:
            firsts = [n for n in dict.fromkeys(stored[stream]) if n not in model.retried]
            assert firsts == sorted(firsts), f"{name}: stream {stream!r} stored out of order"

    assert cached == holders, f"cached but held by no remote: {sorted(cached - holders)}"
    # A fallback takes only what its remote handed over, and never what that one stored.
    for name, t in model.targets.items():
        if t.fallback is None:
            continue
        spare = model.targets[t.fallback]
        arrived = spare.present - spare.handed_in
        # (or what it had stored too, its answer lost: handed over all the same)
        assert arrived <= vanished[name] | t.stored, (
            f"{t.fallback} holds what {name} never handed over: {sorted(arrived)}"
        )
        spare.handed_in |= arrived
        # What it gave up and is still cached was handed to the fallback, which has it.
        missing = sorted(kept[name] - spare.present)
        assert not missing, f"{name} gave up {missing}, yet {t.fallback} does not have them"
        if not t.may_duplicate:
            both = sorted(spare.stored & t.stored)
            assert not both, f"reached both {name} and its fallback {t.fallback}: {both}"

    if model.clean:
        assert not cached, f"a drain left datapoints cached: {sorted(cached)}"
    model.clean = False
    model.seen = inserted
    model.cached = Counter(exported)
    model.queued = Counter()
    model.dropped, model.expired, model.cleared = status.dropped, status.expired, 0
