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
  thread itself (back-pressure), and an error of that commit reaches that caller.
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
import logging
import threading
import time
from typing import TYPE_CHECKING

from ..errors import CacheFullError
from .base import NEWEST, bump, place
from .commit import AppendRow, Point
from .limits import Limits

if TYPE_CHECKING:
    from . import Cache

log = logging.getLogger(__name__)

#: Most datapoints queued at once; the insert that fills the queue commits it.
MAX_QUEUED = 10_000


class CommitQueue:
    """The queue of one :class:`Cache` in ``batched`` mode, and the thread that commits it."""

    def __init__(self, cache: Cache, interval: float):
        self._cache = cache
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
        #: how long the recent commits took, seconds
        self.latencies: collections.deque[float] = collections.deque(maxlen=100)
        self._thread = threading.Thread(target=self._run, name="connectorsync-commit", daemon=True)
        self._thread.start()

    def put(self, row: AppendRow, restamp: bool, limits: Limits | None) -> float:
        """Queue ``row`` after its stream's newest; returns the ``t`` it will be stored with.

        :raises TooOldError: an explicit ``t`` older than the stream's newest (not queued)
        """
        stream_id, t, data, boot, mono = row
        with self._cond:
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
            overfull = len(self._rows) >= MAX_QUEUED
        if overfull:
            self.flush()
        return stored

    def forget_newest(self) -> None:
        """The cached timestamps changed under the queue (re-timed): look them up again."""
        with self._cond:
            self._newest.clear()

    def flush(self) -> None:
        """Commit everything queued, now. On an error the datapoints stay queued.

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
            try:
                self._cache._append_many(points, limits)
            except CacheFullError as exc:
                self._store_what_fits(points, limits, exc)
            except BaseException:
                with self._cond:
                    self._rows[:0] = rows
                    self._queued_at = started
                raise
            self.latencies.append(time.monotonic() - started)

    def close(self) -> None:
        """Stop the writer and commit what is queued.

        :raises CacheError: the last commit failed: the datapoints still queued are lost, and
            this says how many
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self.flush()

    def _store_what_fits(
        self, points: list[Point], limits: Limits | None, exc: CacheFullError
    ) -> None:
        """A commit without room: store one by one what fits, count the rest as dropped."""
        dropped = 0
        for point in points:
            try:
                self._cache._append_many([point], limits)
            except CacheFullError:
                dropped += 1
        if dropped:
            with self._cache.transaction("count dropped datapoints") as conn:
                bump(conn, "stats.dropped", dropped)
            log.error("cache full: %d queued datapoints could not be stored: %s", dropped, exc)
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
            try:
                self.flush()
            except Exception:
                # Kept queued; tried again after an interval, and by the next flush().
                log.exception("could not commit the queued datapoints; trying again")


def _untrusted(boot: int | None, mono: float | None) -> tuple[int, float] | None:
    return None if boot is None or mono is None else (boot, mono)
