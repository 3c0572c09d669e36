"""Thinning (``on_full="thin"``, ``add_stream(thin=True)``): making room in a full cache by
removing datapoints where a stream's cached datapoints lie closest together in time, so that
what is kept covers the whole outage at an even resolution that falls as the outage grows.

Runs inside the caller's write transaction (see :mod:`.limits`, which decides when and in
which priority order): a refused write rolls thinning back with it.

How a step chooses (the outcome is what counts, see below): the gaps between a stream's
consecutive cached datapoints are put into classes by ``round(log2(gap))``: a regular sampler
lands on powers of two after each halving, in the middle of its class, so jitter does not
move it across a class border. The finest class's runs (consecutive gaps all of that class)
are thinned oldest first: every other datapoint of a run, keeping the run's first; then the
classes are computed again. So the densest, oldest part is halved first, and the kept
datapoints tend to one even spacing that doubles as the outage grows, instead of the start of
the outage being emptied.

Guarantees (each proved by the test named):

- A 7-day 1 Hz outage into ``max_cached=10000`` keeps datapoints of its first and last hour
  and of every day, at most 10,000, evenly spaced (the largest gap within 4x the median), each
  an original reading: same t, same value (``test_thin.py::test_a_week_at_1hz_thins_evenly``).
- A datapoint of a batch in flight (to any remote) and a stream's newest and oldest cached
  datapoints are never thinned
  (``test_thin.py::test_thinning_spares_the_batch_in_flight_and_the_newest``).
- Every thinned datapoint is counted once, per stream (``streams.thinned``) and in total
  (``stats.thinned``), in the same transaction as its removal
  (``test_thin.py::test_every_datapoint_is_counted_in_one_place``,
  ``test_powercut.py`` phase ``thin``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from math import frexp, sqrt
from typing import Any

import apsw

from .base import bump, delete

SQRT2 = sqrt(2.0)

#: The streams of one priority that may be thinned: ``thin`` 1, or NULL when ``on_full``
#: thins number streams (?2) and the schema's type is a number; most datapoints first.
THINNABLE = """
SELECT s.id FROM streams AS s
WHERE s.priority = ?1 AND (s.thin = 1 OR (s.thin IS NULL AND ?2
      AND json_valid(s.schema) AND json_extract(s.schema, '$.type') IN ('number', 'integer')))
ORDER BY (SELECT count(*) FROM datapoints AS d WHERE d.stream = s.id) DESC, s.id
"""


def thin_priority(conn: apsw.Connection, priority: int, want: int, *, numbers: bool) -> int:
    """Inside a write: thin the thinnable streams of ``priority`` (``numbers``: also those
    left to ``on_full`` whose schema is a number) until ``want`` datapoints are removed or
    none can be. Returns how many were removed (each counted as thinned)."""
    removed = 0
    streams: list[tuple[Any, ...]] = conn.execute(THINNABLE, (priority, numbers)).fetchall()
    for (stream_id,) in streams:
        if removed >= want:
            break
        removed += thin_stream(conn, int(stream_id), want - removed)
    return removed


def thin_stream(conn: apsw.Connection, stream_id: int, want: int) -> int:
    """Inside a write: remove up to ``want`` datapoints of one stream by thinning, count them
    (per stream and in total). Returns how many (0: it is thinned as far as it goes)."""
    points: list[tuple[Any, ...]] = conn.execute(
        "SELECT id, t FROM datapoints WHERE stream = ? ORDER BY id", (stream_id,)
    ).fetchall()
    # The rows in flight, to any remote (see AT_REST in base.py): never thinned.
    marks: list[tuple[Any, ...]] = conn.execute(
        "SELECT inflight_lo, inflight FROM positions WHERE stream = ? AND inflight > 0",
        (stream_id,),
    ).fetchall()
    ranges = [(int(lo), int(hi)) for lo, hi in marks]
    ids = [int(p[0]) for p in points]
    times = [float(p[1]) for p in points]
    frozen = [any(lo <= i <= hi for lo, hi in ranges) for i in ids] if ranges else None
    gone = choose(times, frozen, want)
    if not gone:
        return 0
    doomed = [ids[i] for i in gone]
    count = delete(conn, "id IN (SELECT value FROM json_each(?))", (json.dumps(doomed),))
    conn.execute("UPDATE streams SET thinned = thinned + ? WHERE id = ?", (count, stream_id))
    bump(conn, "stats.thinned", count)
    return count


def choose(times: Sequence[float], frozen: Sequence[bool] | None, want: int) -> list[int]:
    """The indexes of up to ``want`` datapoints to remove from a stream whose cached
    datapoints are at ``times`` (increasing), never one that is ``frozen`` (in flight), nor
    the first or the last. Pure: no SQL, so it is cheap to reason about."""
    alive = list(range(len(times)))
    gone: list[int] = []
    while len(gone) < want and len(alive) > 2:
        removed = _one_step(times, frozen, alive, want - len(gone))
        if not removed:
            break  # nothing removable left: thinned as far as it goes
        gone.extend(removed)
        dead = set(removed)
        alive = [i for i in alive if i not in dead]
    return gone


def _one_step(
    times: Sequence[float], frozen: Sequence[bool] | None, alive: list[int], want: int
) -> list[int]:
    """Thin the runs of the finest gap class that has something removable, oldest run first,
    up to ``want``. Returns the indexes removed (empty: nothing can go)."""
    # round(log2(gap)) is the exponent frexp gives gap * sqrt(2), less one: much cheaper
    # (this runs over every cached datapoint of the stream); a gap is never 0 (strictly
    # increasing times), max() keeps it defined all the same.
    classes = [
        frexp(max(times[b] - times[a], 1e-9) * SQRT2)[1] for a, b in itertools.pairwise(alive)
    ]
    last = len(alive) - 1
    for cls in sorted(set(classes)):
        removed: list[int] = []
        k = 0
        while k < len(classes) and len(removed) < want:
            if classes[k] != cls:
                k += 1
                continue
            start = k  # a run: gaps start..end-1 of this class, points start..end
            while k < len(classes) and classes[k] == cls:
                k += 1
            # Every other point of the run, keeping its first; never the stream's newest nor
            # one in flight: then the next one goes instead (so a step removes nothing only
            # when nothing can go: every point but the first ends a gap of some run).
            pos = start + 1
            while pos <= k and len(removed) < want:
                index = alive[pos]
                if pos < last and not (frozen is not None and frozen[index]):
                    removed.append(index)
                    pos += 2
                else:
                    pos += 1
        if removed:
            return removed
    return []
