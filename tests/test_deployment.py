"""The systemd deployment of docs/deployment.rst: the units shipped in examples/systemd pass
``systemd-analyze verify``, and examples/sensor_service.py, run as its unit runs it, stops on
SIGTERM with exit code 0 within the unit's TimeoutStopSec, losing no reading, with an
owner-only cache. (Its demo mode, without arguments, runs in test_examples.py.)"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connectorsync import cli
from connectorsync.options import DEFAULT_JITTER, Configurable
from connectorsync.testing import ConnectorDBServer

from .conftest import PYTHON, ROOT, child_env, require_systemd_analyze, wait_for
from .test_packaging import NETWORK_SIGNS, NOT_SOURCE

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


# ----------------------------------------------------------------------------- installing

DOC = ROOT / "docs" / "deployment.rst"
#: The steps of docs/deployment.rst's "Installing", as written there (on the device, as root,
#: in the directory holding the wheel and examples/).
BUILD = "python3 -m pip wheel --no-deps -w dist ."
INSTALL_STEPS = [
    "python3 -m venv /opt/connectorsync",
    "/opt/connectorsync/bin/pip install connectorsync-*.whl",
    "/opt/connectorsync/bin/connectorsync --help",
    "install -m 0644 examples/sensor_service.py /opt/connectorsync/sensor_service.py",
    "cp examples/systemd/connectorsync-sensor* /etc/systemd/system/",
    "systemd-analyze verify /etc/systemd/system/connectorsync-sensor*",
]


def step(argv: list[str | Path], what: str, cwd: Path) -> str:
    """Run one documented step outside this tree's environment; returns its stdout. Not
    reaching the package index skips (fails under CI=true), as in test_packaging.py."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    said = done.stdout + done.stderr
    if done.returncode != 0:
        if any(sign in said for sign in NETWORK_SIGNS) and os.environ.get("CI") != "true":
            pytest.skip(f"{what}: the package index is unreachable (CI=true fails instead)")
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{said[-3000:]}")
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_documented_install_works_into_a_fresh_root(tmp_path: Path) -> None:
    """docs/deployment.rst's "Installing", step by step, with a temporary directory for /:
    a wheel built from the checkout (connectorsync is not on PyPI), a fresh venv at
    /opt/connectorsync with it installed, its connectorsync command, the example program run
    by the venv's Python, and the shipped units verified where they are copied."""
    doc = DOC.read_text()
    for command in [BUILD, *INSTALL_STEPS]:
        assert command in doc, f"docs/deployment.rst no longer says: {command}"
    assert "pip install connectorsync\n" not in doc  # not on PyPI: it cannot work
    analyze = require_systemd_analyze()

    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_SOURCE)
    step([sys.executable, *BUILD.split()[1:]], "building the wheel", checkout)
    device = tmp_path / "device"  # what is copied to the device: the wheel and examples/
    device.mkdir()
    (wheel,) = (checkout / "dist").glob("connectorsync-*.whl")
    shutil.copy(wheel, device)
    shutil.copytree(checkout / "examples", device / "examples")

    root = tmp_path / "root"
    venv = root / "opt" / "connectorsync"
    step([sys.executable, "-m", "venv", venv], "python3 -m venv", device)
    (found,) = device.glob("connectorsync-*.whl")
    step([venv / "bin" / "pip", "install", "--disable-pip-version-check", found],
         "pip install the wheel", device)  # fmt: skip
    assert "status" in step([venv / "bin" / "connectorsync", "--help"], "--help", device)
    program = venv / "sensor_service.py"
    shutil.copy(device / "examples" / "sensor_service.py", program)
    program.chmod(0o644)
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in sorted((device / "examples" / "systemd").glob("connectorsync-sensor*")):
        # The units name /opt/connectorsync: here it is under the temporary root.
        (units / unit.name).write_text(unit.read_text().replace(VENV, str(venv)))
    copied = sorted(units.iterdir())
    assert {u.suffix for u in copied} == {".service", ".timer"}
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, copied)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = result.stdout + result.stderr
    about_ours = [line for line in said.splitlines() if any(u.name in line for u in copied)]
    assert result.returncode == 0 and about_ours == [], said

    # The program the unit runs, bare (its demo mode): the installed package, not this tree.
    out = step([venv / "bin" / "python", program], "sensor_service.py", tmp_path)
    assert str(ROOT) not in out
    show = "import connectorsync; print(connectorsync.__file__)"
    where = step([venv / "bin" / "python", "-c", show], "import connectorsync", tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where


def test_the_readme_says_where_the_command_is_and_when_start_syncs() -> None:
    """After ``make demo`` a bare ``connectorsync`` was "command not found": the README says
    where the command is (the venv the Makefile makes), and, next to ``start()``, the default
    syncperiod and the first pass's jitter, as the options declare them."""
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    venv = re.search(r"^VENV\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert venv, "the Makefile no longer names its venv"
    assert f"{venv.group(1)}/bin/connectorsync" in readme
    assert f". {venv.group(1)}/bin/activate" in readme
    start = readme.index("l.start()")
    near = readme[start : readme.index("\n", readme.index("l.insert(", start))]
    period = Configurable.syncperiod.default
    assert f"{period:.0f} s by" in near, near
    assert f"{DEFAULT_JITTER:.0%} of" in near and "sync_jitter" in near, near
    assert f"up to {DEFAULT_JITTER * period:.0f} s" in near, near
