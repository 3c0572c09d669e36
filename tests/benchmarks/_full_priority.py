"""The cost of priorities in sending, for ``bench_full.py`` (issue 19): :func:`measure`.

Into a loopback ConnectorDB server (:class:`connectorsync.testing.ConnectorDBServer`, in this
process, data in memory), from cache files built with ``insert_many`` (``durability="normal"``):

- **drain rate**: one ``Logger.sync()`` of a backlog spread over 10 number streams, their
  priorities mixed (0, 0, 0, 1, 1, 3, 5, 5, 9, 9), against the same backlog with every
  priority 0; datapoints per second, the median of ``rounds`` runs, the two taking turns
  to go first;
- **alarm latency**: a backlog over 10 streams, one of them an alarm stream of priority 9
  ("with") or 0 ("without") and 9 of priority 0, each with a tenth of it, drains in
  background passes of ``syncperiod`` 0.5 s; when a quarter of it is gone, one datapoint is
  inserted into the alarm stream; its latency is from the insert (``time.monotonic()``) to
  the arrival at the server of the request that carries it (the alarm stream's last one: a
  ConnectorDB stream takes its datapoints in order), in milliseconds (lower is better), the
  median of ``rounds`` runs. The alarm has a backlog of its own, as after an outage: with
  priority 9 it went first and the new datapoint waits for the next pass at most; at
  priority 0 it waits behind three quarters of the alarm's backlog, taking turns with the
  others.

Each run checks that the server got every datapoint and the cache is empty, else it fails.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from connectorsync import Logger  # noqa: E402
from connectorsync.testing import ConnectorDBServer  # noqa: E402

MIXED = (0, 0, 0, 1, 1, 3, 5, 5, 9, 9)
T0 = 1_600_000_000.0
CHUNK = 50_000


def measure(quick: bool) -> list[tuple[str, float, float]]:
    """``(what, with priorities, without)``: the drain rate in datapoints/s, and the alarm's
    latency in ms (see the module docstring)."""
    count = 30_000 if quick else 500_000
    rounds = 1 if quick else 3
    server = ConnectorDBServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-priority-") as directory:
            rates: dict[bool, list[float]] = {True: [], False: []}
            latencies: dict[bool, list[float]] = {True: [], False: []}
            for k in range(rounds):
                for mixed in (True, False) if k % 2 == 0 else (False, True):
                    rates[mixed].append(_drain(server, directory, count, mixed, k))
                for first in (True, False) if k % 2 == 0 else (False, True):
                    latencies[first].append(_alarm_latency(server, directory, count, first, k))
    finally:
        server.stop()
    streams = len(MIXED)
    return [
        (
            f"drain rate, {count:,} datapoints over {streams} streams (datapoints/s)",
            statistics.median(rates[True]),
            statistics.median(rates[False]),
        ),
        (
            f"alarm latency during a drain of {count:,} (ms, lower is better)",
            statistics.median(latencies[True]),
            statistics.median(latencies[False]),
        ),
    ]


def _fill(path: str, names: list[str], priorities: list[int], count: int) -> None:
    """``count`` datapoints spread over the streams ``names``, 1 ms apart in each."""
    each = count // len(names)
    with Logger(path, durability="normal") as lg:
        for name, priority in zip(names, priorities, strict=True):
            lg.addStream_force(name, {"type": "number"}, priority=priority)
            for start in range(0, each, CHUNK):
                size = min(CHUNK, each - start)
                points = [{"t": T0 + (start + i) * 1e-3, "d": 20.0} for i in range(size)]
                lg.insert_many(name, points)


def _device(server: ConnectorDBServer, tag: str) -> tuple[str, str]:
    device = f"d{tag}"
    return device, server.add_device("bench", device)


def _drain(server: ConnectorDBServer, directory: str, count: int, mixed: bool, k: int) -> float:
    device, apikey = _device(server, f"drain{k}{'m' if mixed else 'z'}")
    path = os.path.join(directory, f"{device}.db")
    names = [f"s{i}" for i in range(len(MIXED))]
    _fill(path, names, list(MIXED) if mixed else [0] * len(MIXED), count)
    each = count // len(names)
    with Logger(path, apikey=apikey, serverurl=server.url, durability="normal") as lg:
        began = time.perf_counter()
        report = lg.sync()
        took = time.perf_counter() - began
        _check(report.ok and len(lg) == 0, f"the drain left {len(lg)}: {report.message}")
    for name in names:
        got = len(server.datapoints(f"bench/{device}/{name}"))
        _check(got == each, f"the server holds {got} of {name}'s {each}")
    os.remove(path)
    return each * len(names) / took


def _alarm_latency(
    server: ConnectorDBServer, directory: str, count: int, first: bool, k: int
) -> float:
    device, apikey = _device(server, f"alarm{k}{'p' if first else 'z'}")
    path = os.path.join(directory, f"{device}.db")
    names = [f"s{i}" for i in range(len(MIXED) - 1)] + ["alarm"]
    _fill(path, names, [0] * (len(names) - 1) + [9 if first else 0], count)
    alarm = ("POST", f"/api/v1/crud/bench/{device}/alarm/data")
    with Logger(path, apikey=apikey, serverurl=server.url, durability="normal") as lg:
        lg.syncperiod, lg.sync_jitter = 0.5, 0
        lg.start()
        _wait(lambda: len(lg) <= count * 3 // 4, "a quarter of the drain")
        inserted = time.monotonic()
        lg.insert("alarm", 1.0)
        _wait(lambda: len(lg) == 0, "the drain")
    newest = server.datapoints(f"bench/{device}/alarm")[-1]
    _check(newest["d"] == 1.0, f"the alarm stream's newest datapoint is {newest}")
    requests, times = server.requests, server.request_times()
    arrived = max(at for request, at in zip(requests, times, strict=True) if request == alarm)
    os.remove(path)
    return (arrived - inserted) * 1000.0


def _wait(condition: Any, what: str, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        _check(time.monotonic() < end, f"timed out waiting for {what}")
        time.sleep(0.002)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"bench priority: {message}")


if __name__ == "__main__":
    for what, with_, without in measure(quick="--quick" in sys.argv):
        print(f"| {what} | {with_:,.1f} | {without:,.1f} | {with_ / without:.2f} |")
