"""`connectorsync sync CACHE` for every built-in remote: the cache records its remote's
configuration, and the command builds that remote again and delivers to it. Real parts: a real
influxd, the loopback HTTP receiver (ThingsBoard's device API too), two ConnectorDB servers;
the command runs as a real subprocess. No password, token or apikey in any output."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import apsw
import pytest

from connectorsync import (
    ConnectorDBRemote,
    DeliveryKind,
    HTTPRemote,
    InfluxDBRemote,
    Logger,
    thingsboard,
)
from connectorsync.cli import main
from connectorsync.errors import ConfigurationError
from connectorsync.remotes import (
    register_remote,
    registered_remotes,
    remote_from_config,
)
from connectorsync.remotes.config import CONFIG_SETTING, recorded_remote, remote_config
from connectorsync.remotes.http import thingsboard_encode
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import PYTHON, ROOT, child_env
from .helpers.lab_remote import LabRemote, received

TOKEN = "TB-T0KEN-s3cret"
HEADER_SECRET = "Bearer H-S3CRET-42"
INFLUX_PASSWORD = "W-S3CRET-77"
SECRETS = (TOKEN, HEADER_SECRET, "H-S3CRET-42", INFLUX_PASSWORD)


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m connectorsync ARGV`` in a real subprocess."""
    return subprocess.run(
        [PYTHON, "-m", "connectorsync", *argv],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def write_offline(path: str, remote: Any, *, attempt: bool = True) -> None:
    """A Logger given ``remote`` caches 3 datapoints while the remote is down; with
    ``attempt`` a sync pass fails against it (the remote is used, not only given)."""
    with Logger(path, remote=remote) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert_many("temperature", [{"t": 1.7e9 + i, "d": 20.0 + i} for i in range(3)])
        if attempt:
            assert not lg.sync().ok
    remote.close()


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver(tokens=[TOKEN], auth=HEADER_SECRET).start()
    try:
        yield rcv
    finally:
        rcv.stop()


# ----------------------------------------------------------------------------- each remote


def test_sync_delivers_a_thingsboard_cache(cache_path: str, receiver: HTTPReceiver) -> None:
    receiver.stop()  # the remote is down while the program logs
    write_offline(cache_path, thingsboard(receiver.url, TOKEN, timeout=5))
    receiver.start()  # the same port again
    result = cli("-vv", "sync", cache_path)
    assert (result.returncode, result.stdout) == (0, "sent 3 datapoints\n"), result.stderr
    assert [item["values"] for item in receiver.telemetry(TOKEN)] == [
        {"temperature": 20.0},
        {"temperature": 21.0},
        {"temperature": 22.0},
    ]
    status = cli("status", cache_path)
    assert "remote:        HTTPRemote('http://127.0.0.1:" in status.stdout
    assert "/api/v1/***/telemetry" in status.stdout
    json_status = cli("status", cache_path, "--json")
    assert_no_secret(result.stdout, result.stderr, status.stdout, json_status.stdout)


def test_sync_delivers_a_plain_http_cache(cache_path: str, receiver: HTTPReceiver) -> None:
    receiver.stop()
    url = receiver.url + "/ingest/{stream}"
    remote = HTTPRemote(url, headers={"Authorization": HEADER_SECRET}, timeout=5)
    write_offline(cache_path, remote)
    receiver.start()
    result = cli("sync", cache_path)
    assert (result.returncode, result.stdout) == (0, "sent 3 datapoints\n"), result.stderr
    assert [p["d"] for p in receiver.items("/ingest/temperature")] == [20.0, 21.0, 22.0]
    assert_no_secret(result.stdout, result.stderr, cli("status", cache_path, "--json").stdout)


def test_sync_delivers_an_influxdb_cache_logged_by_another_process(
    cache_path: str, influxd: InfluxDBServer
) -> None:
    """A program (a child process) logs to InfluxDB without syncing and exits; the command
    delivers its backlog with the program's user and password."""
    influxd.create_database("cli_remotes")
    influxd.query(f"CREATE USER writer WITH PASSWORD '{INFLUX_PASSWORD}'")
    influxd.query('GRANT ALL ON "cli_remotes" TO writer')
    code = (
        "from connectorsync import InfluxDBRemote, Logger\n"
        f"remote = InfluxDBRemote({influxd.url!r}, 'cli_remotes', username='writer',\n"
        f"    password={INFLUX_PASSWORD!r}, tags={{'site': 'lab'}}, timeout=5)\n"
        f"with Logger({cache_path!r}, remote=remote) as lg:\n"
        "    lg.addStream_force('temperature', {'type': 'number'})\n"
        "    lg.insert_many('temperature', [{'t': 1.7e9 + i, 'd': 20.0 + i} for i in range(3)])\n"
    )
    child = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr
    assert influxd.points("temperature", "cli_remotes") == []  # nothing sent yet
    result = cli("-v", "sync", cache_path)
    assert (result.returncode, result.stdout) == (0, "sent 3 datapoints\n"), result.stderr
    rows = influxd.points("temperature", "cli_remotes")
    assert [(r["value"], r["site"]) for r in rows] == [(20.0, "lab"), (21.0, "lab"), (22.0, "lab")]
    status = cli("status", cache_path)
    assert f"InfluxDBRemote({influxd.url!r}, database='cli_remotes')" in status.stdout
    assert_no_secret(result.stdout, result.stderr, status.stdout)


def test_sync_sends_a_given_connectordb_remote_not_the_settings_server(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """The cache's settings name one server, its program gave another: the command syncs to
    the program's, never splitting the data between the two."""
    other = ConnectorDBServer()
    other.start()
    try:
        key = other.add_device("bob", "probe")
        with Logger(cache_path, apikey=server.apikey) as lg:  # type: ignore[attr-defined]
            lg.serverurl = server.url
        write_offline(cache_path, ConnectorDBRemote(other.url, key, timeout=5), attempt=False)
        result = cli("sync", cache_path)
        assert (result.returncode, result.stdout) == (0, "sent 3 datapoints\n"), result.stderr
        assert [p["d"] for p in other.datapoints("bob/probe/temperature")] == [20.0, 21.0, 22.0]
        with pytest.raises(KeyError):  # nothing went to the server in the settings
            server.datapoints("alice/sensor/temperature")
        assert key not in result.stdout + result.stderr
    finally:
        other.stop()


# ----------------------------------------------------------------------------- no secrets


def test_no_secret_in_the_output_nor_the_log(
    cache_path: str, receiver: HTTPReceiver, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    receiver.stop()
    write_offline(cache_path, thingsboard(receiver.url, TOKEN, timeout=5))
    receiver.fail_next(1, status=503)
    receiver.start()
    with caplog.at_level(logging.DEBUG):
        code, out = run("-vv", "sync", cache_path)  # 503: an error, said and logged
        assert code == 1 and "503" in out
        assert run("sync", cache_path) == (0, "sent 3 datapoints\n")
        for argv in (["status", cache_path], ["status", cache_path, "--json"]):
            assert run(*argv)[0] == 0
    captured = capsys.readouterr()
    assert "urllib3" in caplog.text  # the requests were logged, the token masked
    assert_no_secret(out, captured.out, captured.err, caplog.text)


def test_a_config_shows_no_secret_and_builds_the_same_remote() -> None:
    remotes = [
        ConnectorDBRemote("http://127.0.0.1:9", "K3Y-" + INFLUX_PASSWORD),
        InfluxDBRemote("http://127.0.0.1:9", "db", username="u", password=INFLUX_PASSWORD),
        InfluxDBRemote("http://127.0.0.1:9", org="o", bucket="b", token=TOKEN),
        HTTPRemote("http://127.0.0.1:9/{stream}", headers={"Authorization": HEADER_SECRET}),
        thingsboard("http://127.0.0.1:9", TOKEN),
        thingsboard("http://127.0.0.1:9", TOKEN, encode=thingsboard_encode, secrets={"x"}),
    ]
    for remote in remotes:
        config = remote.to_config()
        json.dumps(config)  # JSON-able
        rebuilt = remote_from_config(config)
        assert type(rebuilt) is type(remote) and repr(rebuilt) == repr(remote)
        assert rebuilt.to_config() == config
        assert_no_secret(repr(remote), str(remote))
        remote.close()
        rebuilt.close()
    with pytest.raises(ConfigurationError, match="unknown remote kind 'carrier-pigeon'") as e:
        remote_from_config({"kind": "carrier-pigeon"})
    assert f"known kinds: {', '.join(registered_remotes())}" in str(e.value)
    assert "connectordb, http, influxdb, mqtt, " in str(e.value)
    with pytest.raises(ConfigurationError, match=r"does not fit: .*'colour'"):
        remote_from_config({"kind": "http", "url": "http://127.0.0.1:9", "colour": "red"})


def test_a_subclass_or_an_encode_of_your_own_is_recorded_as_custom() -> None:
    class MyInflux(InfluxDBRemote):
        pass

    config = remote_config(MyInflux("http://127.0.0.1:9", "db"))
    assert config == {
        "kind": "custom",
        "what": f"a remote of your own ({__name__}.{MyInflux.__qualname__})",
    }
    config = thingsboard("http://127.0.0.1:9", TOKEN, encode=json.dumps).to_config()
    assert config == {
        "kind": "custom",
        "what": "an HTTPRemote with an encode function of your own (json.dumps)",
    }
    with pytest.raises(
        ConfigurationError, match=r"\(json.dumps\), which connectorsync cannot build"
    ):
        remote_from_config(config)


# ----------------------------------------------------------------------------- not buildable


class MyRemote:
    """A remote of the user's own: connectorsync cannot build it in another process."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(self) -> None:
        self.pushed: list[tuple[str, int]] = []

    def __repr__(self) -> str:
        return "MyRemote('lab')"

    def ping(self) -> str:
        return "me"

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        pass

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        return {}

    def push(self, stream: str, batch: Sequence[Any]) -> None:
        self.pushed.append((stream, len(batch)))

    def reconcile(self, stream: str) -> float | None:
        return None

    def close(self) -> None:
        pass


def test_a_remote_of_your_own_is_not_synced_by_the_command(
    cache_path: str, server: ConnectorDBServer, capsys
) -> None:
    with Logger(cache_path, apikey=server.apikey) as lg:  # type: ignore[attr-defined]
        lg.serverurl = server.url
    write_offline(cache_path, MyRemote(), attempt=False)
    assert run("sync", cache_path) == (2, "")
    err = capsys.readouterr().err
    assert "syncs to MyRemote('lab')" in err and "test_cli_remotes.MyRemote" in err
    assert "cannot build" in err and "Logger.sync()" in err
    with pytest.raises(KeyError):  # not sent to the server in the settings either
        server.datapoints("alice/sensor/temperature")
    # Also once a pass went to it (the remote is used, not only given).
    with Logger(cache_path, remote=MyRemote()) as lg:
        assert lg.sync().ok
        lg.insert("temperature", 30.0)
    assert run("sync", cache_path) == (2, "")
    assert "test_cli_remotes.MyRemote" in capsys.readouterr().err


def test_an_http_remote_with_an_encode_of_your_own_is_named(
    cache_path: str, receiver: HTTPReceiver, capsys
) -> None:
    def my_encode(stream: str, points: list[tuple[float, Any]]) -> Any:
        return {"points": points}

    write_offline(cache_path, HTTPRemote(receiver.url + "/x", encode=my_encode), attempt=False)
    assert run("sync", cache_path) == (2, "")
    err = capsys.readouterr().err
    assert "encode function of your own" in err and "my_encode" in err
    assert receiver.requests == []


def test_a_cache_of_an_older_version_without_a_config_is_refused_as_before(
    cache_path: str, server: ConnectorDBServer, receiver: HTTPReceiver, capsys
) -> None:
    """An older connectorsync recorded only the remote's repr: the command cannot build it,
    says so (exit 2), and sends nothing to the ConnectorDB server in the settings."""
    with Logger(cache_path, apikey=server.apikey) as lg:  # type: ignore[attr-defined]
        lg.serverurl = server.url
    write_offline(cache_path, thingsboard(receiver.url, TOKEN), attempt=False)
    conn = apsw.Connection(cache_path)
    conn.execute("DELETE FROM settings WHERE key = 'remote.config'")
    conn.close()
    assert run("sync", cache_path) == (2, "")
    err = capsys.readouterr().err
    assert "syncs to HTTPRemote(" in err and "no configuration" in err
    assert receiver.requests == []
    with pytest.raises(KeyError):
        server.datapoints("alice/sensor/temperature")
    # Its program run once with this version records the configuration: then it syncs.
    Logger(cache_path, remote=thingsboard(receiver.url, TOKEN)).close()
    assert run("sync", cache_path) == (0, "sent 3 datapoints\n")
    assert len(receiver.telemetry(TOKEN)) == 3


def test_the_remote_a_pass_used_last_is_the_one_synced(
    cache_path: str, server: ConnectorDBServer, receiver: HTTPReceiver
) -> None:
    """The cache's remote changes with its program: the command follows the last pass."""
    with Logger(cache_path, apikey=server.apikey) as lg:  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream_force("temperature", {"type": "number"})
        assert lg.sync().ok  # the default remote: the ConnectorDB server in the settings
    # Given another remote, a Logger records it only once a pass used it (down here).
    receiver.stop()
    with Logger(cache_path, remote=thingsboard(receiver.url, TOKEN, timeout=5)) as lg:
        assert lg.status().remote == f"ConnectorDBRemote({server.url!r})"
        lg.insert("temperature", 20.0)
        assert not lg.sync().ok
        assert lg.status().remote.startswith("HTTPRemote(")
    receiver.start()
    assert run("sync", cache_path) == (0, "sent 1 datapoints\n")
    assert [item["values"] for item in receiver.telemetry(TOKEN)] == [{"temperature": 20.0}]
    # Back to the default remote: its pass forgets the configuration; the settings say it.
    with Logger(cache_path) as lg:
        lg.insert("temperature", 21.0)
        server.fail_next(1, status=503)
        assert not lg.sync().ok
    assert run("sync", cache_path) == (0, "sent 1 datapoints\n")
    assert [p["d"] for p in server.datapoints("alice/sensor/temperature")] == [21.0]
    assert len(receiver.telemetry(TOKEN)) == 1


# ----------------------------------------------------------------------------- the registry

#: Entries as connectorsync recorded them before remotes registered themselves (main at
#: 375a715, printed by its own code): each still builds the same remote.
RECORDED_BEFORE_THE_REGISTRY = [
    """{"remote": "ConnectorDBRemote('http://127.0.0.1:9')", "config": {"kind": "connectordb",
    "serverurl": "http://127.0.0.1:9", "apikey": "K3Y", "timeout": 30.0, "verify": true,
    "compression": null}}""",
    """{"remote": "InfluxDBRemote('http://127.0.0.1:9', database='db')", "config": {"kind":
    "influxdb", "url": "http://127.0.0.1:9", "database": "db", "org": null, "bucket": null,
    "token": null, "username": "u", "password": "pw", "tags": {"site": "lab"},
    "create_database": false, "timeout": 30.0, "verify": true, "compression": "gzip"}}""",
    """{"remote": "InfluxDBRemote('http://127.0.0.1:9', org='o', bucket='b')", "config":
    {"kind": "influxdb", "url": "http://127.0.0.1:9", "database": null, "org": "o", "bucket":
    "b", "token": "tok", "username": null, "password": null, "tags": {}, "create_database":
    false, "timeout": 30.0, "verify": true, "compression": "gzip"}}""",
    """{"remote": "HTTPRemote('http://127.0.0.1:9/{stream}')", "config": {"kind": "http",
    "url": "http://127.0.0.1:9/{stream}", "headers": {"Authorization": "Bearer x"},
    "ping_url": null, "secrets": [], "timeout": 30.0, "verify": true, "compression": null}}""",
    """{"remote": "HTTPRemote('http://127.0.0.1:9/api/v1/***/telemetry')", "config": {"kind":
    "thingsboard", "url": "http://127.0.0.1:9", "token": "TOK", "compression": null}}""",
    """{"remote": "MQTTRemote('mqtt://127.0.0.1:1883', topic='t/{stream}')", "config":
    {"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "t/{stream}", "payload":
    "datapoint", "fields": "plain", "client_id": null, "username": "u", "password": "p",
    "max_inflight": 100, "timeout": 30.0, "keepalive": 60, "verify": true, "protocol": "5"}}""",
    """{"remote": "MQTTRemote('mqtt://127.0.0.1:1883', topic='v1/devices/me/telemetry')",
    "config": {"kind": "thingsboard_mqtt", "host": "127.0.0.1", "token": "TOK", "payload":
    "batch"}}""",
]


@pytest.mark.parametrize("recorded", RECORDED_BEFORE_THE_REGISTRY)
def test_configs_recorded_before_the_registry_build_the_same(recorded: str) -> None:
    entry = json.loads(recorded)
    remote = recorded_remote({"remote": entry["remote"], CONFIG_SETTING: entry})
    assert remote is not None
    try:
        assert repr(remote) == entry["remote"]
        assert remote.to_config() == entry["config"]  # type: ignore[attr-defined]
        assert remote_config(remote) == entry["config"]  # and recorded the same again
    finally:
        remote.close()


def test_a_registered_remote_of_your_own_is_built_again_by_the_command(
    cache_path: str, tmp_path: Any, capsys
) -> None:
    """A class of the user's own module registers itself; the cache records its config
    and its module, and the command (a real subprocess) imports it and delivers."""
    out = str(tmp_path / "lab.jsonl")
    write_offline(cache_path, LabRemote(out, label="bench 3"), attempt=False)
    result = cli("-v", "sync", cache_path)
    assert (result.returncode, result.stdout) == (0, "sent 3 datapoints\n"), result.stderr
    assert [(p["stream"], p["d"]) for p in received(out)] == [
        ("temperature", 20.0),
        ("temperature", 21.0),
        ("temperature", 22.0),
    ]
    assert "LabRemote('bench 3')" in cli("status", cache_path).stdout
    assert run("sync", cache_path) == (0, "sent 0 datapoints\n")  # nothing twice
    assert len(received(out)) == 3


def test_a_remote_kind_that_cannot_be_built_here_is_named() -> None:
    """Recorded with a module this process cannot import, or with none: the message names
    the kind, the module, and the kinds known; nothing is built."""
    entry = {"remote": "Far('x')", "config": {"kind": "far.away", "secret": "S3"}}
    settings: dict[str, Any] = {"remote": "Far('x')", CONFIG_SETTING: entry}
    with pytest.raises(ConfigurationError, match=r"unknown remote kind 'far\.away'") as raised:
        recorded_remote(settings)
    assert "known kinds: connectordb, " in str(raised.value)
    entry["module"] = "no_such_module_of_yours"
    with pytest.raises(ConfigurationError) as raised:
        recorded_remote(settings)
    message = str(raised.value)
    assert "'far.away'" in message and "'no_such_module_of_yours'" in message
    assert "cannot be imported" in message and "S3" not in message
    entry["module"] = "os; rm -rf /"
    with pytest.raises(ConfigurationError, match="is not a module name"):
        recorded_remote(settings)


def test_a_remote_of_the_programs_script_is_recorded_as_custom(tmp_path: Any) -> None:
    """Registered in ``__main__`` (the program's script): another process cannot import it."""

    class ScriptRemote(LabRemote):
        kind = "tests.script"

    ScriptRemote.__module__ = "__main__"
    register_remote(ScriptRemote)
    config = remote_config(ScriptRemote(str(tmp_path / "x")))
    assert config["kind"] == "custom" and "defined in the program's script" in config["what"]
