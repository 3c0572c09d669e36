"""One contract suite, run against every remote (litestream's ``RunWithReplicaClient``).

Each backend is the real remote against a real server: ConnectorDBRemote against the
loopback ConnectorDBServer, InfluxDBRemote against a real influxd (skipped without one, see
``test_influxdb.start_influxd``), HTTPRemote and the ThingsBoard preset against HTTPReceiver.
Faults are real too: the fake servers inject them; influxd is stopped for an outage, refuses
a string in a float field by itself, and loses an answer through a loopback proxy that lets
the write through and cuts the connection before the answer. MQTTRemote and the
thingsboard_mqtt preset publish to a real mosquitto (skipped without one, see
``conftest.require_mosquitto``), read back by a subscriber, in both protocol versions;
mosquitto is stopped for an outage, and an MQTT-aware loopback proxy refuses a message (MQTT 5:
PUBACK 0x99; 3.1.1: a plain PUBACK, the message dropped, as brokers do) or loses a PUBACK.
NATSRemote publishes to a real nats-server with JetStream (skipped without one, see
``conftest.require_nats``), read back from the stream; nats-server is stopped for an outage,
and a NATS-aware loopback proxy refuses a message (as JetStream refuses one over a stream's
``max_msg_size``) or loses an acknowledgement.

PostgresRemote writes a table of its own on a real PostgreSQL (skipped without one, see
``conftest.require_postgres``): a CHECK constraint refuses a value, the server is stopped for
an outage, and a proxy lets a batch's COMMIT through and cuts its answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import connectorsync
import connectorsync.remotes
from connectorsync import ConnectorDBRemote, DeliveryKind, Logger
from connectorsync.errors import (
    ArgumentTypeError,
    AuthError,
    ConfigurationError,
    TransientRemoteError,
)
from connectorsync.remotes import register_remote, registered_remotes, remote_from_config
from connectorsync.remotes.base import Describable, Remote, bind_cache
from connectorsync.remotes.config import remote_config
from connectorsync.remotes.http import HTTPRemote, thingsboard
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.remotes.line_protocol import ns_to_seconds
from connectorsync.remotes.mqtt import THINGSBOARD_TOPIC, MQTTRemote, thingsboard_mqtt
from connectorsync.remotes.nats import NATSRemote
from connectorsync.remotes.postgres import PostgresRemote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.loopback import AnswerLosingProxy, shut
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTFaultProxy, MQTTSubscriber
from connectorsync.testing.nats import NATSFaultProxy, NATSServer
from connectorsync.testing.postgres import PostgresFaultProxy, PostgresServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import start_mosquitto, start_nats, wait_for

STREAM = "temperature"
T0 = 1_700_000_000.0
POISON = "poison"  # refused by every backend (InfluxDB: a string in a float field)


def points(values: list[Any], start: int = 0) -> list[dict[str, Any]]:
    """Datapoints at T0 + i/4 s: exact in floats, nanoseconds and milliseconds alike."""
    return [{"t": T0 + (start + i) * 0.25, "d": v} for i, v in enumerate(values)]


def pairs(datapoints: list[dict[str, Any]]) -> list[tuple[float, Any]]:
    return [(p["t"], p["d"]) for p in datapoints]


# ----------------------------------------------------------------------------- backends


class Backend:
    """A remote and the server behind it, with the faults the contract needs.

    ``exactly_once``: True when a lost answer leaves no duplicate (the remote reconciles or
    is idempotent); False for at-least-once delivery.
    ``retry_after``: the Retry-After an outage answers with (None: the server is just down).
    """

    name = ""
    exactly_once = True
    #: Each message carries an id that lets a consumer drop a duplicate (:meth:`unique`).
    message_ids = False
    #: The remote tells a refused datapoint from a stored one (all but MQTT 3.1.1).
    refusals_seen = True
    retry_after: float | None = 7.0

    def __init__(self) -> None:
        self._closing: list[Any] = []

    def remote(self) -> Remote:
        """A fresh remote with good credentials."""
        raise NotImplementedError

    def bad_remote(self) -> Remote:
        """A fresh remote whose credentials the server refuses."""
        raise NotImplementedError

    def stored(self) -> list[tuple[float, Any]]:
        """``(t, value)`` of every datapoint the server holds for STREAM, in stored order."""
        raise NotImplementedError

    def unique(self) -> list[tuple[float, Any]]:
        """:meth:`stored` with the duplicates a consumer drops by the messages' ids."""
        raise NotImplementedError

    def refuse(self, value: Any) -> None:
        """Make the server refuse datapoints holding ``value``."""

    def outage(self) -> contextlib.AbstractContextManager[None]:
        """Inside: every request fails transiently. After: the server works again."""
        raise NotImplementedError

    def lose_next_answer(self) -> None:
        """The next write is stored but its answer never arrives. Call before ``remote()``."""
        raise NotImplementedError

    def logger(self, path: str, remote: Remote | None = None, **options: Any) -> Logger:
        lg = Logger(
            path,
            remote=remote or self.remote(),
            on_create=lambda lg: lg.add_stream(STREAM, {}),
            **options,
        )
        return self.closing(lg)

    def closing(self, thing: Any) -> Any:
        self._closing.append(thing)
        return thing

    def close(self) -> None:
        for thing in reversed(self._closing):
            thing.close()


