"""Shared fixtures: real cache files under tmp_path and a real loopback ConnectorDB server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import apsw
import pytest

from connectorsync import Logger
from connectorsync import schedule as schedule_module
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer, InfluxDBStartError, find_influxd
from connectorsync.testing.mosquitto import (
    MosquittoBroker,
    MosquittoStartError,
    MQTTSubscriber,
    find_mosquitto,
)
from connectorsync.testing.nats import NATSServer, NATSStartError, find_nats_server
from connectorsync.testing.postgres import PostgresServer, PostgresStartError, find_postgres
from connectorsync.testing.receiver import HTTPReceiver

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
def cache_path(tmp_path: Path) -> str:
    return str(tmp_path / "cache.db")


@contextlib.contextmanager
def alice_server() -> Iterator[ConnectorDBServer]:
    """A ConnectorDB-compatible server on 127.0.0.1 with device ``alice/sensor``, its apikey
    in ``apikey``; stopped on leaving."""
    srv = ConnectorDBServer()
    srv.start()
    srv.apikey = srv.add_device("alice", "sensor")  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server() -> Iterator[ConnectorDBServer]:
    """A ConnectorDB-compatible server on 127.0.0.1 with device ``alice/sensor``."""
    with alice_server() as srv:
        yield srv


@pytest.fixture
def logger(cache_path: str, server: ConnectorDBServer) -> Iterator[Logger]:
    """A Logger on a fresh cache, pointed at ``server``, with a number stream ``temperature``."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    lg = Logger(cache_path, on_create=init)
    try:
        yield lg
    finally:
        lg.close()


def dump(path: str) -> list[tuple[str, list[tuple[object, ...]]]]:
    """Every table's rows, to compare a cache file before and after a failed call."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, list(conn.execute(f"SELECT * FROM {t} ORDER BY 1"))) for t in tables]
    finally:
        conn.close()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``condition()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


def within(seconds: float, fn: Callable[..., T], *args: Any, what: str = "") -> T:
    """``fn(*args)`` run in a thread of its own: its result, or what it raised; the test
    fails after ``seconds`` if it has not returned (a hang fails fast instead of blocking)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # handed to the test below
            error.append(exc)

    thread = threading.Thread(target=run, name="test-within", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what or fn} did not return within {seconds} s (a hang)")
    if error:
        raise error[0]
    return result[0]  # type: ignore[no-any-return]


