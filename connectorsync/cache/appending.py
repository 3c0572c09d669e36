"""The insert path of :class:`~connectorsync.cache.Cache`: datapoints appended to their
stream in time order, within the storage limits, committed the way the durability asks
(grouped with other threads' inserts, queued for ``batched``, or alone). :class:`Appending`
is a base of ``Cache``, as :class:`~.deadletters.DeadLetters` is; the SQL it runs is
:mod:`.base`'s, the room it makes :mod:`.limits`'.

Guarantees (each proved by the test named, in ``tests/``):

- A stream's timestamps strictly increase: a ``t`` equal to the stream's newest becomes
  newest + 1 µs, an older one too with ``restamp`` and is refused otherwise, storing nothing;
  also against another connection's inserts (the trigger checks again under the write lock)
  (``test_clock.py::test_out_of_order_policy``,
  ``test_clock.py::test_wall_clock_jumping_back_never_fails_or_reorders``,
  ``test_durability.py::test_processes_inserting_together_never_see_locked``).
- :meth:`Appending.append_many` stores all its points or none
  (``test_logger.py::test_insert_many_is_atomic``).
- Under storage limits the room is made in the insert's own transaction; a full disk raises
  and keeps everything, or, with ``drop_oldest`` or thinning, frees 1% at a time, lowest
  priority first, and tries again
  (``test_limits.py::test_a_full_disk_raises_keeps_everything_and_recovers``,
  ``test_limits.py::test_a_full_disk_with_drop_oldest_makes_room``).
- With durability ``"full"`` inserts of several threads share commits
  (``test_group_commit.py::test_threads_waiting_behind_a_commit_share_the_next_one``).
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from ..errors import CacheError, CacheFullError
from .base import INSERT, NEWEST, place, translate
from .batched import CommitQueue
from .commit import AppendRow, GroupCommit, Point
from .connection import CommitOutcome, Connection
from .limits import INSERT_IF_ROOM, Limits, Room, make_room
from .records import Untrusted


class Appending(Connection):
    """The insert methods of :class:`~connectorsync.cache.Cache`: :meth:`append`,
    :meth:`append_many` and :meth:`flush` of what ``batched`` queued."""

    # Declared here, not in Connection: commit.py and batched.py build on connection.py;
    # :meth:`Cache.set_durability` makes them.
    # With durability "full", inserts of several threads share commits (fsyncs).
    _group: GroupCommit | None = None
    # With durability "batched", inserts are queued and committed every commit_interval.
    _batched: CommitQueue | None = None

    def append(  # noqa: PLR0913 - the insert hot path: no argument object built per call
        self,
        stream_id: int,
        t: float,
        data: str | bytes,
        *,
        restamp: bool,
        untrusted: Untrusted | None = None,
        limits: Limits | None = None,
    ) -> float:
        """Append one datapoint and commit. Returns the ``t`` stored.

        ``t`` must be finite. If it is not after the stream's newest timestamp it becomes
        newest + 1 µs when equal, or when older and ``restamp``; an older ``t`` without
        ``restamp`` raises :class:`TooOldError` and stores nothing. ``untrusted`` marks a
        time to fix once the clock is trusted (``Cache.reanchor``).

        :raises CacheFullError: a limit is reached (and ``limits.drop_oldest`` is off), or
            the disk is full; nothing was stored
        """
        self.check_process()  # first: a lock held at a fork stays held in the child
        row = (stream_id, t, data, *(untrusted or (None, None)))
        if self._group is not None:
            return self._group.append(row, restamp, limits)
        if self._batched is not None:
            return self._batched.append(row, restamp, limits, self._append_alone)
        return self._append_alone(row, restamp, limits)

    def flush(self) -> None:
        """Commit the datapoints queued by ``durability="batched"`` now (else nothing to do).

        :raises CacheError: the commit failed; they stay queued
        """
        self.check_process()
        if self._batched is not None:
            self._batched.flush()

    def _append_alone(self, row: AppendRow, restamp: bool, limits: Limits | None) -> float:
        """:meth:`append` in a transaction of its own."""
        if limits is not None and limits.engaged:
            # Checked inside a transaction; a full disk makes room and tries again.
            with self._lock:
                if limits.by_count_only:
                    stored = self._append_if_room(row, restamp, limits)
                    if stored is not None:
                        return stored
                return self._append_limited(row, restamp, limits)
        # The hot path: a plain try (no context manager) is measurably cheaper here.
        with self._lock:
            try:
                while True:
                    stored = self._insert_one(INSERT, row, restamp, ())
                    if stored is not None:
                        return stored
            except apsw.Error as exc:
                raise translate(exc, "store the datapoint") from exc

    def _append_if_room(self, row: AppendRow, restamp: bool, limits: Limits) -> float | None:
        """:meth:`append` under ``max_cached`` alone, when it fits without making room: one
        statement (:data:`.limits.INSERT_IF_ROOM`) that checks and inserts, atomic as the
        transaction of :meth:`_append_limited` is, and nearly as cheap as an insert without
        limits (``tests/benchmarks/_full_thin.py``). None when nothing went in: it may not fit,
        the disk is full, or another connection stored a newer datapoint first; the caller
        then takes :meth:`_append_limited`, which sorts out each."""
        try:
            return self._insert_one(INSERT_IF_ROOM, row, restamp, (limits.max_cached,))
        except apsw.FullError:
            return None
        except apsw.Error as exc:
            raise translate(exc, "store the datapoint") from exc

    def _insert_one(
        self, sql: str, row: AppendRow, restamp: bool, extra: tuple[object, ...]
    ) -> float | None:
        """One try of ``sql`` (``INSERT``'s five values, then ``extra``) at the time the
        stream's newest allows; the time stored, or None when nothing was inserted."""
        stream_id, t, data, boot, mono = row
        conn = self._conn
        newest = self._newest.get(stream_id)
        if newest is None or t <= newest:
            # Ties and clock steps are rare: read the real newest before nudging.
            newest = next(conn.execute(NEWEST, (stream_id,)))[0]
        stored = place(t, newest, restamp)
        # One statement, one implicit write transaction, committed on return. The trigger
        # re-checks the order under the write lock: if another connection stored a newer
        # point since we looked, nothing is inserted (then the newest is read again).
        conn.execute(sql, (stream_id, stored, data, boot, mono, *extra))
        if conn.changes():
            self._newest[stream_id] = stored
            return stored
        self._newest.pop(stream_id, None)
        return None

    def _append_limited(self, row: AppendRow, restamp: bool, limits: Limits) -> float:
        """:meth:`append` under storage limits: ``row`` is (stream, t, data, boot, mono)."""
        stream_id, t, data, boot, mono = row
        while True:
            try:
                with self.transaction("store the datapoint") as conn:
                    if limits.active:
                        make_room(conn, self.path, 1, limits, (stream_id,))
                    newest = next(conn.execute(NEWEST, (stream_id,)))[0]
                    stored = place(t, newest, restamp)
                    conn.execute(INSERT, (stream_id, stored, data, boot, mono))
                self._newest[stream_id] = stored
                return stored
            except CacheFullError:
                # The disk itself is full (SQLITE_FULL). With drop_oldest or thinning, free
                # 1% at a time (a page frees only once its rows are gone), lowest priority
                # first, and try again; freed pages are reused, so the file does not grow.
                if not (limits.drop_oldest or limits.thin_numbers):
                    raise
                with self.transaction("make room in the full cache") as conn:
                    if not Room(conn, limits, (stream_id,)).free_one_percent():
                        raise

    def append_many(
        self,
        points: Sequence[Point],
        *,
        limits: Limits | None = None,
    ) -> list[tuple[int, float]]:
        """Append ``(stream_id, t, restamp, data, untrusted)`` points in one transaction: all
        or none.

        Timestamps are resolved as in :meth:`append`, each point against the one before it in
        its stream. Returns ``(id, t)`` per point, in order.

        :raises TooOldError: a point's explicit ``t`` is older than its stream's newest
        :raises CacheFullError: as :meth:`append`
        """
        self.flush()
        stored = self._append_many(points, limits)
        if self._batched is not None:
            self._batched.forget_newest()
        return stored

    def _append_many(
        self, points: Sequence[Point], limits: Limits | None, outcome: CommitOutcome | None = None
    ) -> list[tuple[int, float]]:
        """:meth:`append_many` without committing the queue first (the queue's own commit);
        ``outcome`` as :meth:`transaction`'s."""
        rows = []
        with self.transaction("store the datapoints", outcome) as conn:
            if limits is not None and limits.active:
                make_room(conn, self.path, len(points), limits, {p[0] for p in points})
            newest: dict[int, float] = {}
            for stream_id, t, restamp, data, untrusted in points:
                boot, mono = untrusted or (None, None)
                prev = newest.get(stream_id)
                if prev is None:
                    prev = next(conn.execute(NEWEST, (stream_id,)))[0]
                t = place(t, prev, restamp)
                rows.append((stream_id, t, data, boot, mono))
                newest[stream_id] = t
            before = conn.total_changes()
            conn.executemany(INSERT, rows)
            if conn.total_changes() - before != len(rows):
                raise CacheError("insert_many: the cache refused out-of-order rows; none stored")
            last_id = conn.last_insert_rowid()
            if outcome is not None and rows:
                outcome.witness = (last_id, rows[-1][0], rows[-1][1])
        self._newest.update(newest)
        # One statement, one writer: the ids are consecutive, ending at the last one.
        first_id = last_id - len(rows) + 1
        return [(first_id + i, row[1]) for i, row in enumerate(rows)]
