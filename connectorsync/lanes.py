"""The order of a sync pass: live data first, then the backlog, paced and time-boxed.

After a week offline a device has a backlog; sent oldest first, nothing current reaches a
dashboard until all of it is through. So, for remotes that do not need order (``idempotent``,
``at_least_once``), a pass first sends what was inserted since the previous pass began (the
*live lane*), then the backlog oldest first; the backlog gets at most ``budget`` seconds of
the pass, then the pass ends with ``more`` set and the background syncer starts the next one
at once, which again begins with the live lane. ``ordered`` remotes (ConnectorDB) refuse an
older timestamp after a newer one: they keep strict order, with no lane and no budget.

``max_rate`` paces the backlog (datapoints per second, a token bucket holding one second's
worth), never the live lane; a ``Retry-After`` from the remote still stops the pass.

Guarantees (``tests/test_lanes.py``): a stream with an unsettled batch (no answer yet) takes
no lane: it is sent again oldest first, as the delivery kinds require; within each lane a
stream's batches go in insertion order, so the in-flight marks keep their meaning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, TypeVar

from .cache import BatchRequest
from .errors import ConnectorSyncError

if TYPE_CHECKING:
    from .delivery import PassPlan


class OutOfTimeError(ConnectorSyncError):
    """The pass's deadline passed, or syncing stopped; what is left waits in the cache."""


class LaneTurn(Protocol):
    """What the lanes need of a stream's turn (``delivery._Turn``)."""

    request: BatchRequest
    failed: bool

    def can_go_live(self) -> bool: ...

    def begin(self, after: int, request: BatchRequest) -> None: ...


T = TypeVar("T", bound=LaneTurn)


class Lanes:
    """The lanes of one pass that began at cache id ``upto``."""

    def __init__(self, plan: PassPlan, upto: int, *, ordered: bool):
        self.plan = plan
        live_after = plan.live_after
        self.live_after = live_after if live_after is not None and live_after < upto else None
        self.two_lanes = self.live_after is not None and not ordered
        now = time.monotonic()
        self.budget_end = None if ordered or plan.budget is None else now + plan.budget
        self.pacer = plan.pacer
        #: the pass ended at its budget with a backlog left
        self.more = False

    def phases(self, turns: list[T]) -> Iterator[tuple[list[T], bool]]:
        """The phases of the pass: ``(turns, is_backlog)``; the caller runs each before
        asking for the next."""
        if not turns:
            return
        request = turns[0].request
        paced = request
        if self.pacer is not None:
            # A second's worth at most, so that the pace is even rather than in bursts.
            paced = replace(request, limit=min(request.limit, max(1, int(self.pacer.rate))))
        if not self.two_lanes or self.live_after is None:
            for turn in turns:
                turn.begin(0, paced)
            yield turns, True
            return
        live = [turn for turn in turns if turn.can_go_live()]
        for turn in live:
            turn.begin(self.live_after, request)
        yield live, False
        backlog = replace(paced, upto_id=self.live_after)
        for turn in turns:
            turn.begin(0, backlog if turn in live else paced)
        yield [turn for turn in turns if not turn.failed], True

    def pace(self, first_id: int, count: int) -> None:
        """Before a backlog batch of ``count`` datapoints from id ``first_id`` goes: wait as
        ``max_rate`` says (the live lane, ids after ``live_after``, never waits).

        :raises OutOfTimeError: syncing stops, or the pass's deadline comes first
        """
        if self.pacer is None or (self.live_after is not None and first_id > self.live_after):
            return
        self.pacer.take(count, self.plan.deadline, self.plan.pause or _sleep)

    def out_of_budget(self) -> bool:
        """Whether the backlog's time in this pass is up (then :attr:`more` is set)."""
        if self.budget_end is None or time.monotonic() < self.budget_end:
            return False
        self.more = True
        return True


class Pacer:
    """``max_rate``: a token bucket holding one second's worth, filled at ``rate`` per
    second. One per Logger, kept across passes, so that a pass that ends at its budget and
    the next one share the pace."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens, self.filled = rate, time.monotonic()

    def take(self, count: int, deadline: float | None, pause: Callable[[float], bool]) -> None:
        """Wait until ``count`` datapoints may go; ``pause(seconds)`` waits, False when
        syncing stops.

        :raises OutOfTimeError: syncing stops, or ``deadline`` (monotonic) comes first
        """
        now = time.monotonic()
        refill = max(0.0, now - self.filled) * self.rate
        self.tokens = min(self.rate, self.tokens + refill) - count
        self.filled = max(now, self.filled)
        if self.tokens >= 0:
            return
        wait = -self.tokens / self.rate
        if deadline is not None and now + wait > deadline:
            self.tokens += count  # not sent: not paid
            raise OutOfTimeError("out of time (close); the rest waits in the cache")
        if not pause(wait):
            self.tokens += count
            raise OutOfTimeError("syncing stopped; the rest waits in the cache")
        # The wait paid for these datapoints: the bucket is empty as of its end.
        self.tokens, self.filled = 0.0, now + wait


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True