class ConnectorDBBackend(Backend):
    name = "connectordb"

    def __init__(self, server: ConnectorDBServer) -> None:
        super().__init__()
        self.server = server
        self.apikey: str = server.apikey  # type: ignore[attr-defined]  # set by the fixture

    def remote(self) -> Remote:
        return self.closing(ConnectorDBRemote(self.server.url, self.apikey, timeout=5))

    def bad_remote(self) -> Remote:
        return self.closing(ConnectorDBRemote(self.server.url, "wrong-key", timeout=5))

    def stored(self) -> list[tuple[float, Any]]:
        try:
            return pairs(self.server.datapoints(f"alice/sensor/{STREAM}"))
        except KeyError:
            return []

    def refuse(self, value: Any) -> None:
        self.server.reject(lambda stream, point: point["d"] == value)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.server.fail_next(10**9, status=503, retry_after=self.retry_after)
        try:
            yield
        finally:
            self.server.clear_faults()

    def lose_next_answer(self) -> None:
        self.server.drop_after_commit(1)


class HTTPBackend(Backend):
    name = "http"
    exactly_once = False
    AUTH = "Bearer good-secret"

    def __init__(self) -> None:
        super().__init__()
        self.receiver = HTTPReceiver(auth=self.AUTH).start()
        self.closing(_Stopper(self.receiver))

    def _remote(self, auth: str) -> Remote:
        url = self.receiver.url
        return self.closing(
            HTTPRemote(
                url + "/ingest/{stream}",
                headers={"Authorization": auth},
                ping_url=url + "/health",
                timeout=5,
            )
        )

    def remote(self) -> Remote:
        return self._remote(self.AUTH)

    def bad_remote(self) -> Remote:
        return self._remote("Bearer wrong")

    def stored(self) -> list[tuple[float, Any]]:
        return [(item["t"], item["d"]) for item in self.receiver.items(f"/ingest/{STREAM}")]

    def refuse(self, value: Any) -> None:
        self.receiver.reject(lambda path, item: item["d"] == value)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.receiver.fail_next(10**9, status=503, retry_after=self.retry_after)
        try:
            yield
        finally:
            self.receiver.clear_faults()

    def lose_next_answer(self) -> None:
        self.receiver.drop_after_commit(1)


class ThingsBoardBackend(HTTPBackend):
    name = "thingsboard"
    TOKEN = "DEVICE-TOKEN-123"

    def __init__(self) -> None:
        super().__init__()
        self.receiver.add_token(self.TOKEN)

    def remote(self) -> Remote:
        return self.closing(thingsboard(self.receiver.url, self.TOKEN, timeout=5))

    def bad_remote(self) -> Remote:
        return self.closing(thingsboard(self.receiver.url, "WRONG-TOKEN", timeout=5))

    def stored(self) -> list[tuple[float, Any]]:
        return [
            (item["ts"] / 1000, item["values"][STREAM])
            for item in self.receiver.telemetry(self.TOKEN)
        ]

    def refuse(self, value: Any) -> None:
        self.receiver.reject(lambda path, item: item["values"].get(STREAM) == value)


