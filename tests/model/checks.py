"""The model's invariant: every datapoint in exactly one place, counted once, in order.

After every step the observations (``export()``, ``deadletters()``, ``status()`` counters and
what the server stored) must show each inserted datapoint in exactly one place: cached,
delivered, dead-lettered, or counted once as dropped, expired, cleared, purged or thinned
(``status().thinned``, and per stream ``status().streams[s].thinned``); stored once on
``ordered`` and ``idempotent`` remotes, none missing on ``at_least_once`` ones, and in
insertion order per stream. A datapoint whose ``insert()`` raised is nowhere, ever. A cached
datapoint is the one inserted: the same value, and the same ``t`` unless NTP re-timed it or
it was retried from the dead letters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connectorsync.resend import UNANSWERED

from .backends import STREAMS, ident

if TYPE_CHECKING:
    from .machine import DeliveryModel


@dataclass(frozen=True)
class Step:
    """What one step did, as the invariant saw it (for the checks of a variant on top).

    :ivar cached: per stream, the cached ``(n, t)`` after the step, oldest first
    :ivar vanished: the datapoints that left every place in the step
    :ivar dropped, expired, thinned, sunk: what the counters took in the step (``sunk``:
        cleared or purged)
    :ivar thinned_per: per stream, what ``status().streams[s].thinned`` took in the step
    """

    cached: dict[str, list[tuple[int, float]]]
    vanished: frozenset[int]
    dropped: int
    expired: int
    thinned: int
    sunk: int
    thinned_per: dict[str, int]


def thinned_counts(status: Any) -> tuple[int, dict[str, int]]:
    """``status().thinned`` and each stream's, 0 where this build has no thinning."""
    per = {
        s: getattr(status.streams[s], "thinned", 0) if s in status.streams else 0 for s in STREAMS
    }
    return getattr(status, "thinned", sum(per.values())), per


