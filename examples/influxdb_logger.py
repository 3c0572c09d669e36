"""A climate logger that syncs to InfluxDB (see docs/remotes.rst), through an outage.

Without arguments it starts an influxd of its own on 127.0.0.1 in a temporary directory
(Debian's package ``influxdb`` provides it), logs a few readings, stops the server while
logging more, and shows that every reading arrives once it is back::

    python examples/influxdb_logger.py

Against your own InfluxDB 1.x, logging one reading every 10 s until Ctrl-C::

    python examples/influxdb_logger.py --url http://localhost:8086 --database sensors

Each reading is an object, so InfluxDB gets one field per key (``temperature``,
``humidity``) in the measurement ``climate``, tagged ``site=example``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import sys
import tempfile
import time

from connectorsync import InfluxDBRemote, Logger
from connectorsync.testing.influx import InfluxDBServer, find_influxd

SCHEMA = {
    "type": "object",
    "properties": {"temperature": {"type": "number"}, "humidity": {"type": "number"}},
    "required": ["temperature", "humidity"],
}


def reading(i: int) -> dict[str, float]:
    """A made-up reading: a slow daily wave."""
    return {
        "temperature": round(20.0 + 3 * math.sin(i / 10), 2),
        "humidity": round(50.0 + 5 * math.cos(i / 10), 1),
    }


def log_forever(url: str, database: str, cache: str) -> None:
    remote = InfluxDBRemote(url, database, tags={"site": "example"}, create_database=True)
    with Logger(cache, remote=remote, syncperiod=30) as lg:
        if "climate" not in lg:
            lg.add_stream("climate", SCHEMA)
        lg.start()
        i = 0
        try:
            while True:
                lg.insert("climate", reading(i))
                i += 1
                time.sleep(10)
        except KeyboardInterrupt:
            print(f"stopping; {len(lg)} readings wait in {cache}")
    remote.close()


def demo(workdir: str) -> int:
    if find_influxd() is None:
        print("influxd (InfluxDB 1.x) is not installed: apt-get install influxdb", file=sys.stderr)
        return 2
    with InfluxDBServer(os.path.join(workdir, "influxd")) as server:
        remote = InfluxDBRemote(
            server.url, "sensors", tags={"site": "example"}, create_database=True, timeout=5
        )
        cache = os.path.join(workdir, "climate.db")
        with Logger(cache, remote=remote) as lg:
            lg.add_stream("climate", SCHEMA)
            for i in range(3):
                lg.insert("climate", reading(i))
            print(f"sync: {lg.sync().sent}")

            server.stop()
            for i in range(3, 6):
                lg.insert("climate", reading(i))
            report = lg.sync()
            print(f"influxd stopped; sync failed ({report.errors['*']}); {len(lg)} readings wait")

            server.start()
            print(f"influxd is back; sync: {lg.sync().sent}; {len(lg)} readings wait")
        remote.close()
        rows = server.points("climate", "sensors")
        print(f"influxd holds {len(rows)} points of 'climate':")
        for row in rows:
            when = datetime.datetime.fromtimestamp(row["time"] / 1e9, datetime.timezone.utc)
            climate = f"{row['temperature']} °C  {row['humidity']} %"
            print(f"  {when:%H:%M:%S.%f} UTC  site={row['site']}  {climate}")
        return 0 if len(rows) == 6 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="your InfluxDB 1.x, e.g. http://localhost:8086")
    parser.add_argument("--database", default="sensors")
    parser.add_argument("--cache", default="climate.db")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the outage is expected: no warnings about it
    if args.url:
        log_forever(args.url, args.database, args.cache)
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        return demo(workdir)


if __name__ == "__main__":
    sys.exit(main())
