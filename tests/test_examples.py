"""Every script in examples/ runs to the end (the demo is `make demo`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from connectorsync.testing.influx import find_influxd

from .conftest import PYTHON, ROOT, child_env


def test_temperature_logger_demo() -> None:
    result = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "temperature_logger.py")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "nothing lost: 5 datapoints wait in the cache" in out
    assert "last error: " in out and "Connection refused" in out
    assert out.count("background sync delivered everything: 0 waiting") == 2
    assert "The server holds 8 datapoints, in order" in out
    assert result.stderr == ""


def test_serial_sensor_example() -> None:
    """The serial example makes its own pseudo-terminal and fake sensor when run bare."""
    result = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "serial_sensor.py")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "temperature" in result.stdout and "humidity" in result.stdout


def test_influxdb_logger_example() -> None:
    """The InfluxDB example starts its own influxd, rides out an outage, and reads back."""
    if find_influxd() is None:
        message = "influxd (InfluxDB 1.x) is not installed: `apt-get install influxdb`"
        if os.environ.get("CONNECTORSYNC_REQUIRE_INFLUXDB") == "1":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "influxdb_logger.py")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "sync failed" in out and "3 readings wait" in out
    assert "influxd is back; sync: {'climate': 3}; 0 readings wait" in out
    assert "influxd holds 6 points of 'climate'" in out and out.count("site=example") == 6


def test_every_example_is_run_by_a_test() -> None:
    tested = (ROOT / "tests" / "test_examples.py").read_text()
    for example in (ROOT / "examples").glob("*.py"):
        assert example.name in tested, f"{example.name} is not run by a test"
