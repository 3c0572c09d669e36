"""A courier: all that delivering to ONE remote needs, apart from the other remotes.

:meth:`Courier.sync` runs one pass (:func:`~connectorsync.delivery.run_pass`) and returns its
:class:`~connectorsync.report.SyncReport`; :meth:`Courier.start` runs passes in a thread of
its own, woken every ``syncperiod`` (plus up to ``sync_jitter``), at ``sync_threshold`` and by
:meth:`~Courier.wake`, retrying a pass by its report and handing each report to ``on_pass``.
Backoff, ``Retry-After`` quiet, the pause on refused credentials, ``max_rate``, the stream
rotation and the live lane are the courier's own. What a Logger's couriers share (the file's
sync lock, the lease, device time's hooks) is handed down by the
:class:`~connectorsync.syncer.Syncer` (:class:`~connectorsync.shared.Shared`); a courier never
calls up into the Logger. What a pass delivers through comes from one seam, :meth:`Courier._outbox`.

Guarantees (each proved by the test named, in ``tests/``):

- Couriers are independent: each has its own thread, pass lock and connection, and one
  backing off (or quiet after a ``Retry-After``) does not delay another's deliveries
  (``test_courier.py::test_a_failing_courier_does_not_delay_the_other``,
  ``test_courier.py::test_a_courier_backing_off_does_not_delay_the_other``).
- Its passes come by :mod:`~connectorsync.schedule`: periods with jitter, retries with
  backoff, and every wait ends at once on :meth:`stop`
  (``test_faults.py::test_stop_returns_at_once_during_a_long_backoff``).
- A ``Retry-After`` pauses the whole remote: every stream of the pass that got it stops
  (``test_lanes.py::test_retry_after_pauses_every_stream_of_the_remote``), and the
  background thread's next pass waits until it expires, also when a ``sync()`` asked for
  by hand met it (``test_lanes.py::test_a_retry_after_met_by_a_manual_sync_holds_the_
  background_syncer``); a ``sync()`` asked for by hand goes at once (it was asked for).
- Every wait of a pass (``max_rate`` included) ends on :meth:`stop` or :meth:`close`, and no
  datapoint is deleted once :meth:`close` has returned, also by a ``sync()`` running in
  another thread (``test_lanes.py::test_close_stops_a_paced_manual_sync``).
- What was cached while the background thread was stopped is backlog when it starts again
  (paced by ``max_rate``), not live data
  (``test_lanes.py::test_what_was_cached_while_stopped_is_backlog_after_start``).
- Refused credentials pause the courier until they change or the next period; credentials
  changed while the failing pass ran (or by ``onsyncfail``) are tried at once instead
  (``test_faults.py::test_auth_failure_pauses``,
  ``test_lifecycle.py::test_an_apikey_fixed_from_onsyncfail_is_tried_at_once``).
- A pass runs only while this Logger holds the file's sync lock: the background thread holds
  it from its first pass until it ends, a pass asked for by hand for its length
  (``test_faults.py::test_one_syncer_per_cache_file``,
  ``test_courier.py::test_a_manual_sync_while_both_couriers_run``).
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
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from . import inthread, schedule
from .cache import Cache, Outbox
from .delivery import PassPlan, Progress, run_pass
from .errors import AuthError, ClosedError, ConnectorSyncError, TransientRemoteError
from .lanes import Pacer, Rotation
from .remotes.base import Remote
from .report import SyncReport, retry_after
from .shared import Shared
from .synclock import PassGate, read_lease

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The name of the one remote a Logger has today (``remote=``).
DEFAULT = "default"
_QUIET = "the remote asked to be left alone (Retry-After); the background syncer waits"


class Courier:
    """Delivers the cache to one remote, by hand (:meth:`sync`) or in a thread of its own.

    :param name: the remote's name (``"default"`` for a Logger's ``remote=``)
    :param remote: where to deliver; :meth:`set_remote` replaces it
    :param shared: what the Logger's couriers share
    """

    def __init__(self, name: str, remote: Remote, shared: Shared):
        self.name = name
        # Each remote's lines under a name of its own (the default one's: the module's).
        self._log = log if name == DEFAULT else log.getChild(name)
        self._remote = remote
        self._shared = shared
        self._options = shared.options
        self._lock = shared.lock
        self._cache: Cache | None = None
        self._closed = False
        self._pass_lock = threading.Lock()  # one pass at a time, whoever calls
        self._state_lock = threading.Lock()  # the thread's life: start, stop, exit
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._holds_file = False  # the background thread is a holder of the file's lock
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

    def __repr__(self) -> str:
        return f"<Courier {self.name!r} to {self._remote!r}>"

    # ----------------------------------------------------------------------- the pass

    @property
    def remote(self) -> Remote:
        """Where this courier delivers."""
        return self._remote

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
        :raises ClosedError: the courier is closed
        """
        with self._pass_lock:
            cache = self.connection()
            report = SyncReport()
            quiet = self._quiet_until - time.monotonic()
            if background and quiet > 0:  # a manual sync() met a Retry-After meanwhile
                report.fail("*", TransientRemoteError(_QUIET, retry_after=quiet))
                return report
            if not self._lock.acquire():  # for this pass (the thread holds it already)
                report.fail("*", ConnectorSyncError(self._lock.refusal(read_lease(cache))))
                return report
            try:
                report = self._run_pass(cache, deadline, progress, background)
            finally:
                self._lock.release()
            self._pending = 0
            self.last_error = report.message
            asked = retry_after(report.exception)
            if asked is not None:  # also one met by a sync() asked for by hand
                self._quiet_until = time.monotonic() + schedule.quiet_for(asked)
                self._wake.set()  # the background thread reads it now (and says when next)
            self._tell_state()
            if self._closed:
                self._close_connection()  # closed while this pass ran (close's drain ran late)
            return report

    def exclusive(self, job: Callable[[Remote, PassGate], T]) -> T:
        """``job(remote, gate)`` run as a pass runs: under this courier's pass lock and the
        file's sync lock, so no pass of this courier or another process sends meanwhile, and
        two of them never send the same dead letters twice (``retry_deadletters``); its
        deletions go through ``gate``, as a pass's do, so none runs after close() returned.

        :raises ClosedError: the courier closed (while this waited for a pass to end)
        :raises ConnectorSyncError: another process (or Logger) syncs this cache
        """
        with self._pass_lock:
            if self._closed:
                raise ClosedError("the Logger closed while this waited for a sync pass to end")
            if not self._lock.acquire():
                raise ConnectorSyncError(self._lock.refusal(read_lease(self.connection())))
            try:
                return job(self._remote, self._gate)
            finally:
                self._lock.release()

    def _outbox(self, cache: Cache) -> Outbox:
        """The seam of fan-out: what this courier's passes deliver through (its remote's
        batches, in-flight marks, acknowledgements and dead letters, :mod:`.cache.outbox`)."""
        return cache.outbox(self.name)

    def _run_pass(
        self, cache: Cache, deadline: float | None, progress: Progress | None, background: bool
    ) -> SyncReport:
        hooks = self._shared.hooks
        try:
            hooks.before(cache)
        except ConnectorSyncError as exc:
            self._log.warning("before the sync pass: %s", exc)
        remote = self._remote
        if self.name == DEFAULT:  # status() and the CLI show the default remote's (for now)
            _record_remote(cache, remote)
        options = self._options
        plan = PassPlan(
            batch_size=options.batch_size,
            max_batch_bytes=options.max_batch_bytes,
            hold=hooks.hold(),
            deadline=deadline,
            progress=progress,
            live_after=self._live_after if options.live_first else None,
            pacer=self._pacer_for(options.max_rate),
            budget=options.syncperiod if background else None,
            pause=self._pause if background else self._gate.waiter(),
            rotation=self._rotation,
            gate=self._gate,
        )
        report = run_pass(self._outbox(cache), remote, plan)
        # Never back: start() may have moved it past a pass that was under way then.
        self._live_after = max(report.upto, self._live_after or 0)
        try:  # how it went, recorded; failing for give_up_after, it lets older data go
            gone = cache.remotes().after_pass(self.name, report.ok, time.time())
        except ConnectorSyncError as exc:  # a report, not a reason to fail the pass
            self._log.warning("cannot record how the pass went: %s", exc)
            gone = 0
        if report.total_sent or report.deadlettered or gone:  # space to give back
            try:
                cache.give_back_space()
            except ConnectorSyncError as exc:  # the pass itself went well; the next one retries
                self._log.warning("cannot give free space back after the sync pass: %s", exc)
        return report

    # ----------------------------------------------------------------------- background

    @property
    def running(self) -> bool:
        """True while the background thread runs and is not stopping."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    @property
    def woken(self) -> bool:
        """True while a wake (``sync_threshold``, a new period, new credentials) waits for
        the background thread to take it in hand."""
        return self._wake.is_set()

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
            self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
            self._thread.start()

    def _thread_name(self) -> str:
        # The default courier's keeps the name it had before couriers (tests and ps read it).
        name = f"connectorsync-syncer:{os.path.basename(self._shared.path)}"
        return name if self.name == DEFAULT else f"{name}[{self.name}]"

    def halt(self) -> None:
        """Ask the background thread to stop and end every wait, without waiting for it
        (:meth:`stop` then waits; a Syncer halts all its couriers first, so they stop
        together)."""
        self._halt()

    def _halt(self) -> threading.Thread | None:
        with self._state_lock:
            self._stop.set()
            self._wake.set()
            thread = self._thread
        self._gate.interrupt()  # a sync() pacing in another thread stops waiting too
        return thread

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the background thread, interrupting any wait. Safe to call twice.

        Waits at most ``timeout`` seconds for a pass under way (a request ends within
        ``http_timeout``); the thread then ends by itself. Returns True when no thread runs.
        """
        thread = self._halt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.next_attempt = None
        if thread is not None:
            self._tell_state()
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
        due = time.monotonic() + schedule.jittered(0.0, self._options.jitter())
        while True:
            with self._state_lock:
                if self._stop.is_set():
                    self._retire()  # from here on, start() starts a new thread
                    return
            remaining = max(0.0, due - time.monotonic())
            self.next_attempt = time.time() + remaining
            if remaining > 0:
                self._tell_state()
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
            due = time.monotonic() + self._period()
            self.paused = None
            if not self._hold_file():
                continue  # another process syncs; look again next period
            try:
                self._sync_with_retries()
            except Exception as exc:  # the thread must live on; status() says what failed
                self.last_error = f"unexpected {type(exc).__name__}: {exc}"
                self._log.exception("background sync failed unexpectedly: %s", exc)
                self._tell_state()
            # Retries that outlast the period (an outage) end with a pass: the next one is a
            # period after that pass began, not at once (a fleet back after an outage would
            # otherwise hit the server twice in a row).
            due = max(due, self._began + self._period())

    def _period(self) -> float:
        """The wait from one periodic pass to the next: ``syncperiod`` plus its jitter."""
        return schedule.jittered(self._options.syncperiod, self._options.jitter())

    def _hold_file(self) -> bool:
        """Make the background thread a holder of the file's sync lock (once, until it
        ends); False when another process or Logger holds it."""
        with self._pass_lock:
            if not self._holds_file:
                self._holds_file = self._lock.acquire()
            return self._holds_file

    def _retire(self) -> None:
        """Under the state lock, as the background thread ends: give up its hold on the sync
        lock (and, once closed, the connection) unless a new thread has taken over
        meanwhile."""
        if self._thread is threading.current_thread():
            self._thread = None
        if self._thread is None:
            with self._pass_lock:
                if self._holds_file:
                    self._holds_file = False
                    self._lock.release()
                if self._closed:
                    self._close_connection()

    def _sync_with_retries(self) -> None:
        retrying = schedule.retries(
            self._stop, lambda: self._options.syncperiod, self._note_next_attempt
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
            self._log.error("syncing paused until the credentials change: %s", report.exception)
            self._tell_state()
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
            self._shared.on_pass(report)

    def _mark_live_start(self) -> None:
        """At start(): what is cached now is the backlog (also what came while the courier
        was stopped), what comes after start() is live (the next pass's live lane)."""
        try:
            # A connection of its own: a pass may hold the courier's, and start() must not wait.
            cache = Cache.connect(self._shared.path, "full")
            try:
                self._live_after = max(cache.max_id(), self._live_after or 0)
            finally:
                cache.close()
        except ConnectorSyncError as exc:  # the first pass will say it again
            self._log.warning("cannot read the cache before the first pass: %s", exc)

    def _pacer_for(self, rate: float | None) -> Pacer | None:
        """The pace of ``max_rate``, kept across passes (a new one when the rate changes)."""
        if rate is None:
            self._pacer = None
        elif self._pacer is None or self._pacer.rate != rate:
            self._pacer = Pacer(rate)
        return self._pacer

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (``max_rate``); False at once when the courier stops."""
        return not self._stop.wait(seconds)

    def _note_next_attempt(self, state: tenacity.RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self.next_attempt = time.time() + wait
        self._tell_state()
        failed = schedule.failure(state) or ""
        self._log.info("sync failed (%s); next attempt in %.1f s", failed, wait)

    # ----------------------------------------------------------------------- plumbing

    def report_state(self) -> dict[str, Any]:
        """How this courier goes, as the lease records it per remote."""
        running = self.running
        return {
            "running": running,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt if running else None,
            "paused": self.paused,
        }

    def _tell_state(self) -> None:
        """Let the Syncer record the state (the lease), through this courier's connection;
        a report, never a reason to fail."""
        with contextlib.suppress(ConnectorSyncError):
            self._shared.on_state(self.connection())

    def connection(self) -> Cache:
        """The courier's own connection to the cache file (opened on first use).

        :raises ClosedError: the courier is closed
        """
        if self._closed:
            raise ClosedError("the syncer is closed")
        if self._cache is None:
            # Always "full": a pass's in-flight marks and deletions are fsynced at each batch
            # (one fsync per batch), so a power cut never brings back delivered datapoints,
            # whatever durability the inserts use.
            self._cache = Cache.connect(self._shared.path, "full")
            self._cache.attach_sealer(self._shared.sealer)
        return self._cache

    def _close_connection(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def drain(self, deadline: float) -> Callable[[float], SyncReport | None]:
        """Begin one last pass for close, in a thread of its own, starting no batch after
        ``deadline`` (a ``time.monotonic()``); returns the wait for it, ``wait(deadline)``,
        which returns its report (None: not ended in time, or failed). A request that hangs
        longer is left to end by itself (within ``http_timeout``); what it carried is
        resolved by the next pass."""

        def last_pass() -> SyncReport:
            report = self.sync(deadline=deadline)
            self._tell(report)
            return report

        def failed(exc: Exception) -> None:  # closing goes on: a callback's error is logged
            self._log.warning("last sync before closing failed (nothing lost): %s", exc)

        return inthread.begin(last_pass, "connectorsync-drain", failed)

    def close(self) -> None:
        """Stop the thread and close the courier's connection: now if no pass runs, else as
        soon as the pass under way ends. Safe to call twice; never waits for the network."""
        with self._state_lock:
            self._closed = True
        self._gate.close()  # from here on no pass deletes anything, and every wait ends
        self.stop(timeout=0)
        if self._pass_lock.acquire(blocking=False):
            try:
                thread = self._thread
                if thread is None or not thread.is_alive() or thread is threading.current_thread():
                    self._close_connection()
            finally:
                self._pass_lock.release()


def _record_remote(cache: Cache, remote: Remote) -> None:
    """Note in the cache where its datapoints go, for ``status()`` and the command line of
    another process. A remote's repr shows no credentials (the remote contract)."""
    description = repr(remote)
    with contextlib.suppress(ConnectorSyncError):
        if description != cache.get_setting("remote"):
            cache.set_setting("remote", description)
