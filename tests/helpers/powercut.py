"""A child process whose disk only keeps what SQLite fsynced: a power cut, simulated.

An apsw VFS shim (the default VFS of this process only) holds every write to the database
and WAL files in memory until ``xSync``; only then does it reach the file. The process
inserts COUNT values in each of THREADS threads (default 1; thread k into stream
``counter``, or ``counter{k}`` when there are several), PACE seconds apart (default 0),
printing ``STREAM VALUE TIME`` (time.monotonic()) after each insert() returned; then prints
``cut TIME LATENCY`` (the longest recent batched commit, or 0) and exits without closing
anything: every write that was not synced is lost, as in a power cut.

Usage: python -m tests.helpers.powercut CACHE DURABILITY COUNT [THREADS [PACE]]
"""

from __future__ import annotations

import os
import sys
import threading
import time

import apsw

from connectorsync import Logger


class PowerCutFile(apsw.VFSFile):
    def __init__(self, vfs: str, name: object, flags: list[int]):
        super().__init__(vfs, name, flags)  # type: ignore[arg-type]
        self.pending: list[tuple[str, int, bytes]] = []  # ("w", offset, data) | ("t", size, b"")

    def xWrite(self, data, offset: int) -> None:
        self.pending.append(("w", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        self.pending.append(("t", newsize, b""))

    def xFileSize(self) -> int:
        size = super().xFileSize()
        for op, at, data in self.pending:
            size = max(size, at + len(data)) if op == "w" else at
        return size

    def xRead(self, amount: int, offset: int) -> bytes:
        size = super().xFileSize()
        buf = bytearray(amount)
        on_disk = max(0, min(amount, size - offset))
        if on_disk:
            buf[:on_disk] = super().xRead(on_disk, offset)
        for op, at, data in self.pending:
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
        for op, at, data in self.pending:
            if op == "w":
                super().xWrite(data, at)
            else:
                super().xTruncate(at)
        self.pending.clear()
        super().xSync(flags)


class PowerCutVFS(apsw.VFS):
    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]  # the real default ("unix"), before we replace it
        super().__init__("powercut", base=self.base, makedefault=True)

    def xOpen(self, name, flags):
        if flags[0] & (apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_WAL):
            return PowerCutFile(self.base, name, flags)
        return super().xOpen(name, flags)


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
