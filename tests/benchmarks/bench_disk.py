"""What connectorsync asks of the disk, from ONE run of this script (ratios, not seconds).

Group commit: 8 threads inserting into one Logger with ``durability="full"``, against one
thread, and against raw apsw with 8 threads each on its own connection, one autocommit INSERT
per datapoint (WAL, synchronous=FULL, a busy timeout), into a table of the cache's shape.

The files live on a real disk (``--dir``, default the system's temporary directory; not a
RAM disk, where fsync costs nothing). This machine's virtual disk syncs in ~0.2 ms, where an
SD card takes 1-20 ms; so each figure is measured twice: on this disk as it is, and with every
fsync held ``--fsync-ms`` longer (5 ms by default) by a VFS shim, as on an SD card. Both sides
of each ratio run under the same shim.

Usage: python tests/benchmarks/bench_disk.py [--seconds S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from connectorsync import Logger

RAW_TABLE = """
CREATE TABLE IF NOT EXISTS datapoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datapoints_by_stream ON datapoints(stream);
"""

THREADS = 8


class _SlowSyncFile(apsw.VFSFile):
    def __init__(self, vfs: SlowSync, name: object, flags: list[int]):
        super().__init__(vfs.base, name, flags)  # type: ignore[arg-type]
        self.delay = vfs.delay

    def xSync(self, flags: int) -> None:
        super().xSync(flags)
        time.sleep(self.delay)


class SlowSync(apsw.VFS):
    """The process's default VFS while it exists: every fsync takes ``delay`` seconds more."""

    def __init__(self, delay: float) -> None:
        self.base, self.delay = apsw.vfs_names()[0], delay
        super().__init__("slowsync", base=self.base, makedefault=True)

    def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:
        return _SlowSyncFile(self, name, flags)


def in_threads(
    threads: int, seconds: float, make_insert: Callable[[int], Callable[[int], None]]
) -> float:
    """Run ``threads`` threads, each calling its own insert(i) for ``seconds``; total calls/s."""
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)

    def run(k: int) -> None:
        insert = make_insert(k)
        start_line.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            insert(n)
            n += 1
        counts[k] = n

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    start_line.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


def bench_logger(workdir: str, threads: int, seconds: float) -> float:
    path = os.path.join(workdir, f"logger-{threads}-{time.time_ns()}.db")

    def init(lg: Logger) -> None:
        for k in range(threads):
            lg.addStream(f"s{k}", {"type": "number"})

    with Logger(path, on_create=init, durability="full") as lg:
        return in_threads(threads, seconds, lambda k: lambda i: lg.insert(f"s{k}", 20.0 + i % 10))


def bench_raw(workdir: str, threads: int, seconds: float) -> float:
    path = os.path.join(workdir, f"raw-{threads}-{time.time_ns()}.db")
    setup = apsw.Connection(path)
    setup.execute(RAW_TABLE).fetchall()
    setup.execute("PRAGMA journal_mode=WAL").fetchall()
    connections: list[apsw.Connection] = []

    def make_insert(k: int) -> Callable[[int], None]:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(60_000)
        conn.execute("PRAGMA synchronous=FULL").fetchall()
        connections.append(conn)
        sql = "INSERT INTO datapoints (stream, t, d) VALUES (?, ?, ?)"
        return lambda i: conn.execute(sql, (k, time.time(), json.dumps(20.0 + i % 10))).fetchall()

    rate = in_threads(threads, seconds, make_insert)
    for conn in [*connections, setup]:
        conn.close()
    return rate


def measure(workdir: str, seconds: float) -> tuple[float, float, float]:
    """(one thread, 8 threads, raw apsw with 8 connections), datapoints/s."""
    one = bench_logger(workdir, 1, seconds)
    many = bench_logger(workdir, THREADS, seconds)
    raw = bench_raw(workdir, THREADS, seconds)
    return one, many, raw


def report(title: str, figures: tuple[float, float, float]) -> None:
    one, many, raw = figures
    print(f"group commit, durability=full, {title} (datapoints/s)")
    print(f"  Logger, 1 thread            {one:10.0f}")
    print(f"  Logger, {THREADS} threads           {many:10.0f}   {many / one:5.2f}x one thread")
    print(f"  raw apsw, {THREADS} connections     {raw:10.0f}   {many / raw:5.2f}x (Logger/raw)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--fsync-ms", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        report("this disk", measure(workdir, args.seconds))
        shim = SlowSync(args.fsync_ms / 1000)
        try:
            slow = measure(workdir, args.seconds)
        finally:
            shim.unregister()
        report(f"fsync + {args.fsync_ms:g} ms (an SD card)", slow)


if __name__ == "__main__":
    main()