class InfluxDBBackend(Backend):
    name = "influxdb"
    retry_after = None

    def __init__(self, influxd: InfluxDBServer) -> None:
        super().__init__()
        self.influxd = influxd
        self.db = "contract_" + uuid.uuid4().hex[:12]
        self.proxy: AnswerDroppingProxy | None = None

    def _remote(self, password: str) -> Remote:
        assert self.influxd.admin is not None
        url = self.influxd.url if self.proxy is None else self.proxy.url
        user = self.influxd.admin[0]
        return self.closing(
            InfluxDBRemote(
                url, self.db, username=user, password=password, create_database=True, timeout=5
            )
        )

    def remote(self) -> Remote:
        assert self.influxd.admin is not None
        return self._remote(self.influxd.admin[1])

    def bad_remote(self) -> Remote:
        return self._remote("wrong password")

    def stored(self) -> list[tuple[float, Any]]:
        rows = self.influxd.points(STREAM, self.db)
        return [(ns_to_seconds(row["time"]), row["value"]) for row in rows]

    def refuse(self, value: Any) -> None:
        assert isinstance(value, str)  # a string where floats were written: field type conflict

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.influxd.stop()
        try:
            yield
        finally:
            self.influxd.start()

    def lose_next_answer(self) -> None:
        if self.proxy is None:
            self.proxy = self.closing(AnswerDroppingProxy(self.influxd.port))
        self.proxy.lose_next_answers(1)


class MQTTBackend(Backend):
    """MQTTRemote, one message per datapoint, with a username and password."""

    name = "mqtt"
    exactly_once = False
    message_ids = True
    retry_after = None
    USER, PASSWORD = "device", "good-password"
    protocol = "5"

    def __init__(self, directory: Any) -> None:
        super().__init__()
        users = {self.USER: self.PASSWORD, "reader": "reader-password"}
        self.broker: MosquittoBroker = self.closing(
            _BrokerStopper(start_mosquitto(directory, users=users))
        ).broker
        self.subscriber = self.closing(
            MQTTSubscriber(self.broker, auth=("reader", "reader-password"))
        )
        self.proxy: MQTTFaultProxy | None = None

    @property
    def url(self) -> str:
        return self.broker.url if self.proxy is None else self.proxy.url

    def _remote(self, password: str) -> Remote:
        return self.closing(
            MQTTRemote(
                self.url,
                topic="sensors/{stream}",
                username=self.USER,
                password=password,
                timeout=5,
                protocol=self.protocol,
            )
        )

    def remote(self) -> Remote:
        return self._remote(self.PASSWORD)

    def bad_remote(self) -> Remote:
        return self._remote("wrong-password")

    def items(self) -> list[dict[str, Any]]:
        self.subscriber.flush()
        found = []
        for _, payload in self.subscriber.messages(f"sensors/{STREAM}"):
            body = json.loads(payload)
            found += body if isinstance(body, list) else [body]
        return found

    def stored(self) -> list[tuple[float, Any]]:
        return [(item["t"], item["d"]) for item in self.items()]

    def unique(self) -> list[tuple[float, Any]]:
        seen: dict[tuple[str, int], tuple[float, Any]] = {}
        for item in self.items():
            seen.setdefault((item["stream"], item["id"]), (item["t"], item["d"]))
        return list(seen.values())

    def _proxy(self) -> MQTTFaultProxy:
        if self.proxy is None:
            self.proxy = self.closing(MQTTFaultProxy(self.broker.port))
        return self.proxy

    def refuse(self, value: Any) -> None:
        self._proxy().refuse(lambda payload: json.dumps(value).encode() in payload)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.broker.stop()
        try:
            yield
        finally:
            self.broker.start()

    def lose_next_answer(self) -> None:
        self._proxy().lose_next_answers(1)


class MQTT311Backend(MQTTBackend):
    """MQTTRemote under MQTT 3.1.1: the protocol has no way to refuse one message."""

    name = "mqtt311"
    refusals_seen = False
    protocol = "3.1.1"


class MQTTQoS2Backend(MQTTBackend):
    """MQTTRemote with QoS 2: a lost PUBCOMP is finished in the remote's session, so a lost
    answer leaves no duplicate (counted by a QoS 2 subscriber)."""

    name = "mqtt_qos2"
    exactly_once = True

    def __init__(self, directory: Any) -> None:
        super().__init__(directory)
        self.subscriber.close()
        self.subscriber = self.closing(
            MQTTSubscriber(self.broker, auth=("reader", "reader-password"), qos=2)
        )

    def _remote(self, password: str) -> Remote:
        return self.closing(
            MQTTRemote(
                self.url,
                topic="sensors/{stream}",
                username=self.USER,
                password=password,
                timeout=5,
                qos=2,
            )
        )


