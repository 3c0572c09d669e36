"""The syncer: what a Logger's couriers share, and the one object the Logger talks to.

A :class:`Syncer` holds one :class:`~connectorsync.courier.Courier` per remote (built from a
mapping name -> remote; today ``{"default": remote}``), each delivering in a thread of its
own (:mod:`connectorsync.courier` says how a courier decides when a pass runs). What the
couriers share lives here: the file's sync lock (one hold for the process, counted over the
couriers), the lease published in the cache (who syncs, and how each remote goes), and
device time's hooks. :meth:`Syncer.start`, :meth:`~Syncer.stop`, :meth:`~Syncer.close`,
:meth:`~Syncer.wake` and :meth:`~Syncer.inserted` go to every courier; :meth:`Syncer.sync`
runs a pass of every courier and returns the default one's report; the rest
(:meth:`~Syncer.set_remote`, :meth:`~Syncer.resume`, :meth:`~Syncer.exclusive`) is the
default remote's. The syncer never calls up into the Logger: it is handed the
:class:`~connectorsync.options.Options`, the remotes, a :class:`PassHooks` and the
``on_pass`` listener.

Guarantees (each proved by the test named, in ``tests/``; those of each remote's schedule
are in :mod:`connectorsync.courier`):

- One syncer per cache file: this Logger holds an exclusive ``flock`` on a lock file named
  after the cache file's device and inode (freed by the kernel if the process dies) while
  any courier's background thread runs or a pass asked for by hand runs, so a symlink or a
  second path to the same file never gives two syncers
  (``test_faults.py::test_one_syncer_per_cache_file``,
  ``test_lifecycle.py::test_a_symlink_to_the_cache_gives_no_second_syncer``).
- The lock is held once for all couriers: one stopping keeps it for the others, and
  :meth:`stop` or :meth:`close` release it when the last one ends, so another Logger syncs
  the file then (``test_courier.py::test_one_courier_stopping_keeps_the_lock_for_the_other``,
  ``test_courier.py::test_stop_and_close_end_both_couriers_and_free_the_file``).
- A remote that fails does not delay another's deliveries
  (``test_courier.py::test_a_failing_courier_does_not_delay_the_other``), and a manual
  :meth:`sync` works while every courier's thread runs
  (``test_courier.py::test_a_manual_sync_while_both_couriers_run``).
- The lease keeps the keys its readers (``status()``, ``connectorsync status``) know, for the
  default remote, and adds ``remotes``: the same per remote, by name
  (``test_courier.py::test_the_lease_says_how_each_remote_goes``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .cache import Cache
from .cache.seal import Sealer
from .courier import DEFAULT, Courier
from .delivery import Progress
from .errors import ConfigurationError
from .options import Options
from .remotes.base import Remote, bind_cache
from .report import SyncReport, gather
from .shared import PassHooks, Shared
from .synclock import LEASE_KEY, PassGate, SharedSyncLock, SyncState, read_lease

__all__ = ["DEFAULT", "PassHooks", "Syncer"]

T = TypeVar("T")


class Syncer:
    """The couriers of one cache file, one per remote, and what they share.

    :param path: the cache file
    :param options: the Logger's options (read when needed)
    :param remotes: where to deliver: a mapping name -> remote, one courier each, or one
        remote (the one-remote spelling, named ``"default"``); :meth:`set_remote` replaces
        the default one
    :param hooks: device time's part in each pass (run by one courier at a time)
    :param on_pass: called with the report of each background pass of every courier (and of
        close's drain), after the pass, outside every lock; never by :meth:`sync`
    :param identity: the cache's identity, bound to every remote it delivers to that takes it
        (:func:`~connectorsync.remotes.base.bind_cache`), before the remote's first pass
    :raises ConfigurationError: no remote, or a remote bound to another cache
    """

    def __init__(  # noqa: PLR0913 - what the Logger's assembly wires in
        self,
        path: str,
        options: Options,
        remotes: Remote | Mapping[str, Remote],
        hooks: PassHooks,
        on_pass: Callable[[SyncReport], object],
        identity: str,
        sealer: Sealer | None = None,
    ):
        named = dict(remotes) if isinstance(remotes, Mapping) else {DEFAULT: remotes}
        if not named:
            raise ConfigurationError("a syncer needs at least one remote")
        self.identity = identity
        for remote in named.values():
            bind_cache(remote, identity)
        self._options = options
        self._lock = SharedSyncLock(path)
        self._lease_lock = threading.Lock()  # couriers publish from their own threads
        self._published: dict[str, Any] = {}
        self._hooks_lock = threading.Lock()
        shared = Shared(
            path=path,
            options=options,
            hooks=PassHooks(before=self._one_at_a_time(hooks.before), hold=hooks.hold),
            lock=self._lock,
            on_pass=on_pass,
            on_state=self._publish,
            sealer=sealer,
        )
        self._shared = shared
        self._couriers = {name: Courier(name, remote, shared) for name, remote in named.items()}
        # The default remote's courier: its report is sync()'s, its state the lease's keys.
        self._default = self._couriers.get(DEFAULT) or next(iter(self._couriers.values()))

    def _one_at_a_time(self, before: Callable[[Cache], object]) -> Callable[[Cache], object]:
        """Device time's hook, run by one courier at a time (it re-times, expires, asks NTP:
        a job for the file, not for a remote)."""

        def before_pass(cache: Cache) -> object:
            with self._hooks_lock:
                return before(cache)

        return before_pass

    # ----------------------------------------------------------------------- couriers

    @property
    def couriers(self) -> Mapping[str, Courier]:
        """The couriers by remote name (a read-only view)."""
        return MappingProxyType(self._couriers)

    @property
    def default(self) -> Courier:
        """The default remote's courier (named ``"default"``, else the first)."""
        return self._default

    # ----------------------------------------------------------------------- the pass

    def set_remote(self, remote: Remote) -> None:
        """The default courier delivers to ``remote`` from its next pass on."""
        bind_cache(remote, self.identity)
        self._default.set_remote(remote)

    def sync(
        self,
        deadline: float | None = None,
        progress: Progress | None = None,
        *,
        background: bool = False,
    ) -> SyncReport:
        """One pass of every courier, one after another, the default one first; returns
        their reports gathered (:func:`~connectorsync.report.gather`: one remote's as it is),
        and calls no listener.

        :param deadline: a ``time.monotonic()`` after which no new batch is started
        :param progress: called with ``(stream, count)`` after each batch a remote took
        :param background: passes as the background threads run them (see
            :meth:`Courier.sync <connectorsync.courier.Courier.sync>`)
        :raises ClosedError: the syncer is closed
        """
        order = [self._default, *(c for c in self._couriers.values() if c is not self._default)]
        return gather({c.name: c.sync(deadline, progress, background=background) for c in order})

    def exclusive(self, job: Callable[[Remote, PassGate], T], name: str | None = None) -> T:
        """``job(remote, gate)`` with the remote ``name`` (None: the default one), run as its
        pass runs (see :meth:`Courier.exclusive <connectorsync.courier.Courier.exclusive>`).

        :raises ClosedError: the syncer closed (while this waited for a pass to end)
        :raises ConnectorSyncError: another process (or Logger) syncs this cache
        """
        return (self._default if name is None else self._couriers[name]).exclusive(job)

    def add(self, name: str, remote: Remote) -> None:
        """A courier for the remote ``name`` (recorded in the cache already), started if the
        others run."""
        bind_cache(remote, self.identity)
        courier = Courier(name, remote, self._shared)
        running = self.running
        with self._lease_lock:  # copy on write: threads iterating the old dict go on safely
            self._couriers = {**self._couriers, name: courier}
        if running:
            courier.start()

    def remove(self, name: str, timeout: float | None = 10.0) -> None:
        """Stop and close the courier of the remote ``name`` (never the default one's)."""
        courier = self._couriers[name]
        if courier is self._default:
            raise ConfigurationError(f"the courier of remote {name!r} is the default one")
        with self._lease_lock:
            self._couriers = {k: c for k, c in self._couriers.items() if k != name}
        courier.halt()
        courier.stop(timeout)
        courier.close()

    # ----------------------------------------------------------------------- background

    @property
    def running(self) -> bool:
        """True while some courier's background thread runs and is not stopping."""
        return any(courier.running for courier in self._couriers.values())

    def start(self) -> None:
        """Start every courier's background thread. Returns at once; twice is harmless."""
        for courier in self._couriers.values():
            courier.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop every courier's background thread, interrupting any wait. Safe to call twice.

        All are asked at once, then waited for ``timeout`` seconds in all (a request under
        way ends within ``http_timeout``, by itself). Returns True when no thread runs."""
        for courier in self._couriers.values():
            courier.halt()
        deadline = None if timeout is None else time.monotonic() + timeout
        stopped = True
        for courier in self._couriers.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            stopped = courier.stop(left) and stopped
        return stopped

    def wake(self) -> None:
        """Make every courier's background thread sync now (unless backing off or paused)."""
        for courier in self._couriers.values():
            courier.wake()

    def inserted(self, count: int) -> None:
        """Note ``count`` inserts: each courier wakes once its backlog reaches sync_threshold."""
        for courier in self._couriers.values():
            courier.inserted(count)

    def resume(self) -> None:
        """The default remote's credentials (``apikey``, ``serverurl``) changed: end its
        pause, and try them now."""
        self._default.resume()

    def drain(self, timeout: float) -> SyncReport | None:
        """One last pass of every courier, together, starting no batch after ``timeout``
        seconds and waited for until then at most, for close (see :meth:`Courier.drain
        <connectorsync.courier.Courier.drain>`). Returns the default one's report, or None
        when its pass did not end in time (or could not start, or failed)."""
        deadline = time.monotonic() + timeout
        waits = {name: courier.drain(deadline) for name, courier in self._couriers.items()}
        reports = {name: wait(deadline) for name, wait in waits.items()}
        return reports[self._default.name]

    def close(self) -> None:
        """Stop every courier and close their connections: now where no pass runs, else as
        soon as the pass under way ends. Safe to call twice; never waits for the network."""
        self._lock.closing(self._options.http_timeout)  # a Logger opened meanwhile is told
        for courier in self._couriers.values():
            courier.close()

    # ----------------------------------------------------------------------- the lease

    def _publish(self, cache: Cache) -> None:
        """Record who syncs and how each remote goes in the cache (the lease), through
        ``cache`` (the connection of the courier whose state changed), for other
        processes: ``connectorsync status`` runs in one. Written only when something
        changed; today's keys (the default remote's) stay where readers look."""
        with self._lease_lock:  # in order: a newer state is never overwritten by an older
            remotes = {name: courier.report_state() for name, courier in self._couriers.items()}
            state = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                **remotes[self._default.name],
                "remotes": remotes,
            }
            if state != self._published:
                self._published = state
                cache.set_setting(LEASE_KEY, {**state, "at": time.time()})

    def state(self) -> dict[str, Any]:
        """The sync state the last syncer of this cache recorded (maybe another process's).

        :raises ClosedError: the syncer is closed
        """
        return read_lease(self._default.connection())

    def sync_state(self) -> SyncState:
        """How syncing goes (the default remote): this process's couriers, or what the
        process that syncs recorded in the cache."""
        courier = self._default
        if courier.running:
            problem = courier.paused or courier.last_error
            return SyncState(problem, courier.next_attempt, bool(courier.paused))
        if self.syncing_elsewhere():
            state = self.state()
            return SyncState(
                state.get("paused") or state.get("last_error"),
                state.get("next_attempt"),
                bool(state.get("paused")),
                self._lock.holder(state),
            )
        return SyncState(courier.paused or courier.last_error, None, bool(courier.paused))

    def syncing_elsewhere(self) -> bool:
        """True when another process (or Logger) holds this cache's sync lock right now."""
        return self._lock.held_elsewhere()
