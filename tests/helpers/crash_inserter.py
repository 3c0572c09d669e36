"""A child that inserts at a steady rate into two streams while its syncer runs in the
background; it prints "stream value" after each insert() returned. The parent kills it.

Usage: python -m tests.helpers.crash_inserter CACHE URL APIKEY RUN
"""

from __future__ import annotations

import logging
import sys
import time

from connectorsync import Logger
from connectorsync import schedule as schedule_module

# Retry within tens of milliseconds, so the faults of a crash test resolve while it runs.
schedule_module.BACKOFF_BASE = 0.02


def main() -> None:
    # On stderr, so the parent can count the recoveries it provoked.
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    path, url, apikey, run = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def init(lg: Logger) -> None:
        lg.apikey = apikey
        lg.serverurl = url
        lg.addStream("a", {"type": "integer"})
        lg.addStream("b", {"type": "integer"})

    lg = Logger(
        path, on_create=init, durability="normal", sync_threshold=25, batch_size=40, http_timeout=2
    )
    lg.syncperiod = 0.5
    lg.start()
    print("ready", flush=True)
    for i in range(10**6):
        stream = "ab"[i % 2]
        value = run * 10**6 + i // 2
        lg.insert(stream, value)
        print(stream, value, flush=True)
        time.sleep(0.002)


if __name__ == "__main__":
    main()
