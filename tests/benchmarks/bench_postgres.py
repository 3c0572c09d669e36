"""PostgreSQL delivery speed of connectorsync against a plain psycopg loop, from ONE run.

A backlog of N datapoints of one number stream waits in a cache file (``durability="normal"``)
and one ``Logger.sync()`` drains it through a :class:`PostgresRemote` into a local PostgreSQL
(:class:`connectorsync.testing.postgres.PostgresServer`, its own process on 127.0.0.1, fsync
off). The ceiling: a plain psycopg 3 loop doing the same per batch of the same size, on one
connection made before the clock starts: ``COPY`` of the same text into a temporary table,
``INSERT ... SELECT ... ON CONFLICT (device, stream, t, id) DO NOTHING``, ``COMMIT``; the
datapoints in memory, no cache behind it. Each writes a table of its own, created before the
clock starts; both are counted on the server afterwards.

Targets (issue 18): connectorsync >= 0.7x the plain loop, and >= 50,000 datapoints/s.

Usage: python tests/benchmarks/bench_postgres.py [--count N] [--batch B]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from connectorsync import Logger, PostgresRemote  # noqa: E402
from connectorsync.testing.postgres import PostgresServer, find_postgres  # noqa: E402

T0 = 1_700_000_000.0
DEVICE = "bench-device"


def values(count: int) -> list[dict[str, float]]:
    return [{"t": T0 + i / 1000, "d": 20.0 + i % 10} for i in range(count)]


def connectorsync_run(server: PostgresServer, directory: str, count: int, batch: int) -> float:
    remote = PostgresRemote(server.dsn(), "bench_connectorsync", device=DEVICE, timeout=60)
    lg = Logger(
        os.path.join(directory, "cache.db"),
        remote=remote,
        durability="normal",
        batch_size=batch,
        on_create=lambda lg: lg.add_stream("temperature", {}),
    )
    lg.insert_many("temperature", values(count))
    remote.ping()  # connected, the table made, before the clock starts: as the plain loop
    start = time.perf_counter()
    report = lg.sync()
    elapsed = time.perf_counter() - start
    assert report.ok and report.sent == {"temperature": count}, report
    assert len(lg) == 0
    lg.close()
    remote.close()
    return count / elapsed


def plain_run(server: PostgresServer, count: int, batch: int) -> float:
    points = values(count)
    table = sql.Identifier("bench_plain")
    with psycopg.connect(server.dsn()) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (device text NOT NULL, stream text NOT NULL, "
                "t timestamptz NOT NULL, id bigint NOT NULL, value jsonb NOT NULL, "
                "UNIQUE (device, stream, t, id))"
            ).format(table)
        )
        conn.execute(
            "CREATE TEMPORARY TABLE staging (t double precision, id bigint, value jsonb) "
            "ON COMMIT DELETE ROWS"
        )
        conn.commit()
        insert = sql.SQL(
            "INSERT INTO {} (device, stream, t, id, value) "
            "SELECT %s, %s, to_timestamp(t), id, value "
            "FROM staging ON CONFLICT (device, stream, t, id) DO NOTHING"
        ).format(table)
        start = time.perf_counter()
        for first in range(0, count, batch):
            text = "".join(
                f"{p['t']!r}\t{first + i + 1}\t{p['d']!r}\n"
                for i, p in enumerate(points[first : first + batch])
            )
            with conn.cursor() as cur:
                with cur.copy("COPY staging (t, id, value) FROM STDIN") as copy:
                    copy.write(text.encode())
                cur.execute(insert, (DEVICE, "temperature"))
            conn.commit()
        elapsed = time.perf_counter() - start
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    if find_postgres() is None:
        sys.exit("PostgreSQL is not installed: apt-get install postgresql")
    server = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            ours = connectorsync_run(server, directory, args.count, args.batch)
        plain = plain_run(server, args.count, args.batch)
        stored = (server.count("bench_connectorsync"), server.count("bench_plain"))
        assert stored == (args.count, args.count), stored
    finally:
        server.cleanup()
    print(f"PostgreSQL, {args.count} datapoints in batches of {args.batch}, one run:")
    print(f"  connectorsync Logger.sync() -> PostgresRemote: {ours:10,.0f} datapoints/s")
    print(f"  plain psycopg COPY + INSERT ON CONFLICT loop:  {plain:10,.0f} datapoints/s")
    print(f"  ratio: {ours / plain:.2f}x (target >= 0.7x); "
          f"{'meets' if ours >= 50_000 else 'misses'} >= 50,000 datapoints/s")  # fmt: skip


if __name__ == "__main__":
    main()
