"""A fleet of Loggers through an outage into NATS JetStream and into PostgreSQL, from ONE run.

The same fleet as ``bench_fleet.py`` (its children and their commands are reused): ``--loggers``
Loggers (200) in ``--processes`` child processes (4), one cache file each, one number stream
fed ``--rate`` datapoints/s (1), syncing every ``--syncperiod`` seconds (5), with the defaults
(``sync_jitter``, the backoff's full jitter). Each Logger delivers to a remote of its own, built
from a configuration (``connectorsync.remotes.remote_from_config``), into one server started
here on 127.0.0.1 in a temporary directory:

- ``nats``: a ``nats-server -js`` (:class:`connectorsync.testing.NATSServer`) with one stream
  on ``fleet.>``; Logger ``i`` publishes to ``fleet.d<i>.reading``, each datapoint a message
  with its ``Nats-Msg-Id`` (the cache's identity and the datapoint's id);
- ``postgres``: a PostgreSQL server (:class:`connectorsync.testing.PostgresServer`), one table
  ``fleet``; Logger ``i`` writes as device ``d<i>``, a batch per transaction.

Per engine: every Logger starts syncing at once; ``--steady`` periods (4) of steady state; the
server stops for ``--outage`` seconds (30) and starts again on the same port with the same
storage; then ``--after`` seconds (10) are watched and the drain timed (every Logger has
delivered what it had inserted when the server came back); inserting stops, the Loggers close
(a last pass each), and the server must hold every datapoint inserted, each once, with every
cache empty; otherwise the script fails.

What is counted, once a second by this process: the datapoints the server holds (the stream's
message count; the table's rows), whose growth is the datapoints stored per second, and for
PostgreSQL the transactions committed in the database (``pg_stat_database.xact_commit``,
which the server updates about once a second): a batch is one transaction. On NATS every
datapoint is a publish of its own, so publishes per second are the datapoints stored per
second (a resend the server drops as a duplicate is not seen here; there were none, below).
The ratio is the busiest second in the first ``--after`` seconds after the outage over the
steady state's mean.

Usage: python tests/benchmarks/bench_fleet_engines.py [--engines nats,postgres] [--loggers 200]
        [--processes 4] [--outage 30] [--syncperiod 5] [--rate 1] [--steady 4] [--after 10]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_fleet import Child  # noqa: E402

STREAM_NAME = "FLEET"  # the JetStream stream
TABLE = "fleet"  # the PostgreSQL table
DRAIN_LIMIT = 300.0  # seconds


class Engine:
    """One server, the remotes' configurations for it, and what it holds."""

    name = ""

    def start(self, workdir: str) -> None: ...
    def configs(self, count: int) -> list[dict[str, Any]]: ...
    def stored(self) -> int: ...
    def requests(self) -> int | None:
        return None

    def per_device(self) -> dict[str, int]: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def close(self) -> None: ...


