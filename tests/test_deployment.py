"""The systemd deployment of docs/deployment.rst: the units shipped in examples/systemd pass
``systemd-analyze verify``, and examples/sensor_service.py, run as its unit runs it, stops on
SIGTERM with exit code 0 within the unit's TimeoutStopSec, losing no reading, with an
owner-only cache. (Its demo mode, without arguments, runs in test_examples.py.)"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connectorsync import cli
from connectorsync.testing import ConnectorDBServer

from .conftest import PYTHON, ROOT, child_env, require_systemd_analyze, wait_for

UNITS = ROOT / "examples" / "systemd"
SERVICE = UNITS / "connectorsync-sensor.service"
EXAMPLE = ROOT / "examples" / "sensor_service.py"
#: Where the units expect the venv on a device (docs/deployment.rst).
VENV = "/opt/connectorsync"
STREAM_PATH = "alice/sensor/temperature"


def unit_setting(text: str, key: str) -> str:
    """The value of ``key=`` in a unit file's text (continuation lines joined)."""
    text = text.replace("\\\n", " ")
    match = re.search(rf"^{key}=(.*)$", text, re.MULTILINE)
    assert match, f"no {key}= in the unit"
    return match.group(1).strip()


def as_installed_here(directory: Path) -> list[Path]:
    """Copies of the shipped units as they would be on a device, but with this Python's venv
    for /opt/connectorsync, and this example. The user connectorsync (which the device gets
    with useradd, docs/deployment.rst) stays: systemd looks it up when the unit starts, not
    in verify, which would warn about a stand-in such as nobody ("this is not safe")."""
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "connectorsync").exists(), f"no connectorsync script in {venv_bin}"
    copies = []
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text()
        if "ExecStart=" in text:
            assert f"{VENV}/bin/" in text, f"{unit.name}: ExecStart no longer in {VENV}"
        text = (
            text.replace(f"{VENV}/bin/python", sys.executable)
            .replace(f"{VENV}/bin/", f"{venv_bin}/")
            .replace(f"{VENV}/sensor_service.py", str(EXAMPLE))
        )
        copy = directory / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_shipped_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    units = as_installed_here(tmp_path)
    assert {u.suffix for u in units} == {".service", ".timer"}
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = result.stdout + result.stderr
    # verify also reports on the machine's own units; only what concerns ours counts. It
    # warns (unknown keys, bad values) with exit code 0: any line about our units fails.
    about_ours = [line for line in said.splitlines() if any(unit.name in line for unit in units)]
    assert result.returncode == 0 and about_ours == [], said


def test_service_closes_within_its_stop_timeout() -> None:
    """The Logger's close timeout leaves the last sync time to end before systemd's SIGKILL."""
    text = SERVICE.read_text()
    close_timeout = re.search(r"--close-timeout (\d+)", unit_setting(text, "ExecStart"))
    assert close_timeout, "ExecStart gives no --close-timeout"
    assert int(close_timeout.group(1)) + 5 <= int(unit_setting(text, "TimeoutStopSec"))


def test_check_timer_looks_at_the_service_cache() -> None:
    """The check unit's cache is the one the service writes: sensor.db in its StateDirectory."""
    state = unit_setting(SERVICE.read_text(), "StateDirectory")
    check = (UNITS / "connectorsync-sensor-check.service").read_text()
    assert f"/var/lib/{state}/sensor.db --check" in unit_setting(check, "ExecStart")


def start_service(
    tmp_path: Path, server: ConnectorDBServer, close_timeout: str | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """The example as systemd starts it: the unit's arguments (but ``close_timeout``, if
    given), with $STATE_DIRECTORY (made 0700 by StateDirectoryMode), $CREDENTIALS_DIRECTORY
    holding the apikey and the journal on stderr ($JOURNAL_STREAM); here readings and syncs
    come every few milliseconds."""
    state, credentials = tmp_path / "state", tmp_path / "credentials"
    state.mkdir(mode=0o700)
    credentials.mkdir(mode=0o700)
    (credentials / "apikey").write_text(server.apikey + "\n")  # type: ignore[attr-defined]
    env = child_env()
    env.update(
        STATE_DIRECTORY=str(state), CREDENTIALS_DIRECTORY=str(credentials), JOURNAL_STREAM="8:1"
    )
    args = unit_setting(SERVICE.read_text(), "ExecStart").split()[2:]
    args[args.index("--serverurl") + 1] = server.url
    if close_timeout is not None:
        args[args.index("--close-timeout") + 1] = close_timeout
    proc = subprocess.Popen(
        [PYTHON, str(EXAMPLE), *args, "--period", "0.01", "--syncperiod", "0.05"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, state / "sensor.db"


def stop_service(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, as ``systemctl stop`` sends; the exit code and the journal (stderr). The
    process must end within TimeoutStopSec, or systemd would kill it."""
    stop_timeout = int(unit_setting(SERVICE.read_text(), "TimeoutStopSec"))
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=stop_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running {stop_timeout} s (TimeoutStopSec) after SIGTERM:\n{err}")
    return proc.returncode, err


def cached_times(cache: Path) -> list[float]:
    """The timestamps waiting in the cache, through ``connectorsync export``."""
    out = io.StringIO()
    assert cli.main(["export", str(cache)], out=out) == 0
    return [json.loads(line)["t"] for line in out.getvalue().splitlines()]


def delivered(server: ConnectorDBServer) -> list[float]:
    """The timestamps the server holds (none before the first sync creates the stream)."""
    try:
        return [p["t"] for p in server.datapoints(STREAM_PATH)]
    except KeyError:
        return []


def logged_count(journal: str) -> int:
    match = re.search(r"^<6>sensor_service: INFO: SIGTERM: stopping; (\d+) readings", journal, re.M)
    assert match, f"no stopping line in the journal:\n{journal}"
    return int(match.group(1))


@pytest.mark.parametrize("server_answers", [True, False], ids=["server-up", "server-hangs"])
def test_service_stops_on_sigterm_losing_nothing(
    tmp_path: Path, server: ConnectorDBServer, server_answers: bool
) -> None:
    """Stopped while the server answers, the last sync delivers everything; stopped while it
    hangs, close gives up after --close-timeout and the readings wait in the cache. Either
    way: exit 0 in time, and each reading is on the server or in the cache."""
    # The unit's close timeout while the server answers; a hung one is waited for 3 s.
    proc, cache = start_service(tmp_path, server, None if server_answers else "3")
    try:
        wait_for(lambda: len(delivered(server)) >= 5, 30, "readings synced")
        if not server_answers:
            server.delay(10)  # every request from now on hangs, longer than the close timeout
            # A pass under way may still deliver everything: wait for a reading it cannot.
            wait_for(lambda: len(cached_times(cache)) >= 2, 30, "readings waiting in the cache")
        code, journal = stop_service(proc)
    finally:
        proc.kill()
        proc.communicate()
    assert code == 0, journal
    assert "Traceback" not in journal, journal
    logged = logged_count(journal)
    cached = cached_times(cache)
    # A request that hung may still be stored once the server wakes: then its readings are
    # on the server and in the cache (the next start settles them). Count each once.
    on_server = delivered(server)
    assert len(set(on_server) | set(cached)) == logged
    if server_answers:
        assert cached == [] and len(on_server) == logged
    else:
        assert cached, "the hung server acknowledged nothing, yet the cache is empty"
    assert os.stat(cache).st_mode & 0o777 == 0o600
