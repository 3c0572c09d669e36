"""What each remote holds of each stream (its position), and when a datapoint leaves.

A remote *holds* a datapoint of a stream it routes until it has taken it: acknowledged,
dead-lettered there, or released (``give_up_after``). A position row per remote and stream
(see ``migrations._migrate_v6``) says what it holds: the ids above ``done`` (and at most
``upto``, for a fallback that holds only what was handed to it), minus the ranges in
``taken`` that were taken out of order (the live lane goes before the backlog). Every
function takes the apsw connection of a write transaction that is already open, so a
position and the deletions it allows commit together.

Guarantees (each proved by ``test_positions.py``, against a model of sets):

- A datapoint leaves the cache exactly when no remote that routes its stream holds it any
  more; a stream that no remote routes keeps its datapoints (for the next remote added).
- Taking a range changes no other remote's holding, and nothing outside the range.
- Handing a remote's oldest datapoints to its fallback moves exactly what it held: after
  it, each of them is held by the fallback, not by it (nothing reaches both); a fallback
  that routes the stream itself is handed nothing (it has its own copy of each already).
- Positions stay small: ranges taken out of order merge into ``done`` as soon as nothing
  held lies below them.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from .base import delete

#: Past every id: the end of an unbounded range.
END = 2**62
#: The remote of a cache with one remote (and of every cache made before there were more).
DEFAULT = 1

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Position:
    """What remote ``remote`` holds of stream ``stream``: ids above ``done``, at most
    ``upto`` (None: no end), outside ``taken``; ``inflight_lo`` to ``inflight`` on the wire."""

    remote: int
    stream: int
    done: int
    upto: int | None
    taken: tuple[tuple[int, int], ...]
    inflight_lo: int = 0
    inflight: int = 0

    def taken_ranges(self) -> Ranges:
        """Every id range it does not hold, in order: ``[0, done]``, the ranges taken out
        of order, and ``[upto + 1, END]``."""
        ranges = [(0, self.done), *self.taken]
        if self.upto is not None:
            ranges.append((self.upto + 1, END))
        return merge(ranges)

    def span_after(self, after: int) -> tuple[int, int] | None:
        """The next run of ids it holds after ``after``: ``(after2, last)`` meaning ids in
        ``(after2, last]``; None when it holds nothing after ``after``."""
        start = after + 1
        for lo, hi in self.taken_ranges():
            if hi < start:
                continue
            if lo <= start:
                start = hi + 1
                continue
            return start - 1, lo - 1
        return (start - 1, END) if start <= END else None


def merge(ranges: Ranges) -> Ranges:
    """Sorted, disjoint ranges covering the same ids (adjacent ones joined)."""
    merged: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def subtract(ranges: Ranges, cut: Ranges) -> Ranges:
    """The ids of ``ranges`` not in ``cut`` (both sorted and disjoint)."""
    out: Ranges = []
    for lo, hi in ranges:
        for clo, chi in cut:
            if chi < lo or clo > hi:
                continue
            if clo > lo:
                out.append((lo, clo - 1))
            lo = chi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


# --------------------------------------------------------------------------- reading


def position(conn: apsw.Connection, remote: int, stream: int) -> Position | None:
    """The position of ``remote`` on ``stream``; None: it does not route the stream."""
    row = next(
        conn.execute(
            "SELECT done, upto, inflight_lo, inflight FROM positions "
            "WHERE remote = ? AND stream = ?",
            (remote, stream),
        ),
        None,
    )
    if row is None:
        return None
    taken = tuple(
        (int(lo), int(hi))
        for lo, hi in conn.execute(
            "SELECT lo, hi FROM taken WHERE remote = ? AND stream = ? ORDER BY lo",
            (remote, stream),
        )
    )
    done, upto, lo, hi = row
    return Position(remote, stream, done, upto, taken, lo, hi)


def held_count(conn: apsw.Connection, remote: int, stream: int) -> int:
    """How many cached datapoints of ``stream`` the remote holds."""
    pos = position(conn, remote, stream)
    if pos is None:
        return 0
    held = subtract([(1, END)], pos.taken_ranges())
    return sum(int(next(conn.execute(_COUNT, (stream, lo, hi)))[0]) for lo, hi in held)


_COUNT = "SELECT count(*) FROM datapoints WHERE stream = ? AND id BETWEEN ? AND ?"


# --------------------------------------------------------------------------- writing


def _store(conn: apsw.Connection, remote: int, stream: int, taken: Ranges) -> None:
    """Write the position whose not-held ranges are ``taken`` (sorted, disjoint, the first
    starting at 0), keeping its batch in flight; merge into ``done`` what lies below every
    datapoint it holds."""
    upto: int | None = None
    if taken[0][1] >= END:  # holds nothing (a fallback before any hand-over)
        done, upto, middle = 0, 0, []
    else:
        done, middle = taken[0][1], taken[1:]
        if middle and middle[-1][1] >= END:
            upto, middle = middle[-1][0] - 1, middle[:-1]
    while middle:
        lo, hi = middle[0]
        # Nothing of the stream between done and this range: nothing held lies below it.
        if next(conn.execute(_ANY_BETWEEN, (stream, done, lo)), None) is not None:
            break
        done, middle = hi, middle[1:]
    # Two ranges with nothing of the stream between them are one (the ids between are other
    # streams', or gone, and ids are never reused): the live lane's batches, taken one after
    # the other above a backlog, stay one range however long the backlog takes.
    joined: Ranges = []
    for lo, hi in middle:
        if joined and next(conn.execute(_ANY_BETWEEN, (stream, joined[-1][1], lo)), None) is None:
            joined[-1] = (joined[-1][0], hi)
        else:
            joined.append((lo, hi))
    middle = joined
    conn.execute(
        "UPDATE positions SET done = ?, upto = ? WHERE remote = ? AND stream = ?",
        (done, upto, remote, stream),
    )
    conn.execute("DELETE FROM taken WHERE remote = ? AND stream = ?", (remote, stream))
    conn.executemany(
        "INSERT INTO taken VALUES (?, ?, ?, ?)", [(remote, stream, lo, hi) for lo, hi in middle]
    )


_ANY_BETWEEN = "SELECT 1 FROM datapoints WHERE stream = ? AND id > ? AND id < ? LIMIT 1"


def settle(conn: apsw.Connection, stream: int, lo: int = 0, hi: int = END) -> int:
    """Delete the datapoints of ``stream`` with ids in ``[lo, hi]`` that no remote holds any
    more (none when no remote routes the stream). Returns how many."""
    routed = [
        r for (r,) in conn.execute("SELECT remote FROM positions WHERE stream = ?", (stream,))
    ]
    if not routed:
        return 0
    free: Ranges = [(lo, hi)]  # the ids no remote looked at so far holds
    for remote in routed:
        pos = position(conn, remote, stream)
        assert pos is not None
        free = intersect(free, pos.taken_ranges())
        if not free:
            return 0
    # Plain id ranges: the same statement a single remote's acknowledgement always ran.
    return sum(delete(conn, "stream = ? AND id BETWEEN ? AND ?", (stream, a, b)) for a, b in free)


def intersect(ranges: Ranges, other: Ranges) -> Ranges:
    """The ids in both ``ranges`` and ``other`` (both sorted and disjoint)."""
    out: Ranges = []
    i = j = 0
    while i < len(ranges) and j < len(other):
        lo, hi = max(ranges[i][0], other[j][0]), min(ranges[i][1], other[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if ranges[i][1] < other[j][1]:
            i += 1
        else:
            j += 1
    return out


def take(conn: apsw.Connection, remote: int, stream: int, lo: int, hi: int) -> int:
    """The remote has taken the ids ``[lo, hi]`` of ``stream`` (acknowledged, dead-lettered
    or released): it holds them no more, and what no other remote holds leaves the cache.
    Its batch in flight is the caller's to clear. Returns how many it held there."""
    pos = position(conn, remote, stream)
    if pos is None:
        return 0
    taken = pos.taken_ranges()
    held = sum(
        int(next(conn.execute(_COUNT, (stream, a, b)))[0]) for a, b in subtract([(lo, hi)], taken)
    )
    _store(conn, remote, stream, merge([*taken, (lo, hi)]))
    settle(conn, stream, lo, hi)
    return held