class ThingsBoardMQTTBackend(MQTTBackend):
    """thingsboard_mqtt: the token as the username, ThingsBoard's topic and payload."""

    name = "thingsboard_mqtt"
    TOKEN = "DEVICE-TOKEN-123"

    # mosquitto wants a password of every user in its password file; ThingsBoard takes a
    # token alone (or, with "MQTT Basic" credentials, a password too: that is sent here).
    USER = TOKEN

    def _remote(self, password: str) -> Remote:
        token = self.TOKEN if password == self.PASSWORD else "WRONG-TOKEN"
        return self.closing(thingsboard_mqtt(self.url, token, password=self.PASSWORD, timeout=5))

    def items(self) -> list[dict[str, Any]]:
        self.subscriber.flush()
        return [json.loads(p) for _, p in self.subscriber.messages(THINGSBOARD_TOPIC)]

    def stored(self) -> list[tuple[float, Any]]:
        return [(item["ts"] / 1000, item["values"][STREAM]) for item in self.items()]

    def unique(self) -> list[tuple[float, Any]]:
        # ThingsBoard keeps one value per key and ts: the ts is the id.
        return list({pair[0]: pair for pair in self.stored()}.values())


class NATSBackend(Backend):
    """NATSRemote with a user and password, into the JetStream stream SENSORS."""

    name = "nats"
    message_ids = True
    retry_after = None
    USER, PASSWORD = "device", "good-password"

    def __init__(self, directory: Any) -> None:
        super().__init__()
        self.server: NATSServer = start_nats(directory, users={self.USER: self.PASSWORD})
        self.closing(_ServerStopper(self.server))
        self.server.add_stream("SENSORS", ["sensors.>"])
        self.proxy: NATSFaultProxy | None = None

    def _remote(self, password: str) -> Remote:
        url = self.server.url if self.proxy is None else self.proxy.url
        return self.closing(
            NATSRemote(
                url, subject="sensors.{stream}", user=self.USER, password=password, timeout=5
            )
        )

    def remote(self) -> Remote:
        return self._remote(self.PASSWORD)

    def bad_remote(self) -> Remote:
        return self._remote("wrong-password")

    def items(self) -> list[tuple[str | None, dict[str, Any]]]:
        found = self.server.stream_messages("SENSORS")
        return [(m.msg_id, m.json()) for m in found if m.subject == f"sensors.{STREAM}"]

    def stored(self) -> list[tuple[float, Any]]:
        return [(item["t"], item["d"]) for _, item in self.items()]

    def unique(self) -> list[tuple[float, Any]]:
        seen: dict[str | None, tuple[float, Any]] = {}
        for msg_id, item in self.items():
            seen.setdefault(msg_id, (item["t"], item["d"]))
        return list(seen.values())

    def _proxy(self) -> NATSFaultProxy:
        if self.proxy is None:
            self.proxy = self.closing(NATSFaultProxy(self.server.port))
        return self.proxy

    def refuse(self, value: Any) -> None:
        needle = b'"d":' + json.dumps(value).encode() + b"}"
        self._proxy().refuse(lambda payload: needle in payload)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def lose_next_answer(self) -> None:
        self._proxy().lose_next_answers(1)


class _ServerStopper:
    def __init__(self, server: NATSServer) -> None:
        self.server = server

    def close(self) -> None:
        self.server.stop()


class PostgresBackend(Backend):
    """PostgresRemote into a table of its own on the session's PostgreSQL: a CHECK constraint
    refuses a value (SQLSTATE 23514), the server is stopped for an outage, and a proxy lets a
    batch's COMMIT through and cuts its answer."""

    name = "postgres"
    retry_after = None
    DEVICE = "contract-device"  # remotes are used by hand too, without a Logger's identity

    def __init__(self, server: PostgresServer) -> None:
        super().__init__()
        self.server = server
        self.table = "contract_" + uuid.uuid4().hex[:12]
        self.proxy: PostgresFaultProxy | None = None

    def _remote(self, password: str | None = None) -> Remote:
        port = None if self.proxy is None else self.proxy.port
        dsn = self.server.dsn(port=port, password=password)
        return self.closing(PostgresRemote(dsn, self.table, device=self.DEVICE, timeout=5))

    def remote(self) -> Remote:
        return self._remote()

    def bad_remote(self) -> Remote:
        return self._remote("wrong-password")

    def stored(self) -> list[tuple[float, Any]]:
        return [(t, value) for _, _, t, value in self.server.rows(self.table)]

    def refuse(self, value: Any) -> None:
        self.remote().ping()  # makes the table
        literal = json.dumps(value).replace("'", "''")  # DDL takes no parameters
        self.server.query(f"ALTER TABLE {self.table} ADD CHECK (value <> '{literal}'::jsonb)")

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def lose_next_answer(self) -> None:
        if self.proxy is None:
            self.proxy = self.closing(PostgresFaultProxy(self.server.port))
        self.proxy.lose_next_answers(1)


