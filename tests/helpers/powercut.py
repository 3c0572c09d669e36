"""A child process whose disk only keeps what SQLite fsynced: a power cut, simulated.

An apsw VFS shim (the default VFS of this process only) holds every write to the database,
its WAL and its rollback journal in memory until ``xSync``; only then does it reach the file.
Like an OS page cache, what is held is shared by every connection of the process to that file
(a read sees it, an ``xSync`` on any of them writes it all), and a file deleted takes what was
held of it along. :class:`PowerCutVFS` can also cut the power itself: at the ``cut_at``-th I/O
operation (``xWrite``, ``xSync``, ``xTruncate``, ``xDelete`` of those files, counted across
the process) it calls ``on_cut`` and ends the process at once with ``os._exit(CUT_EXIT)``,
before the operation happens (tests/helpers/powercut_workload.py uses that). And it can
fail: while :attr:`PowerCutVFS.failing` is ``"eio"`` or ``"readonly"``, every write, truncate
and fsync of those files raises (SQLITE_IOERR, SQLITE_READONLY) after it was counted, as a
dying card or a file system remounted read-only would, until it is set back to None.

As a program, the process inserts COUNT values in each of THREADS threads (default 1; thread
k into stream ``counter``, or ``counter{k}`` when there are several), PACE seconds apart
(default 0), printing ``STREAM VALUE TIME`` (time.monotonic()) after each insert() returned;
then prints ``cut TIME LATENCY`` (the longest recent batched commit, or 0) and exits without
closing anything: every write that was not synced is lost, as in a power cut.

Usage: python -m tests.helpers.powercut CACHE DURABILITY COUNT [THREADS [PACE]]
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import apsw

from connectorsync import Logger

# The exit status of a process whose power was cut by PowerCutVFS(cut_at=...).
CUT_EXIT = 75

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
    def __init__(self, vfs: PowerCutVFS, name: object, flags: list[int]):
        super().__init__(vfs.base, name, flags)  # type: ignore[arg-type]
        self.vfs = vfs
        self.held = vfs.held_for(_filename(name))

    @property
    def pending(self) -> list[tuple[str, int, bytes]]:
        return self.held.ops

    def xWrite(self, data, offset: int) -> None:
        self.vfs.tick()
        self.vfs.check()
        with self.held.lock:
            self.held.ops.append(("w", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        self.vfs.tick()
        self.vfs.check()
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
        self.vfs.check()
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
    """

    def __init__(self, cut_at: int | None = None, on_cut: Callable[[int], None] | None = None):
        self.base = apsw.vfs_names()[0]  # the real default ("unix"), before we replace it
        self.cut_at = cut_at
        self.on_cut = on_cut
        self.ops = 0  # I/O operations counted so far
        self.failing: str | None = None  # "eio" or "readonly": writes and fsyncs raise
        self._count = threading.Lock()
        self._held: dict[str, Held] = {}
        super().__init__("powercut", base=self.base, makedefault=True)

    def held_for(self, filename: str) -> Held:
        with self._count:
            return self._held.setdefault(filename, Held())

    def tick(self) -> None:
        """Count one I/O operation; at the ``cut_at``-th, the power goes before it happens."""
        with self._count:
            self.ops += 1
            if self.ops != self.cut_at:
                return
            if self.on_cut is not None:
                self.on_cut(self.ops)
            os._exit(CUT_EXIT)  # here and now: no unwinding, no flush, no atexit

    def check(self) -> None:
        """Raise as the failing disk would (see :attr:`failing`)."""
        failing = self.failing
        if failing == "eio":
            raise apsw.IOError("injected EIO")
        if failing == "readonly":
            raise apsw.ReadOnlyError("injected read-only file system")

    def xOpen(self, name, flags):
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


def main() -> None:
    path, durability, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    pace = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    names = ["counter"] if threads == 1 else [f"counter{k}" for k in range(threads)]
    vfs = PowerCutVFS()
    lg = Logger(path, durability=durability)
    for name in names:
        if name not in lg:
            lg.addStream(name, {"type": "integer"})
    print("ready", flush=True)
    printing = threading.Lock()

    def insert(name: str) -> None:
        for i in range(count):
            lg.insert(name, i)
            with printing:
                print(name, i, time.monotonic(), flush=True)
            if pace:
                time.sleep(pace)

    workers = [threading.Thread(target=insert, args=(name,)) for name in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("cut", time.monotonic(), lg._cache.commit_latency() or 0.0, flush=True)
    # The power goes out: no close, no flush, no atexit. Unsynced writes die with the process.
    del vfs
    os._exit(0)


if __name__ == "__main__":
    main()