def check(model: DeliveryModel) -> Step:
    lg, kind = model.logger, model.backend.kind
    model.backend.observe()
    # Batched: commit the queue first, so that status() and export() see the same cache
    # (a commit may drop the oldest under max_cached, and count it).
    lg.flush()
    status = lg.status()
    cached: dict[str, list[tuple[int, float]]] = {s: [] for s in STREAMS}
    for point in lg.export():
        n = ident(point["d"])
        cached[point["stream"]].append((n, point["t"]))
        # Kept as inserted: thinning keeps original readings, never averages or re-times.
        if n in model.value_of:
            assert point["d"] == model.value_of[n], (
                f"cached datapoint {n} altered: {point['d']!r}, inserted {model.value_of[n]!r}"
            )
        was = model.t_of.setdefault(n, point["t"])
        if model.ntp_mode or n in model.retried:
            model.t_of[n] = point["t"]  # re-timed by NTP, or retried: from now on
        else:
            assert point["t"] == was, f"cached datapoint {n} re-timed: t {point['t']}, was {was}"
    dead = lg.deadletters()
    letters = [ident(d.d) for d in dead]
    # Sent again by retry_deadletters() without an answer: the remote may hold them too.
    unanswered = {ident(d.d) for d in dead if d.reason.startswith(UNANSWERED)}
    stored = {s: [ident(v) for v in model.backend.stored(s)] for s in STREAMS}

    c = {n for points in cached.values() for n, _ in points}
    d = set(letters)
    s_count = Counter(n for values in stored.values() for n in values)
    s = set(s_count)
    inserted = set(model.stream_of)

    # An insert that raised stored nothing, anywhere, ever.
    raised = sorted((c | d | s) & model.raised)
    assert not raised, f"insert() raised, yet the datapoint was stored: {raised}"
    # Each place holds only what was inserted, in its own stream, once.
    assert s <= inserted, f"the remote holds values never inserted: {sorted(s - inserted)}"
    for stream in STREAMS:
        assert all(model.stream_of[n] == stream for n in stored[stream]), "wrong stream"
        assert all(model.stream_of[n] == stream for n, _ in cached[stream]), "wrong stream"
    assert len(letters) == len(d), f"a dead letter twice: {sorted(letters)}"
    assert sum(len(p) for p in cached.values()) == len(c), "a datapoint cached twice"
    assert status.cached == len(c), f"status().cached {status.cached} != exported {len(c)}"
    assert not c & d, f"cached and a dead letter at once: {sorted(c & d)}"
    assert d <= model.poison, f"dead letters the remote never refused: {sorted(d - model.poison)}"
    if kind in ("ordered", "idempotent"):
        twice = sorted(n for n, k in s_count.items() if k > 1)
        assert not twice, f"stored more than once on an {kind} remote: {twice}"
        both = s & d - unanswered
        assert not both, f"stored and a dead letter at once: {sorted(both)}"
    if kind == "at_least_once" and not model.may_duplicate:
        twice = sorted(n for n, k in s_count.items() if k > 1)
        assert not twice, f"stored twice, though no answer was lost: {twice}"
    if kind == "ordered" and not model.unresolved:
        assert not c & s, f"stored yet still cached after reconciliation: {sorted(c & s)}"

    # Counted once: what left every place is exactly what the counters say left.
    now = c | d | s
    came_back = sorted(now & model.gone)
    assert not came_back, f"counted dropped/expired/cleared/purged, yet present: {came_back}"
    vanished = (model.present | (inserted - model.present - model.gone)) - now
    # At least once, a refused resend of a delivered datapoint is a dead letter too, and on
    # any remote a letter sent again without an answer may be stored (UNANSWERED): purging
    # that letter leaves the delivered copy.
    sunk = model.sunk - len(model.purged & s)
    thinned, thinned_per = thinned_counts(status)
    step_thinned = thinned - model.thinned
    step_per = {st: thinned_per[st] - model.thinned_per.get(st, 0) for st in STREAMS}
    counted = (status.dropped - model.dropped) + (status.expired - model.expired) + sunk
    counted += step_thinned
    # Likewise a datapoint delivered and still cached or a dead letter (a lost answer: at
    # least once, or not reconciled): its local copy dropped, expired or cleared is counted,
    # and the delivered copy stays. Which ones the counters took is not observable: at
    # most those whose local copy left while they stay stored.
    copies = len(((model.local - c - d) & s) - model.purged)
    assert len(vanished) <= counted <= len(vanished) + copies, (
        f"{len(vanished)} datapoints left every place ({sorted(vanished)}) but "
        f"{counted} were counted (dropped +{status.dropped - model.dropped}, "
        f"expired +{status.expired - model.expired}, thinned +{step_thinned}, "
        f"cleared or purged {sunk}; "
        f"{copies} delivered left the cache or the dead letters)"
    )
    # Thinned per stream: the streams' counts add up to the total, and each counts no more
    # than its own datapoints that left (or local copies of delivered ones: see above).
    assert sum(step_per.values()) == step_thinned, (
        f"thinned +{step_thinned} in all, but per stream {step_per}"
    )
    assert all(k >= 0 for k in step_per.values()), f"a thinned count went down: {step_per}"
    local_copies = ((model.local - c - d) & s) - model.purged
    for stream in STREAMS:
        mine = sum(1 for n in vanished | local_copies if model.stream_of.get(n) == stream)
        assert step_per[stream] <= mine, (
            f"stream {stream!r}: thinned +{step_per[stream]}, yet only {mine} of its "
            f"datapoints left ({sorted(n for n in vanished if model.stream_of.get(n) == stream)})"
        )
    step = Step(
        cached=cached,
        vanished=frozenset(vanished),
        dropped=status.dropped - model.dropped,
        expired=status.expired - model.expired,
        thinned=step_thinned,
        sunk=sunk,
        thinned_per=step_per,
    )
    model.gone |= vanished
    model.present = now
    model.local = c | d
    model.dropped, model.expired, model.sunk = status.dropped, status.expired, 0
    model.thinned, model.thinned_per = thinned, thinned_per
    model.purged = set()

    # Order: per stream, cached timestamps strictly increase, and what was not requeued
    # out of order is cached and stored in insertion order. (A dead letter retried with its
    # own timestamp goes back in place of its t, not after the newest: left out here.)
    for stream in STREAMS:
        times = [t for n, t in cached[stream] if n not in model.kept_t]
        assert times == sorted(set(times)), f"stream {stream!r}: cached t not increasing"
        in_order = [n for n, _ in cached[stream] if n not in model.retried]
        assert in_order == sorted(in_order), f"stream {stream!r}: cache out of order"
        if not model.lanes:
            firsts = [n for n in dict.fromkeys(stored[stream]) if n not in model.retried]
            assert firsts == sorted(firsts), f"stream {stream!r}: stored out of order {firsts}"

    # A pass that reported no error delivered everything cached when it began.
    if model.clean_pass:
        assert not c, f"a clean pass left datapoints cached: {sorted(c)}"
    model.clean_pass = None
    return step
