"""Live lag while a backlog drains, from ONE run of this script.

A Logger holds a backlog of ``--backlog`` datapoints (1,000,000 by default) in a stream, as a
device that was offline for days; its background syncer drains it into a real ``influxd``
(on 127.0.0.1, a directory of its own) at ``max_rate`` while the sensor loop goes on
inserting one datapoint per second into the same stream. For each of those the lag is the
time from ``insert()`` until influxd answers a query with it (polled every 0.1 s). Printed:
the lag's median, p99 and max against the target of 2 x ``syncperiod``, and the drain time;
with ``live_first`` (the default) and without (strict order: the new datapoints wait for the
whole backlog).

Usage: python tests/benchmarks/bench_live.py [--backlog N] [--rate R] [--syncperiod S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from connectorsync import InfluxDBRemote, Logger
from connectorsync.testing.influx import InfluxDBServer, find_influxd

T0 = 1_600_000_000.0  # the backlog's first timestamp: long before the live datapoints


def run(workdir: str, influx: InfluxDBServer, args: argparse.Namespace, live_first: bool) -> dict:
    db = f"live{int(live_first)}"
    influx.create_database(db)
    path = os.path.join(workdir, f"{db}.db")
    lg = Logger(path, remote=InfluxDBRemote(influx.url, db), durability="normal")
    lg.addStream_force("temperature", {"type": "number"})
    chunk = 100_000
    for start in range(0, args.backlog, chunk):
        count = min(chunk, args.backlog - start)
        lg.insert_many(
            "temperature", [{"t": T0 + (start + i) * 0.001, "d": 20.0} for i in range(count)]
        )
    lg.live_first, lg.max_rate = live_first, args.rate
    lg.syncperiod, lg.sync_jitter = args.syncperiod, 0
    inserted: dict[float, float] = {}  # timestamp -> when insert() returned (monotonic)
    lags: list[float] = []
    done = threading.Event()

    def sensor() -> None:
        while not done.wait(1.0):
            t = time.time()
            lg.insert("temperature", 21.0, t)
            inserted[t] = time.monotonic()

    began = time.monotonic()
    lg.start()
    loop = threading.Thread(target=sensor)
    loop.start()
    drained = None
    seen: set[int] = set()
    while drained is None or len(lags) < len(inserted):
        time.sleep(0.1)
        answer = influx.query(f"SELECT value FROM temperature WHERE time > {int(T0 + 86400)}s", db)
        now = time.monotonic()
        for row in _rows(answer):
            if row[0] not in seen:
                seen.add(row[0])
                t = row[0] / 1e9
                match = min(inserted, key=lambda x: abs(x - t), default=None)
                if match is not None and abs(match - t) < 1e-3:
                    lags.append(now - inserted[match])
        if drained is None and len(lg) <= len(inserted) - len(lags):
            drained = now - began
            done.set()
        if now - began > 3600:
            raise RuntimeError("the backlog did not drain within an hour")
    loop.join()
    lg.close()
    lags.sort()
    return {
        "drain": drained,
        "count": len(lags),
        "median": statistics.median(lags),
        "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "max": lags[-1],
    }


def _rows(answer: dict) -> list[list]:
    series = answer.get("results", [{}])[0].get("series", [])
    return series[0]["values"] if series else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=50_000.0, help="max_rate, datapoints/s")
    parser.add_argument("--syncperiod", type=float, default=5.0)
    args = parser.parse_args()
    if find_influxd() is None:
        sys.exit("bench_live needs influxd: apt-get install influxdb")
    with tempfile.TemporaryDirectory(prefix="bench-live-", dir=os.getcwd()) as workdir:
        influx = InfluxDBServer(os.path.join(workdir, "influxd"))
        influx.start()
        try:
            results = {flag: run(workdir, influx, args, flag) for flag in (True, False)}
        finally:
            influx.stop()
    target = 2 * args.syncperiod
    print(
        f"live lag: a 1 Hz stream's new datapoints while {args.backlog:,} older ones drain at "
        f"max_rate {args.rate:,.0f}/s into influxd, syncperiod {args.syncperiod:g} s"
    )
    print(
        "| live_first | drain s | new datapoints | lag median s | lag p99 s | lag max s | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for flag, r in results.items():
        print(
            f"| {flag} | {r['drain']:.1f} | {r['count']} | {r['median']:.2f} | {r['p99']:.2f} "
            f"| {r['max']:.2f} | <= {target:g} s |"
        )


if __name__ == "__main__":
    main()
