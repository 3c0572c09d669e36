"""The cost of sealing at rest (issue 19, point 3), for ``bench_full.py``.

:func:`measure` returns ``(what, sealed rate, plain rate)`` for:

- ``insert()`` one at a time with ``durability="normal"`` (inserts per second), and
- the drain rate of a cached backlog to a loopback ConnectorDB server
  (``python -m connectorsync serve`` in its own process; datapoints per second, the cache
  filled first, then ``sync()`` until it is empty, checked).

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

from bench_sync import Server  # noqa: E402  (the test server in its own process)

from connectorsync import Logger  # noqa: E402

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


def _drain_rate(workdir: str, server: Server, sealed: bool, count: int, stream: str) -> float:
    path = os.path.join(workdir, f"drain-{sealed}-{time.time_ns()}.db")

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey
        lg.serverurl = server.url
        lg.add_stream(stream, {"type": "number"})

    with Logger(path, on_create=init, durability="normal", **_options(sealed)) as lg:  # type: ignore[arg-type]
        t0 = time.time() - count
        for start in range(0, count, 10_000):
            chunk = range(start, min(count, start + 10_000))
            lg.insert_many(stream, [{"t": t0 + i, "d": 20.0 + i % 10} for i in chunk])
        begin = time.perf_counter()
        while len(lg):
            report = lg.sync()
            if report.errors:
                raise SystemExit(f"FAILED: the drain failed: {report.errors}")
        return count / (time.perf_counter() - begin)


def measure(quick: bool) -> list[tuple[str, float, float]]:
    """``(what, sealed rate, plain rate)`` for inserts (normal) and the drain."""
    rounds = 3 if quick else 5
    seconds = 0.5 if quick else 2.0
    backlog = 10_000 if quick else 100_000
    inserts: dict[bool, list[float]] = {True: [], False: []}
    drains: dict[bool, list[float]] = {True: [], False: []}
    server = Server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-seal-") as workdir:
            for n in range(rounds):
                for sealed in (n % 2 == 0, n % 2 != 0):  # who goes first alternates
                    inserts[sealed].append(_insert_rate(workdir, sealed, seconds))
                    stream = f"s{n}{'k' if sealed else 'p'}"
                    drains[sealed].append(_drain_rate(workdir, server, sealed, backlog, stream))
    finally:
        server.stop()
    return [
        (
            'insert() one at a time, durability="normal" (inserts/s)',
            statistics.median(inserts[True]),
            statistics.median(inserts[False]),
        ),
        (
            f"drain of a {backlog:,}-datapoint backlog to a loopback ConnectorDB (datapoints/s)",
            statistics.median(drains[True]),
            statistics.median(drains[False]),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("| what | sealed | plain | sealed / plain |")
    print("|---|---|---|---|")
    for what, sealed, plain in measure(args.quick):
        print(f"| {what} | {sealed:,.0f} | {plain:,.0f} | {sealed / plain:.2f} |")


if __name__ == "__main__":
    main()
