"""What connectorsync asks of the disk, from ONE run of this script (ratios, not seconds).

Write amplification: bytes this process caused to be written to the storage layer
(``/proc/self/io`` ``write_bytes``, counted when a page is dirtied: a page rewritten before the
kernel wrote it back counts once, as the disk sees it) per byte of payload, for 10 streams of
numbers at the same total count, inserted one at a time as a sensor loop does: ``full``,
``normal``, ``batched``, connectordb 0.3.5's Logger and raw apsw (autocommit, WAL,
synchronous=FULL). The payload of a datapoint is its JSON ``{"t": ..., "d": ...}``, what a
remote receives. The count runs until the file is closed (its WAL checkpointed).

Insert cost: ``Logger.insert`` with ``durability="normal"`` against raw apsw autocommit into a
plain table of the same columns without trigger or index, and the same table as each part of
the cache's shape is added, to show what costs the difference.

Group commit: 8 threads inserting into one Logger with ``durability="full"``, against one
thread, and against raw apsw with 8 threads each on its own connection, one autocommit INSERT
per datapoint (WAL, synchronous=FULL, a busy timeout), into a table of the cache's shape.

The files live on a real disk (``--dir``, default the system's temporary directory; not a
RAM disk, where fsync costs nothing). This machine's virtual disk syncs in ~0.2 ms, where an
SD card takes 1-20 ms; so each figure is measured twice: on this disk as it is, and with every
fsync held ``--fsync-ms`` longer (5 ms by default) by a VFS shim, as on an SD card. Both sides
of each ratio run under the same shim.

Space: a cache filled with ``--space-count`` datapoints (insert_many in chunks), then drained
by syncing them all to a loopback ConnectorDB server: the cache file + WAL size after the drain
as a % of its peak (target <= 5%); and the same with the space logic switched off
(``auto_vacuum=NONE``, no vacuum steps or checkpoint after the pass, no
``journal_size_limit``), as connectorsync was before it.

Usage: python tests/benchmarks/bench_disk.py [--seconds S] [--dir DIR] [--count N]
                                             [--fsync-ms MS] [--space-count N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from connectorsync import Logger
from connectorsync.cache import Cache, SpaceReport, space
from connectorsync.testing import ConnectorDBServer

RAW_TABLE = """
CREATE TABLE IF NOT EXISTS datapoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datapoints_by_stream ON datapoints(stream);
"""

THREADS = 8
STREAMS = 10


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


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("write_bytes:")).split()[1])


def payload_bytes(count: int) -> int:
    """The JSON of ``count`` datapoints as a remote receives them."""
    now = time.time()
    return sum(len(json.dumps({"t": now + i, "d": 20.0 + i % 10})) for i in range(count))


def amplification_logger(workdir: str, durability: str, count: int, rate: float = 0) -> int:
    """Bytes written to insert ``count`` datapoints round-robin into 10 streams, as fast as
    possible, or ``rate`` datapoints per second (a sensor loop's pace)."""
    path = os.path.join(workdir, f"wa-{durability}-{time.time_ns()}.db")

    def init(lg: Logger) -> None:
        for k in range(STREAMS):
            lg.addStream(f"s{k}", {"type": "number"})

    Logger(path, on_create=init, durability=durability).close()
    before = written_bytes()
    start = time.monotonic()
    with Logger(path, durability=durability) as lg:
        for i in range(count):
            lg.insert(f"s{i % STREAMS}", 20.0 + i % 10)
            if rate:
                time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    return written_bytes() - before


def amplification_connectordb(workdir: str, count: int) -> int | None:
    try:
        from connectordb.logger import Logger as OldLogger
    except ImportError:
        return None
    path = os.path.join(workdir, f"wa-cdb-{time.time_ns()}.db")

    def init(lg: OldLogger) -> None:
        for k in range(STREAMS):
            lg.addStream_force(f"s{k}", {"type": "number"})

    OldLogger(path, on_create=init).database.close()
    before = written_bytes()
    lg = OldLogger(path)
    for i in range(count):
        lg.insert(f"s{i % STREAMS}", 20.0 + i % 10)
    lg.database.close()
    return written_bytes() - before


def amplification_raw(workdir: str, count: int) -> int:
    path = os.path.join(workdir, f"wa-raw-{time.time_ns()}.db")
    conn = apsw.Connection(path)
    conn.execute(RAW_TABLE).fetchall()
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=FULL").fetchall()
    before = written_bytes()
    sql = "INSERT INTO datapoints (stream, t, d) VALUES (?, ?, ?)"
    for i in range(count):
        conn.execute(sql, (i % STREAMS, time.time(), json.dumps(20.0 + i % 10))).fetchall()
    conn.close()
    return written_bytes() - before


def report_amplification(workdir: str, count: int) -> None:
    payload = payload_bytes(count)
    rows = [
        ("Logger, full", amplification_logger(workdir, "full", count)),
        ("Logger, batched (0.2 s)", amplification_logger(workdir, "batched", count)),
        ("Logger, normal", amplification_logger(workdir, "normal", count)),
        ("connectordb 0.3.5 Logger", amplification_connectordb(workdir, count)),
        ("raw apsw, WAL + FULL", amplification_raw(workdir, count)),
    ]
    print(
        f"write amplification: {count:,} datapoints into {STREAMS} streams as fast as they go, "
        f"{payload:,} payload bytes"
    )
    for name, written in rows:
        if written is not None:
            print(f"  {name:26} {written:14,} bytes  {written / payload:8.1f} per payload byte")
    paced = min(count, 1000)
    payload = payload_bytes(paced)
    print(f"... {paced:,} datapoints at 100/s (10 streams at 10 Hz), {payload:,} payload bytes")
    for durability in ("full", "batched"):
        written = amplification_logger(workdir, durability, paced, rate=100)
        name = f"Logger, {durability}"
        print(f"  {name:26} {written:14,} bytes  {written / payload:8.1f} per payload byte")


PLAIN_TABLE = "CREATE TABLE datapoints (stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL)"
# The cache's shape, one part at a time (cache/schema.py has the real one).
SHAPES = {
    "plain table": [PLAIN_TABLE],
    "+ integer primary key": [
        "CREATE TABLE datapoints (id INTEGER PRIMARY KEY, stream INTEGER NOT NULL, "
        "t REAL NOT NULL, d TEXT NOT NULL)"
    ],
    "+ autoincrement": [
        "CREATE TABLE datapoints (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL)"
    ],
    "+ index by stream": [
        "CREATE TABLE datapoints (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL)",
        "CREATE INDEX datapoints_by_stream ON datapoints(stream)",
    ],
}


def insert_rate_raw(workdir: str, statements: list[str], seconds: float) -> float:
    conn = apsw.Connection(os.path.join(workdir, f"shape-{time.time_ns()}.db"))
    for statement in statements:
        conn.execute(statement).fetchall()
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    sql = "INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)"
    rate = timed(lambda i: conn.execute(sql, (time.time(), json.dumps(20.0 + i % 10))), seconds)
    conn.close()
    return rate


def insert_rate_logger(workdir: str, seconds: float) -> float:
    path = os.path.join(workdir, f"shape-logger-{time.time_ns()}.db")
    with Logger(path, durability="normal") as lg:
        lg.addStream("temperature", {"type": "number"})
        return timed(lambda i: lg.insert("temperature", 20.0 + i % 10), seconds)


def timed(insert: Callable[[int], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            insert(count)
            count += 1
    return count / elapsed


def report_insert_cost(workdir: str, seconds: float) -> None:
    print("insert cost, durability=normal (datapoints/s; ratio against the plain table)")
    plain = insert_rate_raw(workdir, SHAPES["plain table"], seconds)
    print(f"  raw apsw, {'plain table':36} {plain:10,.0f}   1.00x")
    for name, statements in list(SHAPES.items())[1:]:
        rate = insert_rate_raw(workdir, statements, seconds)
        print(f"  raw apsw, {name:36} {rate:10,.0f}   {rate / plain:4.2f}x")
    rate = insert_rate_logger(workdir, seconds)
    print(f"  {'Logger.insert (the whole cache shape)':46} {rate:10,.0f}   {rate / plain:4.2f}x")


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


# --------------------------------------------------------------------------- space


def disk_size(path: str) -> int:
    """The cache file and its WAL, as the disk holds them."""
    wal = path + "-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


@contextlib.contextmanager
def space_logic_off() -> Iterator[None]:
    """connectorsync as it was before space was given back: new files auto_vacuum=NONE,
    nothing done after a pass, no journal_size_limit (SQLite's default, -1)."""
    saved = space.start_incremental, Cache.give_back_space, space.JOURNAL_SIZE_LIMIT
    space.start_incremental = lambda conn: None  # type: ignore[assignment]
    Cache.give_back_space = lambda self, max_steps=0: SpaceReport(0, 0, 0, False)  # type: ignore[method-assign]
    space.JOURNAL_SIZE_LIMIT = -1
    try:
        yield
    finally:
        space.start_incremental, Cache.give_back_space, space.JOURNAL_SIZE_LIMIT = saved  # type: ignore[method-assign]


def bench_space(workdir: str, count: int, chunk: int = 10_000) -> tuple[int, int, float]:
    """Fill ``count`` datapoints, drain them to a loopback ConnectorDB: (peak bytes, bytes
    after, seconds the drain took)."""
    path = os.path.join(workdir, f"space-{time.time_ns()}.db")
    server = ConnectorDBServer()
    server.start()
    try:
        apikey = server.add_device("alice", "sensor")

        def init(lg: Logger) -> None:
            lg.apikey, lg.serverurl = apikey, server.url
            lg.addStream("temperature", {"type": "number"})

        with Logger(path, on_create=init, durability="normal") as lg:
            peak = 0
            for start in range(0, count, chunk):
                values = [20.0 + i % 10 for i in range(start, min(count, start + chunk))]
                lg.insert_many("temperature", values)
                peak = max(peak, disk_size(path))
            began = time.perf_counter()
            sent = 0
            while len(lg):
                sent += lg.sync(progress=lambda _s, _n: None).total_sent
            took = time.perf_counter() - began
            assert sent == count, sent
            after = disk_size(path)
    finally:
        server.stop()
    return peak, after, took


def report_space(count: int, now: tuple[int, int, float], today: tuple[int, int, float]) -> None:
    print(f"space, {count:,} datapoints filled then drained to a loopback ConnectorDB")
    for title, (peak, after, took) in (("given back", now), ("today (before)", today)):
        print(
            f"  {title:15} peak {peak / 1e6:8.1f} MB   after {after / 1e6:8.2f} MB   "
            f"{100 * after / peak:6.1f}% of the peak   (drain {took:5.1f} s)"
        )


def measure_space(workdir: str, count: int) -> None:
    now = bench_space(workdir, count)
    with space_logic_off():
        today = bench_space(workdir, count)
    report_space(count, now, today)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--fsync-ms", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=10_000, help="write amplification")
    parser.add_argument("--space-count", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        report_amplification(workdir, args.count)
        report_insert_cost(workdir, args.seconds)
        report("this disk", measure(workdir, args.seconds))
        shim = SlowSync(args.fsync_ms / 1000)
        try:
            slow = measure(workdir, args.seconds)
        finally:
            shim.unregister()
        report(f"fsync + {args.fsync_ms:g} ms (an SD card)", slow)
        measure_space(workdir, args.space_count)


if __name__ == "__main__":
    main()
