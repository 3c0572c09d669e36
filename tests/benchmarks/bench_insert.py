"""Insert speed of connectorsync against its references, from ONE run of this script.

For each durability it measures datapoints/s of:

- ``Logger.insert`` (validation, timestamp, JSON, commit per call),
- raw apsw: one autocommit INSERT per datapoint into the same table with the same pragmas
  (WAL + synchronous FULL or NORMAL), the JSON and timestamp made by hand,
- ``connectordb`` 0.3.5 ``Logger.insert`` (its own settings: rollback journal, the default
  synchronous=FULL), the same for both rows;

and ``Logger.insert_many`` against raw apsw ``executemany`` in one transaction.
Rounds are interleaved and the median is reported, to damp the noise of a shared machine.

Usage: python tests/benchmarks/bench_insert.py [--seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from connectorsync import Logger

# The reference stores into a table shaped like the cache's (ids that are never reused, an
# index by stream) with none of connectorsync's checks.
RAW_TABLE = """
CREATE TABLE datapoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL
);
CREATE INDEX datapoints_by_stream ON datapoints(stream);
"""

PRAGMA = {"full": "FULL", "normal": "NORMAL"}


def timed_loop(insert: Callable[[int], None], seconds: float) -> float:
    """Call insert(i) for about ``seconds``; return calls per second."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            insert(count)
            count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def raw_connection(path: str, durability: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.execute(RAW_TABLE).fetchall()
    # One PRAGMA per execute (apsw runs a multi-statement string lazily); read them back.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={PRAGMA[durability]}")
    assert list(conn.execute("PRAGMA journal_mode"))[0][0] == "wal"
    return conn


def bench_raw(workdir: str, durability: str, seconds: float) -> float:
    conn = raw_connection(
        os.path.join(workdir, f"raw-{durability}-{time.time_ns()}.db"), durability
    )
    sql = "INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)"

    def insert(i: int) -> None:
        conn.execute(sql, (time.time(), json.dumps(20.0 + i % 10)))

    rate = timed_loop(insert, seconds)
    conn.close()
    return rate


def bench_logger(workdir: str, durability: str, seconds: float) -> float:
    path = os.path.join(workdir, f"cs-{durability}-{time.time_ns()}.db")
    lg = Logger(path, durability=durability)
    lg.addStream("temperature", {"type": "number"})
    rate = timed_loop(lambda i: lg.insert("temperature", 20.0 + i % 10), seconds)
    lg.close()
    return rate


def bench_connectordb(workdir: str, seconds: float) -> float | None:
    try:
        from connectordb.logger import Logger as OldLogger
    except ImportError:
        return None
    path = os.path.join(workdir, f"cdb-{time.time_ns()}.db")
    lg = OldLogger(path, on_create=lambda lg: lg.addStream_force("temperature", {"type": "number"}))
    rate = timed_loop(lambda i: lg.insert("temperature", 20.0 + i % 10), seconds)
    lg.database.close()
    return rate


def bench_many_raw(workdir: str, durability: str, n: int) -> float:
    conn = raw_connection(
        os.path.join(workdir, f"rawm-{durability}-{time.time_ns()}.db"), durability
    )
    now = time.time()
    start = time.perf_counter()
    rows = [(now + i * 1e-3, json.dumps(20.0 + i % 10)) for i in range(n)]
    with conn:
        conn.executemany("INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)", rows)
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def bench_many_logger(workdir: str, durability: str, n: int) -> float:
    lg = Logger(
        os.path.join(workdir, f"csm-{durability}-{time.time_ns()}.db"), durability=durability
    )
    lg.addStream("temperature", {"type": "number"})
    values = [20.0 + i % 10 for i in range(n)]
    start = time.perf_counter()
    lg.insert_many("temperature", values)
    rate = n / (time.perf_counter() - start)
    lg.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--many", type=int, default=100_000, help="datapoints per insert_many")
    args = parser.parse_args()

    results: dict[str, list[float]] = {}

    def note(key: str, value: float | None) -> None:
        if value is not None:
            results.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="bench-insert-", dir=os.getcwd()) as workdir:
        for _ in range(args.rounds):
            for durability in ("full", "normal"):
                note(f"raw-{durability}", bench_raw(workdir, durability, args.seconds))
                note(f"cs-{durability}", bench_logger(workdir, durability, args.seconds))
                note(f"rawm-{durability}", bench_many_raw(workdir, durability, args.many))
                note(f"csm-{durability}", bench_many_logger(workdir, durability, args.many))
            note("cdb", bench_connectordb(workdir, args.seconds))

    med = {key: statistics.median(values) for key, values in results.items()}
    cdb = med.get("cdb")
    print(
        f"insert benchmark: median of {args.rounds} interleaved rounds, "
        f"{args.seconds} s each, on {os.uname().machine}, apsw {apsw.apsw_version()}"
    )
    print()
    print("| measurement | durability | datapoints/s | reference | datapoints/s | ratio | target |")
    print("|---|---|---:|---|---:|---:|---|")
    for durability in ("full", "normal"):
        cs, raw = med[f"cs-{durability}"], med[f"raw-{durability}"]
        print(
            f"| Logger.insert | {durability} | {cs:,.0f} | raw apsw autocommit | {raw:,.0f} "
            f"| {cs / raw:.2f}x | >= 0.8x |"
        )
        if cdb:
            print(
                f"| Logger.insert | {durability} | {cs:,.0f} | connectordb 0.3.5 insert | "
                f"{cdb:,.0f} | {cs / cdb:.1f}x | >= 8x |"
            )
        csm, rawm = med[f"csm-{durability}"], med[f"rawm-{durability}"]
        print(
            f"| Logger.insert_many | {durability} | {csm:,.0f} | raw apsw executemany | "
            f"{rawm:,.0f} | {csm / rawm:.2f}x | >= 0.5x |"
        )


if __name__ == "__main__":
    main()
