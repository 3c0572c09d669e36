"""The syncer: moves cached datapoints to the remote and deletes them once acknowledged.

:meth:`Syncer.sync` is the one synchronous pass; ``Logger.sync()``, the background thread
and the tests all call it. :meth:`Syncer.start` runs it in a background thread that wakes
every ``syncperiod``, when the backlog reaches ``sync_threshold``, and on :meth:`wake`.

Guarantees (each proved by the test named, in ``tests/``):

- A datapoint leaves the cache only when the remote acknowledged it, or reconciliation proved
  it delivered; never on a timer or a retry limit (``test_sync.py``, ``test_crash.py``).
- Memory is O(batch_size) whatever the backlog: keyset paging
  (``test_sync.py::test_sync_memory_does_not_grow_with_the_backlog``).
- Per stream, batches go out in insertion order; a failure in one stream does not stop the
  others (``test_sync.py::test_one_failing_stream_does_not_stop_the_others``).
- A rejected batch is bisected: the refused datapoints become dead letters with the remote's
  reason, the rest is delivered in order (``test_faults.py::test_poison_is_bisected``).
- Exactly once: before a batch is sent, its last id is recorded as in flight. A lost answer,
  or a crash, leaves the record; before sending that stream again the syncer asks the remote
  for its newest timestamp and deletes only the in-flight datapoints at or below it
  (``test_faults.py::test_lost_acknowledgement_is_reconciled``, ``test_crash.py``).
- Transient failures back off exponentially with full jitter (capped at ``syncperiod``),
  honour ``Retry-After``, and every wait ends at once on :meth:`stop`
  (``test_faults.py::test_stop_returns_at_once_during_a_long_backoff``).
- Refused credentials pause syncing until the apikey changes or the next period; nothing is
  retried in between (``test_faults.py::test_auth_failure_pauses``).
- One syncer per cache file: the background syncer holds an exclusive ``flock`` on
  ``<cache>.sync-lock`` (freed by the kernel if the process dies) and records a lease in the
  cache; another process or Logger inserts freely but does not sync
  (``test_faults.py::test_one_syncer_per_cache_file``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import tenacity

from .cache import Cache, Row, StreamRow
from .errors import (
    AmbiguousRemoteError,
    AuthError,
    ConnectorSyncError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from .remotes.base import Remote

T = TypeVar("T")
log = logging.getLogger("connectorsync.syncer")

#: First backoff ceiling in seconds; it doubles per failed attempt up to ``syncperiod``.
BACKOFF_BASE = 1.0
#: A ``Retry-After`` longer than this is not believed.
MAX_RETRY_AFTER = 3600.0


@dataclass
class SyncReport:
    """What one sync pass did.

    :ivar sent: datapoints delivered (and removed from the cache), per stream
    :ivar deadlettered: datapoints moved to the dead-letter table, per stream
    :ivar errors: the error message per stream that could not be fully synced; the key
        ``"*"`` when the pass could not start (remote unreachable, credentials refused,
        another process syncing)
    """

    sent: dict[str, int] = field(default_factory=dict)
    deadlettered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: the first exception met, for ``onsyncfail`` and ``syncraise``
    exception: ConnectorSyncError | None = field(default=None, repr=False, compare=False)
    #: whether Logger.sync() raises ``exception`` (onsyncfail's answer, or syncraise)
    _reraise: bool = field(default=False, repr=False, compare=False)
    #: called with (stream, count) after each delivered batch
    _progress: Callable[[str, int], object] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when every stream was synced completely."""
        return not self.errors

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def _count(self, counts: dict[str, int], stream: str, n: int) -> None:
        if n:
            counts[stream] = counts.get(stream, 0) + n
            if counts is self.sent and self._progress is not None:
                self._progress(stream, n)

    def _fail(self, stream: str, exc: ConnectorSyncError) -> None:
        self.errors[stream] = str(exc)
        if self.exception is None or (_retryable(exc) and not _retryable(self.exception)):
            self.exception = exc


def _retryable(exc: BaseException | None) -> bool:
    return isinstance(exc, (TransientRemoteError, AmbiguousRemoteError))