class _BrokerStopper:
    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker

    def close(self) -> None:
        self.broker.stop()


class _Stopper:
    def __init__(self, receiver: HTTPReceiver) -> None:
        self.receiver = receiver

    def close(self) -> None:
        self.receiver.stop()


class AnswerDroppingProxy(AnswerLosingProxy):
    """A loopback TCP proxy to ``127.0.0.1:port``. Armed, it lets the next request that starts
    with ``prefix`` through, waits for the server's answer (the write is stored by then),
    and cuts the client's connection instead of relaying it: a lost acknowledgement."""

    def __init__(self, port: int, prefix: bytes = b"POST /write") -> None:
        self._prefix = prefix
        super().__init__(port)

    def _pump(
        self, src: socket.socket, dst: socket.socket, drop: threading.Event, from_client: bool
    ) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_client and data.startswith(self._prefix) and self.take_armed():
                    drop.set()
                elif not from_client and drop.is_set():
                    break  # the server answered: stored. The client never hears of it.
                dst.sendall(data)
        except OSError:
            pass
        finally:
            shut(src, dst)


#: Every shipped remote kind the contract runs against (test_remote_contract_fanout.py too).
KINDS = [
    "connectordb",
    "influxdb",
    "http",
    "thingsboard",
    "mqtt",
    "mqtt311",
    "thingsboard_mqtt",
    "mqtt_qos2",
    "nats",
    "postgres",
]


def make_backend(request: pytest.FixtureRequest) -> Backend:
    """The backend of ``request.param`` (one of :data:`KINDS`), its servers from fixtures."""
    if request.param == "connectordb":
        return ConnectorDBBackend(request.getfixturevalue("server"))
    if request.param == "influxdb":
        return InfluxDBBackend(request.getfixturevalue("influxd"))
    if request.param == "http":
        return HTTPBackend()
    if request.param in ("mqtt", "mqtt311"):
        kind = MQTTBackend if request.param == "mqtt" else MQTT311Backend
        return kind(request.getfixturevalue("tmp_path") / "mosquitto")
    if request.param == "thingsboard_mqtt":
        return ThingsBoardMQTTBackend(request.getfixturevalue("tmp_path") / "mosquitto")
    if request.param == "mqtt_qos2":
        return MQTTQoS2Backend(request.getfixturevalue("tmp_path") / "mosquitto")
    if request.param == "nats":
        return NATSBackend(request.getfixturevalue("tmp_path") / "nats")
    if request.param == "postgres":
        return PostgresBackend(request.getfixturevalue("postgres"))
    return ThingsBoardBackend()


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made = make_backend(request)
    try:
        yield made
    finally:
        made.close()


def check_stored_after_a_lost_answer(
    backend: Backend, first: list[dict[str, Any]], second: list[dict[str, Any]]
) -> None:
    """What the server holds after ``first`` went with a lost answer, then ``second``: each
    once where the kind is exactly once; else ``first`` again (at least once), nothing lost."""
    stored = backend.stored()
    if backend.exactly_once:
        assert stored == pairs(first + second)
    elif backend.message_ids:
        # Sent again, but what the broker acknowledged before the drop: the message whose
        # PUBACK was lost came twice (at least once), and its id lets a consumer drop it.
        assert set(stored) == set(pairs(first + second))
        assert len(stored) > len(first + second)
        assert backend.unique() == pairs(first + second)
    else:
        assert stored == pairs(first + first + second)  # sent again: nothing lost
        assert set(stored) == set(pairs(first + second))


# ----------------------------------------------------------------------------- the contract


def test_push_delivers_in_order(backend: Backend) -> None:
    remote = backend.remote()
    bind_cache(remote, "0123456789abcdef0123456789abcdef")  # what a Logger does; used by hand here
    assert isinstance(remote, Remote)
    assert remote.ping()
    remote.ensure_stream(STREAM, {})
    remote.ensure_stream(STREAM, {})  # twice is harmless
    first = [(1, T0, "1.5"), (2, T0 + 0.25, "-2"), (3, T0 + 0.5, "3.25")]
    second = [(4, T0 + 0.75, "4")]
    remote.push(STREAM, first)
    remote.push(STREAM, second)
    remote.push(STREAM, [])  # nothing to do
    assert backend.stored() == [(T0, 1.5), (T0 + 0.25, -2), (T0 + 0.5, 3.25), (T0 + 0.75, 4)]
    newest = remote.reconcile(STREAM)
    # An at-least-once remote cannot say what it holds (MQTT QoS 2 is exactly once without
    # reconciling: its session finishes what was in flight).
    at_least_once = remote.delivery_kind is DeliveryKind.AT_LEAST_ONCE
    assert newest == (None if at_least_once else T0 + 0.75)
    assert remote.reconcile(STREAM) == newest  # read-only
    assert remote.stream_schema(STREAM) is not None
    remote.close()
    remote.close()  # twice is harmless


