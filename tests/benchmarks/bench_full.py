"""What a full card costs, from ONE run: thinning, priorities and the seal, each as a ratio.

Each part measures its feature against the same work without it, in this process, on this
machine, and returns rows of ``(what, with the feature, without it)``:

- ``thin`` (``_full_thin.py``): ``insert()`` one at a time (``durability="normal"``) into a
  cache full at ``max_cached`` with ``on_full="thin"``, against ``on_full="drop_oldest"`` and
  against an empty cache without limits;
- ``thin`` also: ``drop_oldest`` into that full cache, and a cache far from its
  ``max_cached``, each against no limits;
- ``priority`` (``_full_priority.py``): draining a backlog spread over streams of mixed
  priorities to a loopback server, against the same backlog all at priority 0; and how long a
  datapoint added to an alarm stream (with a backlog of its own) during the drain waits, at
  priority 9 against 0;
- ``seal`` (``_full_seal.py``): ``insert()`` (``durability="normal"``) and the drain rate, on
  loopback and across a link with a 20 ms round trip, with ``key=`` against the same without
  a key (issue 19's bound: at most 15% slower, a ratio of at least 0.85), and the floor of
  the loopback drain: the client CPU that opening one value takes.

The ratio is the feature's rate over the reference's (above 1: faster). The figures are noisy
on a shared machine: the README's Performance table gives the latest run and its date.

Usage: python tests/benchmarks/bench_full.py [--parts thin,priority,seal] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

PARTS = {"thin": "_full_thin", "priority": "_full_priority", "seal": "_full_seal"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS)
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not figures"
    )
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    print(f"bench_full.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| part | what | with it | without it | ratio |")
    print("|---|---|---|---|---|")
    for part in parts:
        measure = importlib.import_module(PARTS[part]).measure
        for what, with_it, without in measure(args.quick):
            ratio = with_it / without if without else float("nan")
            print(
                f"| {part} | {what} | {with_it:,.0f} | {without:,.0f} | {ratio:.2f}x |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
