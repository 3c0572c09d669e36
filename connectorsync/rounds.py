"""One phase of a sync pass: its streams take turns, one batch each, until each is done.

:func:`take_turns` runs a :class:`~connectorsync.lanes.Phase` (a lane, or one priority of
it) for :func:`~connectorsync.delivery.run_pass`; what the phases are, and in what order,
is :mod:`connectorsync.lanes`' and :mod:`connectorsync.priority`'s to say. Given the turns
through :class:`RoundTurn`, so that this module needs nothing of
:mod:`connectorsync.delivery` (``tests/test_layers.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .batch import Batch
from .errors import ClosedError, ConnectorSyncError
from .inthread import InThread
from .lanes import Lanes, LaneTurn, OutOfTimeError, Phase
from .report import SyncReport, stops_the_remote
from .synclock import PassGate

T = TypeVar("T")


class RoundTurn(LaneTurn, Protocol):
    """What a phase needs of a stream's turn (``delivery._Turn``), besides what the lanes
    need."""

    nothing: Batch

    def guard(self, step: Callable[..., T], *args: Any) -> T | None: ...

    def next_batch(self) -> Batch: ...

    def read_ahead(self) -> InThread[Batch] | None: ...

    def deliver(
        self, batch: Batch, ahead: InThread[Batch] | None, behind: InThread[None] | None
    ) -> InThread[None] | None: ...

    def fail(self, exc: ConnectorSyncError) -> None: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=RoundTurn)


@dataclass(frozen=True)
class Stops:
    """What ends a pass before its time: close's ``deadline`` (a ``time.monotonic()``, or
    None) and the Logger's close (``gate``, or None)."""

    deadline: float | None
    gate: PassGate | None

    def why(self) -> ConnectorSyncError | None:
        """Why no new batch may start, or None."""
        if self.gate is not None and self.gate.closed:
            return ClosedError("closed while the pass ran; the rest waits in the cache")
        if self.deadline is not None and time.monotonic() > self.deadline:
            return OutOfTimeError("out of time (close); the rest waits in the cache")
        return None


def take_turns(phase: Phase[R], stops: Stops, report: SyncReport, lanes: Lanes) -> None:
    """One batch per stream in turn until every stream is done (``phase.once``: has had one
    batch), failed, or time is up.

    While one batch is on the wire, the next turn's batch is read (and recorded in flight)
    and the previous delivered batch is deleted, each in a thread of its own
    (:class:`InThread`), so the remote is rarely idle; every one of them is finished before
    the phase returns. The backlog's phases are paced by ``max_rate`` and ended by the
    budget. A turn cut off by the budget, the deadline or close() is where the next pass
    begins (``lanes.rotation``). An error that holds for the whole remote (credentials,
    ``Retry-After``) ends every turn.
    """
    backlog = phase.backlog
    active = [turn for turn in phase.turns if not turn.done]
    behind: InThread[None] | None = None
    index = 0
    try:
        while active:
            turn = active[index % len(active)]
            stop = stops.why()
            if stop is not None:  # no new batch starts: the rest waits in the cache
                lanes.rotation.cut_at(turn.name)
                for late in active:
                    late.fail(stop)
                return
            batch = _next_batch(turn, lanes if backlog else None)
            if batch is None:  # the backlog's budget is up (max_rate's wait may have reached it)
                lanes.rotation.cut_at(turn.name)
                return  # the rest waits for the next pass, which takes the live lane first
            if batch:
                if backlog:
                    lanes.served.add(turn.name)
                following = active[(index + 1) % len(active)]
                ahead = None if phase.once else following.read_ahead()
                behind = turn.guard(turn.deliver, batch, ahead, behind)
            if not batch or turn.done or phase.once:
                if not batch:
                    turn.done = True
                active.remove(turn)  # the next stream moves into this index
            else:
                index += 1
            if _stops_every_turn(report, active):
                return
    finally:
        if behind is not None:
            with contextlib.suppress(ConnectorSyncError):
                behind.result()  # the last delete (it runs here if it never started)
        for turn in phase.turns:
            turn.close()


def _stops_every_turn(report: SyncReport, active: list[R]) -> bool:
    """Whether the pass met an error that holds for the whole remote (then every turn of
    ``active`` fails with it)."""
    if not stops_the_remote(report.exception):
        return False
    assert report.exception is not None
    for other in active:
        if not other.failed:
            # The same credentials, or the remote asked to be left alone a while.
            other.fail(report.exception)
    return True


def _next_batch(turn: RoundTurn, lanes: Lanes | None) -> Batch | None:
    """The turn's next batch, paced (``lanes``: a backlog's); None if the backlog's budget
    is up."""
    if lanes is not None and lanes.out_of_budget():
        return None
    return _paced(turn, lanes, turn.guard(turn.next_batch))


def _paced(turn: RoundTurn, lanes: Lanes | None, batch: Batch | None) -> Batch | None:
    """``batch``, once ``max_rate`` lets it go; an empty batch if there was none or the wait
    failed the turn (syncing stopped, or out of time: the batch waits in the cache); None if
    the backlog's budget ended first (the batch waits for the next pass)."""
    if batch and lanes is not None:
        go = turn.guard(lanes.pace, batch.first_id, len(batch))
        if turn.failed:
            return turn.nothing
        if not go:
            return None
    return batch or turn.nothing