def hold(conn: apsw.Connection, remote: int, stream: int, point: int) -> None:
    """The remote holds the datapoint ``point`` of ``stream`` (a dead letter it refused,
    queued again): whatever its position said of that id (a fallback's ends at what was
    handed to it)."""
    conn.execute(
        "INSERT INTO positions (remote, stream, done, upto) VALUES (?, ?, 0, 0) "
        "ON CONFLICT DO NOTHING",
        (remote, stream),
    )
    pos = position(conn, remote, stream)
    assert pos is not None
    held = subtract([(1, END)], pos.taken_ranges())
    _store(conn, remote, stream, _complement(merge([*held, (point, point)])))


def hand_over(
    conn: apsw.Connection, remote: int, stream: int, upto_id: int, fallback: int | None
) -> tuple[int, int]:
    """``give_up_after``: the remote stops holding what it holds of ``stream`` up to id
    ``upto_id`` (never its batch in flight: the caller stops below it). A ``fallback`` that
    does not route the stream itself holds exactly those datapoints instead; one that does
    has its own copy of each already (held, or delivered), so nothing is handed to it.
    Returns ``(released, handed_over)``: how many the remote held there, by where they went."""
    pos = position(conn, remote, stream)
    if pos is None:
        return 0, 0
    given = subtract([(1, upto_id)], pos.taken_ranges())
    count = sum(int(next(conn.execute(_COUNT, (stream, lo, hi)))[0]) for lo, hi in given)
    other = None if fallback is None else position(conn, fallback, stream)
    handed = 0
    if fallback is not None and count and (other is None or other.upto is not None):
        # A position with an end is a fallback's own list of what was handed to it.
        conn.execute(
            "INSERT INTO positions (remote, stream, done, upto) VALUES (?, ?, 0, 0) "
            "ON CONFLICT DO NOTHING",
            (fallback, stream),
        )
        other = position(conn, fallback, stream)
        assert other is not None
        held = subtract([(1, END)], other.taken_ranges())
        _store(conn, fallback, stream, _complement(merge([*held, *given])))
        handed = count
    _store(conn, remote, stream, merge([*pos.taken_ranges(), (0, upto_id)]))
    settle(conn, stream, 0, upto_id)
    return count - handed, handed


def _complement(held: Ranges) -> Ranges:
    """The not-held ranges (from 0 to END) of the held ranges ``held``."""
    return subtract([(0, END)], held) or [(0, 0)]
