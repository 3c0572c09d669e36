"""NATS JetStream publish speed of connectorsync against a plain nats-py loop, from ONE run.

A backlog of N datapoints of one number stream waits in a cache file (``durability="normal"``)
and one ``Logger.sync()`` drains it through a :class:`NATSRemote` (one message per datapoint,
each with its ``Nats-Msg-Id``, ``window`` publishes awaiting their acknowledgement) into a
local nats-server with JetStream (:class:`connectorsync.testing.nats.NATSServer`, its own
process on 127.0.0.1, file storage). The ceiling: a plain nats-py client publishing the
very same payloads and message ids to the same subject with ``js.publish_async`` and the same
window (``publish_async_max_pending``), until JetStream acknowledged the last one; no cache
behind it. Each side publishes into a stream of its own, fresh for each round. The two run
``--rounds`` times (3), alternating; the median counts.

Targets (issue 18): connectorsync >= 0.7x the plain loop, and >= 10,000 datapoints/s.

Usage: python tests/benchmarks/bench_nats.py [--count N] [--rounds R] [--window W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

import nats  # noqa: E402

from connectorsync import Logger, NATSRemote  # noqa: E402
from connectorsync.testing.nats import NATSServer, find_nats_server  # noqa: E402

T0 = 1_700_000_000.0


def values(count: int) -> list[dict[str, float]]:
    return [{"t": T0 + i / 1000, "d": 20.0 + i % 10} for i in range(count)]


def connectorsync_round(
    server: NATSServer, directory: str, count: int, window: int, n: int
) -> float:
    stream = f"OURS{n}"
    server.add_stream(stream, [f"ours{n}.>"])
    path = os.path.join(directory, f"cache{n}.db")
    remote = NATSRemote(server.url, subject=f"ours{n}.{{stream}}", window=window, timeout=30)
    lg = Logger(path, remote=remote, durability="normal", batch_size=5000,
                on_create=lambda lg: lg.add_stream("temperature", {"type": "number"}))  # fmt: skip
    lg.insert_many("temperature", values(count))
    remote.ping()  # connected before the clock starts, as the plain client is
    start = time.perf_counter()
    report = lg.sync()
    elapsed = time.perf_counter() - start
    assert report.ok and report.sent == {"temperature": count}, report
    assert len(lg) == 0
    lg.close()
    remote.close()
    assert server.count(stream) == count
    return count / elapsed


def plain_round(server: NATSServer, count: int, window: int, n: int) -> float:
    stream = f"PLAIN{n}"
    server.add_stream(stream, [f"plain{n}.>"])
    subject = f"plain{n}.temperature"
    name = json.dumps("temperature")
    messages = [
        (
            f"{'0' * 32}:temperature:{i + 1}",
            f'{{"stream":{name},"id":{i + 1},"t":{p["t"]!r},"d":{p["d"]!r}}}'.encode(),
        )
        for i, p in enumerate(values(count))
    ]

    async def publish() -> float:
        nc = await nats.connect(server.url)
        js = nc.jetstream(publish_async_max_pending=window)
        start = time.perf_counter()
        futures = [
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            for msg_id, payload in messages
        ]
        await js.publish_async_completed()
        elapsed = time.perf_counter() - start
        assert all(f.done() and f.exception() is None for f in futures)
        await nc.close()
        return elapsed

    elapsed = asyncio.run(publish())
    assert server.count(stream) == count
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    if find_nats_server() is None:
        sys.exit("nats-server is not installed: apt-get install nats-server")
    with tempfile.TemporaryDirectory() as directory:
        server = NATSServer(os.path.join(directory, "nats")).start()
        try:
            ours, plain = [], []
            for n in range(args.rounds):
                ours.append(connectorsync_round(server, directory, args.count, args.window, n))
                plain.append(plain_round(server, args.count, args.window, n))
        finally:
            server.stop()
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"NATS JetStream, {args.count} datapoints, window {args.window}, "
          f"median of {args.rounds}:")  # fmt: skip
    print(f"  connectorsync Logger.sync() -> NATSRemote: {a:10,.0f} datapoints/s")
    print(f"  plain nats-py js.publish_async loop:       {b:10,.0f} datapoints/s")
    print(f"  ratio: {a / b:.2f}x (target >= 0.7x); "
          f"{'meets' if a >= 10_000 else 'misses'} >= 10,000 datapoints/s")  # fmt: skip


if __name__ == "__main__":
    main()
