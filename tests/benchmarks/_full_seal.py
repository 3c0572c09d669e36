"""The cost of sealing at rest (issue 19, point 3), for ``bench_full.py``.

:func:`measure` returns ``(what, sealed rate, plain rate)`` for:

- ``insert()`` one at a time with ``durability="normal"`` (inserts per second), and
- the drain rate of a cached backlog to a loopback ConnectorDB server
  (``python -m connectorsync serve`` in its own process; datapoints per second, the cache
  filled first, then ``sync()`` until it is empty, checked), twice: on loopback as it is,
  where the client's CPU is the limit, and with each batch's round trip taking
  ``--latency`` seconds more (20 ms), as across a network
  (``bench_fanout.DistantRemote``: waited as a socket waits, without the GIL).

On loopback a sealed drain pays for opening every value on the client's one core (the
GIL): AES-GCM through ``cryptography`` costs a fixed ~0.7-1 us a call, however small the
value, against ~3-4 us for everything else a plain drain does per datapoint. The script
prints that floor (``open one value``) beside the ratios. Across a network the opening
happens while a batch is on the wire (the read-ahead, ``delivery.py``) and costs nothing.

Sealed and plain runs alternate, round after round, and each rate is the median of its
rounds, so that another process on the machine weighs on both alike. The target (issue 19):
sealed at least 0.85 of plain on both.

Run alone: ``python tests/benchmarks/_full_seal.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_fanout import DistantRemote  # noqa: E402
from bench_sync import Server  # noqa: E402  (the test server in its own process)

from connectorsync import ConnectorDBRemote, Logger  # noqa: E402
from connectorsync.cache.seal import READING, Sealer  # noqa: E402

KEY = bytes(range(32))


def _options(sealed: bool) -> dict[str, object]:
    return {"key": KEY} if sealed else {}


def _insert_rate(workdir: str, sealed: bool, seconds: float) -> float:
    path = os.path.join(workdir, f"insert-{sealed}-{time.time_ns()}.db")
    with Logger(path, durability="normal", **_options(sealed)) as lg:  # type: ignore[arg-type]
        lg.add_stream("temperature", {"type": "number"})
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(50):
                lg.insert("temperature", 20.0 + count % 10)
                count += 1
            now = time.perf_counter()
            if now >= deadline:
                return count / (now - start)


def _drain_rate(
    workdir: str, server: Server, sealed: bool, count: int, stream: str, latency: float
) -> tuple[float, float]:
    """Datapoints per second, and this process's CPU nanoseconds per datapoint (the server
    runs in its own)."""
    path = os.path.join(workdir, f"drain-{sealed}-{time.time_ns()}.db")
    remote = (
        DistantRemote(server.url, server.apikey, latency)
        if latency
        else ConnectorDBRemote(server.url, server.apikey)
    )
    with Logger(path, remote=remote, durability="normal", **_options(sealed)) as lg:  # type: ignore[arg-type]
        lg.add_stream(stream, {"type": "number"})
        t0 = time.time() - count
        for start in range(0, count, 10_000):
            chunk = range(start, min(count, start + 10_000))
            lg.insert_many(stream, [{"t": t0 + i, "d": 20.0 + i % 10} for i in chunk])
        begin, cpu = time.perf_counter(), time.process_time()
        while len(lg):
            report = lg.sync()
            if report.errors:
                raise SystemExit(f"FAILED: the drain failed: {report.errors}")
        rate = count / (time.perf_counter() - begin)
        cpu_ns = (time.process_time() - cpu) / count * 1e9
    if server.length(stream) != count:
        raise SystemExit(f"FAILED: the server holds {server.length(stream)} of {count}")
    return rate, cpu_ns


def open_cost() -> float:
    """Nanoseconds to open one sealed 4-byte value, a batch of 5,000 in one go (the drain's
    way), the median of 5 batches."""
    sealer = Sealer({1: KEY}, 1)
    rows = [(i, float(i), sealer.seal(READING, "s", "20.5")) for i in range(5000)]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        sealer.open_rows(READING, "s", rows)
        times.append((time.perf_counter() - start) / len(rows) * 1e9)
    return statistics.median(times)


def measure(quick: bool, latency: float = 0.02) -> list[tuple[str, float, float]]:
    """``(what, sealed, plain)`` for inserts (normal), the drain on loopback and across a
    ``latency`` link, and the client's CPU per datapoint of opening against all of a drain."""
    rounds = 3 if quick else 5
    seconds = 0.5 if quick else 2.0
    backlog = 10_000 if quick else 100_000
    inserts: dict[bool, list[float]] = {True: [], False: []}
    drains: dict[tuple[bool, float], list[float]] = {}
    cpu: list[float] = []
    server = Server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-seal-") as workdir:
            for n in range(rounds):
                for sealed in (n % 2 == 0, n % 2 != 0):  # who goes first alternates
                    inserts[sealed].append(_insert_rate(workdir, sealed, seconds))
                    for link in (0.0, latency):
                        stream = f"s{n}{'k' if sealed else 'p'}{link * 1000:g}"
                        rate, cpu_ns = _drain_rate(workdir, server, sealed, backlog, stream, link)
                        drains.setdefault((sealed, link), []).append(rate)
                        if not sealed and not link:
                            cpu.append(cpu_ns)
    finally:
        server.stop()
    return [
        (
            'insert() one at a time, durability="normal" (inserts/s)',
            statistics.median(inserts[True]),
            statistics.median(inserts[False]),
        ),
        (
            f"drain of a {backlog:,}-datapoint backlog to a ConnectorDB on loopback (datapoints/s)",
            statistics.median(drains[True, 0.0]),
            statistics.median(drains[False, 0.0]),
        ),
        (
            f"the same, each batch's round trip {latency * 1000:g} ms longer (datapoints/s)",
            statistics.median(drains[True, latency]),
            statistics.median(drains[False, latency]),
        ),
        (
            "client CPU per datapoint (ns): opening one sealed value vs all of a plain drain "
            "on loopback",
            open_cost(),
            statistics.median(cpu),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds (0.02)")
    args = parser.parse_args()
    print("| what | sealed | plain | sealed / plain |")
    print("|---|---|---|---|")
    for what, sealed, plain in measure(args.quick, args.latency):
        print(f"| {what} | {sealed:,.0f} | {plain:,.0f} | {sealed / plain:.2f} |")


if __name__ == "__main__":
    main()
