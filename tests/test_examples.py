"""Every script in examples/ runs to the end (the demo is `make demo`)."""

from __future__ import annotations

import subprocess

from .conftest import PYTHON, ROOT, child_env, require_influxd


def run_example(name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run examples/``name`` without arguments, as a user would, from the repository."""
    return subprocess.run(
        [PYTHON, str(ROOT / "examples" / name)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_temperature_logger_demo() -> None:
    result = run_example("temperature_logger.py", 30)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "nothing lost: 5 datapoints wait in the cache" in out
    assert "last error: " in out and "Connection refused" in out
    assert out.count("background sync delivered everything: 0 waiting") == 2
    assert "The server holds 8 datapoints, in order" in out
    assert result.stderr == ""


def test_serial_sensor_example() -> None:
    """The serial example makes its own pseudo-terminal and fake sensor when run bare."""
    result = run_example("serial_sensor.py", 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "temperature" in result.stdout and "humidity" in result.stdout


def test_influxdb_logger_example() -> None:
    """The InfluxDB example starts its own influxd, rides out an outage, and reads back."""
    require_influxd()
    result = run_example("influxdb_logger.py", 60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "sync failed" in out and "3 readings wait" in out
    assert "influxd is back; sync: {'climate': 3}; 0 readings wait" in out
    assert "influxd holds 6 points of 'climate'" in out and out.count("site=example") == 6


def test_every_example_is_run_by_a_test() -> None:
    tested = (ROOT / "tests" / "test_examples.py").read_text()
    for example in (ROOT / "examples").glob("*.py"):
        assert example.name in tested, f"{example.name} is not run by a test"
