"""A sensor on a serial port, logged with SerialSource (see docs/serial.rst).

Without arguments it needs no hardware: it opens a pseudo-terminal, plays a sensor on it
that prints a banner and then a JSON reading four times a second, and logs three seconds of
it into a temporary cache::

    python examples/serial_sensor.py

With a real device it reads until Ctrl-C, into ``serial_sensor.db``::

    python examples/serial_sensor.py --port /dev/ttyUSB0 --baudrate 115200

The device should print lines like ``{"temperature": 21.3, "humidity": 45}`` (or bare
numbers, with ``--stream NAME``). Lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
import tty
from typing import Any

from connectorsync import Logger
from connectorsync.sources import SerialSource, parse_line

READINGS = 12  # what the fake sensor sends...
PERIOD = 0.25  # ...one every this many seconds: three seconds in all
DEADLINE = 8.0  # give up (exit 1) if they have not all arrived by then


def parse(line: str) -> Any:
    """Skip the sensor's comments (its banner); the rest is numbers or JSON objects."""
    if line.startswith("#"):
        return None
    return parse_line(line)


def fake_sensor(fd: int, stop: threading.Event) -> None:
    """Write a banner, then READINGS JSON readings to the pty master ``fd``."""
    os.write(fd, b"# fake sensor v1.0 ready\r\n")
    for i in range(READINGS):
        if stop.wait(PERIOD):
            return
        line = f'{{"temperature": {21.0 + i / 10:.1f}, "humidity": {45 + i % 3}}}\r\n'
        os.write(fd, line.encode())


def report(logger: Logger, source: SerialSource) -> None:
    for name, stats in sorted(logger.status().streams.items()):
        latest = logger.latest(name)
        print(f"{name}: {stats.cached} datapoints, latest {latest and latest['d']}")
    print("source:", " ".join(f"{key}={value}" for key, value in source.stats().items()))


def demo() -> int:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no newline translation: a plain serial line
    stop = threading.Event()
    sensor = threading.Thread(target=fake_sensor, args=(master, stop), name="fake-sensor")
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            Logger(os.path.join(tmp, "cache.db"), durability="normal") as logger,
        ):
            logger.add_stream("temperature", {"type": "number"})
            logger.add_stream("humidity", {"type": "number", "minimum": 0, "maximum": 100})
            with SerialSource(logger, os.ttyname(slave), 9600, parse=parse) as source:
                # pyserial empties the input when it opens the port: start the sensor once
                # it is open, or its first lines would be lost.
                deadline = time.monotonic() + DEADLINE
                while not source.connected and time.monotonic() < deadline:
                    time.sleep(0.01)
                sensor.start()
                print(f"A fake sensor sends {READINGS} readings, {1 / PERIOD:g} a second...")
                while source.inserted < 2 * READINGS and time.monotonic() < deadline:
                    time.sleep(0.05)
            report(logger, source)
            complete = source.inserted == 2 * READINGS
    finally:
        stop.set()
        if sensor.is_alive():
            sensor.join()
        os.close(master)
        os.close(slave)
    if not complete:
        print(f"only {source.inserted} of {2 * READINGS} datapoints arrived", file=sys.stderr)
        return 1
    return 0


def read_device(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with Logger(args.cache) as logger:
        for name in args.streams.split(","):
            logger.add_stream(name, {"type": "number"})
        if args.stream and args.stream not in logger:
            logger.add_stream(args.stream, {"type": "number"})
        source = SerialSource(
            logger, args.port, args.baudrate, parse=parse, stream=args.stream or None
        )
        print(f"Reading {args.port} at {args.baudrate} baud into {args.cache}; Ctrl-C to stop")
        with source:
            try:
                while True:
                    time.sleep(5)
                    print(source)
            except KeyboardInterrupt:
                pass
        report(logger, source)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", help="a serial device or pyserial URL (default: a fake one)")
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--cache", default="serial_sensor.db", help="with --port")
    parser.add_argument(
        "--streams", default="temperature,humidity", help="the JSON keys, comma-separated"
    )
    parser.add_argument("--stream", default="", help="the stream for lines that are a number")
    args = parser.parse_args(argv)
    return read_device(args) if args.port else demo()


if __name__ == "__main__":
    raise SystemExit(main())
