"""Tests of connectorsync.testing.ConnectorDBServer over real loopback HTTP.

They use ``requests`` directly for the wire contract and the real connectordb
0.3.5 client (ConnectorDB and Logger) for compatibility.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import connectordb
import pytest
import requests
from connectordb.logger import Logger
from jsonschema import Draft4Validator

from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.server import OLDER_MSG, SCHEMA_MSG, UNORDERED_MSG, SchemaChecker

STREAM = "alice/sensor/temperature"
MIB = 1024 * 1024


@pytest.fixture
def srv() -> Iterator[ConnectorDBServer]:
    server = ConnectorDBServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def api(srv: ConnectorDBServer) -> Iterator[requests.Session]:
    """A session authenticated as the device alice/sensor."""
    key = srv.add_device("alice", "sensor")
    with requests.Session() as session:
        session.auth = ("", key)
        yield session


def crud(srv: ConnectorDBServer, path: str) -> str:
    return f"{srv.url}/api/v1/crud/{path}"


def make_stream(
    srv: ConnectorDBServer, api: requests.Session, schema: Any = None, path: str = STREAM
) -> None:
    body = {} if schema is None else {"schema": json.dumps(schema)}
    r = api.post(crud(srv, path), json=body)
    assert r.status_code == 200, r.text


def insert(
    srv: ConnectorDBServer,
    api: requests.Session,
    points: Any,
    method: str = "POST",
    path: str = STREAM,
) -> requests.Response:
    return api.request(method, crud(srv, path + "/data"), data=json.dumps(points))


def assert_error(r: requests.Response, status: int, msg: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "msg", "ref"}
    assert body["code"] == status
    assert uuid.UUID(body["ref"]).version == 4
    if msg is not None:
        assert body["msg"] == msg


def points(*ts: float) -> list[dict]:
    return [{"t": t, "d": t * 10} for t in ts]


# -- basics -----------------------------------------------------------------------


def test_ping_and_keep_alive_headers(srv: ConnectorDBServer, api: requests.Session) -> None:
    r = api.get(srv.url + "/api/v1/", params={"q": "this"})
    assert r.status_code == 200
    assert r.text == "alice/sensor"
    assert r.headers["Content-Length"] == str(len(r.content))
    assert r.headers.get("Connection", "").lower() != "close"
    assert srv.requests == [("GET", "/api/v1/?q=this")]


def test_auth_failures(srv: ConnectorDBServer, api: requests.Session) -> None:
    with requests.Session() as anon:
        assert_error(anon.get(srv.url + "/api/v1/", params={"q": "this"}), 401)
        anon.auth = ("", "not-a-key")
        assert_error(anon.get(crud(srv, "alice/sensor")), 401)
    srv.add_device("bob", "phone")
    assert_error(api.get(crud(srv, "bob/phone")), 403)
    assert_error(api.post(crud(srv, "bob/phone/x"), json={}), 403)


def test_read_user_and_device(srv: ConnectorDBServer, api: requests.Session) -> None:
    user = api.get(crud(srv, "alice")).json()
    assert (user["name"], user["role"]) == ("alice", "user")
    device = api.get(crud(srv, "alice/sensor")).json()
    assert (device["name"], device["user"]) == ("sensor", "alice")
    assert api.get(crud(srv, "alice/sensor"), params={"q": "ls"}).json() == []
    make_stream(srv, api, {"type": "number"})
    [stream] = api.get(crud(srv, "alice/sensor"), params={"q": "ls"}).json()
    assert stream["name"] == "temperature"
    assert_error(api.get(crud(srv, "alice/nodevice")), 404)


def test_unknown_paths_and_methods(srv: ConnectorDBServer, api: requests.Session) -> None:
    assert_error(api.get(srv.url + "/nothing"), 404)
    assert_error(api.get(srv.url + "/api/v1/meta/unknown"), 404)
    assert_error(api.get(crud(srv, STREAM + "/data/extra")), 404)
    make_stream(srv, api)
    assert_error(api.patch(crud(srv, STREAM), json={}), 405)
    assert_error(api.delete(crud(srv, STREAM + "/data")), 405)
    assert_error(api.request("FOO", crud(srv, STREAM)), 405)
    assert_error(api.get(crud(srv, STREAM + "/data"), params={"q": "bogus"}), 400)


# -- streams ------------------------------------------------------------------------


def test_create_read_delete_stream(srv: ConnectorDBServer, api: requests.Session) -> None:
    assert_error(api.get(crud(srv, STREAM)), 404)
    r = api.post(crud(srv, STREAM), json={"schema": '{"type": "number"}', "nickname": "T"})
    assert r.status_code == 200
    assert r.json()["schema"] == '{"type":"number"}'  # minified, as ConnectorDB stores it
    assert api.get(crud(srv, STREAM)).json() == {
        "name": "temperature",
        "schema": '{"type":"number"}',
        "nickname": "T",
        "description": "",
        "icon": "",
        "datatype": "",
        "downlink": False,
        "ephemeral": False,
    }
    assert srv.stream_schema(STREAM) == {"type": "number"}
    assert_error(api.post(crud(srv, STREAM), json={"schema": "{}"}), 409)
    assert insert(srv, api, points(1, 2)).status_code == 200

    r = api.delete(crud(srv, STREAM))
    assert r.status_code == 200
    assert_error(api.get(crud(srv, STREAM)), 404)
    assert_error(api.delete(crud(srv, STREAM)), 404)
    assert srv.stream_schema(STREAM) is None
    with pytest.raises(KeyError):
        srv.datapoints(STREAM)
    make_stream(srv, api)  # recreated streams start empty
    assert srv.datapoints(STREAM) == []


def test_stream_names_and_schemas(srv: ConnectorDBServer, api: requests.Session) -> None:
    for bad in ("1abc", "a b", "a.b", "_x", "a" * 30):
        assert_error(api.post(crud(srv, "alice/sensor/" + bad), json={}), 400)
    for good in ("a", "a-b_C9", "x" * 29):
        assert api.post(crud(srv, "alice/sensor/" + good), json={}).status_code == 200
    for schema in ("not json", '{"type": 5}', "[1]", '{"minimum": "x"}'):
        assert_error(api.post(crud(srv, "alice/sensor/s"), json={"schema": schema}), 400)
    assert_error(api.post(crud(srv, "alice/sensor/s"), data="{bad"), 400)
    assert_error(api.post(crud(srv, "alice/nodevice/s"), json={}), 404)


# -- inserts --------------------------------------------------------------------------


def test_insert_rules(srv: ConnectorDBServer, api: requests.Session) -> None:
    assert_error(insert(srv, api, points(1)), 403)  # no such stream
    make_stream(srv, api, {"type": "number"})
    r = insert(srv, api, points(1, 2))
    assert (r.status_code, r.text) == (200, "ok")
    assert_error(insert(srv, api, [{"t": 3, "d": "x"}]), 403, SCHEMA_MSG)
    assert_error(insert(srv, api, [{"t": 3, "d": True}]), 403, SCHEMA_MSG)  # bool is no number
    assert_error(insert(srv, api, points(4, 3)), 403, UNORDERED_MSG)
    assert_error(insert(srv, api, points(1.5, 5)), 403, OLDER_MSG)
    assert srv.datapoints(STREAM) == points(1, 2)


def test_equal_timestamps_allowed(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    assert insert(srv, api, [{"t": 1, "d": "a"}, {"t": 1, "d": "b"}]).status_code == 200
    assert insert(srv, api, [{"t": 1, "d": "c"}]).status_code == 200
    assert [p["d"] for p in srv.datapoints(STREAM)] == ["a", "b", "c"]


def test_put_restamps_older_points(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api, {"type": "number"})
    assert insert(srv, api, points(10, 20)).status_code == 200
    assert insert(srv, api, points(5, 15, 25), method="PUT").status_code == 200
    restamped = [{"t": 20.0, "d": 50}, {"t": 20.0, "d": 150}, {"t": 25.0, "d": 250}]
    assert srv.datapoints(STREAM) == [*points(10, 20), *restamped]
    bad = [{"t": 1, "d": 1}, {"t": 2, "d": "x"}]
    assert_error(insert(srv, api, bad, method="PUT"), 403, SCHEMA_MSG)
    assert_error(insert(srv, api, points(30, 29), method="PUT"), 403, UNORDERED_MSG)
    assert len(srv.datapoints(STREAM)) == 5


def test_insert_is_all_or_nothing(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api, {"type": "integer"})
    bad = [{"t": 1, "d": 1}, {"t": 2, "d": 2}, {"t": 3, "d": 3.0}]
    assert_error(insert(srv, api, bad), 403, SCHEMA_MSG)
    assert_error(insert(srv, api, [{"t": 1, "d": 1}, {"t": 2}]), 400)
    assert srv.datapoints(STREAM) == []


def test_malformed_insert_bodies(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    url = crud(srv, STREAM + "/data")
    for body in (
        "[",
        '{"t": 1, "d": 1}',
        "[1]",
        '[{"t": null, "d": 1}]',  # no "t" at all is fine: the server's time (accounts tests)
        '[{"t": "1", "d": 1}]',
        '[{"t": true, "d": 1}]',
        '[{"t": NaN, "d": 1}]',
        '[{"t": 1e999, "d": 1}]',
        '[{"t": 1}]',
        '[{"t": 1, "d": Infinity}]',
        '[{"t": 1, "d": 1e999}]',
        "\xff",
    ):
        assert_error(api.post(url, data=body.encode("latin-1")), 400)
    assert srv.datapoints(STREAM) == []
    assert insert(srv, api, []).status_code == 200


def test_body_size_limit(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    url = crud(srv, STREAM + "/data")
    assert_error(api.post(url, data=b"[" + b" " * (10 * MIB - 1) + b"]"), 413)
    # The connection stays usable and a body of exactly 10 MiB is accepted.
    assert api.post(url, data=b"[" + b" " * (10 * MIB - 2) + b"]").status_code == 200


def test_values_of_every_json_type_round_trip(
    srv: ConnectorDBServer, api: requests.Session
) -> None:
    make_stream(srv, api)
    values = [1, -2.5, 10**30, 'é"\n', True, None, [1, {"a": []}], {"x": {"y": 1.5}}]
    assert insert(srv, api, [{"t": i, "d": v} for i, v in enumerate(values)]).status_code == 200
    assert [p["d"] for p in srv.datapoints(STREAM)] == values
    r = api.get(crud(srv, STREAM + "/data"), params={"i1": 0, "i2": 0})
    assert r.json() == srv.datapoints(STREAM)


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "number"},
        {"type": "integer"},
        {"type": "string"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": ["string", "number"]},
        {"type": "number", "minimum": 0},
    ],
)
def test_schema_fast_path_agrees_with_jsonschema(schema: dict) -> None:
    checker = SchemaChecker(json.dumps(schema))
    validator = Draft4Validator(schema)
    for value in (0, 1, -1, 1.0, 1.5, 10**30, True, False, None, "", "1", [], [1], {}, {"a": 1}):
        assert checker.accepts([value], {type(value)}) == validator.is_valid(value), value


# -- reads --------------------------------------------------------------------------------


def test_reads_by_index_time_and_length(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api, {"type": "number"})
    assert api.get(crud(srv, STREAM + "/data"), params={"q": "length"}).text == "0"
    assert insert(srv, api, points(*range(1, 11))).status_code == 200
    url = crud(srv, STREAM + "/data")

    def times(**params: Any) -> list[float]:
        r = api.get(url, params=params)
        assert r.status_code == 200, r.text
        return [p["t"] for p in r.json()]

    assert api.get(url, params={"q": "length"}).text == "10"
    assert times(i1=-1, i2=0) == [10]
    assert times(i1=0, i2=0) == list(range(1, 11))
    assert times(i1=2, i2=5) == [3, 4, 5]
    assert times(i1=-3, i2=-1) == [8, 9]
    assert times(i1=-100, i2=2) == [1, 2]
    assert times(i1=5, i2=100) == [6, 7, 8, 9, 10]
    assert times(i1=8, i2=3) == []
    assert times(i1=3) == [4, 5, 6, 7, 8, 9, 10]
    assert times(t1=3, t2=6) == [3, 4, 5]
    assert times(t1=3) == times(t1=3, t2=0) == list(range(3, 11))
    assert times(t1=3, limit=2) == [3, 4]
    assert times(t1=3, t2=6, limit=0) == [3, 4, 5]
    assert times(t2=4) == [1, 2, 3]
    assert times(t1=20) == []
    assert_error(api.get(url, params={"i1": 0, "t1": 1}), 400)
    assert_error(api.get(url, params={"i1": "x"}), 400)
    assert_error(api.get(url, params={"t1": "nan"}), 400)
    assert_error(api.get(crud(srv, "alice/sensor/missing/data"), params={"i1": 0, "i2": 0}), 404)


# -- persistence -----------------------------------------------------------------------------


def test_restart_keeps_port_and_memory_storage(
    srv: ConnectorDBServer, api: requests.Session
) -> None:
    make_stream(srv, api, {"type": "number"})
    assert insert(srv, api, points(1)).status_code == 200
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        api.get(srv.url + "/api/v1/", params={"q": "this"})
    srv.start()
    assert srv.port == port
    assert insert(srv, api, points(2)).status_code == 200
    assert srv.datapoints(STREAM) == points(1, 2)


def test_file_storage_survives_restarts(tmp_path: Path) -> None:
    db = str(tmp_path / "cdb.sqlite")
    with ConnectorDBServer(path=db) as first:
        key = first.add_device("alice", "sensor")
        with requests.Session() as api:
            api.auth = ("", key)
            make_stream(first, api, {"type": "number"})
            assert insert(first, api, points(1)).status_code == 200
            first.stop()
            first.start()
            assert insert(first, api, points(2)).status_code == 200
    first.close()
    second = ConnectorDBServer(path=db)
    try:
        assert second.add_device("alice", "sensor") == key
        assert second.datapoints(STREAM) == points(1, 2)
        assert second.stream_schema(STREAM) == {"type": "number"}
        with second, requests.Session() as api:
            api.auth = ("", key)
            assert api.get(crud(second, STREAM + "/data"), params={"q": "length"}).text == "2"
    finally:
        second.close()


# -- fault injection -----------------------------------------------------------------------


def test_fail_next(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    srv.fail_next(2, status=503, retry_after=7, methods={"POST"})
    assert api.get(crud(srv, STREAM)).status_code == 200  # GET is not targeted
    for _ in range(2):
        r = insert(srv, api, points(1))
        assert_error(r, 503)
        assert r.headers["Retry-After"] == "7"
    assert srv.datapoints(STREAM) == []
    assert insert(srv, api, points(1)).status_code == 200
    srv.fail_next(1, status=500)
    r = api.get(crud(srv, STREAM))
    assert_error(r, 500)
    assert "Retry-After" not in r.headers
    assert api.get(crud(srv, STREAM)).status_code == 200


def test_delay(srv: ConnectorDBServer, api: requests.Session) -> None:
    ping = srv.url + "/api/v1/"
    srv.delay(2.0, n=1)
    with pytest.raises(requests.Timeout):
        api.get(ping, params={"q": "this"}, timeout=0.2)
    assert api.get(ping, params={"q": "this"}, timeout=1.5).status_code == 200
    srv.delay(0.2)
    for _ in range(2):
        start = time.monotonic()
        assert api.get(ping, params={"q": "this"}).status_code == 200
        assert time.monotonic() - start >= 0.2
    srv.delay(0)
    assert api.get(ping, params={"q": "this"}, timeout=1.5).status_code == 200


def test_stop_cuts_a_delayed_request_short(srv: ConnectorDBServer) -> None:
    key = srv.add_device("alice", "sensor")
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def call() -> None:
        with requests.Session() as session:
            try:
                session.get(srv.url + "/api/v1/", params={"q": "this"}, auth=("", key), timeout=30)
                outcome.put(None)
            except requests.RequestException as e:
                outcome.put(e)

    srv.delay(60)
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while not srv.requests:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.01)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 10
    caller.join(timeout=30)
    assert isinstance(outcome.get(timeout=1), requests.ConnectionError)


def test_drop_before(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    srv.drop_before()
    assert api.get(crud(srv, STREAM)).status_code == 200  # only inserts are dropped
    with pytest.raises(requests.ConnectionError):
        insert(srv, api, points(1))
    assert srv.datapoints(STREAM) == []
    assert insert(srv, api, points(1)).status_code == 200
    assert srv.datapoints(STREAM) == points(1)


def test_drop_after_commit(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    srv.drop_after_commit(2)
    for t in (1, 2):
        with pytest.raises(requests.ConnectionError):
            insert(srv, api, points(t), method="PUT")
    assert srv.datapoints(STREAM) == points(1, 2)
    assert insert(srv, api, points(3)).status_code == 200


def test_reject_and_clear_faults(srv: ConnectorDBServer, api: requests.Session) -> None:
    make_stream(srv, api)
    seen = []

    def odd(path: str, point: dict) -> bool:
        seen.append(path)
        return point["d"] % 2 == 1

    srv.reject(odd)
    assert_error(insert(srv, api, [{"t": 1, "d": 2}, {"t": 2, "d": 3}]), 403, SCHEMA_MSG)
    assert insert(srv, api, [{"t": 1, "d": 2}]).status_code == 200
    assert seen[0] == STREAM
    srv.reject(None)
    assert insert(srv, api, [{"t": 2, "d": 3}]).status_code == 200
    srv.reject(odd)
    srv.fail_next(5)
    srv.drop_before(5)
    srv.delay(5)
    srv.clear_faults()
    assert insert(srv, api, [{"t": 3, "d": 5}]).status_code == 200
    assert [p["d"] for p in srv.datapoints(STREAM)] == [2, 3, 5]


# -- the connectordb 0.3.5 client -------------------------------------------------------------


def test_connectordb_client_round_trip(srv: ConnectorDBServer) -> None:
    key = srv.add_device("alice", "sensor")
    cdb = connectordb.ConnectorDB(key, url=srv.url)
    try:
        assert cdb.path == "alice/sensor"
        stream = cdb["temperature"]
        assert not stream.exists()
        stream.create({"type": "number"})
        assert stream.exists()
        assert stream.schema == {"type": "number"}
        stream.insert(1.5)
        stream.insert(2)
        now = time.time()
        stream.insert_array([{"t": now + 1, "d": 3}, {"t": now + 2, "d": 4}])
        assert len(stream) == 4
        assert stream[-1] == {"t": now + 2, "d": 4}
        assert [p["d"] for p in stream[:]] == [1.5, 2, 3, 4]
        assert [p["d"] for p in stream(t1=now + 0.5, t2=now + 1.5)] == [3]
        assert [s.name for s in cdb.streams()] == ["temperature"]
        with pytest.raises(connectordb._connection.AuthenticationError):
            stream.insert("not a number")
        stream.delete()
        assert not stream.exists()
    finally:
        cdb.close()


def test_connectordb_logger_round_trip(srv: ConnectorDBServer, tmp_path: Path) -> None:
    key = srv.add_device("alice", "sensor")

    def init(logger: Logger) -> None:
        logger.apikey = key
        logger.serverurl = srv.url

    log = Logger(str(tmp_path / "logger.db"), on_create=init, syncraise=True)
    try:
        log.addStream("x", {"type": "number"})
        log.insert("x", 1)
        log.insert("x", 2)
        assert len(log) == 2
        log.sync()
        assert len(log) == 0
        assert [p["d"] for p in srv.datapoints("alice/sensor/x")] == [1, 2]
        assert srv.stream_schema("alice/sensor/x") == {"type": "number"}
    finally:
        log.connectordb.close()
        log.close()


# -- main() -------------------------------------------------------------------------------------


def test_main_serves_until_sigterm() -> None:
    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    cmd = [sys.executable, "-m", "connectorsync.testing.server", "--port", "0", "--device", "a/b"]
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read_lines() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()
        try:
            url = lines.get(timeout=30).strip()
            apikey = lines.get(timeout=30).strip()
            assert url.startswith("http://127.0.0.1:")
            r = requests.get(url + "/api/v1/", params={"q": "this"}, auth=("", apikey), timeout=10)
            assert (r.status_code, r.text) == (200, "a/b")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            reader.join(timeout=30)
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_names_with_a_trailing_newline_are_refused(
    srv: ConnectorDBServer, api: requests.Session
) -> None:
    """Issue 9, defect 8: the name pattern must match the whole name ('$' matches before a
    final newline), as ConnectorDB's does."""
    assert_error(api.post(crud(srv, "alice/sensor/temp%0A"), json={}), 400)
    with pytest.raises(KeyError):
        srv.datapoints("alice/sensor/temp\n")
    with pytest.raises(ValueError, match="invalid"):
        srv.add_device("bob\n", "dev")