def syncer_threads(path: str) -> list[threading.Thread]:
    """The live background syncer threads of the cache file ``path`` (named after its file
    name: give each test's cache file a name of its own)."""
    name = "connectorsync-syncer:" + os.path.basename(path)
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def child_env() -> dict[str, str]:
    """The environment for a child Python process that imports connectorsync from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


REQUIRE_INFLUXDB = "CONNECTORSYNC_REQUIRE_INFLUXDB"


def require_influxd() -> None:
    """The one place that decides for a test needing influxd (InfluxDB 1.x) when there is
    none: skip, saying how to install it, or fail under CONNECTORSYNC_REQUIRE_INFLUXDB=1,
    which .ci/run sets after installing it, so that CI never skips these tests."""
    if find_influxd() is not None:
        return
    message = (
        "influxd (InfluxDB 1.x) is not installed: `apt-get install influxdb` "
        "to run the InfluxDB tests"
    )
    if os.environ.get(REQUIRE_INFLUXDB) == "1":
        pytest.fail(f"{message} ({REQUIRE_INFLUXDB}=1 requires them)")
    pytest.skip(message)


REQUIRE_SYSTEMD = "CONNECTORSYNC_REQUIRE_SYSTEMD"


def require_systemd_analyze() -> str:
    """The path of ``systemd-analyze``, for the tests that verify the shipped unit files.
    Without it: skip, saying how to install it, or fail under CONNECTORSYNC_REQUIRE_SYSTEMD=1
    (which .ci/run sets after installing it) or CI=true, so that CI never skips them."""
    found = shutil.which("systemd-analyze")
    if found is not None:
        return found
    message = "systemd-analyze is not installed: `apt-get install systemd` to verify the units"
    if os.environ.get(REQUIRE_SYSTEMD) == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{message} ({REQUIRE_SYSTEMD}=1 or CI=true requires it)")
    pytest.skip(message)


REQUIRE_MOSQUITTO = "CONNECTORSYNC_REQUIRE_MOSQUITTO"


def require_mosquitto() -> None:
    """The one place that decides for a test needing an MQTT broker when there is none: skip,
    saying how to install it, or fail under CONNECTORSYNC_REQUIRE_MOSQUITTO=1 (which .ci/run
    sets after installing it) or CI=true, so that CI never skips the MQTT tests."""
    if find_mosquitto() is not None:
        return
    message = "mosquitto is not installed: `apt-get install mosquitto` to run the MQTT tests"
    if os.environ.get(REQUIRE_MOSQUITTO) == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{message} ({REQUIRE_MOSQUITTO}=1 or CI=true requires them)")
    pytest.skip(message)


def start_mosquitto(directory: Path, **kwargs: Any) -> MosquittoBroker:
    """A started mosquitto of its own (see :class:`MosquittoBroker` for ``kwargs``), for a
    fixture or a test; skipped or failed by :func:`require_mosquitto` when there is none."""
    require_mosquitto()
    broker = MosquittoBroker(directory, **kwargs)
    try:
        broker.start()
    except MosquittoStartError as exc:
        pytest.fail(f"mosquitto is installed but did not start: {exc}")
    return broker


REQUIRE_NATS = "CONNECTORSYNC_REQUIRE_NATS"


def require_nats() -> None:
    """The one place that decides for a test needing nats-server (and nats-py) when there is
    none: skip, saying how to install it, or fail under CONNECTORSYNC_REQUIRE_NATS=1 (which
    .ci/run sets after installing it) or CI=true, so that CI never skips the NATS tests."""
    missing = []
    if find_nats_server() is None:
        missing.append("nats-server is not installed: `apt-get install nats-server`")
    try:
        import nats  # noqa: F401 - only whether it is there
    except ImportError:
        missing.append("nats-py is not installed: `pip install 'connectorsync[nats]'`")
    if not missing:
        return
    message = "; ".join(missing) + " to run the NATS tests"
    if os.environ.get(REQUIRE_NATS) == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{message} ({REQUIRE_NATS}=1 or CI=true requires them)")
    pytest.skip(message)


def start_nats(directory: Path, **kwargs: Any) -> NATSServer:
    """A started nats-server of its own (see :class:`NATSServer` for ``kwargs``), for a
    fixture or a test; skipped or failed by :func:`require_nats` when there is none."""
    require_nats()
    server = NATSServer(directory, **kwargs)
    try:
        server.start()
    except NATSStartError as exc:
        pytest.fail(f"nats-server is installed but did not start: {exc}")
    return server


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The couriers' backoff from 10 ms instead of 1 s, so retry tests take milliseconds."""
    monkeypatch.setattr(schedule_module, "BACKOFF_BASE", 0.01)


