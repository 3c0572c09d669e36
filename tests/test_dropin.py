"""``addStream`` as connectordb 0.3.5 has it: properties, creation on the server at once,
and the flows of the connectordb-python project's logger tests, against a real server."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import apsw
import pytest
import requests

from connectorsync import Logger, StreamError, UnknownStreamError, ValidationError
from connectorsync.errors import SchemaError
from connectorsync.remotes.base import DeliveryKind
from connectorsync.testing import ConnectorDBServer

from .conftest import dump, syncer_threads, wait_for, within

PROPS = {
    "nickname": "Greenhouse temperature",
    "description": "Air temperature at the door",
    "icon": "material:thermostat",
    "datatype": "temperature.c",
    "ephemeral": False,
    "downlink": True,
}


def read_stream(server: ConnectorDBServer, path: str, apikey: str) -> dict[str, Any] | None:
    """The stream as the server's REST API shows it (GET /api/v1/crud/...), or None."""
    response = requests.get(f"{server.url}/api/v1/crud/{path}", auth=("", apikey), timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def create_on_server(server: ConnectorDBServer, path: str, apikey: str, schema: Any) -> None:
    """Create a stream on the server as another client would (0.3.5's ``Stream.create``)."""
    response = requests.post(
        f"{server.url}/api/v1/crud/{path}",
        data=json.dumps({"schema": json.dumps(schema)}),
        auth=("", apikey),
        timeout=10,
    )
    response.raise_for_status()


def online(cache_path: str, server: ConnectorDBServer) -> Logger:
    return Logger(cache_path, apikey=server.apikey, serverurl=server.url)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- properties


def test_properties_reach_the_server_when_add_stream_creates_it(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with online(cache_path, server) as lg:
        lg.addStream("temperature", {"type": "number"}, **PROPS)
        stream = read_stream(server, "alice/sensor/temperature", server.apikey)  # type: ignore[attr-defined]
        assert stream is not None  # created at once, before any sync
        assert {k: stream[k] for k in PROPS} == PROPS
        assert json.loads(stream["schema"]) == {"type": "number"}
        assert lg.streams == {"temperature": {"type": "number"}}


def test_add_stream_with_a_schema_creates_it_on_the_server_before_any_sync(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with online(cache_path, server) as lg:
        lg.add_stream("humidity", {"type": "number"})
        assert server.stream_schema("alice/sensor/humidity") == {"type": "number"}
        assert lg.lastsynctime == 0  # no sync ran
        lg.insert("humidity", 40.5)
        report = lg.sync()
        assert report.ok and report.sent == {"humidity": 1}
    # Known to exist remotely: the sync did not ask to create it again.
    assert ("POST", "/api/v1/crud/alice/sensor/humidity") in server.requests
    assert server.requests.count(("POST", "/api/v1/crud/alice/sensor/humidity")) == 1


def test_an_existing_remote_stream_keeps_its_schema_with_a_warning(
    cache_path: str, server: ConnectorDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    create_on_server(server, "alice/sensor/mode", server.apikey, {"type": "string"})  # type: ignore[attr-defined]
    with online(cache_path, server) as lg:
        with caplog.at_level(logging.WARNING, logger="connectorsync.streams"):
            lg.addStream("mode", {"type": "number"}, nickname="ignored: it exists")
        warnings = [r for r in caplog.records if r.name == "connectorsync.streams"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert "'mode'" in warnings[0].getMessage() and "remote" in warnings[0].getMessage()
        assert lg.streams == {"mode": {"type": "string"}}  # the server's schema, used here
        with pytest.raises(ValidationError):
            lg.insert("mode", 3)
        lg.insert("mode", "auto")
        assert lg.sync().sent == {"mode": 1}
    assert server.stream_schema("alice/sensor/mode") == {"type": "string"}
    assert read_stream(server, "alice/sensor/mode", server.apikey)["nickname"] == ""  # type: ignore[attr-defined,index]


def test_the_same_schema_on_the_server_is_no_warning(
    cache_path: str, server: ConnectorDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    create_on_server(server, "alice/sensor/t", server.apikey, {"type": "number"})  # type: ignore[attr-defined]
    with online(cache_path, server) as lg, caplog.at_level(logging.WARNING):
        lg.addStream("t", {"type": "number"})
        assert lg.streams == {"t": {"type": "number"}}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_offline_add_stream_registers_and_the_first_sync_creates_it_with_properties(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with online(cache_path, server) as lg:
        server.stop()  # down while the streams are added
        within(30, lg.addStream, "temperature", {"type": "number"}, what="addStream")
        lg.addStream("door", {"type": "boolean"}, **PROPS)
        assert lg.streams == {"temperature": {"type": "number"}, "door": {"type": "boolean"}}
        lg.insert("door", True)
        server.start()  # back, on the same port, with the same store
        assert server.stream_schema("alice/sensor/door") is None
        report = lg.sync()
        assert report.ok and report.sent == {"door": 1}
    stream = read_stream(server, "alice/sensor/door", server.apikey)  # type: ignore[attr-defined]
    assert stream is not None and {k: stream[k] for k in PROPS} == PROPS
    assert server.stream_schema("alice/sensor/temperature") == {"type": "number"}


def test_without_an_apikey_add_stream_asks_nobody(cache_path: str) -> None:
    # A new cache points at the default serverurl: with no apikey yet there is nobody to
    # ask, so registering must not wait for a server (it is created at the first sync).
    with Logger(cache_path) as lg:
        within(5, lg.addStream, "temperature", {"type": "number"}, what="addStream")
        assert lg.streams == {"temperature": {"type": "number"}}


def test_refused_credentials_register_locally_with_a_warning(
    cache_path: str, server: ConnectorDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Logger(cache_path, apikey="not-a-key", serverurl=server.url) as lg:
        with caplog.at_level(logging.WARNING, logger="connectorsync.streams"):
            lg.addStream("temperature", {"type": "number"}, nickname="t")
        assert lg.streams == {"temperature": {"type": "number"}}
        assert any(r.levelno == logging.WARNING for r in caplog.records)
        assert server.stream_schema("alice/sensor/temperature") is None
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.insert("temperature", 1.0)
        assert lg.sync().sent == {"temperature": 1}
    stream = read_stream(server, "alice/sensor/temperature", server.apikey)  # type: ignore[attr-defined]
    assert stream is not None and stream["nickname"] == "t"


@pytest.mark.parametrize(
    ("properties", "words"),
    [
        ({"colour": "red"}, ["'colour'", "unknown property", "nickname"]),
        ({"downlink": "yes"}, ["'downlink'", "bool", "'yes'"]),
        ({"ephemeral": 1}, ["'ephemeral'", "bool", "int"]),
        ({"nickname": 5}, ["'nickname'", "str", "5"]),
    ],
)
def test_a_bad_property_is_refused_and_nothing_changes(
    cache_path: str, server: ConnectorDBServer, properties: dict[str, Any], words: list[str]
) -> None:
    with online(cache_path, server) as lg:
        lg.addStream("temperature", {"type": "number"}, nickname="t")
        before, requests_before = dump(cache_path), len(server.requests)
        for add in (lg.addStream, lg.addStream_force):
            with pytest.raises(StreamError) as raised:
                add("temperature", {"type": "string"}, **properties)
            assert "'temperature'" in str(raised.value)
            assert all(word in str(raised.value) for word in words), str(raised.value)
        with pytest.raises(StreamError):
            lg.addStream("humidity", {"type": "number"}, **properties)
        assert dump(cache_path) == before
        assert len(server.requests) == requests_before  # the server was not even asked
        assert lg.streams == {"temperature": {"type": "number"}}


def test_a_bad_schema_is_refused_before_asking_the_server(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with online(cache_path, server) as lg:
        requests_before = len(server.requests)
        with pytest.raises(SchemaError, match="'s'"):
            lg.addStream("s", {"type": "no such type"})
        with pytest.raises(SchemaError, match="not JSON"):
            lg.addStream("s", "{not json")
        assert len(server.requests) == requests_before and "s" not in lg


def test_a_schema_as_json_text_works_as_in_0_3_5(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with online(cache_path, server) as lg:
        lg.addStream("s", '{"type": "string"}')
        assert lg.streams == {"s": {"type": "string"}}
    assert server.stream_schema("alice/sensor/s") == {"type": "string"}


def test_adding_again_overwrites_the_local_registration(cache_path: str) -> None:
    # Offline (no apikey): as 0.3.5's INSERT OR REPLACE, the last schema and properties win,
    # but for a schema the cached datapoints do not fit (test_reconfigure.py).
    with Logger(cache_path) as lg:
        lg.addStream("s", {"type": "number"}, nickname="first")
        lg.insert("s", 1.5)
        with pytest.raises(SchemaError, match="cannot change its schema"):
            lg.addStream("s", {"type": "string"}, description="second")
        lg.addStream("s", {"type": ["number", "string"]}, description="second")
        assert lg.streams == {"s": {"type": ["number", "string"]}}
        lg.insert("s", "now a string")
        assert len(lg) == 2  # cached datapoints stay as they were
        lg.cleardata()
        lg.addStream_force("s", {"type": "boolean"})
        assert lg.streams == {"s": {"type": "boolean"}}
    with Logger(cache_path) as lg:
        assert lg.streams == {"s": {"type": "boolean"}}
    conn = apsw.Connection(cache_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:  # by name: later schema versions add columns after it
        ((properties,),) = list(conn.execute("SELECT properties FROM streams"))
    finally:
        conn.close()
    assert json.loads(properties) == {}  # the properties column: replaced by none


def test_overwritten_properties_are_the_ones_sent(
    cache_path: str, server: ConnectorDBServer
) -> None:
    with Logger(cache_path) as lg:  # no apikey yet: registered here only
        lg.addStream("s", {"type": "number"}, nickname="first", icon="a")
        lg.addStream("s", {"type": "number"}, nickname="second")
        lg.apikey, lg.serverurl = server.apikey, server.url  # type: ignore[attr-defined]
        lg.insert("s", 1)
        assert lg.sync().sent == {"s": 1}
    stream = read_stream(server, "alice/sensor/s", server.apikey)  # type: ignore[attr-defined]
    assert stream is not None and (stream["nickname"], stream["icon"]) == ("second", "")


# --------------------------------------------------------------------------- 0.3.5's flows


def test_inserting_flow_of_connectordb_python(cache_path: str, server: ConnectorDBServer) -> None:
    apikey = server.add_device("tester", "logger")
    created = []

    def on_create(lg: Logger) -> None:
        created.append(True)
        lg.apikey = apikey
        lg.serverurl = server.url
        lg.data = {"hi": 56}
        lg.syncperiod = 3.3
        lg.addStream("mystream", {"type": "string"})  # created on the server at once
        assert server.stream_schema("tester/logger/mystream") == {"type": "string"}

    lg = Logger(cache_path, on_create=on_create)
    assert created == [True]
    with pytest.raises(UnknownStreamError):
        lg.addStream("stream_DNE")
    assert lg.name == "tester/logger"
    assert (lg.apikey, lg.serverurl, lg.syncperiod) == (apikey, server.url, 3.3)
    assert len(lg) == 0 and "mystream" in lg and "stream_DNE" not in lg
    assert lg.data == {"hi": 56}
    lg.data = {"hi": 57}
    lg.close()

    lg = Logger(cache_path, on_create=on_create)  # not created again: no on_create
    assert created == [True]
    assert lg.data == {"hi": 57}
    with pytest.raises(ValidationError):
        lg.insert("mystream", 1)
    lg.insert("mystream", "hi")
    lg.insert("mystream", "hello")
    assert len(lg) == 2
    before = time.time()
    assert lg.sync().sent == {"mystream": 2}
    assert len(lg) == 0
    assert before <= lg.lastsynctime <= time.time()
    lg.close()
    assert [p["d"] for p in server.datapoints("tester/logger/mystream")] == ["hi", "hello"]


def test_background_sync_flow_of_connectordb_python(
    cache_path: str, server: ConnectorDBServer
) -> None:
    create_on_server(server, "alice/sensor/mystream", server.apikey, {"type": "string"})  # type: ignore[attr-defined]
    lg = online(cache_path, server)
    try:
        lg.addStream("mystream")  # no schema: the server's
        assert lg.streams == {"mystream": {"type": "string"}}
        lg.syncperiod = 0.2
        lg.start()
        lg.insert("mystream", "hi")
        lg.insert("mystream", "hello")
        wait_for(
            lambda: len(server.datapoints("alice/sensor/mystream")) == 2,
            what="the background syncer to deliver both datapoints",
        )
        wait_for(lambda: len(lg) == 0, what="the cache to empty")
        lg.stop()
        wait_for(lambda: not syncer_threads(cache_path), what="the syncer thread to end")
        lg.insert("mystream", "stays cached")
        assert len(lg) == 1  # nobody syncs any more
    finally:
        lg.close()
    assert [p["d"] for p in server.datapoints("alice/sensor/mystream")] == ["hi", "hello"]


def test_overflow_flow_of_connectordb_python(cache_path: str, server: ConnectorDBServer) -> None:
    with online(cache_path, server) as lg:
        lg.addStream("mystream", {"type": "number"})
        lg.batch_size = 7
        for i in range(50):
            lg.insert("mystream", i)
        assert lg.sync().sent == {"mystream": 50}
        assert len(lg) == 0
    assert [p["d"] for p in server.datapoints("alice/sensor/mystream")] == list(range(50))


class _TwoArgumentRemote:
    """A remote written for the contract before properties: ``ensure_stream(stream, schema)``."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.pushed: list[str] = []

    def ping(self) -> str:
        return "alice/sensor"

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        self.created.append((stream, schema))

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        return None

    def push(self, stream: str, batch: Any) -> None:
        self.pushed += [d for _, _, d in batch]

    def reconcile(self, stream: str) -> float | None:
        return None

    def close(self) -> None: ...


def test_a_remote_without_properties_in_ensure_stream_keeps_working(cache_path: str) -> None:
    remote = _TwoArgumentRemote()
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream("s", {"type": "number"})  # created at once, through the old signature
        assert remote.created == [("s", {"type": "number"})]
        lg.addStream_force("t", {"type": "string"})
        lg.insert("t", "x")
        assert lg.sync().ok and remote.created[-1] == ("t", {"type": "string"})
        assert remote.pushed == ['"x"']


def test_the_connectordb_python_logger_flows_with_its_own_client(cache_path: str) -> None:
    """connectordb-python's logger tests, end to end: accounts made with the real 0.3.5
    client (an admin logs in, creates a user and a device, reads its apikey), then
    ``connectorsync.Logger`` in place of ``connectordb.logger.Logger``: the stream is
    created at ``addStream`` with its properties, ``l.connectordb`` reads it back, adding it
    again overwrites the local registration, and the datapoints arrive through a sync."""
    import connectordb  # a test dependency: the 0.3.5 client itself

    server = ConnectorDBServer(admin=("test", "test"))
    server.start()
    try:
        db = connectordb.ConnectorDB("test", "test", url=server.url)
        usr = db("logger_test")
        assert not usr.exists()
        usr.create("loggertest@localhost", "mypass")
        device = usr["mydevice"]
        device.create()
        apikey = device.apikey
        stream = device["mystream"]

        def on_create(lg: Logger) -> None:
            lg.apikey = apikey
            lg.serverurl = server.url
            lg.addStream("mystream", {"type": "string"}, nickname="My stream", downlink=True)

        assert not stream.exists()
        with Logger(cache_path, on_create=on_create) as lg:
            assert stream.exists()  # created at addStream, before any sync
            assert (stream.nickname, stream.downlink) == ("My stream", True)
            client = lg.connectordb
            assert client.ping() == "logger_test/mydevice"
            assert client["mystream"].schema == {"type": "string"}
            # Adding it again overwrites the local registration; the server's schema stays.
            lg.addStream("mystream", {"type": "string", "maxLength": 20})
            assert lg.streams["mystream"] == {"type": "string"}
            lg.insert("mystream", "Hello World!")
            lg.insert("mystream", "hi")
            assert len(lg) == 2 and len(stream) == 0
            lg.sync()
            assert len(lg) == 0 and len(stream) == 2
        assert [stream[0]["d"], stream[1]["d"]] == ["Hello World!", "hi"]
        usr.delete()
        assert not usr.exists()
    finally:
        server.stop()
