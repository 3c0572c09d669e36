"""A sensor logged by a long-running service under systemd (see docs/deployment.rst).

Without arguments it needs nothing: it starts a loopback test server, logs a simulated sensor
for two seconds into a temporary cache, then stops on SIGTERM the way systemd stops it, and
shows that nothing was lost::

    python examples/sensor_service.py

On a device, systemd runs it (examples/systemd/connectorsync-sensor.service)::

    sensor_service.py --serverurl https://connectordb.example.com

It logs a reading every ``--period`` seconds into ``--cache`` (default: ``sensor.db`` in
``$STATE_DIRECTORY``, the directory systemd's ``StateDirectory=`` makes) until SIGTERM or
SIGINT. Then it closes the Logger, which makes one last sync within ``--close-timeout``
seconds (keep it below systemd's ``TimeoutStopSec``), and exits with 0. The apikey comes
from the file ``--apikey-file``, by default ``$CREDENTIALS_DIRECTORY/apikey`` (systemd's
``LoadCredential=``); it is stored in the cache, which only its owner can read.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import tempfile
import threading

from connectorsync import Logger

log = logging.getLogger("sensor_service")

STREAM = "temperature"
#: The signals that stop the service: systemd's stop, and Ctrl-C by hand.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
#: syslog priorities, for the journal (see JournalFormatter).
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def read_sensor(n: int) -> float:
    """The n-th reading of a simulated thermometer. Replace this with your sensor (a serial
    one: connectorsync.sources.SerialSource, docs/serial.rst)."""
    return round(20.0 + 2.0 * math.sin(n / 30) + random.uniform(-0.05, 0.05), 3)


class JournalFormatter(logging.Formatter):
    """Starts each line with its syslog priority (``<4>`` for a warning), which the journal
    reads from a service's stderr, so that ``journalctl -p warning`` finds warnings. The
    journal adds the time and the unit name itself."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITIES.get(record.levelno, 2)}>{super().format(record)}"


def configure_logging(level: int) -> None:
    """connectorsync's loggers (docs/logging.rst) and ours, on stderr: the journal, under
    systemd (which sets JOURNAL_STREAM then)."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(name)s: %(levelname)s: %(message)s"
    journal = "JOURNAL_STREAM" in os.environ
    handler.setFormatter(JournalFormatter(fmt) if journal else logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def read_apikey(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def open_logger(args: argparse.Namespace) -> Logger:
    """The Logger on the cache (created owner-only on the first start), with the settings of
    this start: a new apikey or server given to the unit takes effect at its next start."""
    logger = Logger(args.cache)
    try:
        for name, value in (
            ("serverurl", args.serverurl),
            ("apikey", read_apikey(args.apikey_file)),
            ("syncperiod", args.syncperiod),
        ):
            if value is not None and getattr(logger, name) != value:
                setattr(logger, name, value)
        if STREAM not in logger:
            logger.add_stream(STREAM, {"type": "number"})
    except BaseException:
        logger.close(timeout=0)
        raise
    return logger


def run(args: argparse.Namespace) -> int:
    """Log readings until SIGTERM or SIGINT, then close within ``args.close_timeout``; returns
    how many readings were logged. The stop signals must be blocked in every thread (main)."""
    logger = open_logger(args)
    count = 0
    try:
        logger.start()
        log.info(
            "logging %r every %g s into %s; syncing to %r every %g s",
            STREAM, args.period, args.cache, logger.remote, logger.syncperiod,
        )  # fmt: skip
        while True:
            logger.insert(STREAM, read_sensor(count))  # on disk when it returns
            count += 1
            received = signal.sigtimedwait(STOP_SIGNALS, args.period)
            if received is not None:
                log.info(
                    "%s: stopping; %d readings logged since the start; closing within %g s",
                    signal.Signals(received.si_signo).name, count, args.close_timeout,
                )  # fmt: skip
                break
    finally:
        # One last sync within the timeout, then the file is closed. What the server has
        # not acknowledged by then stays in the cache for the next start: nothing is lost.
        logger.close(timeout=args.close_timeout)
    log.info("stopped")
    return count


def demo() -> int:
    """The service against a loopback test server, stopped by a SIGTERM after two seconds."""
    from connectorsync.testing import ConnectorDBServer

    with ConnectorDBServer() as server, tempfile.TemporaryDirectory() as tmp:
        keyfile = os.path.join(tmp, "apikey")
        with open(keyfile, "w", encoding="utf-8") as f:
            f.write(server.add_device("alice", "sensor"))
        args = parse_args(
            ["--serverurl", server.url, "--apikey-file", keyfile, "--period", "0.1",
             "--cache", os.path.join(tmp, "sensor.db"), "--close-timeout", "5"]
        )  # fmt: skip
        print("Logging a simulated sensor for 2 s, then SIGTERM, as `systemctl stop` sends...")
        # Like every thread, this one blocks the stop signals (main): the SIGTERM it sends
        # waits for run()'s sigtimedwait.
        stopper = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
        stopper.start()
        logged = run(args)
        stopper.join()
        held = len(server.datapoints(f"alice/sensor/{STREAM}"))
        mode = os.stat(args.cache).st_mode & 0o777
        with Logger(args.cache) as logger:
            cached = logger.status().streams[STREAM].cached
        print(f"logged {logged} readings: the server holds {held}, {cached} wait in the cache")
        print(f"cache file mode {mode:o} (owner only)")
    if held + cached != logged:
        print(f"{logged - held - cached} readings lost", file=sys.stderr)
        return 1
    print("nothing lost")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    state = os.environ.get("STATE_DIRECTORY", ".").split(":")[0]  # systemd's StateDirectory=
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")  # systemd's LoadCredential=
    parser.add_argument("--serverurl", help="the ConnectorDB server (default: a test server)")
    parser.add_argument(
        "--apikey-file",
        default=credentials and os.path.join(credentials, "apikey"),
        help="a file holding the device's apikey (default: $CREDENTIALS_DIRECTORY/apikey)",
    )
    parser.add_argument("--cache", default=os.path.join(state, "sensor.db"))
    parser.add_argument("--period", type=float, default=60.0, help="seconds between readings")
    parser.add_argument("--syncperiod", type=float, help="seconds between syncs (kept in cache)")
    parser.add_argument(
        "--close-timeout", type=float, default=20.0, help="below systemd's TimeoutStopSec"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # The library installs no signal handler. Blocking the stop signals before any thread
    # starts (every thread inherits the mask) and taking them with sigtimedwait (run) ends
    # the wait between readings the moment one arrives, never in the middle of an insert,
    # with no handler racing the main loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    args = parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not args.serverurl:
        return demo()
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
