"""The temperature logger of ConnectorDB's "Logging data" guide, made real.

A simulated sensor is read every few hundred milliseconds. The ConnectorDB server (an
embedded test server on 127.0.0.1) goes away for a while: readings keep being cached on disk,
and are delivered when it comes back. Runs by itself in a few seconds: ``make demo``.
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


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="connectorsync-demo-"))
    server = ConnectorDBServer(path=str(workdir / "server.db")).start()
    apikey = server.add_device("demo", "thermometer")
    print(f"ConnectorDB test server at {server.url}, device demo/thermometer")

    def initlogger(logger: Logger) -> None:
        # Runs once, when the cache file is created; the settings are kept in the file.
        logger.apikey = apikey
        logger.serverurl = server.url
        logger.addStream("temperature", {"type": "number"})  # works offline too
        logger.syncperiod = 60 * 60

    logger = Logger(str(workdir / "cache.db"), on_create=initlogger)
    step = 0

    def read_sensor(count: int) -> None:
        nonlocal step
        for _ in range(count):
            value = get_temperature(step)
            logger.insert("temperature", value)  # on disk when this returns
            step += 1
            print(f"  insert {value:5.2f} °C   cached: {len(logger)}")
            time.sleep(0.2)

    print("\n1. Server up: read the sensor, then sync")
    read_sensor(3)
    report = logger.sync()
    print(f"  sync: sent {report.sent}; cached now {len(logger)}")

    print("\n2. Network down: readings are cached on disk")
    server.stop()
    read_sensor(5)
    report = logger.sync()
    print(f"  sync failed: {next(iter(report.errors.values()))}")
    print(f"  nothing lost: {len(logger)} datapoints wait in the cache")

    print("\n3. Network back: the backlog is delivered")
    server.start()
    report = logger.sync()
    print(f"  sync: sent {report.sent}; cached now {len(logger)}")

    stored = server.datapoints("demo/thermometer/temperature")
    print(f"\nThe server holds {len(stored)} datapoints, in order:")
    print("  " + ", ".join(f"{p['d']:.2f}" for p in stored))
    assert len(stored) == step and len(logger) == 0
    logger.close()
    server.stop()
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
