"""The model with priorities and thinning: streams of different ``priority`` in a capped cache.

Each example draws a ``priority`` (0, 5 or 9) and a ``thin`` flag (True, False or None) for
each stream, ``on_full`` (``"thin"`` or ``"drop_oldest"``) and a ``max_cached``, then runs the
rules of :class:`~tests.model.machine.DeliveryModel` (faults, crashes, dead letters, clears,
failing disks...) plus ``fill`` (one insert at a time past the cap). On top of the invariant
of tests/model/checks.py (every datapoint in one place, counted once: thinned included,
per stream too; a cached datapoint keeps its value and its ``t``), after every step:

- making room takes lower priorities first: when a limit thinned or dropped a datapoint of
  priority P, no datapoint of a lower priority that was cached before and could have gone
  (at rest: not in a batch in flight) is left;
- only streams that allow it are thinned (``thin=True``; None on a stream without a number
  schema, as here, is off), and thinning never takes a stream's newest datapoint;
- after a pass without faults, the streams were written highest priority first (no batch
  of a lower priority before one of a higher); the ordered remote keeps each stream's order
  (tests/model/checks.py).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from connectorsync.errors import CacheFullError

from .backends import HTTP_TIMEOUT, STREAMS
from .checks import Step, check
from .machine import RUNS, DeliveryModel

PRIORITIES = st.sampled_from([0, 5, 9])
#: True twice as often: thinning needs a thin stream with three datapoints at rest.
THIN = st.sampled_from([True, True, False, None])


class PriorityModel(DeliveryModel):
    """One example: streams with priorities and thin flags, a capped cache."""

    priority: dict[str, int]
    thin: dict[str, bool]
    on_full: str

    @initialize(
        priorities=st.tuples(*[PRIORITIES for _ in STREAMS]),
        thin=st.tuples(*[THIN for _ in STREAMS]),
        on_full=st.sampled_from(["thin", "drop_oldest", "thin_or_reject"]),
        cap=st.sampled_from([2, 4, 8]),
    )
    def start(  # type: ignore[override]
        self,
        priorities: tuple[int, ...],
        thin: tuple[bool | None, ...],
        on_full: str,
        cap: int,
    ) -> None:
        RUNS[type(self).__name__]["examples"] += 1
        self.priority = dict(zip(STREAMS, priorities, strict=True))
        # thin=True is thinned whatever on_full says; None leaves it to on_full, whose "thin"
        # thins number streams only: these take any JSON (options.py, cache/thinning.py).
        self.thin = {s: t is True for s, t in zip(STREAMS, thin, strict=True)}
        props: dict[str, dict[str, Any]] = {}
        for stream, p, t in zip(STREAMS, priorities, thin, strict=True):
            props[stream] = {"priority": p} if t is None else {"priority": p, "thin": t}
        self.backend.props = props
        self.on_full = on_full
        self.refuses_when_full = on_full == "thin_or_reject"
        self.last_cached: dict[str, list[int]] = {s: [] for s in STREAMS}
        self.flight_before = False
        self.options = {
            "batch_size": 2,
            "http_timeout": HTTP_TIMEOUT,
            "on_full": on_full,
            "durability": self.durability,
            "live_first": False,
            "max_cached": cap,
        }
        self.open()

    def spares_a_higher_priority(self, stream: str, refusal: CacheFullError) -> bool:
        """A datapoint never displaces a higher priority: refused in every mode when only
        those could go. Checked: the cache holds some of a priority above ``stream``'s."""
        if "higher priority than stream" not in str(refusal):
            return False
        mine = self.backend.props[stream]["priority"]
        above = {s for s in STREAMS if self.backend.props[s]["priority"] > mine}
        held = {point["stream"] for point in self.logger.export()}
        assert held & above, f"{stream!r} refused for a higher priority, yet none is cached"
        RUNS[type(self).__name__]["seen: inserts refused to spare a higher priority"] += 1
        return True

    @rule(stream=st.sampled_from(STREAMS), k=st.integers(2, 8))
    def fill(self, stream: str, k: int) -> None:
        """``k`` inserts one at a time, past the cap: each makes room (lowest priority first),
        checked after each."""
        for _ in range(k):
            self.put(stream, [self.value(stream, False)])
            self.check_all()

    # -- sync passes: highest priority first --------------------------------------------

    @rule(k=st.integers(1, 3))
    def both_then_pass(self, k: int) -> None:
        """Faults cleared, ``k`` datapoints in each stream, taking turns, then a pass: a clean
        one writes the higher priority's batches first."""
        self.clear_faults()
        for _ in range(k):
            for stream in STREAMS:
                self.put(stream, [self.value(stream, False)])
        self.pass_()

    def pass_(self) -> None:
        written = len(self.backend.write_streams())
        settled = not self.maybe_in_flight  # else a resend or a reconciliation goes first
        report = self.seen(self.logger.sync())
        self.clean_pass = report.ok
        if not (report.ok and settled):
            return
        order = self.backend.write_streams()[written:]
        if len(set(order)) > 1:
            RUNS[type(self).__name__]["seen: passes of two streams, order checked"] += 1
        for i, (before, after) in enumerate(itertools.pairwise(order)):
            assert self.priority[before] >= self.priority[after], (
                f"a pass without faults wrote stream {after!r} (priority "
                f"{self.priority[after]}) after {before!r} (priority {self.priority[before]}):"
                f" writes {order} (write {i + 1}); priorities {self.priority}"
            )

    # -- the invariant ------------------------------------------------------------------

    def check_all(self) -> None:
        before = self.last_cached
        # Nothing was in flight when the step began, nor after a pass of the step, nor did
        # the step run beside a pass.
        at_rest = not (self.flight_before or self.maybe_in_flight or self.concurrent)
        step = check(self)
        seen = RUNS[type(self).__name__]
        seen["seen: thinned"] += step.thinned
        seen["seen: dropped"] += step.dropped
        self.last_cached = {s: [n for n, _ in points] for s, points in step.cached.items()}
        self.flight_before, self.concurrent = self.maybe_in_flight, False
        self.check_room_made_by_priority(step, before, at_rest=at_rest)

    def check_room_made_by_priority(
        self, step: Step, before: dict[str, list[int]], *, at_rest: bool
    ) -> None:
        """A limit thinned or dropped lower priorities first, thinned only thin streams, and
        never a stream's newest."""
        for stream in STREAMS:
            if not self.thin[stream]:
                assert step.thinned_per[stream] == 0, (
                    f"stream {stream!r} (thin={self.backend.props[stream].get('thin')}, "
                    f"on_full={self.on_full!r}) thinned +{step.thinned_per[stream]}"
                )
        limit_only = step.expired == 0 and step.sunk == 0 and (step.dropped or step.thinned)
        if not (limit_only and at_rest and step.vanished):
            return
        RUNS[type(self).__name__]["seen: room made at rest, checked"] += 1
        top = max(self.priority[self.stream_of[n]] for n in step.vanished)
        cached = {n for points in step.cached.values() for n, _ in points}
        for stream in STREAMS:
            if self.priority[stream] >= top:
                continue
            # Cached before the step and still cached: it could have gone instead (dropped;
            # or thinned, but for the stream's oldest and newest, which thinning keeps).
            # (Not a dead letter retried: it may have been a letter when room was made.)
            left = [n for n in before[stream] if n in cached and n not in self.retried]
            if self.on_full == "thin_or_reject":
                ends = (
                    {min(left, key=self.t_of.__getitem__), max(left, key=self.t_of.__getitem__)}
                    if left
                    else set()
                )
                left = [n for n in left if self.thin[stream] and n not in ends]
            assert not left, (
                f"made room by removing {sorted(step.vanished)} (priority up to {top}), yet "
                f"{left} of stream {stream!r} (priority {self.priority[stream]}) stayed; "
                f"dropped +{step.dropped}, thinned +{step.thinned} {step.thinned_per}"
            )
        # Thinning before dropping, at each priority: a stream lost more than it had thinned
        # (a drop) only once the thin streams of its priority kept no more than their two
        # ends (oldest and newest) of what they had.
        for stream in STREAMS:
            mine = sum(1 for n in step.vanished if self.stream_of[n] == stream)
            if mine <= step.thinned_per[stream]:
                continue
            for other in STREAMS:
                if self.thin[other] and self.priority[other] == self.priority[stream]:
                    kept = [n for n in before[other] if n in cached and n not in self.retried]
                    assert len(kept) <= 2, (
                        f"stream {stream!r} lost {mine - step.thinned_per[stream]} to a drop"
                        f" while stream {other!r} (thin, same priority) kept {kept} of"
                        f" {before[other]}"
                    )
        if step.dropped == 0:
            # Only thinning: a stream's oldest cached datapoint is never thinned, and its
            # newest before the step only once a newer one of it came.
            # By t: a dead letter retried with its own t goes back in its place.
            for stream in STREAMS:
                if not before[stream]:
                    continue
                t = self.t_of
                now = [n for n, _ in step.cached[stream]]
                if self.retried & {*before[stream], *now}:
                    continue  # back in place of its t, yet after the newest in the cache
                oldest = min([*before[stream], *now], key=t.__getitem__)
                assert oldest not in step.vanished, (
                    f"stream {stream!r}: its oldest datapoint {oldest} was thinned"
                )
                newest = max(before[stream], key=t.__getitem__)
                # Inserted after it (wherever it is now: a pass of the step may have sent it).
                newer = [n for n, s in self.stream_of.items() if s == stream and n > newest]
                assert newest not in step.vanished or newer, (
                    f"stream {stream!r}: its newest datapoint {newest} was thinned"
                )

    @invariant()
    def every_datapoint_is_in_exactly_one_place(self) -> None:
        """tests/model/checks.py, and room made by priority (above)."""
        RUNS[type(self).__name__]["checks"] += 1
        if self.lg is not None:
            self.check_all()
