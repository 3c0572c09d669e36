"""The syncer: when a pass runs, and who may run it.

:meth:`Syncer.sync` runs one pass (:func:`~connectorsync.delivery.run_pass`) and returns its
:class:`~connectorsync.report.SyncReport`; ``Logger.sync()``, the background thread and the
tests all call it. :meth:`Syncer.start` runs passes in a background thread that wakes every
``syncperiod`` (plus up to ``sync_jitter``), when the backlog reaches ``sync_threshold``, and
on :meth:`wake`; it retries a pass by the report it returned, and calls the ``on_pass``
listener after each of its passes (and after close's drain). The syncer never calls up into
the Logger: it is handed the :class:`~connectorsync.options.Options`, the remote
(:meth:`set_remote`), a :class:`PassHooks` and the ``on_pass`` listener, and it uses a cache
connection of its own.

Guarantees (each proved by the test named, in ``tests/``):

- Periodic passes are jittered, so a fleet restarted together does not sync in step: the
  first pass after :meth:`start` waits a uniform random ``[0, sync_jitter]`` seconds, and
  each next one comes ``syncperiod`` plus a uniform random ``[0, sync_jitter]`` after the
  last began (never sooner than ``syncperiod``). Passes asked for (``sync()``, a wake,
  ``sync_threshold``, close's drain) and retries are not delayed by it
  (``test_jitter.py::test_a_fleet_started_together_spreads_its_first_passes``,
  ``test_jitter.py::test_the_wait_is_syncperiod_plus_up_to_sync_jitter``,
  ``test_jitter.py::test_asked_for_passes_are_not_delayed_by_sync_jitter``).

- Transient failures back off exponentially with full jitter (capped at ``syncperiod``),
  honour ``Retry-After``, and every wait ends at once on :meth:`stop`
  (``test_faults.py::test_stop_returns_at_once_during_a_long_backoff``).
- A ``Retry-After`` pauses the whole remote: every stream of the pass that got it stops
  (``test_lanes.py::test_retry_after_pauses_every_stream_of_the_remote``), and the
  background syncer's next pass waits until it expires, also when a ``sync()`` asked for
  by hand met it (``test_lanes.py::test_a_retry_after_met_by_a_manual_sync_holds_the_
  background_syncer``); a ``sync()`` asked for by hand goes at once (it was asked for).
- Every wait of a pass (``max_rate`` included) ends on :meth:`stop` or :meth:`close`, and no
  datapoint is deleted once :meth:`close` has returned, also by a ``sync()`` running in
  another thread (``test_lanes.py::test_close_stops_a_paced_manual_sync``).
- What was cached while the background syncer was stopped is backlog when it starts again
  (paced by ``max_rate``), not live data
  (``test_lanes.py::test_what_was_cached_while_stopped_is_backlog_after_start``).
- Refused credentials pause syncing until they change or the next period; credentials
  changed while the failing pass ran (or by ``onsyncfail``) are tried at once instead
  (``test_faults.py::test_auth_failure_pauses``,
  ``test_lifecycle.py::test_an_apikey_fixed_from_onsyncfail_is_tried_at_once``).
- One syncer per cache file: the syncer holds an exclusive ``flock`` on a lock file named
  after the cache file's device and inode (freed by the kernel if the process dies), so a
  symlink or a second path to the same file never gives two syncers
  (``test_faults.py::test_one_syncer_per_cache_file``,
  ``test_lifecycle.py::test_a_symlink_to_the_cache_gives_no_second_syncer``).
- ``on_pass`` runs after each background pass, outside every lock; a manual :meth:`sync`
  calls no listener: its caller has the report and does what follows itself
  (``test_sync_policy.py::test_the_listener_hears_the_background_passes_only``,
  ``test_lifecycle.py::test_close_from_a_callback_closes_the_logger``).
- One background thread at most, whatever ``stop()``/``start()`` do while a request hangs
  (``test_lifecycle.py::test_stop_start_during_a_hung_request_leaves_one_thread``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from .cache import Cache, Untrusted
from .delivery import PassPlan, Progress, run_pass
from .errors import AuthError, ClosedError, ConnectorSyncError, TransientRemoteError
from .lanes import Pacer, Rotation
from .options import Options
from .remotes.base import Remote
from .report import SyncReport, retry_after, worth_retrying
from .schedule import jittered
from .synclock import PassGate, SyncLock, SyncState

log = logging.getLogger(__name__)

T = TypeVar("T")

#: First backoff ceiling in seconds; it doubles per failed attempt up to ``syncperiod``.
BACKOFF_BASE = 1.0
#: A ``Retry-After`` longer than this is not believed.
MAX_RETRY_AFTER = 3600.0
_QUIET = "the remote asked to be left alone (Retry-After); the background syncer waits"


@dataclass(frozen=True)
class PassHooks:
    """What device time adds to a pass, handed down by the Logger.

    :ivar before: run with the syncer's cache connection before each pass (expiry, an NTP
        refresh when due); an error is logged, the pass goes on
    :ivar hold: what to hold back until the clock is trusted, asked once per pass
    """

    before: Callable[[Cache], object] = lambda cache: None
    hold: Callable[[], Untrusted | None] = lambda: None


class Syncer:
    """Runs sync passes over one cache file, on a connection of its own.

    :param path: the cache file
    :param options: the Logger's options (read when needed)
    :param remote: where to deliver; :meth:`set_remote` replaces it
    :param hooks: device time's part in each pass
    :param on_pass: called with the report of each background pass (and of close's drain),
        after the pass, outside every lock; never by :meth:`sync`
    """

    def __init__(
        self,
        path: str,
        options: Options,
        remote: Remote,
        hooks: PassHooks,
        on_pass: Callable[[SyncReport], object],
    ):
        self._path = path
        self._options = options
        self._remote = remote
        self._hooks = hooks
        self._on_pass = on_pass
        self._cache: Cache | None = None
        self._closed = False
        self._lock = SyncLock(path)
        self._pass_lock = threading.Lock()  # one pass at a time, whoever calls
        self._state_lock = threading.Lock()  # the thread's life: start, stop, exit
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._credentials = 0  # bumped by resume(): new credentials to try
        self._pending = 0  # inserts since the last pass (this process), for sync_threshold
        self._live_after: int | None = None  # the newest id when the last pass began
        self._began = 0.0  # when the background thread's last pass began (monotonic)
        self._quiet_until = 0.0  # a Retry-After met by any pass: no background pass before
        self._pacer: Pacer | None = None
        self._rotation = Rotation()  # where the next pass's rounds begin
        self._gate = PassGate()  # no deletion after close(); waits end at stop()/close()
        self.last_error: str | None = None
        self.next_attempt: float | None = None
        self.paused: str | None = None  # why syncing is paused, or None
        self._published: dict[str, Any] = {}

    # ----------------------------------------------------------------------- the pass

    def set_remote(self, remote: Remote) -> None:
        """Deliver to ``remote`` from the next pass on."""
        self._remote = remote

    def sync(
        self,
        deadline: float | None = None,
        progress: Progress | None = None,
        *,
        background: bool = False,
    ) -> SyncReport:
        """One pass over every stream; returns its report, and calls no listener.

        A failure is in the report, not raised: what follows (retries, callbacks, raising)
        is the caller's to decide.

        :param deadline: a ``time.monotonic()`` after which no new batch is started
        :param progress: called with ``(stream, count)`` after each delivered batch
        :param background: a pass of the background thread: its backlog gets ``syncperiod``
            seconds at most (see :mod:`connectorsync.lanes`), and its pacing ends at stop()
        :raises ClosedError: the syncer is closed
        """
        with self._pass_lock:
            cache = self._connection()
            report = SyncReport()
            quiet = self._quiet_until - time.monotonic()
            if background and quiet > 0:  # a manual sync() met a Retry-After meanwhile
                report.fail("*", TransientRemoteError(_QUIET, retry_after=quiet))
                return report
            holds = self._lock.held
            if not holds and not self._lock.acquire():
                report.fail("*", ConnectorSyncError(self._lock.refusal(self.state())))
                return report
            try:
                report = self._run_pass(cache, deadline, progress, background)
            finally:
                if not holds:
                    self._lock.release()
            self._pending = 0
            self.last_error = report.message
            asked = retry_after(report.exception)
            if asked is not None:  # also one met by a sync() asked for by hand
                self._quiet_until = time.monotonic() + min(float(asked), MAX_RETRY_AFTER)
                self._wake.set()  # the background thread reads it now (and says when next)
            self._publish_quietly()
            if self._closed:
                self._close_connection()  # closed while this pass ran (close's drain ran late)
            return report

    def exclusive(self, job: Callable[[Remote, PassGate], T]) -> T:
        """``job(remote, gate)`` run as a pass runs: under this process's pass lock and the
        file's sync lock, so no pass of this or another process sends meanwhile, and two of
        them never send the same dead letters twice (``retry_deadletters``); its deletions
        go through ``gate``, as a pass's do, so none runs after close() returned.

        :raises ClosedError: the syncer closed (while this waited for a pass to end)
        :raises ConnectorSyncError: another process (or Logger) syncs this cache
        """
        with self._pass_lock:
            if self._closed:
                raise ClosedError("the Logger closed while this waited for a sync pass to end")
            holds = self._lock.held
            if not holds and not self._lock.acquire():
                raise ConnectorSyncError(self._lock.refusal(self.state()))
            try:
                return job(self._remote, self._gate)
            finally:
                if not holds:
                    self._lock.release()

    def _run_pass(
        self, cache: Cache, deadline: float | None, progress: Progress | None, background: bool
    ) -> SyncReport:
        try:
            self._hooks.before(cache)
        except ConnectorSyncError as exc:
            log.warning("before the sync pass: %s", exc)
        remote = self._remote
        _record_remote(cache, remote)
        options = self._options
        plan = PassPlan(
            batch_size=options.batch_size,
            max_batch_bytes=options.max_batch_bytes,
            hold=self._hooks.hold(),
            deadline=deadline,
            progress=progress,
            live_after=self._live_after if options.live_first else None,
            pacer=self._pacer_for(options.max_rate),
            budget=options.syncperiod if background else None,
            pause=self._pause if background else self._gate.waiter(),
            rotation=self._rotation,
            gate=self._gate,
        )
        report = run_pass(cache.outbox(), remote, plan)
        # Never back: start() may have moved it past a pass that was under way then.
        self._live_after = max(report.upto, self._live_after or 0)

        if report.total_sent or report.deadlettered:  # datapoints left: give their space back
            try:
                cache.give_back_space()
            except ConnectorSyncError as exc:  # the pass itself went well; the next one retries
                log.warning("cannot give free space back after the sync pass: %s", exc)
        return report

    # ----------------------------------------------------------------------- background

    @property
    def running(self) -> bool:
        """True while the background thread runs and is not stopping."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Start the background thread. Returns at once (no network); twice is harmless.

        A thread still winding down after :meth:`stop` (a request under way) is asked to go
        on instead: there is never more than one."""
        with self._state_lock:
            if self._closed:
                raise ClosedError("the syncer is closed")
            self._stop.clear()
            # What was cached while stopped is backlog (paced), not live: the live lane
            # starts at what is cached now.
            self._mark_live_start()
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
                return
            # A wake left by stop(), or by a setting changed before start(), asks for no pass:
            # kept, it would make the first pass come at once, in step with the fleet.
            self._wake.clear()
            if self._threshold_reached():
                self._wake.set()
            self._thread = threading.Thread(
                target=self._run,
                name=f"connectorsync-syncer:{os.path.basename(self._path)}",
                daemon=True,
            )
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the background thread, interrupting any wait. Safe to call twice.

        Waits at most ``timeout`` seconds for a pass under way (a request ends within
        ``http_timeout``); the thread then ends by itself. Returns True when no thread runs.
        """
        with self._state_lock:
            self._stop.set()
            self._wake.set()
            thread = self._thread
        self._gate.interrupt()  # a sync() pacing in another thread stops waiting too
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.next_attempt = None
        if thread is not None:
            with contextlib.suppress(ConnectorSyncError):
                self._publish()
        return thread is None or not thread.is_alive()

    def wake(self) -> None:
        """Make the background thread sync now (if it is not backing off or paused)."""
        self._wake.set()

    def inserted(self, count: int) -> None:
        """Note ``count`` inserts: wake the thread once the backlog reaches sync_threshold."""
        self._pending += count
        if self._threshold_reached():
            self._wake.set()

    def _threshold_reached(self) -> bool:
        threshold = self._options.sync_threshold
        return threshold is not None and self._pending >= threshold

    def resume(self) -> None:
        """The credentials changed: end a pause, and try them now."""
        self._credentials += 1
        if self.paused:
            self.paused = None
            self._wake.set()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._state_lock:
                self._retire()

    def _loop(self) -> None:
        # Not at once: loggers started together (a fleet after a restart) would stay in step.
        due = time.monotonic() + jittered(0.0, self._options.jitter())
        while True:
            with self._state_lock:
                if self._stop.is_set():
                    self._retire()  # from here on, start() starts a new thread
                    return
            remaining = max(0.0, due - time.monotonic())
            self.next_attempt = time.time() + remaining
            if remaining > 0:
                self._publish_quietly()
            woken = self._wake.wait(remaining)
            self._wake.clear()
            if self._stop.is_set():
                continue
            if woken and self.paused:
                continue  # paused: only the period or new credentials try again
            if self._quiet_until > time.monotonic():
                # The remote asked to be left alone (Retry-After): for the whole remote,
                # whichever pass met it; a wake (sync_threshold) does not end it either.
                due = max(due, self._quiet_until)
                continue
            due = time.monotonic() + jittered(self._options.syncperiod, self._options.jitter())
            self.paused = None
            with self._pass_lock:
                locked = self._lock.acquire()
            if not locked:
                continue  # another process syncs; look again next period
            try:
                self._sync_with_retries()
            except Exception as exc:  # the thread must live on; status() says what failed
                self.last_error = f"unexpected {type(exc).__name__}: {exc}"
                log.exception("background sync failed unexpectedly: %s", exc)
                self._publish_quietly()
            # Retries that outlast the period (an outage) end with a pass: the next one is a
            # period after that pass began, not at once (a fleet back after an outage would
            # otherwise hit the server twice in a row).
            due = max(due, self._began + jittered(self._options.syncperiod, self._options.jitter()))

    def _retire(self) -> None:
        """Under the state lock, as the background thread ends: give up the sync lock (and,
        once closed, the connection) unless a new thread has taken over meanwhile."""
        if self._thread is threading.current_thread():
            self._thread = None
        if self._thread is None:
            with self._pass_lock:
                self._lock.release()
                if self._closed:
                    self._close_connection()

    def _sync_with_retries(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(worth_retrying),
            wait=self._backoff,
            sleep=tenacity.sleep_using_event(self._stop),
            stop=tenacity.stop_when_event_set(self._stop),
            before_sleep=self._note_next_attempt,
            # Stopped while retrying: the last report stands, and the data waits in the cache.
            retry_error_callback=_last_report,
        )
        while True:
            credentials = self._credentials
            try:
                report = retrying(self._background_pass)
            except ConnectorSyncError:
                return  # closed meanwhile (or a callback's own error): the data waits
            if report.more and report.ok and not self._stop.is_set():
                continue  # the backlog's time was up: on at once, live data first
            if not isinstance(report.exception, AuthError) or self._stop.is_set():
                return
            if credentials != self._credentials:
                continue  # new credentials came during the pass or from onsyncfail: try them
            self.paused = f"credentials refused: {report.exception}"
            log.error("syncing paused until the credentials change: %s", report.exception)
            self._publish_quietly()
            return

    def _background_pass(self) -> SyncReport:
        """One pass of the background thread, then the listener; returns the pass's report
        (the retries decide by it)."""
        self._began = time.monotonic()
        report = self.sync(background=True)
        self._tell(report)
        return report

    def _tell(self, report: SyncReport) -> None:
        """Hand a pass's report to the listener, outside every lock; not once closed (the
        Logger the listener belongs to is gone)."""
        if not self._closed:
            self._on_pass(report)

    def _mark_live_start(self) -> None:
        """At start(): what is cached now is the backlog (also what came while the syncer
        was stopped), what comes after start() is live (the next pass's live lane)."""
        try:
            # A connection of its own: a pass may hold the syncer's, and start() must not wait.
            cache = Cache.connect(self._path, "full")
            try:
                self._live_after = max(cache.max_id(), self._live_after or 0)
            finally:
                cache.close()
        except ConnectorSyncError as exc:  # the first pass will say it again
            log.warning("cannot read the cache before the first pass: %s", exc)

    def _pacer_for(self, rate: float | None) -> Pacer | None:
        """The pace of ``max_rate``, kept across passes (a new one when the rate changes)."""
        if rate is None:
            self._pacer = None
        elif self._pacer is None or self._pacer.rate != rate:
            self._pacer = Pacer(rate)
        return self._pacer

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (``max_rate``); False at once when the syncer stops."""
        return not self._stop.wait(seconds)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        asked = retry_after(_failure(state))
        if asked is not None:  # for the whole remote: every stream of the pass stopped
            return min(float(asked), MAX_RETRY_AFTER)
        cap = max(BACKOFF_BASE, self._options.syncperiod)
        # Full jitter: uniform between 0 and the exponential ceiling.
        return float(tenacity.wait_random_exponential(multiplier=BACKOFF_BASE, max=cap)(state))

    def _note_next_attempt(self, state: tenacity.RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self.next_attempt = time.time() + wait
        self._publish_quietly()
        log.info("sync failed (%s); next attempt in %.1f s", _failure(state) or "", wait)

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

    def _publish_quietly(self) -> None:
        with contextlib.suppress(ConnectorSyncError):
            self._publish()

    def state(self) -> dict[str, Any]:
        """The sync state the last syncer of this cache recorded (maybe another process's)."""
        return dict(self._connection().get_setting("sync.state", {}) or {})

    def sync_state(self) -> SyncState:
        """How syncing goes: this process's syncer, or what the process that syncs recorded
        in the cache."""
        if self.running:
            return SyncState(self.paused or self.last_error, self.next_attempt, bool(self.paused))
        if self.syncing_elsewhere():
            state = self.state()
            return SyncState(
                state.get("paused") or state.get("last_error"),
                state.get("next_attempt"),
                bool(state.get("paused")),
                self._lock.holder(state),
            )
        return SyncState(self.paused or self.last_error, None, bool(self.paused))

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
        if self._closed:
            raise ClosedError("the syncer is closed")
        if self._cache is None:
            # Always "full": a pass's in-flight marks and deletions are fsynced at each batch
            # (one fsync per batch), so a power cut never brings back delivered datapoints,
            # whatever durability the inserts use.
            self._cache = Cache.connect(self._path, "full")
        return self._cache

    def _close_connection(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def drain(self, timeout: float) -> SyncReport | None:
        """One last pass that starts no batch after ``timeout`` seconds, for close.

        It runs in a thread of its own and is waited for at most ``timeout`` seconds: a
        request that hangs longer is left to end by itself (within ``http_timeout``), and
        what it carried is resolved by the next pass. Returns the report, or None when the
        pass did not end in time (or could not start)."""
        deadline = time.monotonic() + timeout
        result: list[SyncReport] = []

        def drain() -> None:
            try:
                result.append(self.sync(deadline=deadline))
                self._tell(result[0])
            except Exception as exc:  # closing goes on: a callback's error is only logged
                log.warning("last sync before closing failed (nothing lost): %s", exc)

        thread = threading.Thread(target=drain, name="connectorsync-drain", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()) + 0.05)
        return result[0] if result else None

    def close(self) -> None:
        """Stop the thread and close the syncer's connection: now if no pass runs, else as
        soon as the pass under way ends. Safe to call twice; never waits for the network."""
        with self._state_lock:
            self._closed = True
        self._lock.closing(self._options.http_timeout)  # a Logger opened meanwhile is told
        self._gate.close()  # from here on no pass deletes anything, and every wait ends
        self.stop(timeout=0)
        if self._pass_lock.acquire(blocking=False):
            try:
                thread = self._thread
                if thread is None or not thread.is_alive() or thread is threading.current_thread():
                    self._close_connection()
            finally:
                self._pass_lock.release()


def _last_report(state: tenacity.RetryCallState) -> SyncReport:
    """The report of the last attempt, when the retries stop (tenacity's retry_error_callback)."""
    return state.outcome.result() if state.outcome else SyncReport()


def _failure(state: tenacity.RetryCallState) -> ConnectorSyncError | None:
    """The error of the last attempt's report (the retries decide by the report, so an
    attempt's outcome is a report, never an exception)."""
    return _last_report(state).exception


def _record_remote(cache: Cache, remote: Remote) -> None:
    """Note in the cache where its datapoints go, for ``status()`` and the command line of
    another process. A remote's repr shows no credentials (the remote contract)."""
    description = repr(remote)
    with contextlib.suppress(ConnectorSyncError):
        if description != cache.get_setting("remote"):
            cache.set_setting("remote", description)