class Nats(Engine):
    name = "nats"

    def start(self, workdir: str) -> None:
        from connectorsync.testing.nats import NATSServer

        self.server = NATSServer(os.path.join(workdir, "nats")).start()
        # A window longer than the outage: a publish whose answer the outage cut is sent
        # again after it, and must still be recognised.
        self.server.add_stream(STREAM_NAME, ["fleet.>"], duplicate_window=600.0)

    def configs(self, count: int) -> list[dict[str, Any]]:
        return [
            {"kind": "nats", "url": self.server.url, "subject": f"fleet.d{i:03d}.{{stream}}"}
            for i in range(count)
        ]

    def stored(self) -> int:
        return self.server.count(STREAM_NAME)

    def per_device(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self.server.stream_messages(STREAM_NAME):
            device = message.subject.split(".")[1]
            counts[device] = counts.get(device, 0) + 1
        return counts

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.stop()


class Postgres(Engine):
    name = "postgres"

    def start(self, workdir: str) -> None:
        from connectorsync.testing.postgres import PostgresServer

        self.server = PostgresServer().start()

    def configs(self, count: int) -> list[dict[str, Any]]:
        dsn = self.server.dsn()
        return [
            {"kind": "postgres", "dsn": dsn, "table": TABLE, "device": f"d{i:03d}"}
            for i in range(count)
        ]

    def stored(self) -> int:
        return self.server.count(TABLE)

    def requests(self) -> int | None:
        rows = self.server.query(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(rows[0][0])

    def per_device(self) -> dict[str, int]:
        rows = self.server.query(f"SELECT device, count(*) FROM {TABLE} GROUP BY device")
        return {device: int(n) for device, n in rows}

    def duplicates(self) -> int:
        return self.server.duplicates(TABLE)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.stop()
        self.server.cleanup()


ENGINES: dict[str, Callable[[], Engine]] = {"nats": Nats, "postgres": Postgres}


class Sampler:
    """Once a second, what the engine holds and (PostgreSQL) its transactions so far; a
    sample the server cannot answer (it is down) is left out."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples: list[tuple[float, int, int | None]] = []
        self.halt = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        tick = time.monotonic()
        while not self.halt.wait(max(0.0, tick - time.monotonic())):
            tick += 1.0
            if self.paused.is_set():
                continue
            try:
                sample = (time.monotonic(), self.engine.stored(), self.engine.requests())
                self.samples.append(sample)
            except Exception:  # the server is down or restarting: no sample this second
                continue

    def rates(self, start: float, seconds: float, column: int) -> list[float]:
        """Per second between consecutive samples in [start, start + seconds]."""
        window = [
            s for s in self.samples if start <= s[0] <= start + seconds and s[column] is not None
        ]
        return [
            (b[column] - a[column]) / (b[0] - a[0])  # type: ignore[operator]
            for a, b in itertools.pairwise(window)
            if b[0] > a[0]
        ]

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()


def run_engine(name: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = ENGINES[name]()
    workdir = tempfile.mkdtemp(prefix=f"bench-fleet-{name}-")
    args.workdir = workdir
    children: list[Child] = []
    try:
        engine.start(workdir)
        configs = engine.configs(args.loggers)
        share = math.ceil(args.loggers / args.processes)
        for first in range(0, args.loggers, share):
            children.append(
                Child(args, first, configs[first : first + share], "http://127.0.0.1:9")
            )
        for child in children:
            child.send("open", keys=child.keys, sync_jitter=True, backoff_jitter=True)
        for child in children:
            child.expect("opened")
        sampler = Sampler(engine)
        go = time.monotonic() + 0.5
        for child in children:
            child.send("go", at=go)
        for child in children:
            child.expect("started")
        steady_from = go + args.syncperiod
        outage_at = steady_from + args.steady * args.syncperiod
        time.sleep(max(0.0, outage_at - time.monotonic()))
        sampler.paused.set()
        engine.stop()
        time.sleep(args.outage)
        engine.restart()
        back = time.monotonic()
        sampler.paused.clear()
        for child in children:
            child.send("drain", deadline=DRAIN_LIMIT)
        drained = [child.expect("drained", DRAIN_LIMIT + 30)["drained"] for child in children]
        time.sleep(max(0.0, back + args.after - time.monotonic()))
        for child in children:
            child.send("stop")
        finals = [(child, child.expect("inserted")) for child in children]
        sampler.stop()
        inserted, held = check(engine, finals, name)
        steady = sampler.rates(steady_from, args.steady * args.syncperiod, 1)
        after = sampler.rates(back, args.after, 1)
        result: dict[str, Any] = {
            "name": name,
            "inserted": inserted,
            "held": held,
            "duplicates": held - inserted,
            "steady": sum(steady) / len(steady),
            "peak": max(after),
            "drain": None if None in drained else max(drained) - back,
        }
        if engine.requests() is not None:
            tx_steady = sampler.rates(steady_from, args.steady * args.syncperiod, 2)
            result["tx_steady"] = sum(tx_steady) / len(tx_steady)
            result["tx_peak"] = max(sampler.rates(back, args.after, 2))
        return result
    finally:
        for child in children:
            child.exit()
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)


def check(engine: Engine, finals: list[tuple[Child, dict[str, Any]]], name: str) -> tuple[int, int]:
    """The server holds every datapoint inserted, each once, and every cache is empty."""
    counts = engine.per_device()
    problems = []
    inserted = 0
    for child, final in finals:
        for offset, (count, rest) in enumerate(zip(final["inserted"], final["left"], strict=True)):
            device = f"d{child.first + offset:03d}"
            inserted += count
            if counts.get(device, 0) != count or rest:
                held = counts.get(device, 0)
                problems.append(f"{device}: {count} inserted, {held} held, {rest} cached")
    if problems:
        raise SystemExit(f"FAILED: {name}: " + "; ".join(problems[:10]))
    return inserted, sum(counts.values())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", default="nats,postgres")
    parser.add_argument("--loggers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--syncperiod", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--steady", type=int, default=4)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument("--durability", default="normal", choices=["full", "batched", "normal"])
    args = parser.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        parser.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    if not 1 <= args.processes <= args.loggers:
        parser.error("need 1 <= --processes <= --loggers")
    # The rates are per second between samples taken each second: a window needs two.
    if args.steady * args.syncperiod < 2 or args.after < 2:
        parser.error(
            "need --steady x --syncperiod >= 2 s and --after >= 2 s (rates need two samples)"
        )
    return args


def main() -> None:
    args = parse()
    started = time.perf_counter()
    results = []
    for name in args.engines:
        results.append(run_engine(name, args))
        print(f"{name}: {results[-1]}", file=sys.stderr)
    print(
        f"fleet into engines: {args.loggers} Loggers in {args.processes} processes, one cache "
        f"each (durability={args.durability}), one number stream at {args.rate:g} datapoint/s "
        f"each, syncing every {args.syncperiod:g} s (defaults: sync_jitter, backoff with full "
        f"jitter), a {args.outage:g} s outage; one run ({time.perf_counter() - started:.0f} s) "
        f"on {os.uname().machine}, {os.cpu_count()} cores"
    )
    print()
    print(
        "| engine | inserted | held on the server | duplicates | steady: datapoints stored/s "
        f"| after the outage: peak stored/s (first {args.after:g} s) | peak / steady "
        "| requests: steady / peak per s | drained in |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        requests = "one publish per datapoint"
        if "tx_steady" in r:
            times = f"{r['tx_peak'] / r['tx_steady']:.1f}x" if r["tx_steady"] else "n/a"
            requests = f"{r['tx_steady']:.1f} / {r['tx_peak']:.0f} transactions ({times})"
        drain = f"{r['drain']:.1f} s" if r["drain"] is not None else f"> {DRAIN_LIMIT:.0f} s"
        ratio = f"{r['peak'] / r['steady']:.1f}x" if r["steady"] else "n/a (nothing stored)"
        print(
            f"| {r['name']} | {r['inserted']:,} | {r['held']:,} | {r['duplicates']} | "
            f"{r['steady']:.1f} | {r['peak']:.0f} | {ratio} | {requests} | {drain} |"
        )


if __name__ == "__main__":
    main()
