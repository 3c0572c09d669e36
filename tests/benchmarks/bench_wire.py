"""Bytes on the wire per datapoint into InfluxDB, with and without gzip, from ONE run.

A backlog of N datapoints of one number stream waits in a cache file and ``Logger.sync()``
drains it, in batches of 5,000 (the default ``batch_size``), into a real InfluxDB 1.x
(``influxd``, started on 127.0.0.1 in a temporary directory) through an
``InfluxDBRemote`` with ``compression="gzip"`` (its default) and with ``compression=None``.
Between the two sits a loopback TCP proxy that counts every byte the client sent, so:

- **body**: request bodies, as counted by the remote and kept in the cache
  (``Logger.status().bytes_sent``: what ``connectorsync status`` shows);
- **wire**: everything the client sent on its TCP connections: bodies, request lines and
  headers of every request of the pass (``/ping`` included). Not TCP/IP framing.

Two data sets, both one number stream:

- ``steps``: bench_sync's backlog, ``20.0 + i % 10``, timestamps 1 ms apart (the issue's
  target: <= 6 bytes per datapoint with gzip);
- ``sensor``: a 1 Hz sensor, a random walk in steps of 0.01 with timestamps that wander by a
  millisecond (microsecond digits differ): closer to what a device sends, compresses less.

Afterwards influxd must hold exactly N points per run, else the script fails.

Usage: python tests/benchmarks/bench_wire.py [--count N]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

from connectorsync import InfluxDBRemote, Logger  # noqa: E402
from connectorsync.testing.influx import InfluxDBServer, find_influxd  # noqa: E402

TARGET_GZIP = 6.0  # bytes per datapoint, request bodies
T0 = 1_700_000_000.0


def steps(count: int) -> Iterator[dict[str, float]]:
    return ({"t": T0 + i * 0.001, "d": 20.0 + i % 10} for i in range(count))


def sensor(count: int) -> Iterator[dict[str, float]]:
    rng = random.Random(7)
    value = 20.0
    for i in range(count):
        value = round(value + rng.choice((-0.01, 0.0, 0.01)), 2)
        yield {"t": T0 + i + rng.random() / 1000, "d": value}


DATA = {"steps": steps, "sensor": sensor}


class CountingProxy:
    """127.0.0.1:``port`` -> ``target``: forwards both ways, counts what clients send."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def run(
    influxd: InfluxDBServer, workdir: str, data: str, compression: str | None, count: int
) -> tuple[int, int, float]:
    """Sync ``count`` datapoints; returns (body bytes, wire bytes, seconds of the sync)."""
    db = f"wire_{data}_{compression or 'plain'}"
    influxd.create_database(db)
    proxy = CountingProxy(("127.0.0.1", influxd.port))
    remote = InfluxDBRemote(f"http://127.0.0.1:{proxy.port}", db, compression=compression)
    path = os.path.join(workdir, f"{db}.db")
    try:
        with Logger(path, remote=remote, durability="normal", batch_size=5000) as lg:
            lg.addStream("temperature", {"type": "number"})
            lg.insert_many("temperature", list(DATA[data](count)))
            start = time.perf_counter()
            report = lg.sync()
            seconds = time.perf_counter() - start
            assert report.ok and report.sent == {"temperature": count}, report
            body = lg.status().bytes_sent["temperature"]
        wire = proxy.sent
    finally:
        remote.close()
        proxy.close()
    stored = influxd.query("SELECT count(value) FROM temperature", db)
    stored_count = stored["results"][0]["series"][0]["values"][0][1]
    assert stored_count == count, f"influxd holds {stored_count} of {count} points"
    return body, wire, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    if find_influxd() is None:
        print("influxd (InfluxDB 1.x) is not installed: apt-get install influxdb")
        return 2
    count = args.count
    print(f"{count:,} datapoints of one number stream, batches of 5,000, into influxd")
    print(f"{'data':8} {'compression':12} {'body B/pt':>10} {'wire B/pt':>10} {'sync s':>8}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_wire_") as workdir:
        influxd = InfluxDBServer(os.path.join(workdir, "influxd")).start()
        try:
            for data in DATA:
                figures = {}
                for compression in ("gzip", None):
                    body, wire, seconds = run(influxd, workdir, data, compression, count)
                    figures[compression] = body
                    print(
                        f"{data:8} {compression or 'none':12} {body / count:10.2f} "
                        f"{wire / count:10.2f} {seconds:8.2f}"
                    )
                print(f"{'':8} gzip is {figures[None] / figures['gzip']:.1f}x smaller")
                if data == "steps" and figures["gzip"] / count > TARGET_GZIP:
                    ok = False
        finally:
            influxd.stop()
    verdict = "met" if ok else "MISSED"
    print(f"target: <= {TARGET_GZIP:g} body bytes per datapoint with gzip (steps): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
