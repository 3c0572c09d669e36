"""Storage limits, enforced inside the caller's write transaction: making room, dropping the
oldest datapoints, expiry.

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
  they are settled (at most ``batch_size`` per stream): ``drop_oldest`` never refuses
  (``test_inflight.py::test_drop_oldest_at_the_cache_level_skips_rows_in_flight``,
  ``test_inflight.py::test_drop_oldest_stores_on_top_when_only_the_batch_on_the_wire_is_left``,
  ``test_inflight.py::test_max_age_leaves_the_batch_on_the_wire_alone``).
- Expired datapoints are counted as ``expired``
  (``test_limits.py::test_max_age_expires_and_counts``), a requeued dead letter dropped or
  expired once (``test_inflight.py::test_a_requeued_dead_letter_dropped_is_counted_once``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import apsw

from ..errors import CacheFullError
from .base import AT_REST, bump, delete

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Storage limits, checked inside the write (so several processes cannot overshoot).

    :ivar max_cached: most datapoints the cache may hold
    :ivar max_bytes: most bytes the cache's pages may use
    :ivar min_free_disk: bytes that must stay free on the cache's file system
    :ivar drop_oldest: when full, drop the oldest datapoints (counted) instead of refusing
    """

    max_cached: int | None = None
    max_bytes: int | None = None
    min_free_disk: int | None = None
    drop_oldest: bool = False

    @property
    def active(self) -> bool:
        return bool(self.max_cached or self.max_bytes or self.min_free_disk)


def make_room(conn: apsw.Connection, path: str, incoming: int, limits: Limits) -> int:
    """Inside a write: make room for ``incoming`` datapoints in the cache file ``path``, or raise
    CacheFullError. Returns how many datapoints were dropped (counted as ``dropped``)."""
    dropped = 0
    if limits.max_cached:
        dropped += _room_by_count(conn, incoming, limits.max_cached, drop=limits.drop_oldest)
    if limits.max_bytes:
        dropped += _room_by_bytes(conn, limits.max_bytes, drop=limits.drop_oldest)
    if limits.min_free_disk:
        dropped += _room_on_disk(conn, path, limits.min_free_disk, drop=limits.drop_oldest)
    return dropped


def _room_by_count(conn: apsw.Connection, incoming: int, max_cached: int, *, drop: bool) -> int:
    """``max_cached``: drop (when ``drop``) or refuse what goes over it. More at once than
    ``max_cached`` can never fit, whatever is dropped: refused in either mode
    (``test_limits.py::test_more_at_once_than_max_cached_is_refused_whole``)."""
    if incoming > max_cached:
        raise CacheFullError(
            f"{incoming} datapoints at once can never fit max_cached={max_cached}: nothing was"
            " stored (store fewer at a time, or raise max_cached)"
        )
    lowest, highest = next(conn.execute("SELECT min(id), max(id) FROM datapoints"))
    # Ids are never reused, so the id span bounds the count from above: only when it
    # reaches the limit is the exact (O(n)) count needed.
    span = 0 if lowest is None else int(highest) - int(lowest) + 1
    if span + incoming <= max_cached:
        return 0
    cached = _count(conn)
    excess = cached + incoming - max_cached
    if excess <= 0:
        return 0
    full = f"the cache holds {cached} datapoints and max_cached is {max_cached}: nothing was stored"
    if not drop:
        raise CacheFullError(f"{full} (sync, raise max_cached, or use on_full='drop_oldest')")
    # Some headroom, so that the next inserts need no count.
    dropped = drop_oldest(conn, max(excess, max_cached // 100))
    if dropped < excess:
        # The rest is batches in flight, immutable until settled (at most batch_size per
        # stream): they come on top of the cap for that long; drop_oldest never refuses.
        log.info("cache over max_cached by datapoints being sent; they stay until settled")
    return dropped


def _room_by_bytes(conn: apsw.Connection, max_bytes: int, *, drop: bool) -> int:
    """``max_cache_bytes``: drop (when ``drop``) the oldest until the pages in use fit."""
    dropped = 0
    while (used := used_bytes(conn)) > max_bytes:
        if not drop:
            raise CacheFullError(
                f"the cache uses {used} bytes and max_cache_bytes is {max_bytes}:"
                " nothing was stored"
            )
        freed = drop_one_percent(conn)
        if not freed:
            break  # only batches in flight are left: they come on top until settled
        dropped += freed
    return dropped


def _room_on_disk(conn: apsw.Connection, path: str, min_free_disk: int, *, drop: bool) -> int:
    """``min_free_disk``: when the disk is under it, the write must fit in the file's free
    pages; drop (when ``drop``) the oldest until there are some."""
    stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    free = stat.f_bavail * stat.f_frsize
    if free >= min_free_disk:
        return 0
    # Dropped rows free pages inside the file for reuse: it then need not grow.
    dropped = 0
    has_room = _free_pages(conn) > 0
    while not has_room and drop:
        freed = drop_one_percent(conn)
        if not freed:
            break
        dropped += freed
        has_room = _free_pages(conn) > 0
    if not has_room and not (drop and dropped == 0 and _all_in_flight(conn)):
        raise CacheFullError(
            f"{free} bytes free on the disk, under min_free_disk ({min_free_disk}): "
            "nothing was stored"
        )
    return dropped


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


def drop_one_percent(conn: apsw.Connection) -> int:
    """Drop the oldest 1% (at least one) of the datapoints: a page is freed only once all its
    rows are gone, so dropping one at a time may free nothing. Returns how many."""
    return drop_oldest(conn, max(1, _count(conn) // 100))


def drop_oldest(conn: apsw.Connection, count: int) -> int:
    """Delete the ``count`` oldest datapoints (all streams) and count them as dropped.
    Datapoints of a batch in flight are left alone: the oldest of the others go."""
    edge = next(
        conn.execute(
            f"SELECT id FROM datapoints WHERE {AT_REST} ORDER BY id LIMIT 1 OFFSET ?",
            (count - 1,),
        ),
        None,
    )
    if edge is None:
        edge = next(conn.execute(f"SELECT max(id) FROM datapoints WHERE {AT_REST}"))
        if edge[0] is None:
            return 0
    dropped = delete(conn, f"id <= ? AND {AT_REST}", (edge[0],))
    bump(conn, "stats.dropped", dropped)
    log.warning("cache full: dropped the %d oldest datapoints", dropped)
    return dropped


def drop_expired(conn: apsw.Connection, before: float) -> int:
    """Delete the datapoints with ``t`` < ``before`` but those of a batch in flight, and count
    them as expired. Returns how many."""
    expired = delete(conn, f"t < ? AND {AT_REST}", (before,))
    bump(conn, "stats.expired", expired)
    return expired
