"""A child process that inserts forever and prints each value once insert() has returned.

Usage: python -m tests.helpers.inserter CACHE DURABILITY STREAM [START]
"""

from __future__ import annotations

import sys

from connectorsync import Logger


def main() -> None:
    path, durability, stream = sys.argv[1:4]
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    lg = Logger(path, durability=durability)
    if stream not in lg:
        lg.addStream(stream, {"type": "integer"})
    print("ready", flush=True)
    i = start
    while True:
        lg.insert(stream, i)
        print(i, flush=True)  # only after insert() returned: this value must survive a kill -9
        i += 1


if __name__ == "__main__":
    main()
