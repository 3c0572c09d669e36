"""Priorities in sending: how a pass orders its streams (``add_stream(..., priority=N)``).

A pass (:mod:`connectorsync.delivery`) sends what was cached when it began, in lanes
(:mod:`connectorsync.lanes`): batches without answer, then live data, then the backlog. In
each lane the streams go **highest priority first**: the streams of one priority take turns,
one batch each, until all of their datapoints of that lane are sent; then the next priority
down. So an alarm stream (priority 9) goes before a week of temperature (priority 0):

- in the live lane, and in the backlog, where ``max_rate``'s tokens go to it first;
- with an ``ordered`` remote too, where priority orders the streams, never the datapoints of
  one stream: each stream's batches still go oldest first, and an ordered remote's pass is
  time-boxed like the others (``syncperiod`` for the backlog), so an alarm cached while a
  long backlog drains waits for the end of the pass under way at most, then goes first.

The priority is read from the cache when a pass begins: a change (``add_stream`` again with
another ``priority=``) takes effect at the next pass.

**No starvation.** Higher first alone would let a busy high-priority stream starve the others
(Azure IoT Edge's priorities do: a low one waits as long as a higher one has data). Two rules
keep every stream moving:

1. A pass sends only what was cached when it began, every lane to its end or to the backlog's
   budget; what a high-priority stream inserts meanwhile waits for the next pass, so it
   never jumps ahead of lower priorities already waiting in the pass under way.
2. When the backlog's budget (or ``max_rate``) ends a pass, a stream with a backlog left that
   sent none of it in that pass was *passed over*; the next pass's backlog lane begins with
   one batch of each stream passed over, the longest waiting first, before the priorities
   take their turns. So a stream with a backlog gets at least one batch every other pass,
   however much a higher priority has to send (and with many streams passed over, each
   gets one within as many passes as there are of them).

The memory of who was passed over is the courier's (:class:`~connectorsync.lanes.Rotation`),
in memory: a restart forgets it, which costs at most one pass's wait.

Guarantees (``tests/test_priority.py``):

- after an outage, an alarm inserted while a backlog drains arrives in the next pass, before
  the backlog's rest (``test_an_alarm_inserted_during_a_large_drain_goes_in_the_next_pass``);
- ``max_rate`` is spent on higher priorities first
  (``test_max_rate_is_spent_on_the_higher_priority_first``);
- an ordered remote gets each stream's datapoints in order, whatever the priorities
  (``test_an_ordered_remote_gets_each_stream_in_order_whatever_the_priorities``);
- the live lane goes highest priority first too
  (``test_the_live_lane_goes_highest_priority_first``);
- each remote of a fan-out sends priorities first
  (``test_each_remote_of_a_fan_out_sends_priorities_first``);
- a low priority is not starved by a high one that inserts faster than the remote drains
  (``test_a_low_priority_moves_while_a_high_one_outpaces_the_remote``);
- a change of priority takes effect at the next pass
  (``test_a_new_priority_takes_effect_at_the_next_pass``).
"""

from __future__ import annotations

from itertools import groupby
from typing import Protocol, TypeVar


class Prioritised(Protocol):
    """A stream's turn, as far as priorities go."""

    @property
    def priority(self) -> int: ...


P = TypeVar("P", bound=Prioritised)


def by_priority(turns: list[P]) -> list[P]:
    """``turns`` highest priority first; those of one priority keep their order (the
    rotation's)."""
    return sorted(turns, key=lambda turn: -turn.priority)


def tiers(turns: list[P]) -> list[list[P]]:
    """``turns`` (in :func:`by_priority` order) cut into runs of one priority each."""
    return [list(tier) for _, tier in groupby(turns, key=lambda turn: turn.priority)]
