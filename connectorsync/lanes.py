"""The order of a sync pass: batches without answer, then live data, then the backlog,
paced and time-boxed, streams taking turns across passes.

After a week offline a device has a backlog; sent oldest first, nothing current reaches a
dashboard until all of it is through. So, for remotes that do not need order (``idempotent``,
``at_least_once``), a pass:

1. first sends again, exactly, the rows of a batch whose answer was lost (its in-flight mark,
   ``streams.inflight_lo`` to ``inflight``); a stream whose resend fails takes no other lane;
2. then what was inserted since the previous pass began (the *live lane*);
3. then the backlog oldest first, for at most ``budget`` seconds counted from the moment the
   backlog begins, so that the backlog gets its share of every pass however long the live
   lane took; then the pass ends with ``more`` set and the background syncer starts the next
   one at once, which again begins with the live lane.

``ordered`` remotes (ConnectorDB) refuse an older timestamp after a newer one: they keep
strict order, with no lane (a batch without answer is reconciled instead); their backlog has
the budget too, so that a stream of higher priority cached meanwhile goes at the next pass.

In each lane, higher priorities go first, and a stream that a pass cut short passed over
gets a batch first in the next (:mod:`connectorsync.priority`).

Streams take turns across passes (:class:`Rotation`): a pass that its budget (or close's
deadline) cuts short remembers the stream whose turn was next, and the next pass begins
its rounds there, so a stream late in the list is not starved when the time box is
shorter than one round.

``max_rate`` paces the backlog (datapoints per second, a token bucket holding one second's
worth), never the live lane nor a resend (paid for when first sent); its waits end at once
when syncing stops or the Logger closes, and never outlast the backlog's budget: a wait
longer than that ends the pass (``more``), so the next pass's live lane is not held back.

What is live: ids after ``live_after``, the newest id when the previous pass began; the
syncer moves it to the newest id at ``start()``, so what was cached while it was stopped is
backlog.

Guarantees (``tests/test_lanes.py``):

- within each lane a stream's batches go in insertion order, one lane after the other, so
  the in-flight mark is one range that holds exactly the batches on the wire
  (``test_a_live_batch_without_answer_holds_only_its_own_rows`` in ``test_inflight.py``);
- the backlog gets its share however long the live lane takes
  (``test_the_backlog_gets_its_share_when_the_live_lane_takes_the_whole_period``);
- a short time box does not starve the last stream
  (``test_streams_take_turns_across_passes_cut_short``), nor does a higher priority
  (``test_priority.py::test_a_low_priority_moves_while_a_high_one_outpaces_the_remote``);
- pacing ends at close (``test_close_stops_a_paced_manual_sync``), and at the backlog's
  budget (``test_a_max_rate_wait_longer_than_the_period_does_not_hold_back_the_live_lane``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from .cache import BatchRequest
from .errors import ConnectorSyncError
from .priority import by_priority, tiers


class OutOfTimeError(ConnectorSyncError):
    """The pass's deadline passed, or syncing stopped; what is left waits in the cache."""


class LaneTurn(Protocol):
    """What the lanes need of a stream's turn (``delivery._Turn``)."""

    request: BatchRequest
    failed: bool
    done: bool

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> int: ...

    def can_go_live(self) -> bool: ...

    def begin(self, after: int, request: BatchRequest) -> None: ...

    def begin_resend(self) -> bool: ...


T = TypeVar("T", bound=LaneTurn)


@dataclass(frozen=True)
class Phase(Generic[T]):
    """A part of a pass: its streams take turns until each is done (or, ``once``, until
    each has had one batch).

    :ivar turns: the streams, of one priority (or those passed over, ``once``)
    :ivar backlog: the backlog's lane: paced by ``max_rate``, ended by the budget
    :ivar once: one batch each: the streams the previous pass passed over
    """

    turns: list[T]
    backlog: bool
    once: bool = False


class Rotation:
    """Where the next pass begins its rounds over the streams: the stream whose turn was
    next when the last pass was cut short, and the streams it passed over (see
    :mod:`connectorsync.priority`). One per courier, kept in memory across passes (a
    restart begins at the first stream again: at most one round is repeated)."""

    def __init__(self) -> None:
        self.first: str | None = None
        #: streams passed over by the last passes: how many passes each has waited
        self.waiting: dict[str, int] = {}

    def order(self, turns: list[T]) -> list[T]:
        """``turns`` rotated to begin at :attr:`first` (as they are if it is not there)."""
        names = [turn.name for turn in turns]
        if self.first not in names:
            return turns
        k = names.index(self.first)
        return turns[k:] + turns[:k]

    def cut_at(self, name: str) -> None:
        """The pass ended before ``name``'s turn: the next one begins there."""
        self.first = name

    def overdue(self, turns: list[T]) -> list[T]:
        """The streams of ``turns`` that the last passes passed over, longest waiting
        first (then by priority, as ``turns`` are)."""
        waited = [turn for turn in turns if self.waiting.get(turn.name)]
        return sorted(waited, key=lambda turn: -self.waiting[turn.name])

    def note_passed_over(self, turns: Sequence[LaneTurn], served: set[str]) -> None:
        """After a pass's backlog lane: a stream of ``turns`` with a backlog left (not done,
        not failed) that sent no batch of it was passed over; one that sent one was not."""
        for turn in turns:
            if turn.name in served or turn.done:
                self.waiting.pop(turn.name, None)
            else:
                self.waiting[turn.name] = self.waiting.get(turn.name, 0) + 1