def test_sync_reads_back_what_was_sent(backend: Backend, cache_path: str) -> None:
    sent = points([float(i) * 1.5 - 7 for i in range(25)])
    lg = backend.logger(cache_path, batch_size=7)
    lg.insert_many(STREAM, sent)
    report = lg.sync()
    assert report.ok, report.errors
    assert report.sent == {STREAM: 25}
    assert backend.stored() == pairs(sent)
    assert len(lg) == 0
    assert lg.sync().sent == {}  # nothing twice


def test_a_refused_datapoint_is_isolated(backend: Backend, cache_path: str) -> None:
    backend.refuse(POISON)
    values: list[Any] = [float(i) for i in range(10)]
    values[5] = POISON
    sent = points(values)
    lg = backend.logger(cache_path)
    lg.insert_many(STREAM, sent)
    report = lg.sync()
    assert report.ok, report.errors
    if not backend.refusals_seen:
        # MQTT 3.1.1's documented limit (said in status): a refusal looks like a delivery.
        assert report.sent == {STREAM: 10} and lg.deadletters() == []
        assert backend.stored() == [p for p in pairs(sent) if p[1] != POISON]
        assert "cannot tell a refused message" in (lg.status().remote or "")
        return
    assert report.sent == {STREAM: 9} and report.deadlettered == {STREAM: 1}
    assert backend.stored() == [p for p in pairs(sent) if p[1] != POISON]
    (letter,) = lg.deadletters()
    assert (letter.t, letter.d) == (T0 + 5 * 0.25, POISON) and letter.reason
    assert len(lg) == 0


def test_a_transient_failure_keeps_everything_cached(backend: Backend, cache_path: str) -> None:
    sent = points([1.0, 2.0, 3.0])
    lg = backend.logger(cache_path)
    lg.insert_many(STREAM, sent)
    with backend.outage():
        report = lg.sync()
        assert isinstance(report.exception, TransientRemoteError)
        assert report.exception.retry_after == backend.retry_after
        assert len(lg) == 3 and lg.deadletters() == []
    assert backend.stored() == []
    report = lg.sync()
    assert report.ok and report.sent == {STREAM: 3}
    assert backend.stored() == pairs(sent)


def test_the_background_syncer_rides_out_an_outage(
    backend: Backend, cache_path: str, fast_backoff: None
) -> None:
    backend.retry_after = 0.05  # the fake servers ask for a short wait
    sent = points([1.0, 2.0, 3.0])
    lg = backend.logger(cache_path, sync_jitter=0)
    lg.insert_many(STREAM, sent)
    with backend.outage():
        lg.start()
        wait_for(lambda: lg.status().last_error, what="the outage to be noticed")
        assert len(lg) == 3
    wait_for(lambda: len(lg) == 0, what="delivery after the outage")
    assert backend.stored() == pairs(sent)
    lg.close()


def test_a_lost_answer_loses_nothing(backend: Backend, cache_path: str) -> None:
    """Settled by the delivery kind: an ordered remote (ConnectorDB) says what arrived; an
    idempotent one (InfluxDB) gets the batch again and stores it once; a plain HTTP sink gets
    it again and stores it twice (at least once)."""
    backend.lose_next_answer()
    first, second = points([1.0, 2.0, 3.0]), points([4.0], start=3)
    lg = backend.logger(cache_path)
    lg.insert_many(STREAM, first)
    report = lg.sync()
    assert not report.ok  # the answer was lost
    ordered = lg.remote.delivery_kind is DeliveryKind.ORDERED
    assert report.sent == ({STREAM: 3} if ordered else {})  # reconciled, or sent again
    lg.insert_many(STREAM, second)
    report = lg.sync()
    assert report.ok, report.errors
    assert len(lg) == 0 and lg.deadletters() == []
    check_stored_after_a_lost_answer(backend, first, second)


