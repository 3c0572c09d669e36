"""Storage limits, enforced inside the caller's write transaction: making room (thinning,
then dropping the oldest, lowest priority first), expiry.

Each function takes the apsw connection of a write transaction that is already open, so the
check and the insert it guards are one atomic step whichever process writes.

Guarantees (each proved by the test named):

- A limit reached refuses the write and changes nothing
  (``test_limits.py::test_max_cached_rejects_and_changes_nothing``), counting every stream and
  every process (``test_limits.py::test_limits_count_every_stream_and_every_process``);
  ``max_cache_bytes`` and ``min_free_disk`` likewise (``test_limits.py::test_max_cache_bytes``,
  ``test_limits.py::test_min_free_disk``).
- With ``drop_oldest`` the oldest datapoints make room, counted as ``dropped``
  (``test_limits.py::test_drop_oldest_keeps_the_newest_and_counts``), also when the disk itself
  is full (``test_limits.py::test_a_full_disk_with_drop_oldest_makes_room``).
- A batch in flight is never dropped nor expired: the oldest of the others go, and when only
  batches in flight are left the write is stored all the same, on top of the limit until
  they are settled (at most ``batch_size`` per stream): ``drop_oldest`` refuses only what
  would displace a higher priority (below)
  (``test_inflight.py::test_drop_oldest_at_the_cache_level_skips_rows_in_flight``,
  ``test_inflight.py::test_drop_oldest_stores_on_top_when_only_the_batch_on_the_wire_is_left``,
  ``test_inflight.py::test_max_age_leaves_the_batch_on_the_wire_alone``).
- Room is made lowest priority first: at each priority its thinnable streams are thinned
  (:mod:`.thinning`), then (``drop_oldest``) its oldest dropped; a higher priority is touched
  only once nothing of a lower one can go, for ``drop_oldest`` too, and never for a datapoint
  of a lower priority: that is refused in every mode
  (``test_thin.py::test_a_lower_priority_never_displaces_a_higher_one``,
  ``test_thin.py::test_lower_priorities_make_room_first``,
  ``test_thin.py::test_drop_oldest_takes_the_lowest_priority_first``). Streams that cannot be
  thinned fall back to dropping (``"thin"``) or a refusal that changes nothing, thinning
  included (``"thin_or_reject"``:
  ``test_thin.py::test_streams_that_cannot_be_thinned_fall_back_as_configured``); so do
  ``max_cache_bytes``, ``min_free_disk`` and a full disk
  (``test_thin.py::test_max_cache_bytes_thins``, ``test_thin.py::test_min_free_disk_thins``,
  ``test_thin.py::test_a_full_disk_thins``).
- Expired datapoints are counted as ``expired``
  (``test_limits.py::test_max_age_expires_and_counts``), a requeued dead letter dropped or
  expired once (``test_inflight.py::test_a_requeued_dead_letter_dropped_is_counted_once``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

import apsw

from ..errors import CacheFullError
from .base import AT_REST, bump, delete
from .thinning import thin_priority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Storage limits, checked inside the write (so several processes cannot overshoot).

    :ivar max_cached: most datapoints the cache may hold
    :ivar max_bytes: most bytes the cache's pages may use
    :ivar min_free_disk: bytes that must stay free on the cache's file system
    :ivar drop_oldest: when full (and thinning is not enough), drop the oldest datapoints
        (counted) instead of refusing
    :ivar thin_numbers: thin the streams whose ``thin`` is left to ``on_full`` (None) and
        whose schema is a number (``on_full="thin"`` or ``"thin_or_reject"``); streams with
        ``thin=True`` are thinned whatever this says
    """

    max_cached: int | None = None
    max_bytes: int | None = None
    min_free_disk: int | None = None
    drop_oldest: bool = False
    thin_numbers: bool = False

    @property
    def active(self) -> bool:
        return bool(self.max_cached or self.max_bytes or self.min_free_disk)

    @property
    def by_count_only(self) -> bool:
        """Whether ``max_cached`` is the only limit: then an insert that fits it needs one
        statement (:data:`INSERT_IF_ROOM`)."""
        return bool(self.max_cached) and not (self.max_bytes or self.min_free_disk)

    @property
    def engaged(self) -> bool:
        """Whether a write must go through :func:`make_room` (or free room on a full disk)."""
        return self.active or self.drop_oldest or self.thin_numbers

    @classmethod
    def from_on_full(
        cls,
        on_full: str,
        max_cached: int | None = None,
        max_bytes: int | None = None,
        min_free_disk: int | None = None,
    ) -> Limits:
        """The limits of the option ``on_full`` (see :data:`ON_FULL`) and the three limits."""
        drop, thin = ON_FULL[on_full]
        return cls(max_cached, max_bytes, min_free_disk, drop_oldest=drop, thin_numbers=thin)