class SyncLock:
    """An exclusive, non-blocking ``flock`` on ``<cache>.sync-lock``.

    The kernel releases it when the process dies, so a killed syncer never blocks the next.
    flock locks belong to the open file, so a second Logger in the same process is refused too.
    """

    def __init__(self, cache_path: str):
        self.path = cache_path + ".sync-lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if free; True if this object holds it now."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class Syncer:
    """Runs sync passes over one cache file, on a connection of its own.

    :param path: the cache file
    :param remote: returns the current remote (it changes with the apikey)
    :param option: returns the current value of a Logger option or setting by name
        (``"hold"``: datapoints to hold back, see :meth:`Cache.batch`)
    :param before_pass: called before each pass (expiry, clock refresh)
    :param after_pass: called with each pass's report (the Logger's callbacks)
    """

    def __init__(
        self,
        path: str,
        remote: Callable[[], Remote],
        option: Callable[[str], Any],
        before_pass: Callable[[], object] = lambda: None,
        after_pass: Callable[[SyncReport], object] = lambda report: None,
    ):
        self._path = path
        self._remote = remote
        self._option = option
        self._before_pass = before_pass
        self._after_pass = after_pass
        self._cache: Cache | None = None
        self._lock = SyncLock(path)
        self._pass_lock = threading.Lock()  # one pass at a time, whoever calls
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = 0  # inserts since the last pass (this process), for sync_threshold
        self.last_error: str | None = None
        self.next_attempt: float | None = None
        self.paused: str | None = None  # why syncing is paused, or None
        self._published: dict[str, Any] = {}

    # ----------------------------------------------------------------------- the pass

    def sync(
        self,
        deadline: float | None = None,
        progress: Callable[[str, int], object] | None = None,
    ) -> SyncReport:
        """One pass over every stream: push every cached datapoint, delete what was acked.

        :param deadline: a ``time.monotonic()`` after which no new batch is started
        :param progress: called with ``(stream, count)`` after each delivered batch
        """
        with self._pass_lock:
            report = SyncReport(_progress=progress)
            holds = self._lock.held
            if not holds and not self._lock.acquire():
                report._fail(
                    "*",
                    ConnectorSyncError(
                        f"another process syncs this cache ({_describe(self.state())}); "
                        "it inserts freely but only one syncs"
                    ),
                )
                return report
            try:
                self._pass(report, deadline)
            finally:
                if not holds:
                    self._lock.release()
            self._pending = 0
            self.last_error = (
                None
                if report.ok
                else "; ".join(
                    message if stream == "*" else f"stream {stream!r}: {message}"
                    for stream, message in report.errors.items()
                )
            )
            self._publish()
            self._after_pass(report)
            return report

    def _pass(self, report: SyncReport, deadline: float | None) -> None:
        cache = self._connection()
        try:
            self._before_pass()
        except ConnectorSyncError as exc:
            log.warning("before the sync pass: %s", exc)
        try:
            remote = self._remote()
            remote.ping()
        except ConnectorSyncError as exc:
            report._fail("*", exc)
            return
        for row in cache.streams().values():
            try:
                self._sync_stream(cache, remote, row, report, deadline)
            except ConnectorSyncError as exc:
                if type(exc) is RemoteError:
                    # Neither transient, nor the data, nor the key: perhaps the stream was
                    # deleted remotely. Check (and create) it again on the next pass.
                    cache.set_remote_created(row.name, False)
                log.warning("sync of stream %r failed: %s", row.name, exc)
                report._fail(row.name, exc)
            except Exception as exc:
                # A bug (ours or a remote's) must not stop the other streams, nor leave the
                # pass unreported: the traceback goes to the log, the message to the report.
                log.exception("sync of stream %r failed unexpectedly", row.name)
                report._fail(
                    row.name, ConnectorSyncError(f"unexpected {type(exc).__name__}: {exc}")
                )
            if isinstance(report.exception, AuthError):
                return  # the same key for every stream: no point asking again

    def _sync_stream(
        self,
        cache: Cache,
        remote: Remote,
        row: StreamRow,
        report: SyncReport,
        deadline: float | None,
    ) -> None:
        if not row.remote_created:
            remote.ensure_stream(row.name, json.loads(row.schema))
            cache.set_remote_created(row.name)
        if row.inflight:
            self._reconcile(cache, remote, row, report)
        size, hold = self._option("batch_size"), self._option("hold")
        prepare = getattr(remote, "prepare", None)

        def fetch(after: int) -> list[Row]:
            batch = cache.batch(row.id, after, size, hold)
            if batch and prepare is not None:
                prepare(row.name, batch)
            return batch

        # Three things overlap, one batch apart: batch k+1 is read (and encoded by the remote)
        # and batch k-1's acknowledged datapoints are deleted while batch k is on the wire,
        # so the remote is rarely idle. The record of what is in flight keeps a crash safe:
        # k is recorded before it is sent, which covers k-1 too until its delete is done
        # (a reconcile deletes everything recorded that the remote holds). Reading ahead
        # only sees datapoints after k, valid whatever becomes of k.
        batch = fetch(0)
        behind: _InThread[None] | None = None  # the last delivered batch's delete, not yet run
        try:
            while batch:
                if deadline is not None and time.monotonic() > deadline:
                    raise ConnectorSyncError("out of time (close); the rest waits in the cache")
                ahead = _InThread(fetch, batch[-1][0])
                try:
                    behind = self._deliver(
                        cache, remote, row, batch, report, ahead=ahead, behind=behind
                    )
                finally:
                    ahead.wait()  # on failure too: leave no reader behind
                batch = ahead.result()
        finally:
            if behind is not None:
                behind.result()  # the last delete (it runs here if it never started)

    def _deliver(
        self,
        cache: Cache,
        remote: Remote,
        row: StreamRow,
        batch: list[Row],
        report: SyncReport,
        ahead: _InThread[list[Row]] | None = None,
        behind: _InThread[None] | None = None,
    ) -> _InThread[None] | None:
        """Deliver ``batch`` in order; bisect it if refused, dead-lettering refused singles.

        For a pass's own batches (not halves), ``ahead`` (reading the next batch) and
        ``behind`` (deleting the previous one) start once this batch is recorded in flight,
        and run while it is sent; ``behind`` is finished before anything else touches the
        cache. Then the delete of this batch is returned, not yet started, for the next call
        (or the end of the pass) to run. Halves are deleted at once, and None is returned.
        """
        cache.set_inflight(row.id, batch[-1][0])
        for job in (behind, ahead):
            if job is not None:
                job.start()
        try:
            try:
                remote.push(row.name, batch)
            finally:
                if behind is not None:
                    behind.result()  # on failure too: its error (a full disk?) comes first
        except RejectedError as exc:
            if len(batch) == 1:
                reason = exc.body or str(exc)
                cache.deadletter(row.id, row.name, batch[0], reason, time.time())
                log.warning(
                    "stream %r: datapoint at t=%r refused: %s", row.name, batch[0][1], reason
                )
                report._count(report.deadlettered, row.name, 1)
                return None
            # All or nothing was stored: nothing. Halve until the refused points stand alone.
            cache.set_inflight(row.id, 0)
            middle = len(batch) // 2
            self._deliver(cache, remote, row, batch[:middle], report)
            self._deliver(cache, remote, row, batch[middle:], report)
            return None
        except AmbiguousRemoteError:
            # Sent, but no answer: find out what arrived before anything is sent again.
            with contextlib.suppress(ConnectorSyncError):
                self._reconcile(cache, remote, row, report)
            raise
        delete = _InThread(self._acknowledged, cache, row, batch, report)
        if ahead is None:
            delete.result()
            return None
        return delete

    @staticmethod
    def _acknowledged(cache: Cache, row: StreamRow, batch: list[Row], report: SyncReport) -> None:
        """The remote stored ``batch``: delete it from the cache, and count it sent."""
        cache.ack(row.id, batch[0][0], batch[-1][0])
        report._count(report.sent, row.name, len(batch))

    def _reconcile(self, cache: Cache, remote: Remote, row: StreamRow, report: SyncReport) -> None:
        newest = remote.reconcile(row.name)
        delivered = cache.ack_reconciled(row.id, newest)
        if delivered:
            log.info(
                "stream %r: %d datapoints had arrived despite a lost answer", row.name, delivered
            )
        report._count(report.sent, row.name, delivered)

    # ----------------------------------------------------------------------- background

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread. Returns at once (no network); twice is harmless."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            name=f"connectorsync-syncer:{os.path.basename(self._path)}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the background thread, interrupting any wait. Safe to call twice.

        Returns at once unless a request is under way, which ends within ``http_timeout``;
        ``timeout`` bounds the wait for it.
        """
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.next_attempt = None
        if thread is not None:
            self._publish()

    def wake(self) -> None:
        """Make the background thread sync now (if it is not backing off or paused)."""
        self._wake.set()

    def inserted(self, count: int) -> None:
        """Note ``count`` inserts: wake the thread once the backlog reaches sync_threshold."""
        self._pending += count
        threshold = self._option("sync_threshold")
        if threshold is not None and self._pending >= threshold:
            self._wake.set()

    def resume(self) -> None:
        """The credentials changed: end a pause and try again now."""
        if self.paused:
            self.paused = None
            self._wake.set()

    def _run(self) -> None:
        due = time.monotonic()  # the first pass at once
        try:
            while not self._stop.is_set():
                remaining = max(0.0, due - time.monotonic())
                self.next_attempt = time.time() + remaining
                if remaining > 0:
                    self._publish()
                woken = self._wake.wait(remaining)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if woken and self.paused:
                    continue  # paused: only the period or a new apikey (resume) try again
                due = time.monotonic() + float(self._option("syncperiod"))
                self.paused = None
                with self._pass_lock:
                    locked = self._lock.acquire()
                if not locked:
                    continue  # another process syncs; look again next period
                try:
                    self._sync_with_retries()
                except Exception as exc:  # the thread must live on; the report says what failed
                    log.exception("background sync failed unexpectedly: %s", exc)
                    self.last_error = f"unexpected {type(exc).__name__}: {exc}"
                    self._publish()
        finally:
            with self._pass_lock:
                self._lock.release()

    def _sync_with_retries(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=self._backoff,
            sleep=tenacity.sleep_using_event(self._stop),
            stop=tenacity.stop_when_event_set(self._stop),
            before_sleep=self._note_next_attempt,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    report = self.sync()
                    if _retryable(report.exception):
                        raise report.exception  # type: ignore[misc]
        except (TransientRemoteError, AmbiguousRemoteError):
            return  # stopped while retrying: the data waits in the cache
        if isinstance(report.exception, AuthError):
            self.paused = f"credentials refused: {report.exception}"
            log.error("syncing paused until the apikey changes: %s", report.exception)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), MAX_RETRY_AFTER)
        cap = max(BACKOFF_BASE, float(self._option("syncperiod")))
        # Full jitter: uniform between 0 and the exponential ceiling.
        return tenacity.wait_random_exponential(multiplier=BACKOFF_BASE, max=cap)(state)

    def _note_next_attempt(self, state: tenacity.RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self.next_attempt = time.time() + wait
        self._publish()
        log.info(
            "sync failed (%s); next attempt in %.1f s",
            state.outcome.exception() if state.outcome else "",
            wait,
        )

    # ----------------------------------------------------------------------- plumbing

    def _publish(self) -> None:
        """Record who syncs and how it goes in the cache (the lease), for other processes:
        ``connectorsync status`` runs in one. Written only when something changed."""
        state = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "running": self.running,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt if self.running else None,
            "paused": self.paused,
        }
        if state != self._published:
            self._published = state
            with contextlib.suppress(ConnectorSyncError):  # a report, not a reason to fail
                self._connection().set_setting("sync.state", {**state, "at": time.time()})

    def state(self) -> dict[str, Any]:
        """The sync state the last syncer of this cache recorded (maybe another process's)."""
        return dict(self._connection().get_setting("sync.state", {}) or {})

    def syncing_elsewhere(self) -> bool:
        """True when another process (or Logger) holds this cache's sync lock right now."""
        if self._lock.held or not self._pass_lock.acquire(blocking=False):
            return False  # this process syncs (a pass is running here now)
        try:
            if self._lock.acquire():
                self._lock.release()
                return False
            return True
        finally:
            self._pass_lock.release()

    def _connection(self) -> Cache:
        if self._cache is None:
            self._cache = Cache.connect(self._path, self._option("durability"))
        return self._cache

    def deadline_drain(self, timeout: float) -> SyncReport:
        """One last pass that starts no batch after ``timeout`` seconds (for close)."""
        return self.sync(deadline=time.monotonic() + timeout)

    def close(self) -> None:
        """Stop the thread and close the syncer's connection. Safe to call twice."""
        self.stop()
        with self._pass_lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None


class _InThread(Generic[T]):
    """``fn(*args)`` run once: in a thread of its own when :meth:`start` is called, else by
    the first :meth:`result`, in the caller's thread. :meth:`result` returns what it returned
    or raises what it raised, as often as it is called."""

    def __init__(self, fn: Callable[..., T], *args: Any):
        self._fn, self._args = fn, args
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._done = False

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="connectorsync-sync", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: result() runs it in the caller's thread
            return
        self._thread = thread

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        self._done = True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> T:
        if self._thread is None:
            if not self._done:
                self._run()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _describe(state: dict[str, Any]) -> str:
    if not state:
        return "holder unknown"
    return f"pid {state.get('pid')} on {state.get('host')}"