def test_refused_credentials_keep_the_data(backend: Backend, cache_path: str) -> None:
    sent = points([1.0, 2.0])
    lg = backend.logger(cache_path, remote=backend.bad_remote())
    lg.insert_many(STREAM, sent)
    report = lg.sync()
    assert isinstance(report.exception, AuthError)
    assert len(lg) == 2 and lg.deadletters() == []
    lg.close()
    assert backend.stored() == []
    lg = backend.logger(cache_path)  # the same cache with good credentials
    assert lg.sync().sent == {STREAM: 2}
    assert backend.stored() == pairs(sent)


# ----------------------------------------------------------------------------- described as data

#: For each kind of configuration connectorsync ships, remotes that give it, with each
#: recorded argument set to something other than its default somewhere. Built, not used.
EXAMPLES: dict[str, Callable[[], list[Any]]] = {
    "connectordb": lambda: [
        ConnectorDBRemote("http://127.0.0.1:9", "K3Y"),
        ConnectorDBRemote("127.0.0.1:9", "K", timeout=3, verify="/ca.pem", compression="gzip"),
    ],
    "influxdb": lambda: [
        InfluxDBRemote("http://127.0.0.1:9", "db", username="u", password="p", tags={"a": "b"}),
        InfluxDBRemote("http://127.0.0.1:9", org="o", bucket="b", token="t", compression=None),
        InfluxDBRemote("http://127.0.0.1:9", "db", create_database=True, verify=False),
    ],
    "http": lambda: [
        HTTPRemote("http://127.0.0.1:9/{stream}", headers={"Authorization": "Bearer x"}),
        HTTPRemote("https://h.example/in", ping_url="https://h.example/ok", secrets=["in"]),
    ],
    "thingsboard": lambda: [
        thingsboard("http://127.0.0.1:9", "TOK"),
        thingsboard("http://127.0.0.1:9", "TOK", timeout=4, compression="gzip", secrets={"x"}),
    ],
    "mqtt": lambda: [
        MQTTRemote("mqtt://127.0.0.1", topic="s/{stream}", username="u", password="p"),
        MQTTRemote("mqtts://h.example:8883", payload="batch", protocol="3.1.1", client_id="c"),
        MQTTRemote("mqtt://127.0.0.1:1", max_packet_size=4096, fields="thingsboard"),
    ],
    "nats": lambda: [
        NATSRemote("nats://127.0.0.1", user="u", password="p", window=8, identity="abc"),
        NATSRemote("tls://h.example:4223", subject="s.{stream}", token="T", verify=False),
        NATSRemote("nats://127.0.0.1:1", timeout=3, create_stream="SENSORS"),
    ],
    "thingsboard_mqtt": lambda: [
        thingsboard_mqtt("127.0.0.1", "TOK"),
        thingsboard_mqtt("mqtts://h.example:8883", "TOK", payload="batch", keepalive=30),
    ],
    "postgres": lambda: [
        PostgresRemote("postgresql://u:p@127.0.0.1:9/db"),
        PostgresRemote("host=127.0.0.1 dbname=db", "s.t", device="d", password="p", typed=True),
        PostgresRemote("postgresql://127.0.0.1/db", hypertable=False, timeout=3),
    ],
}


def shipped_kinds() -> dict[str, type[Describable]]:
    """The registered kinds whose class connectorsync ships (tests may register more)."""
    return {
        kind: cls
        for kind, cls in registered_remotes().items()
        if cls.__module__.startswith("connectorsync.")
    }


def test_every_shipped_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(shipped_kinds())


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_registered_remote_describes_itself(kind: str) -> None:
    """to_config is JSON data of its kind; from_config builds the same remote from it (the
    same class, repr and config), directly and through the registry."""
    cls = registered_remotes()[kind]
    for remote in EXAMPLES[kind]():
        config = remote.to_config()
        assert config["kind"] == kind and type(remote) is cls
        assert json.loads(json.dumps(config, allow_nan=False)) == config  # JSON, as it is
        assert remote.to_config() == config and remote.to_config() is not config
        for again in (cls.from_config(config), remote_from_config(config)):
            assert type(again) is cls and repr(again) == repr(remote)
            assert again.to_config() == config  # type: ignore[attr-defined]
            again.close()
        remote.close()