#: ``on_full`` value -> (drop the oldest when thinning is not enough, thin number streams).
ON_FULL: dict[str, tuple[bool, bool]] = {
    "reject": (False, False),
    "drop_oldest": (True, False),
    "thin": (True, True),
    "thin_or_reject": (False, True),
}


def make_room(
    conn: apsw.Connection,
    path: str,
    incoming: int,
    limits: Limits,
    streams: Collection[int] | None = None,
) -> int:
    """Inside a write: make room for ``incoming`` datapoints of ``streams`` (ids; None: no
    stream in particular) in the cache file ``path``, or raise CacheFullError. Room is made
    from the streams of their (highest) priority or lower only: a datapoint never displaces
    one of a higher priority; when only those are left it is refused, in every mode
    (``test_thin.py::test_a_lower_priority_never_displaces_a_higher_one``). Returns how many
    datapoints were removed (thinned or dropped)."""
    room = Room(conn, limits, streams)
    freed = 0
    if limits.max_cached:
        freed += _room_by_count(room, incoming, limits.max_cached)
    if limits.max_bytes:
        freed += _room_by_bytes(room, limits.max_bytes)
    if limits.min_free_disk:
        freed += _room_on_disk(room, path, limits.min_free_disk)
    return freed


class Room:
    """Making room inside one write: the connection, the limits, and the priority ceiling of
    the streams the room is for (looked up only when something must go)."""

    def __init__(
        self, conn: apsw.Connection, limits: Limits, streams: Collection[int] | None = None
    ):
        self.conn, self.limits, self._streams = conn, limits, streams
        self._ceiling: tuple[str, int] | None = None

    @property
    def ceiling(self) -> tuple[str, int] | None:
        """``(stream name, priority)`` of the incoming stream of the highest priority, or None:
        room may be made from any priority."""
        if self._streams and self._ceiling is None:
            marks = ",".join("?" * len(self._streams))
            self._ceiling = next(
                self.conn.execute(
                    f"SELECT name, priority FROM streams WHERE id IN ({marks}) "
                    "ORDER BY priority DESC LIMIT 1",
                    tuple(self._streams),
                ),
                None,
            )
        return self._ceiling

    def free(self, want: int) -> int:
        """:func:`free` up to ``want`` under this room's ceiling."""
        ceiling = self.ceiling
        return free(self.conn, want, self.limits, None if ceiling is None else ceiling[1])

    def free_one_percent(self) -> int:
        """:func:`free` 1% (at least one) of the datapoints: a page is freed only once all its
        rows are gone, so removing one at a time may free nothing. Returns how many."""
        return self.free(max(1, _count(self.conn) // 100))

    def held_above(self) -> bool:
        """Whether datapoints of a priority above the ceiling could go, were it not for it."""
        ceiling = self.ceiling
        if ceiling is None:
            return False
        found = self.conn.execute(
            f"SELECT 1 FROM datapoints WHERE {AT_REST} AND stream IN "
            "(SELECT id FROM streams WHERE priority > ?) LIMIT 1",
            (ceiling[1],),
        )
        return next(found, None) is not None

    def refusal(self) -> str:
        """What to do about a refusal, by how the limits make room and the ceiling."""
        removes = self.limits.drop_oldest or self.limits.thin_numbers
        if removes and self.held_above():
            name, priority = self.ceiling or ("", 0)
            return (
                f"what could go is of a higher priority than stream {name!r} ({priority}), and"
                " a datapoint never displaces a higher priority: sync, raise the limit, or"
                " raise the stream's priority"
            )
        if self.limits.thin_numbers:
            return "sync, raise the limit, or use on_full='thin' to drop the oldest once thinned"
        return "sync, raise the limit, or use on_full='thin' or 'drop_oldest'"


def _room_by_count(room: Room, incoming: int, max_cached: int) -> int:
    """``max_cached``: make room (thinning first, then dropping when ``drop_oldest``) or
    refuse what goes over it. More at once than ``max_cached`` can never fit, whatever is
    removed: refused in either mode
    (``test_limits.py::test_more_at_once_than_max_cached_is_refused_whole``)."""
    if incoming > max_cached:
        raise CacheFullError(
            f"{incoming} datapoints at once can never fit max_cached={max_cached}: nothing was"
            " stored (store fewer at a time, or raise max_cached)"
        )
    conn, limits = room.conn, room.limits
    # Two subqueries: SQLite reads min() or max() alone from the index's end, but scans
    # the whole table for both in one SELECT.
    lowest, highest, counted = next(conn.execute(SPAN))
    # Ids are never reused, so the count is at most the id span, and at most the last exact
    # count plus the ids given since (deletions only lower it): only when both reach the
    # limit is the exact (O(n)) count needed. (The id span alone is no bound after thinning,
    # which leaves the ids sparse.)
    bound = 0 if lowest is None else int(highest) - int(lowest) + 1
    if counted is not None:
        at, count = json.loads(counted)
        bound = min(bound, count + int(highest or 0) - at)
    if bound + incoming <= max_cached:
        return 0
    cached = _count(conn)
    excess = cached + incoming - max_cached
    if excess <= 0:
        _counted(conn, highest, cached)
        return 0
    # Some headroom, so that the next inserts need no count. Thinning reads every cached
    # time of a stream: it makes more room at once (5%), so as to run once per 5% of
    # max_cached inserts, not per insert (tests/benchmarks/_full_thin.py measures it).
    headroom = max_cached // (20 if limits.thin_numbers else 100)
    freed = room.free(max(excess, headroom))
    if freed < excess and (not limits.drop_oldest or room.held_above()):
        # The transaction rolls back whatever was thinned: a refusal changes nothing.
        raise CacheFullError(
            f"the cache holds {cached} datapoints and max_cached is {max_cached}"
            f"{' (thinned as far as it goes)' if limits.thin_numbers else ''}: nothing was"
            f" stored ({room.refusal()})"
        )
    _counted(conn, highest, cached - freed)
    if freed < excess:
        # The rest is batches in flight, immutable until settled (at most batch_size per
        # stream): they come on top of the cap for that long.
        log.info("cache over max_cached by datapoints being sent; they stay until settled")
    return freed


#: The setting that keeps ``[highest id, count]`` of the last exact count, written in the
#: transaction that counted (so a rolled-back write takes it back too).
COUNTED = "limits.counted"
#: The lowest and highest ids cached, and the last exact count (:data:`COUNTED`).
SPAN = (
    "SELECT (SELECT min(id) FROM datapoints) AS lo, (SELECT max(id) FROM datapoints) AS hi, "
    f"(SELECT value FROM settings WHERE key = '{COUNTED}') AS counted"
)
#: One datapoint in (``INSERT``'s five values), only when :data:`SPAN`'s bound (see
#: :func:`_room_by_count`) says it fits ``max_cached`` (``?6``) without making room. One
#: statement: the check and the write are one atomic step, under the write lock, whichever
#: process writes, and cost about what an insert without limits costs. Nothing inserted
#: (``changes() == 0``): it may not fit, or the order trigger refused it; the caller then
#: takes the path that makes room. (``LIMIT 1`` keeps SQLite from copying the span's three
#: lookups into each place the bound uses them: 3 lookups, not 11.)
INSERT_IF_ROOM = f"""
INSERT INTO datapoints (stream, t, d, boot, mono)
SELECT ?1, ?2, ?3, ?4, ?5 FROM ({SPAN} LIMIT 1)
WHERE lo IS NULL OR min(
    hi - lo + 1,
    coalesce(json_extract(counted, '$[1]') + hi - json_extract(counted, '$[0]'), hi - lo + 1)
) + 1 <= ?6
"""


def _counted(conn: apsw.Connection, highest: int | None, count: int) -> None:
    """Record an exact count of the datapoints with ids up to ``highest``, inside the write."""
    conn.execute(
        "INSERT OR REPLACE INTO settings VALUES (?, ?)",
        (COUNTED, json.dumps([int(highest or 0), count])),
    )


def _room_by_bytes(room: Room, max_bytes: int) -> int:
    """``max_cache_bytes``: thin, then drop (when ``drop_oldest``) the oldest until the pages
    in use fit."""
    freed = 0
    while (used := used_bytes(room.conn)) > max_bytes:
        more = room.free_one_percent()
        if not more:
            if room.limits.drop_oldest and not room.held_above():
                break  # only batches in flight are left: they come on top until settled
            raise CacheFullError(
                f"the cache uses {used} bytes and max_cache_bytes is {max_bytes}:"
                f" nothing was stored ({room.refusal()})"
            )
        freed += more
    return freed


def _room_on_disk(room: Room, path: str, min_free_disk: int) -> int:
    """``min_free_disk``: when the disk is under it, the write must fit in the file's free
    pages; thin, then drop (when ``drop_oldest``) the oldest until there are some."""
    stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    free_bytes = stat.f_bavail * stat.f_frsize
    if free_bytes >= min_free_disk:
        return 0
    # Removed rows free pages inside the file for reuse: it then need not grow.
    conn, limits = room.conn, room.limits
    freed = 0
    has_room = _free_pages(conn) > 0
    while not has_room:
        more = room.free_one_percent()
        if not more:
            break
        freed += more
        has_room = _free_pages(conn) > 0
    if not has_room and not (limits.drop_oldest and freed == 0 and _all_in_flight(conn)):
        raise CacheFullError(
            f"{free_bytes} bytes free on the disk, under min_free_disk ({min_free_disk}): "
            f"nothing was stored ({room.refusal()})"
        )
    return freed


def _all_in_flight(conn: apsw.Connection) -> bool:
    """Whether every cached datapoint belongs to a batch in flight (none can be dropped)."""
    return next(conn.execute(f"SELECT 1 FROM datapoints WHERE {AT_REST} LIMIT 1"), None) is None


def _count(conn: apsw.Connection) -> int:
    return int(next(conn.execute("SELECT count(*) FROM datapoints"))[0])


def _free_pages(conn: apsw.Connection) -> int:
    return int(next(conn.execute("PRAGMA freelist_count"))[0])


def used_bytes(conn: apsw.Connection) -> int:
    """Bytes of the cache file's pages in use (free pages not counted)."""
    pages = int(next(conn.execute("PRAGMA page_count"))[0])
    size = int(next(conn.execute("PRAGMA page_size"))[0])
    return (pages - _free_pages(conn)) * size


def free(conn: apsw.Connection, want: int, limits: Limits, ceiling: int | None = None) -> int:
    """Inside a write: remove up to ``want`` datapoints, lowest priority first, none above
    ``ceiling`` (None: no limit): at each priority, thin its thinnable streams, then
    (``drop_oldest``) drop its oldest; a higher priority is touched only once nothing of a
    lower one can go (``test_thin.py::test_lower_priorities_make_room_first``). Returns how
    many."""
    freed = 0
    levels = [int(r[0]) for r in conn.execute(PRIORITIES)]
    alone = len(levels) == 1  # one priority cached: drop by id alone, a cheaper query
    for priority in levels:
        if freed >= want or (ceiling is not None and priority > ceiling):
            break
        freed += thin_priority(conn, priority, want - freed, numbers=limits.thin_numbers)
        if freed < want and limits.drop_oldest:
            freed += drop_oldest(conn, want - freed, None if alone else priority)
    return freed


#: The priorities of the streams with cached datapoints, lowest first.
PRIORITIES = (
    "SELECT DISTINCT s.priority FROM streams AS s "
    "WHERE EXISTS (SELECT 1 FROM datapoints AS d WHERE d.stream = s.id) ORDER BY s.priority"
)


def drop_oldest(conn: apsw.Connection, count: int, priority: int | None = None) -> int:
    """Delete the ``count`` oldest datapoints (of the streams of ``priority``; None: all
    streams) and count them as dropped. Datapoints of a batch in flight are left alone: the
    oldest of the others go."""
    where = AT_REST
    params: tuple[int, ...] = ()
    if priority is not None:
        where += " AND stream IN (SELECT id FROM streams WHERE priority = ?)"
        params = (priority,)
    edge = next(
        conn.execute(
            f"SELECT id FROM datapoints WHERE {where} ORDER BY id LIMIT 1 OFFSET ?",
            (*params, count - 1),
        ),
        None,
    )
    if edge is None:
        edge = next(conn.execute(f"SELECT max(id) FROM datapoints WHERE {where}", params))
        if edge[0] is None:
            return 0
    dropped = delete(conn, f"id <= ? AND {where}", (edge[0], *params))
    bump(conn, "stats.dropped", dropped)
    log.warning("cache full: dropped the %d oldest datapoints", dropped)
    return dropped


def drop_expired(conn: apsw.Connection, before: float) -> int:
    """Delete the datapoints with ``t`` < ``before`` but those of a batch in flight, and count
    them as expired. Returns how many."""
    expired = delete(conn, f"t < ? AND {AT_REST}", (before,))
    bump(conn, "stats.expired", expired)
    return expired