class Lanes:
    """The lanes of one pass that began at cache id ``upto``.

    Given plain values (the pass's plan spelled out), so that this module needs nothing of
    :mod:`connectorsync.delivery`, which uses it (``tests/test_layers.py``).

    :param ordered: the remote needs strict order: one lane, no budget
    :param live_after: the newest id when the previous pass began (None: no live lane)
    :param budget: seconds the backlog may take in this pass (None: no limit)
    :param pacer: ``max_rate``'s token bucket (None: as fast as the remote takes)
    :param rotation: where the rounds over the streams begin (None: at the first stream)
    :param pause: ``pause(seconds)`` waits, False at once when syncing stops (None: sleeps)
    :param deadline: a ``time.monotonic()`` after which no wait may end (close's drain)
    """

    def __init__(  # noqa: PLR0913 - the pass's plan spelled out, keyword-only past upto
        self,
        upto: int,
        *,
        ordered: bool,
        live_after: int | None = None,
        budget: float | None = None,
        pacer: Pacer | None = None,
        rotation: Rotation | None = None,
        pause: Callable[[float], bool] | None = None,
        deadline: float | None = None,
    ):
        self.live_after = live_after if live_after is not None and live_after < upto else None
        self.two_lanes = self.live_after is not None and not ordered
        # Ordered remotes too: without it, a stream of higher priority inserted while a
        # long backlog drains would wait for all of it (the pass sends what it began with).
        self.budget = budget
        self.served: set[str] = set()  # streams that sent a backlog batch in this pass
        self.budget_end: float | None = None  # set when the backlog begins
        self.pacer = pacer
        self.rotation = rotation or Rotation()
        self.pause = pause or _sleep
        self.deadline = deadline
        #: the pass ended at its budget with a backlog left
        self.more = False

    def phases(self, turns: list[T]) -> Iterator[Phase[T]]:
        """The phases of the pass, each lane highest priority first
        (:mod:`connectorsync.priority`); the caller runs each before asking for the next."""
        if not turns:
            return
        turns = by_priority(self.rotation.order(turns))
        request = turns[0].request
        resend = [turn for turn in turns if turn.begin_resend()]
        yield from (Phase(tier, False) for tier in tiers(resend))
        paced = request
        if self.pacer is not None:
            # A second's worth at most, so that the pace is even rather than in bursts.
            paced = replace(request, limit=min(request.limit, max(1, int(self.pacer.rate))))
        if not self.two_lanes or self.live_after is None:
            for turn in turns:
                turn.begin(0, paced)
            yield from self._backlog(turns)
            return
        live = [turn for turn in turns if turn.can_go_live()]
        for turn in live:
            turn.begin(self.live_after, request)
        yield from (Phase(tier, False) for tier in tiers(live))
        backlog = replace(paced, upto_id=self.live_after)
        for turn in turns:
            turn.begin(0, backlog if turn in live else paced)
        yield from self._backlog([turn for turn in turns if not turn.failed])

    def _backlog(self, turns: list[T]) -> Iterator[Phase[T]]:
        """The backlog's lane: one batch each for the streams the last passes passed over
        (longest waiting first), then each priority in turn, until the budget is up; then
        notes the streams this pass passed over."""
        self._start_budget()
        overdue = self.rotation.overdue(turns)
        if overdue:
            yield Phase(overdue, True, once=True)
        for tier in tiers(turns):
            if self.more:
                break  # out of budget: the rest waits for the next pass
            yield Phase(tier, True)
        self.rotation.note_passed_over(turns, self.served)

    def _start_budget(self) -> None:
        # The backlog's time counts from here, not from the start of the pass: a live lane
        # that took the whole period must not leave the backlog nothing.
        if self.budget is not None:
            self.budget_end = time.monotonic() + self.budget

    def pace(self, first_id: int, count: int) -> bool:
        """Before a backlog batch of ``count`` datapoints from id ``first_id`` goes: wait as
        ``max_rate`` says (the live lane, ids after ``live_after``, never waits). A wait
        that would outlast the backlog's budget waits until the budget ends instead, and
        returns False (then :attr:`more` is set): the pass ends, the next one sends its live
        lane first, and the time waited counts towards the batch's turn.

        :raises OutOfTimeError: syncing stops, or the pass's deadline comes first
        """
        if self.pacer is None or (self.live_after is not None and first_id > self.live_after):
            return True
        if self.pacer.take(count, self.deadline, self.pause, until=self.budget_end):
            return True
        self.more = True
        return False

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

    def take(
        self,
        count: int,
        deadline: float | None,
        pause: Callable[[float], bool],
        *,
        until: float | None = None,
    ) -> bool:
        """Wait until ``count`` datapoints may go (True); ``pause(seconds)`` waits, False
        when syncing stops. A wait that would end after ``until`` (monotonic: the backlog's
        budget) waits until then only and returns False: the tokens that came meanwhile are
        kept for the next call (the bucket holds at least ``count``).

        :raises OutOfTimeError: syncing stops, or ``deadline`` (monotonic) comes first
        """
        now = time.monotonic()
        refill = max(0.0, now - self.filled) * self.rate
        # Never less than one batch: a rate under one per second still lets its one go.
        self.tokens = min(max(self.rate, count), self.tokens + refill) - count
        self.filled = max(now, self.filled)
        if self.tokens >= 0:
            return True
        wait = -self.tokens / self.rate
        if deadline is not None and now + wait > deadline:
            self.tokens += count  # not sent: not paid
            raise OutOfTimeError("out of time (close); the rest waits in the cache")
        if until is not None and now + wait > until:
            self.tokens += count  # not sent: not paid; the wait until then fills the bucket
            if not pause(max(0.0, until - now)):
                raise OutOfTimeError("syncing stopped; the rest waits in the cache")
            return False
        if not pause(wait):
            self.tokens += count
            raise OutOfTimeError("syncing stopped; the rest waits in the cache")
        # The wait paid for these datapoints: the bucket is empty as of its end.
        self.tokens, self.filled = 0.0, now + wait
        return True


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True
