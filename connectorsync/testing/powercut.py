"""A disk that keeps only what SQLite fsynced, and fails writes on demand: an apsw VFS shim.

:class:`PowerCutVFS` (made the process's default VFS) holds every write to a database, its
WAL and its rollback journal in memory until ``xSync``; only then does it reach the file.
Like an OS page cache, what is held is shared by every connection of the process to that file
(a read sees it, an ``xSync`` on any of them writes it all), and a file deleted takes what was
held of it along. A process that ends without syncing (``os._exit``, ``SIGKILL``) thus loses
what a power cut would.

It can also cut the power itself: at the ``cut_at``-th I/O operation (``xWrite``, ``xSync``,
``xTruncate``, ``xDelete`` of those files, counted across the process) it calls ``on_cut`` and
ends the process at once with ``os._exit(CUT_EXIT)``, before the operation happens.

And it can fail: while :attr:`PowerCutVFS.failing` is set (:data:`FAULTS`), every write,
truncate and sync of those files raises as a card gone bad would: ``"eio"`` (an I/O error),
``"readonly"`` (the file system was remounted read-only) or ``"full"`` (no space left).
Reads keep working. Setting it back to None lets writes through again. This is how the tests
make every commit fail (``tests/test_batched.py``, the power-cut torture).

Used by the tests in child processes (``tests/helpers/powercut.py``) and, around a single
Logger, in the test process itself: :meth:`PowerCutVFS.unregister` when done, after closing
every connection opened through it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import apsw

#: The exit status of a process whose power was cut by ``PowerCutVFS(cut_at=...)``.
CUT_EXIT = 75

#: What :attr:`PowerCutVFS.failing` may be, and the apsw error each raises (SQLite's
#: SQLITE_IOERR, SQLITE_READONLY, SQLITE_FULL).
FAULTS: dict[str, type[apsw.Error]] = {
    "eio": apsw.IOError,
    "readonly": apsw.ReadOnlyError,
    "full": apsw.FullError,
}

# The files whose writes are held until xSync: what SQLite needs fsynced to keep a commit.
_HELD = apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_WAL | apsw.SQLITE_OPEN_MAIN_JOURNAL


def _filename(name: object) -> str:
    return name.filename() if isinstance(name, apsw.URIFilename) else str(name)


class Held:
    """What a file has been written since its last ``xSync``: ("w", offset, data) or ("t",
    size, b"") in order. One per file name, shared by all its handles, as a page cache is."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, int, bytes]] = []
        self.lock = threading.Lock()


class PowerCutFile(apsw.VFSFile):
    """A database, WAL or journal file of :class:`PowerCutVFS`."""

    def __init__(self, vfs: PowerCutVFS, name: str | apsw.URIFilename | None, flags: list[int]):
        super().__init__(vfs.base, name, flags)
        self.vfs = vfs
        self.held = vfs.held_for(_filename(name))

    @property
    def pending(self) -> list[tuple[str, int, bytes]]:
        return self.held.ops

    def xWrite(self, data: Any, offset: int) -> None:
        self.vfs.tick()
        with self.held.lock:
            self.held.ops.append(("w", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        self.vfs.tick()
        with self.held.lock:
            self.held.ops.append(("t", newsize, b""))

    def xFileSize(self) -> int:
        with self.held.lock:
            size = super().xFileSize()
            for op, at, data in self.held.ops:
                size = max(size, at + len(data)) if op == "w" else at
            return size

    def xRead(self, amount: int, offset: int) -> bytes:
        with self.held.lock:
            size = super().xFileSize()
            buf = bytearray(amount)
            on_disk = max(0, min(amount, size - offset))
            if on_disk:
                buf[:on_disk] = super().xRead(on_disk, offset)
            for op, at, data in self.held.ops:
                if op == "w":
                    start, end = max(at, offset), min(at + len(data), offset + amount)
                    if start < end:
                        buf[start - offset : end - offset] = data[start - at : end - at]
                    size = max(size, at + len(data))
                else:
                    size = at
                    if at < offset + amount:
                        cut = max(0, at - offset)
                        buf[cut:] = bytes(amount - cut)
            return bytes(buf[: max(0, min(amount, size - offset))])

    def xSync(self, flags: int) -> None:
        self.vfs.tick()
        with self.held.lock:
            for op, at, data in self.held.ops:
                if op == "w":
                    super().xWrite(data, at)
                else:
                    super().xTruncate(at)
            self.held.ops.clear()
            super().xSync(flags)


class PowerCutVFS(apsw.VFS):
    """The shim, made the process's default VFS.

    :param cut_at: cut the power at this I/O operation (1 = the first); None: never
    :param on_cut: called just before the process ends at the cut (to report it)
    :ivar failing: None, or a key of :data:`FAULTS`: every write, truncate and sync of the
        held files then raises that error (set and clear it from any thread)
    :ivar failures: how many operations failed so far because of :attr:`failing`
    """

    def __init__(self, cut_at: int | None = None, on_cut: Callable[[int], None] | None = None):
        self.base = apsw.vfs_names()[0]  # the real default ("unix"), before we replace it
        self.cut_at = cut_at
        self.on_cut = on_cut
        self.ops = 0  # I/O operations counted so far
        self.failing: str | None = None
        self.failures = 0
        self._count = threading.Lock()
        self._held: dict[str, Held] = {}
        super().__init__("powercut", base=self.base, makedefault=True)

    def held_for(self, filename: str) -> Held:
        with self._count:
            return self._held.setdefault(filename, Held())

    def tick(self) -> None:
        """Count one I/O operation; at the ``cut_at``-th, the power goes before it happens;
        while :attr:`failing`, the operation fails instead of happening."""
        with self._count:
            self.ops += 1
            if self.ops == self.cut_at:
                if self.on_cut is not None:
                    self.on_cut(self.ops)
                os._exit(CUT_EXIT)  # here and now: no unwinding, no flush, no atexit
            failing = self.failing
            if failing is None:
                return
            self.failures += 1
        raise FAULTS[failing](f"powercut VFS: injected {failing} fault")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        if flags[0] & _HELD:
            return PowerCutFile(self, name, flags)
        return super().xOpen(name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        held = self._held.get(filename)
        if held is None:
            return super().xDelete(filename, syncdir)
        self.tick()
        with held.lock:
            held.ops.clear()  # the file goes, and with it what was held of it
            super().xDelete(filename, syncdir)
