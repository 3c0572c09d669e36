"""The cost of thinning (issue 19, point 1), for bench_full.py: ``insert()`` one at a time
(``durability="normal"``) into a full cache with ``on_full="thin"``, against the same into a
full cache with ``on_full="drop_oldest"`` and into an empty cache without limits; and what a
limit costs while the cache is far from it (``max_cached`` of a billion, not full).

Each cache holds one number stream at 1 Hz (explicit timestamps, so thinning has an outage to
thin); the full ones are filled to ``max_cached`` first, and stay full while measured. Rounds
are interleaved and the median is kept, to damp the noise of a shared machine.

Usage (alone): python tests/benchmarks/_full_thin.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from connectorsync import Logger

T0 = 1_700_000_000.0
MAX_CACHED = 10_000


class Subject:
    """One open Logger and the next timestamp of its stream."""

    def __init__(self, path: str, on_full: str | None, max_cached: int, full: bool) -> None:
        options = {} if on_full is None else {"max_cached": max_cached, "on_full": on_full}
        self.logger = Logger(path, durability="normal", **options)
        self.logger.addStream("temp", {"type": "number"})
        self.next = 0
        if full:  # full from the start
            fill = [{"t": T0 + i, "d": float(i)} for i in range(max_cached)]
            self.logger.insert_many("temp", fill)
            self.next = max_cached

    def rate(self, count: int) -> float:
        """insert() ``count`` times; datapoints per second."""
        insert, start = self.logger.insert, time.perf_counter()
        for i in range(self.next, self.next + count):
            insert("temp", float(i), T0 + i)
        self.next += count
        return count / (time.perf_counter() - start)


def measure(quick: bool) -> list[tuple[str, float, float]]:
    """(what, rate with thinning, reference rate), in datapoints per second."""
    rounds, count = (3, 2_000) if quick else (7, 10_000)
    max_cached = 2_000 if quick else MAX_CACHED
    with tempfile.TemporaryDirectory(prefix="bench-thin-") as workdir:
        kinds = (
            ("thin", "thin", max_cached, True),
            ("drop", "drop_oldest", max_cached, True),
            ("empty", None, max_cached, False),
            ("far", "reject", 10**9, False),
        )
        subjects = {
            name: Subject(os.path.join(workdir, f"{name}.db"), on_full, cap, full)
            for name, on_full, cap, full in kinds
        }
        try:
            rates: dict[str, list[float]] = {name: [] for name in subjects}
            for _ in range(rounds):
                for name, subject in subjects.items():
                    rates[name].append(subject.rate(count))
            thinned = subjects["thin"].logger.status().thinned
            assert thinned > 0, "the full cache did not thin"
        finally:
            for subject in subjects.values():
                subject.logger.close()
    thin, drop, empty, far = (statistics.median(rates[n]) for n in ("thin", "drop", "empty", "far"))
    size = f"max_cached={max_cached}"
    return [
        (f"insert() into a full cache ({size}): thin / drop_oldest", thin, drop),
        (f"insert() into a full cache ({size}): thin / an empty cache, no limits", thin, empty),
        (f"insert() into a full cache ({size}): drop_oldest / no limits", drop, empty),
        ("insert() under max_cached, far from full / no limits", far, empty),
    ]


if __name__ == "__main__":
    for what, rate, reference in measure("--quick" in sys.argv):
        print(f"{what}: {rate:,.0f} / {reference:,.0f} datapoints/s = {rate / reference:.2f}")