def test_every_shipped_remote_is_exported() -> None:
    """Each registered class connectorsync ships, and each preset function, is exported
    from ``connectorsync`` and ``connectorsync.remotes``: a new remote cannot be forgotten."""
    for kind, cls in shipped_kinds().items():
        name = cls.__name__ if kind == cls.kind else kind  # a preset: its function's name
        for module in (connectorsync, connectorsync.remotes):
            assert name in module.__all__, (module.__name__, name)
            assert callable(getattr(module, name))
        assert getattr(connectorsync.remotes, name) is getattr(
            __import__(cls.__module__, fromlist=[name]), name
        )


def test_from_config_refuses_what_it_does_not_build() -> None:
    config = HTTPRemote("http://127.0.0.1:9").to_config()
    with pytest.raises(ConfigurationError, match=r"builds the kinds 'influxdb'; got 'http'"):
        InfluxDBRemote.from_config(config)
    with pytest.raises(ArgumentTypeError, match=r"config must be a dict"):
        InfluxDBRemote.from_config(["influxdb"])  # type: ignore[arg-type]
    wrong = {**InfluxDBRemote("http://127.0.0.1:9", "db", password="S3", username="u").to_config()}
    with pytest.raises(ConfigurationError, match=r"does not fit: .*'colour'") as raised:
        InfluxDBRemote.from_config({**wrong, "colour": "red"})
    assert "S3" not in str(raised.value)
    with pytest.raises(ConfigurationError, match=r"does not fit") as raised:
        ConnectorDBRemote.from_config({"kind": "connectordb", "serverurl": "x", "apikey": 5})
    assert str(raised.value).endswith("an argument of the wrong kind (AttributeError)")


class _Minimal:
    """The parts of a remote the registry does not look at."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(self, where: str = "here") -> None:
        self.where = where

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    def to_config(self) -> dict[str, Any]:
        return {"kind": type(self).kind, "where": self.where}  # type: ignore[attr-defined]

    @classmethod
    def from_config(cls, config: Any) -> Any:
        return cls(config["where"])

    def ping(self) -> str:
        return self.where

    def ensure_stream(self, stream: str, schema: Any, properties: Any = None) -> None:
        return None

    def stream_schema(self, stream: str) -> dict[str, Any]:
        return {}

    def push(self, stream: str, batch: Any) -> None:
        pass

    def reconcile(self, stream: str) -> None:
        return None

    def close(self) -> None:
        pass


def test_a_class_of_your_own_joins_the_registry() -> None:
    @register_remote
    class Yours(_Minimal):
        kind: ClassVar[str] = "tests.yours"

    assert registered_remotes()["tests.yours"] is Yours
    again = remote_from_config(Yours("there").to_config())
    assert type(again) is Yours and again.where == "there"  # type: ignore[attr-defined]
    register_remote(Yours)  # again (a module imported twice): harmless

    class Inherited(Yours):  # no kind of its own: it cannot take its base's
        pass

    class Taken(_Minimal):
        kind: ClassVar[str] = "influxdb"

    class Nameless(_Minimal):
        kind: ClassVar[str] = "no spaces"

    class NoFromConfig:
        kind: ClassVar[str] = "tests.half"

        def to_config(self) -> dict[str, Any]:
            return {}

    for wrong, message in (
        (Inherited, "as a class attribute of its own; got None"),
        (Taken, "remote kind 'influxdb' is connectorsync.remotes.influxdb.InfluxDBRemote's"),
        (Nameless, "a remote kind is a name"),
        (NoFromConfig, "needs to_config.. and a classmethod from_config"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            register_remote(wrong)  # type: ignore[type-var]
        assert wrong not in registered_remotes().values()
    with pytest.raises(ArgumentTypeError, match=r"register_remote\(\): cls must be a remote class"):
        register_remote("influxdb")  # type: ignore[type-var]
    assert "tests.half" not in registered_remotes()


def test_a_subclass_registered_under_a_kind_of_its_own_is_built_as_itself() -> None:
    """A shipped remote's subclass that registers gives its own kind, and comes back as
    itself; unregistered, it would be recorded as a remote of your own."""

    @register_remote
    class SiteInflux(InfluxDBRemote):
        kind: ClassVar[str] = "tests.site_influx"

    config = remote_config(SiteInflux("http://127.0.0.1:9", "db", tags={"site": "a"}))
    assert config["kind"] == "tests.site_influx" and config["tags"] == {"site": "a"}
    again = remote_from_config(config)
    assert type(again) is SiteInflux and again.to_config() == config  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"builds the kinds 'tests\.site_influx'; got"):
        SiteInflux.from_config({**config, "kind": "influxdb"})
