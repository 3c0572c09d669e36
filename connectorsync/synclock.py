"""Who may sync a cache file, and what the one who does tells the others.

:class:`SyncLock` is the lock that makes one syncer per cache file (invariant 8): an
exclusive ``flock`` on a lock file named after the cache file's device and inode, freed by
the kernel when its process dies (``test_faults.py::test_one_syncer_per_cache_file``,
``test_lifecycle.py::test_a_symlink_to_the_cache_gives_no_second_syncer``).
:class:`SyncState` is how syncing goes, as ``status()`` shows it, whichever process syncs.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Any


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


def describe_holder(state: dict[str, Any]) -> str:
    """Who holds the sync lock, from the state it recorded in the cache (the lease)."""
    if not state:
        return "holder unknown"
    return f"pid {state.get('pid')} on {state.get('host')}"
