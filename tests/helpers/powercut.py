"""A child process whose disk only keeps what SQLite fsynced: a power cut, simulated.

The disk is :class:`connectorsync.testing.powercut.PowerCutVFS` (an apsw VFS shim that holds
every write until ``xSync``, can cut the power at a given I/O operation, and can fail writes
on demand); its names are importable from here too.

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

from connectorsync import Logger
from connectorsync.testing.live import commit_latency

# The shim lives in connectorsync.testing now (it also fails writes on demand); these names
# stay importable from here for the power-cut torture and the other tests.
from connectorsync.testing.powercut import CUT_EXIT, Held, PowerCutFile, PowerCutVFS

__all__ = ["CUT_EXIT", "Held", "PowerCutFile", "PowerCutVFS", "main"]


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
    print("cut", time.monotonic(), commit_latency(lg) or 0.0, flush=True)
    # The power goes out: no close, no flush, no atexit. Unsynced writes die with the process.
    del vfs
    os._exit(0)


if __name__ == "__main__":
    main()
