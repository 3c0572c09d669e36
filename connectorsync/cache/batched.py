"""``durability="batched"``: inserts return once queued in memory; a writer commits the queue.

On an SD card each commit costs an fsync and at least one 4 KiB page of the WAL, whatever
it holds. Batching the commits of ``commit_interval`` seconds into one trades a stated,
bounded loss on a power cut for a card that lasts and keeps up.

Guarantees (``tests/test_batched.py``):

- A datapoint queued is committed, with ``synchronous=FULL``, within ``commit_interval`` plus
  the time one commit takes: a power cut or ``kill -9`` loses at most the datapoints queued in
  that window, the newest ones of each stream (``status().commit_latency`` tells how long
  commits take).
- Order is kept: each datapoint is placed after its stream's newest, cached or queued, when it
  is queued, so an explicit timestamp that is too old is refused then, and nothing is stored.
- Memory is bounded: a queue of :data:`MAX_QUEUED` datapoints is committed by the inserting
  thread itself (back-pressure) before its datapoint is queued (while a commit runs, up to
  twice that wait: what it took, put back if it fails, and the new queue); if it fails, the
  caller hears it and its datapoint is not queued, so a retry stores it once
  (``test_a_full_queue_that_cannot_commit_refuses_and_never_stores_the_refused``).
- Nothing is acknowledged that cannot be kept: once a commit failed (an I/O error, a file
  system gone read-only, a lock never granted), :meth:`CommitQueue.put` raises
  :class:`~connectorsync.CacheError` and queues nothing, until a commit succeeds again. The
  writer keeps trying every ``interval``; :attr:`CommitQueue.failure` says why meanwhile
  (``status().commit_error``). Inserts so start raising at most ``interval`` plus one commit
  attempt after the disk failed, and the datapoints a crash can lose are those queued then:
  no more than before (``test_inserts_raise_while_commits_fail_and_work_again``,
  ``test_a_kill_while_commits_fail_loses_only_what_was_queued_before``).
- :meth:`CommitQueue.flush` commits the queue at once; the cache calls it before every read
  of the datapoints, before re-timing and clearing them, and on close.
- A commit that fails keeps its datapoints queued for the next one. One refused for want of
  room (a storage limit without ``drop_oldest``, a full disk) stores one by one what still
  fits, counts the rest as ``dropped`` (and logs it): they were accepted, so they are never
  lost without a count. From then on inserts commit one at a time and raise
  :class:`~connectorsync.CacheFullError`, as with ``full``, until one is stored again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import CacheError, CacheFullError, ClosedError
from .base import NEWEST, bump, place
from .commit import AppendRow, Point
from .connection import CommitOutcome, Connection
from .limits import Limits

#: ``Cache._append_many``: store points in one transaction, without committing the queue.
AppendMany = Callable[[Sequence[Point], Limits | None, CommitOutcome | None], object]

log = logging.getLogger(__name__)

#: Most datapoints queued at once; the insert that fills the queue commits it.
MAX_QUEUED = 10_000


class CommitQueue:
    """The queue of one :class:`Cache` in ``batched`` mode, and the thread that commits it."""

    def __init__(self, cache: Connection, append_many: AppendMany, interval: float):
        self._cache, self._append_many = cache, append_many
        self.interval = interval
        self._cond = threading.Condition()
        self._rows: list[AppendRow] = []
        self._limits: Limits | None = None
        self._queued_at = 0.0  # monotonic time the oldest queued datapoint was queued
        self._newest: dict[int, float] = {}  # each stream's newest, cached or queued
        self._committing = threading.Lock()
        self._closing = False
        #: set when a commit found no room: inserts then commit one at a time (see above)
        self.full: CacheFullError | None = None
        #: set while commits fail (not for want of room): inserts raise it (see above)
        self.failure: CacheError | None = None
        #: how long the recent commits took, seconds
        self.latencies: collections.deque[float] = collections.deque(maxlen=100)
        self._thread = threading.Thread(target=self._run, name="connectorsync-commit", daemon=True)
        self._thread.start()

    def append(
        self,
        row: AppendRow,
        restamp: bool,
        limits: Limits | None,
        alone: Callable[[AppendRow, bool, Limits | None], float],
    ) -> float:
        """``Cache.append`` in this mode: :meth:`put`; after a commit found no room, commit
        the queue and store ``row`` at once with ``alone``, so that its caller hears."""
        if self.full is None:
            return self.put(row, restamp, limits)
        self.flush()
        stored = alone(row, restamp, limits)
        self.full = None
        self.forget_newest()
        return stored

    def put(self, row: AppendRow, restamp: bool, limits: Limits | None) -> float:
        """Queue ``row`` after its stream's newest; returns the ``t`` it will be stored with.

        :raises TooOldError: an explicit ``t`` older than the stream's newest (not queued)
        :raises CacheError: commits fail (:attr:`failure`), or the queue was full and its
            commit failed: ``row`` was not queued
        :raises ClosedError: the queue is closing (``close()`` ran): ``row`` was not queued
        """
        stream_id, t, data, boot, mono = row
        while True:
            with self._cond:
                if self._closing:
                    # close() commits the queue for the last time (or has): a row queued
                    # now would be acknowledged and never committed.
                    raise ClosedError(
                        f"the cache {self._cache.path!r} is closing: this datapoint was not "
                        "stored (insert before close(), or into a new Logger)"
                    )
                if self.failure is not None:
                    raise self._refused(self.failure)
                if len(self._rows) < MAX_QUEUED:
                    return self._queue(stream_id, t, data, boot, mono, restamp, limits)
            # Back-pressure: this thread commits the full queue before adding to it, so that
            # an error reaches the caller whose datapoint then was not queued.
            try:
                self.flush()
            except CacheError as exc:
                raise self._refused(exc) from exc

    def _queue(  # noqa: PLR0913 - the fields of one row, not worth a record per insert
        self,
        stream_id: int,
        t: float,
        data: str | bytes,
        boot: int | None,
        mono: float | None,
        restamp: bool,
        limits: Limits | None,
    ) -> float:
        """Append the row (the caller holds ``_cond``); returns its ``t``."""
        newest = self._newest.get(stream_id)
        if newest is None:
            newest = self._cache._read(NEWEST, (stream_id,))[0][0]
        stored = place(t, newest, restamp)
        self._newest[stream_id] = stored
        if not self._rows:
            self._queued_at = time.monotonic()
            self._cond.notify()
        self._rows.append((stream_id, stored, data, boot, mono))
        self._limits = limits
        return stored

    def _refused(self, cause: CacheError) -> CacheError:
        """The error of an insert refused because the queue cannot be committed."""
        error = CacheError(
            f"cannot commit to the cache {self._cache.path!r}: {cause}; this datapoint was not "
            f"stored (durability='batched' acknowledges only what it can commit; "
            f"{len(self._rows)} accepted earlier wait in memory, committed once writes work "
            "again)"
        )
        error.__cause__ = cause
        return error

    @property
    def queued(self) -> int:
        """How many accepted datapoints wait in memory for their commit."""
        return len(self._rows)

    def forget_newest(self) -> None:
        """The cached timestamps changed under the queue (re-timed): look them up again."""
        with self._cond:
            self._newest.clear()

    def flush(self) -> None:
        """Commit everything queued, now. On an error the datapoints stay queued, and
        :attr:`failure` is set until a commit succeeds.

        :raises CacheError: the commit failed (the datapoints wait for the next one)
        """
        with self._committing:
            with self._cond:
                rows, self._rows = self._rows, []
                limits = self._limits
            if not rows:
                return
            started = time.monotonic()
            points: list[Point] = [
                (sid, t, True, data, _untrusted(boot, mono)) for sid, t, data, boot, mono in rows
            ]
            outcome = CommitOutcome()
            try:
                try:
                    self._append_many(points, limits, outcome)
                except CacheFullError as exc:
                    self._store_what_fits(points, limits, exc)
            except BaseException as exc:
                if outcome.done:  # an interrupt just after the COMMIT: they are stored
                    points.clear()
                # Back in front of the queue: all of them, or (a full disk that could not
                # even count its drops, or an interrupt) those _store_what_fits left in
                # ``points``: never one stored already.
                back = [(sid, t, data, *(u or (None, None))) for sid, t, _, data, u in points]
                with self._cond:
                    self._rows[:0] = back
                    self._queued_at = started
                    if isinstance(exc, Exception):  # not an interrupt of the committing thread
                        self._failed(exc)
                raise
            if self.failure is not None:
                log.warning("cache %s: commits work again; inserts accepted", self._cache.path)
                self.failure = None
            self.latencies.append(time.monotonic() - started)

    def _failed(self, exc: Exception) -> None:
        """A commit failed (the caller holds ``_cond``): refuse inserts until one succeeds."""
        if self.failure is None:
            log.error(
                "cache %s: cannot commit %d queued datapoints (%s); refusing inserts until "
                "a commit succeeds, trying again every %s s",
                self._cache.path,
                len(self._rows),
                exc,
                self.interval,
            )
        if isinstance(exc, CacheError):
            self.failure = exc
        else:
            self.failure = CacheError(f"commit failed: {exc!r}")
            self.failure.__cause__ = exc

    def close(self) -> None:
        """Stop the writer and commit what is queued.

        :raises CacheError: the last commit failed: the datapoints still queued are lost, and
            this says how many
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        try:
            self.flush()
        except CacheError as exc:
            lost = self.queued
            raise CacheError(
                f"closing the cache {self._cache.path!r}: {lost} datapoints accepted by "
                f"insert() could not be committed and are lost: {exc}"
            ) from exc

    def abandon(self) -> None:
        """In a forked child: forget the queue. Its datapoints are the parent's, which
        commits them; its writer thread does not exist here."""
        self._rows = []

    def _store_what_fits(
        self, points: list[Point], limits: Limits | None, exc: CacheFullError
    ) -> None:
        """A commit without room: store one by one what fits, count the rest as dropped.

        :raises CacheError: the count itself could not be written: then the points not
            stored are queued again (``flush`` does it), none lost without a count
        """
        left: list[Point] = []
        for i, point in enumerate(points):
            outcome = CommitOutcome()
            try:
                self._append_many([point], limits, outcome)
            except CacheFullError:
                left.append(point)
            except BaseException:  # an interrupt: what flush queues again is what is not stored
                points[:] = left + points[i + (1 if outcome.done else 0) :]
                raise
        if left:
            outcome = CommitOutcome()
            try:
                with self._cache.transaction("count dropped datapoints", outcome) as conn:
                    bump(conn, "stats.dropped", len(left))
            except BaseException:
                # What flush puts back in the queue is only these, unless they are counted.
                points[:] = [] if outcome.done else left
                raise
            log.error("cache full: %d queued datapoints could not be stored: %s", len(left), exc)
        self.full = exc

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._rows and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return  # close() commits what is left, in its own thread
                while self._rows and not self._closing:
                    wait = self._queued_at + self.interval - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
            # A failure is kept queued, logged once (flush) and tried again after an interval,
            # and by the next flush(); inserts are refused meanwhile.
            with contextlib.suppress(Exception):
                self.flush()


def _untrusted(boot: int | None, mono: float | None) -> tuple[int, float] | None:
    return None if boot is None or mono is None else (boot, mono)
