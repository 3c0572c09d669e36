"""Every script in examples/ runs to the end (the demo is `make demo`)."""

from __future__ import annotations

import os
import signal
import subprocess
import tty
from pathlib import Path

import apsw

from .conftest import PYTHON, ROOT, child_env, require_influxd, start_influxd, wait_for


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


def test_sensor_service_example() -> None:
    """Bare, the systemd example runs against its own test server and stops on a SIGTERM it
    sends itself (its service mode: tests/test_deployment.py)."""
    result = run_example("sensor_service.py", 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing lost" in result.stdout and "cache file mode 600" in result.stdout
    assert "SIGTERM: stopping" in result.stderr


def test_serial_sensor_example() -> None:
    """The serial example makes its own pseudo-terminal and fake sensor when run bare."""
    result = run_example("serial_sensor.py", 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "temperature" in result.stdout and "humidity" in result.stdout


def test_serial_sensor_example_on_a_device(tmp_path: Path) -> None:
    """``--port`` mode reads a device (here a pseudo-terminal the test writes to) into
    ``--cache`` until Ctrl-C, then reports what it stored."""
    master, slave = os.openpty()
    tty.setraw(slave)
    cache = tmp_path / "sensor.db"
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "examples" / "serial_sensor.py"), "--port", os.ttyname(slave),
         "--cache", str(cache)],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def reading_stored() -> bool:
            os.write(master, b'{"temperature": 21.5, "humidity": 40}\n')
            return cache.exists() and _cached_or_sent(cache)

        wait_for(reading_stored, 30, "a reading in the cache")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, out + err
    assert "temperature:" in out and "latest 21.5" in out, out


def test_influxdb_logger_example() -> None:
    """The InfluxDB example starts its own influxd, rides out an outage, and reads back."""
    require_influxd()
    result = run_example("influxdb_logger.py", 60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "sync failed" in out and "3 readings wait" in out
    assert "influxd is back; sync: {'climate': 3}; 0 readings wait" in out
    assert "influxd holds 6 points of 'climate'" in out and out.count("site=example") == 6


def test_influxdb_logger_example_against_your_own_influxdb(tmp_path: Path) -> None:
    """``--url`` mode logs into the given server until Ctrl-C, then delivers what waits as it
    closes."""
    influxd = start_influxd(tmp_path / "influxd")
    cache = tmp_path / "climate.db"
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "examples" / "influxdb_logger.py"), "--url", influxd.url,
         "--database", "mine", "--cache", str(cache)],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: cache.exists() and _cached_or_sent(cache), 30, "the first reading")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        influxd_points = influxd.points("climate", "mine")
        influxd.stop()
    assert proc.returncode == 0, out + err
    assert "stopping; 0 readings wait" in out or "stopping; 1 readings wait" in out, out
    assert len(influxd_points) >= 1


def _cached_or_sent(cache: Path) -> bool:
    """True once the example stored its first reading (read-only: the example owns the file)."""
    conn = apsw.Connection(str(cache), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return bool(next(conn.execute("SELECT max(id) FROM datapoints"))[0])
    except apsw.Error:
        return False
    finally:
        conn.close()


def test_every_example_is_run_by_a_test() -> None:
    tested = (ROOT / "tests" / "test_examples.py").read_text()
    for example in (ROOT / "examples").glob("*.py"):
        assert example.name in tested, f"{example.name} is not run by a test"
