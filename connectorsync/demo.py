"""The demo: the temperature logger of ConnectorDB's "Logging data" guide, made real.

A simulated sensor is read every few hundred milliseconds and a background syncer delivers
the readings. The ConnectorDB server (an embedded test server on 127.0.0.1) goes away for a
while: readings keep being cached on disk, and the syncer delivers them when it comes back.
Runs by itself in a few seconds: ``make demo``, ``connectorsync demo`` or
``python examples/temperature_logger.py``.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from pathlib import Path

from connectorsync import Logger
from connectorsync.testing import ConnectorDBServer


def get_temperature(step: int) -> float:
    """A pretend sensor: a slow daily swing plus a little noise."""
    return round(21.0 + 3.0 * math.sin(step / 5) + random.uniform(-0.2, 0.2), 2)


def main() -> int:
    """Run the demo; returns 0 when every reading reached the server."""
    workdir = Path(tempfile.mkdtemp(prefix="connectorsync-demo-"))
    server = ConnectorDBServer(path=str(workdir / "server.db")).start()
    apikey = server.add_device("demo", "thermometer")
    print(f"ConnectorDB test server at {server.url}, device demo/thermometer")

    def initlogger(logger: Logger) -> None:
        # Runs once, when the cache file is created; the settings are kept in the file.
        logger.apikey = apikey
        logger.serverurl = server.url
        logger.addStream("temperature", {"type": "number"})  # works offline too
        logger.syncperiod = 1  # seconds; an hour is more usual on a device

    logger = Logger(str(workdir / "cache.db"), on_create=initlogger)
    logger.start()  # sync in the background; returns at once
    step = 0

    def read_sensor(count: int) -> None:
        nonlocal step
        for _ in range(count):
            value = get_temperature(step)
            logger.insert("temperature", value)  # on disk when this returns
            step += 1
            print(f"  insert {value:5.2f} °C   waiting in the cache: {len(logger)}")
            time.sleep(0.3)

    def wait_until_delivered(limit: float = 15.0) -> None:
        deadline = time.monotonic() + limit
        while len(logger) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"  background sync delivered everything: {len(logger)} waiting")

    print("\n1. Server up: readings go out in the background")
    read_sensor(3)
    wait_until_delivered()

    print("\n2. Network down: readings are kept on disk, the syncer retries with backoff")
    server.stop()
    read_sensor(5)
    status = logger.status()
    print(f"  last error: {status.last_error}")
    print(f"  nothing lost: {len(logger)} datapoints wait in the cache")

    print("\n3. Network back: the next attempt delivers the backlog")
    server.start()
    wait_until_delivered()

    stored = server.datapoints("demo/thermometer/temperature")
    print(f"\nThe server holds {len(stored)} datapoints, in order:")
    print("  " + ", ".join(f"{p['d']:.2f}" for p in stored))
    logger.close()
    server.stop()
    shutil.rmtree(workdir)
    if len(stored) != step:
        print(f"expected {step} datapoints on the server")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