def start_influxd(directory: Path, **kwargs: Any) -> InfluxDBServer:
    """A started influxd of its own, for a fixture. Skips the test when influxd is not
    installed, unless CONNECTORSYNC_REQUIRE_INFLUXDB=1 (CI), which makes that a failure."""
    require_influxd()
    server = InfluxDBServer(directory, **kwargs)
    try:
        server.start()
    except InfluxDBStartError as exc:
        pytest.fail(f"influxd is installed but did not start: {exc}")
    return server


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    """One influxd for the module, with authentication on (``influxd.admin``)."""
    server = start_influxd(tmp_path_factory.mktemp("influxd"), auth_enabled=True)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def syncing_child(path: str, serverurl: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """Another process with a running background syncer on the cache at ``path`` (sending to
    ``serverurl``, if given), once its first pass is done."""
    code = (
        "import time\n"
        "from connectorsync import Logger\n"
        f"lg = Logger({path!r})\n"
        + (f"lg.serverurl = {serverurl!r}\n" if serverurl else "")
        + "lg.syncperiod = 3600\n"
        "lg.sync_jitter = 0\n"  # its first pass at once, not up to 6 min later
        "lg.start()\n"
        "while lg.lastsynctime == 0: time.sleep(0.01)\n"
        "print('syncing', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [PYTHON, "-c", code], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "syncing\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def peak_memory(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and the peak of Python memory it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def power_cut_run(
    path: str, durability: str, count: int, threads: int = 1, pace: float = 0.0, timed: bool = False
) -> Any:
    """Insert ``count`` values per thread in a child whose unsynced writes vanish
    (``tests/helpers/powercut.py``); return the (stream, value) pairs whose insert returned.
    ``timed``: return ``([(stream, value, when returned)], {"at": cut, "latency": longest
    batched commit})`` instead, times by the child's ``time.monotonic()``."""
    args = [path, durability, str(count), str(threads), str(pace)]
    result = subprocess.run(
        [PYTHON, "-m", "tests.helpers.powercut", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "ready" and lines[-1].startswith("cut "), result.stderr
    rows = [(name, int(value), float(at)) for name, value, at in map(str.split, lines[1:-1])]
    if not timed:
        return [(name, value) for name, value, _ in rows]
    _, at, latency = lines[-1].split()
    return rows, {"at": float(at), "latency": float(latency)}


# MQTT brokers and subscribers shared by test_mqtt.py and test_mqtt_hostile.py.
ACL = """\
user reader
topic readwrite #

user device
topic write sensors/temperature
"""
USERS = {"device": "device-pw", "reader": "reader-pw"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    made = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[MQTTSubscriber]:
    made = MQTTSubscriber(broker)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    made = start_mosquitto(tmp_path / "mosquitto", users=USERS, acl=ACL)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def reader(acl_broker: MosquittoBroker) -> Iterator[MQTTSubscriber]:
    made = MQTTSubscriber(acl_broker, auth=("reader", USERS["reader"]))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    """A loopback HTTP receiver, stopped after the test (a module may define its own)."""
    rcv = HTTPReceiver().start()
    try:
        yield rcv
    finally:
        rcv.stop()


# PostgreSQL: one server for the whole session (initdb takes a second), a table per test.
REQUIRE_POSTGRES = "CONNECTORSYNC_REQUIRE_POSTGRES"


def require_postgres() -> None:
    """The one place that decides for a test needing PostgreSQL when there is none: skip,
    saying how to install it, or fail under CONNECTORSYNC_REQUIRE_POSTGRES=1 (which .ci/run
    sets after installing it) or CI=true, so that CI never skips the PostgreSQL tests."""
    missing = None
    if find_postgres() is None:
        missing = "PostgreSQL is not installed: `apt-get install postgresql` to run its tests"
    else:
        try:
            import psycopg  # noqa: F401 - only whether it imports
        except ImportError:
            missing = "psycopg is not installed: pip install 'connectorsync[postgres]'"
    if missing is None:
        return
    if os.environ.get(REQUIRE_POSTGRES) == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{missing} ({REQUIRE_POSTGRES}=1 or CI=true requires them)")
    pytest.skip(missing)


def start_postgres(**kwargs: Any) -> PostgresServer:
    """A started PostgreSQL of its own in a new temporary directory (see
    :class:`PostgresServer` for ``kwargs``); skipped or failed by :func:`require_postgres`
    when there is none. The caller calls ``cleanup()``."""
    require_postgres()
    server = PostgresServer(**kwargs)
    try:
        server.start()
    except PostgresStartError as exc:
        server.cleanup()
        pytest.fail(f"PostgreSQL is installed but did not start: {exc}")
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session (tests that stop or restart it use their own)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_table() -> str:
    """A table name of its own for the test (PostgresRemote creates it)."""
    return "t_" + uuid.uuid4().hex[:16]
