"""The fleet (into ConnectorDB, NATS and PostgreSQL), fan-out and full-card benchmarks run end
to end at a tiny size: each completes (which includes its own check that the servers hold every
datapoint and every cache is empty) and prints its tables. The figures themselves are the
benchmarks' business, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_nats, require_postgres

BENCH = Path(__file__).resolve().parent / "benchmarks" / "bench_fleet.py"
FANOUT = BENCH.with_name("bench_fanout.py")
ENGINES = BENCH.with_name("bench_fleet_engines.py")


@pytest.mark.slow
def test_the_fleet_benchmark_completes_and_prints_its_table() -> None:
    # A 1 s outage: as long as a pass's period, enough for the table (11 s instead of 15 s).
    tiny = ["--loggers", "8", "--processes", "2", "--outage", "1", "--syncperiod", "1"]
    tiny += ["--steady", "1", "--after", "2", "--configs", "defaults,no-jitter"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *tiny], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| configuration | sync_jitter | backoff |") for line in lines)
    assert any(line.startswith("| defaults | 0.1 s (default) | full jitter |") for line in lines)
    assert any(line.startswith("| no-jitter | 0 | no jitter |") for line in lines)
    assert "requests per second after the server returned (first 2 s):" in lines


@pytest.mark.slow
def test_the_fanout_benchmark_completes_and_prints_its_tables() -> None:
    tiny = ["--count", "400", "--inserts", "20", "--rounds", "1", "--insert-rounds", "1"]
    tiny += ["--latencies", "0.01"]
    done = subprocess.run(
        [sys.executable, str(FANOUT), *tiny], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| Logger.insert | full | 2 |") for line in lines)
    assert any(line.startswith("| Logger.insert_many | normal | 400 |") for line in lines)
    assert any(line.startswith("| remote A | 10 ms | 400 |") for line in lines)
    assert any(line.startswith("| remote B | 10 ms | 100 |") for line in lines)
    assert any(line.startswith("| two remotes | ") for line in lines)


@pytest.mark.slow
def test_the_fleet_into_the_engines_benchmark_completes_and_prints_its_table() -> None:
    require_nats()
    require_postgres()
    # The smallest the benchmark takes (16 s instead of 20 s): --steady 1 leaves it no steady
    # mean to divide by, --after 1 no second to take a peak of.
    tiny = ["--loggers", "8", "--processes", "2", "--outage", "1", "--syncperiod", "1"]
    tiny += ["--steady", "2", "--after", "2"]
    done = subprocess.run(
        [sys.executable, str(ENGINES), *tiny], capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| engine | inserted | held on the server |") for line in lines)
    assert any(line.startswith("| nats | ") and " | 0 | " in line for line in lines)
    assert any(line.startswith("| postgres | ") and " | 0 | " in line for line in lines)


@pytest.mark.slow
def test_the_full_card_benchmark_completes_and_prints_every_row() -> None:
    """bench_full.py --quick: thinning, priorities and the seal, each row with its ratio
    (each part checks itself that nothing was lost on the way)."""
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name("bench_full.py")), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    parts = [row[0].strip("| ") for row in rows[1:]]  # after the header
    assert parts == ["thin"] * 4 + ["priority"] * 2 + ["seal"] * 4, done.stdout
    assert all(row[-1].endswith("x |") for row in rows[1:]), done.stdout
