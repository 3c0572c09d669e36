"""Who may sync a cache file, and what the one who does tells the others.

:class:`SyncLock` is the lock that makes one syncer per cache file (invariant 8): an
exclusive ``flock`` on a lock file named after the cache file's device and inode, freed by
the kernel when its process dies (``test_faults.py::test_one_syncer_per_cache_file``,
``test_lifecycle.py::test_a_symlink_to_the_cache_gives_no_second_syncer``).
:class:`SharedSyncLock` is one Logger's hold on it, shared by its couriers (one per remote):
the first holder takes the file's lock, the last one to let go releases it
(``test_courier.py::test_one_courier_stopping_keeps_the_lock_for_the_other``).
The lease (:data:`LEASE_KEY`, :func:`read_lease`) is what the syncing process records in
the cache for the others: who it is and how syncing goes.
:class:`SyncState` is how syncing goes, as ``status()`` shows it, whichever process syncs.
:class:`PassGate` is what a pass may still do once the Logger closes (no deletion), and
ends its waits at ``stop()``/``close()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ClosedError

#: The cache setting in which the process that syncs records who it is and how it goes (the
#: lease): ``host``, ``pid``, the default remote's ``running``, ``last_error``,
#: ``next_attempt``, ``paused``, and ``remotes``: the same four per remote, by name.
LEASE_KEY = "sync.state"

# The SyncLock of this process holding each lock file, by lock path: flock locks belong to
# an open file, so a second Logger of this process on the same cache is refused like another
# process; this says it was one of ours, and whether it is only a closed Logger's request
# still ending.
_holders: dict[str, SyncLock] = {}
_holders_lock = threading.Lock()


def _forget_holders_in_child() -> None:
    """In a forked child the locks held are the parent's (``test_fork.py``): another
    process's. The lock is new too: another thread may have held it at the fork."""
    global _holders_lock
    _holders.clear()
    _holders_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_holders_in_child)


@dataclass(frozen=True)
class SyncState:
    """How syncing goes, for ``status()``.

    :ivar last_error: why the last pass failed (or why syncing is paused), or None
    :ivar next_attempt: when the background syncer tries next, or None when none runs
    :ivar paused: credentials were refused: waiting for new ones or the next period
    :ivar elsewhere: who syncs, when another process does (``"pid N on host"``), else None
    """

    last_error: str | None
    next_attempt: float | None
    paused: bool
    elsewhere: str | None = None


class SyncLock:
    """An exclusive, non-blocking ``flock`` for one cache file, whatever path names it.

    The lock file sits beside the cache file's real path and is named after its device and
    inode, so a symlink, a relative path or a hard link in the same directory all meet the
    same lock. The kernel releases it when the process dies, so a killed syncer never blocks
    the next; flock locks belong to the open file, so a second Logger in the same process is
    refused too. (The cache file itself is never opened here: closing a second descriptor of
    it would drop SQLite's POSIX locks.)
    """

    def __init__(self, cache_path: str):
        real = os.path.realpath(cache_path)
        st = os.stat(real)
        self.path = os.path.join(
            os.path.dirname(real), f".{os.path.basename(real)}.{st.st_dev:x}-{st.st_ino}.sync-lock"
        )
        self._fd: int | None = None
        self._ends_by: float | None = None  # closed: a pass still under way ends by then

    @property
    def held(self) -> bool:
        return self._fd is not None

    def closing(self, within: float) -> None:
        """Its owner was closed: a pass still holding the lock (a hung request) ends within
        ``within`` seconds (``http_timeout``); a Logger opened meanwhile is told so."""
        self._ends_by = time.monotonic() + within

    def refusal(self, state: dict[str, Any]) -> str:
        """Why :meth:`acquire` failed, and what to do: ``state`` is the one the holder
        recorded in the cache (the lease) (``test_lifecycle.py::
        test_a_logger_reopened_while_a_closed_ones_request_hangs_says_so``)."""
        with _holders_lock:
            holder = _holders.get(self.path)
        if holder is None or holder is self:
            return (
                f"another process syncs this cache ({describe_holder(state)}); "
                "it inserts freely but only one syncs"
            )
        if holder._ends_by is not None:
            left = max(0.0, holder._ends_by - time.monotonic())
            return (
                "a request of an earlier Logger of this process on this cache is still "
                f"ending (it was closed while the request hung); it ends within {left:.0f} s "
                "(http_timeout): sync again then; inserts are kept meanwhile"
            )
        return (
            "another Logger of this process syncs this cache (close it first, or use one "
            "Logger per cache file); this one inserts freely but only one syncs"
        )

    def holder(self, state: dict[str, Any]) -> str:
        """Who holds the lock, for ``status().syncer``: another process (``"pid N on
        host"``), or this one."""
        with _holders_lock:
            holder = _holders.get(self.path)
        if holder is None or holder is self:
            return describe_holder(state)
        if holder._ends_by is not None:
            return "this process: a closed Logger's request still ending (within http_timeout)"
        return "this process: another Logger on this cache"

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
        with _holders_lock:
            _holders[self.path] = self
        return True

    def release(self) -> None:
        if self._fd is not None:
            with _holders_lock:
                if _holders.get(self.path) is self:
                    del _holders[self.path]
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class SharedSyncLock:
    """One Logger's hold on its cache file's :class:`SyncLock`, shared by its couriers.

    Each holder (a courier's background thread, for as long as it runs; a pass asked for
    by hand, for its length) takes it with :meth:`acquire` and gives it back with
    :meth:`release`, once each. The file's lock is taken by the first holder and released
    when the last one lets go, so one courier stopping never releases it under another
    (``test_courier.py::test_one_courier_stopping_keeps_the_lock_for_the_other``). Thread-safe.
    """

    def __init__(self, cache_path: str):
        self._file = SyncLock(cache_path)
        self._holders = 0
        self._mutex = threading.Lock()

    @property
    def path(self) -> str:
        """The lock file's path."""
        return self._file.path

    @property
    def held(self) -> bool:
        """True while some holder of this process holds the file's lock."""
        return self._file.held

    def acquire(self) -> bool:
        """Become a holder: True when the file's lock is this Logger's now (taken, or held
        already by another of its holders); False, holding nothing, when another process or
        Logger has it."""
        with self._mutex:
            if self._holders == 0 and not self._file.acquire():
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        """Stop being a holder (one :meth:`acquire` each); the last one releases the file."""
        with self._mutex:
            if self._holders == 0:
                raise RuntimeError("SharedSyncLock released more often than acquired")
            self._holders -= 1
            if self._holders == 0:
                self._file.release()

    def held_elsewhere(self) -> bool:
        """True when another process (or Logger) holds the file's lock right now."""
        with self._mutex:
            if self._holders:
                return False
            if self._file.acquire():
                self._file.release()
                return False
            return True

    def closing(self, within: float) -> None:
        """See :meth:`SyncLock.closing`."""
        self._file.closing(within)

    def refusal(self, state: dict[str, Any]) -> str:
        """See :meth:`SyncLock.refusal`."""
        return self._file.refusal(state)

    def holder(self, state: dict[str, Any]) -> str:
        """See :meth:`SyncLock.holder`."""
        return self._file.holder(state)


class SettingsReader(Protocol):
    """What reading the lease needs of a cache connection."""

    def get_setting(self, key: str, default: Any = None) -> Any: ...


def read_lease(cache: SettingsReader) -> dict[str, Any]:
    """The lease the last syncer of this cache recorded (maybe another process's); ``{}``
    when none did."""
    return dict(cache.get_setting(LEASE_KEY, {}) or {})


def describe_holder(state: dict[str, Any]) -> str:
    """Who holds the sync lock, from the state it recorded in the cache (the lease)."""
    if not state:
        return "holder unknown"
    return f"pid {state.get('pid')} on {state.get('host')}"


class PassGate:
    """What a pass may still do once the Logger closes: nothing that deletes.

    Every deletion of a pass (an acknowledged batch, dead letters, a reconciliation) runs
    inside :meth:`deleting`; :meth:`close` takes the same lock, so once it returns no
    deletion runs and none starts (``test_lanes.py::test_close_stops_a_paced_manual_sync``).
    A batch the remote stored but the pass could not delete keeps its in-flight mark, and
    the next pass resolves it by the remote's delivery kind, as after a crash. Waits of a
    pass (:meth:`wait`) end at once on :meth:`close` or :meth:`interrupt` (``stop()``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = False
        self._interruptions = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def deleting(self, what: str) -> Iterator[None]:
        """Run a deletion, unless closed.

        :raises ClosedError: the Logger closed; nothing is deleted
        """
        with self._lock:
            if self._closed:
                raise ClosedError(
                    f"closed while the pass ran: {what} stays cached, marked in flight; "
                    "the next pass resolves it"
                )
            yield

    def close(self) -> None:
        """No deletion after this returns; every wait ends."""
        with self._lock:
            self._closed = True
        self.interrupt()

    def interrupt(self) -> None:
        """End every wait under way (``stop()``); later waits are not affected."""
        with self._changed:
            self._interruptions += 1
            self._changed.notify_all()

    def waiter(self) -> Callable[[float], bool]:
        """A ``pause(seconds)`` for one pass: waits, returning False at once (and for the
        rest of the pass) when :meth:`close` or :meth:`interrupt` is called after this."""
        seen = self._interruptions

        def pause(seconds: float) -> bool:
            with self._changed:
                return not self._changed.wait_for(
                    lambda: self._closed or self._interruptions != seen, seconds
                )

        return pause
