"""MQTTRemote: publish datapoints to an MQTT broker with QoS 1; :func:`thingsboard_mqtt`, a preset.

A datapoint is acknowledged by its PUBACK: :meth:`MQTTRemote.push` returns once the broker
acknowledged every message of the batch. A broker cannot say what it stored, so delivery is
**at least once**: when the connection drops (or no PUBACK comes within ``timeout``) with
messages unacknowledged, the push raises :class:`~connectorsync.errors.AmbiguousRemoteError`
and the pass sends the batch again. Each message carries the datapoint's cache id (``"id"``,
never reused within a cache file), so a consumer drops a duplicate by ``(stream, id)``; what
the broker did acknowledge before the drop is remembered and not sent again, so duplicates
are only the messages whose PUBACK was lost (``tests/test_mqtt.py::
test_a_broker_restart_in_the_middle_of_a_sync_loses_nothing``).

paho-mqtt (the ``mqtt`` extra: ``pip install 'connectorsync[mqtt]'``) is driven
synchronously, in the caller's thread: no network thread of paho's, no reconnecting behind
the syncer's back, and no resending by a session (the cache is the session: a client starts
clean, and what was not acknowledged is resent by the pass). Every call ends within
``timeout`` seconds of silence from the broker; :meth:`MQTTRemote.close` from another thread
ends a push under way at once (its batch is then ambiguous, and resent).

Errors: credentials refused at connect (CONNACK 0x86, 0x87, 0x8A, 0x8C) and a publish
refused as not authorized (PUBACK 0x87) raise :class:`~connectorsync.errors.AuthError`; a
broker that cannot be reached, refuses, is busy or unavailable, or whose certificate fails
verification, :class:`~connectorsync.errors.TransientRemoteError`; a PUBACK with another
failure code (MQTT 5: payload format invalid, packet too large, ...)
:class:`~connectorsync.errors.RejectedError`, so the syncer bisects the batch. The
username and password are never shown: not in the repr, a message or a log line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import (
    AmbiguousRemoteError,
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from .base import Datapoint, DeliveryKind

if TYPE_CHECKING:
    from paho.mqtt.client import Client

log = logging.getLogger(__name__)

#: ThingsBoard's device telemetry topic (the token is the MQTT username).
THINGSBOARD_TOPIC = "v1/devices/me/telemetry"
_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PROTOCOLS = ("5", "3.1.1")
# CONNACK reason codes (MQTT 5; paho maps 3.1.1's 4 and 5 onto 0x86 and 0x87).
_CONNACK_AUTH = {0x86, 0x87, 0x8A, 0x8C}  # bad credentials, not authorized, banned, auth method
_CONNACK_TRANSIENT = {0x88, 0x89, 0x97, 0x9F}  # unavailable, busy, quota, connection rate
_PUBACK_AUTH = 0x87
_PUBACK_TRANSIENT = {0x97}  # quota exceeded: later
_MEMO = 1_000_000  # datapoints remembered as acknowledged during failed pushes, at most


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ConfigurationError(
            "MQTTRemote needs paho-mqtt 2.x: pip install 'connectorsync[mqtt]'"
        ) from None
    return mqtt


class MQTTRemote:
    """An MQTT broker: each datapoint (or each batch) published with QoS 1 to a topic.

    Payloads, with ``fields="plain"``: per datapoint (``payload="datapoint"``)
    ``{"stream": s, "id": cache id, "t": seconds, "d": value}``; per batch
    (``payload="batch"``) a JSON list of those. With ``fields="thingsboard"``:
    ``{"ts": milliseconds, "values": {...}}`` (an object value as it is, any other value as
    ``{stream: value}``), or a list of them.

    :param url: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS); no credentials in it
    :param topic: the topic of a stream's messages; ``{stream}`` is replaced by its name
    :param payload: ``"datapoint"`` (one message each) or ``"batch"`` (one per batch)
    :param fields: ``"plain"`` or ``"thingsboard"`` (see above)
    :param client_id: the MQTT client id; default ``connectorsync-<random>``, new for each
        remote: a publisher needs no persistent session (the cache keeps what is unsent),
        and two Loggers of one machine never take each other's id. Give one when the broker
        authorizes by it (AWS IoT).
    :param username: never shown (ThingsBoard's token goes here)
    :param password: never shown
    :param max_inflight: messages published and not yet acknowledged, at most (lowered to
        the broker's Receive Maximum under MQTT 5)
    :param timeout: seconds for connecting, and for each wait for the broker
    :param keepalive: seconds between the keepalive pings MQTT asks for
    :param verify: for ``mqtts://``: True (verify against the system's CAs), a CA file path
        (a private CA or a self-signed broker), or False (no verification: testing only)
    :param protocol: ``"5"`` (refusals of single messages are told apart by their PUBACK)
        or ``"3.1.1"``
    """

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(  # noqa: PLR0913 - a broker's settings, keyword-only past the url
        self,
        url: str,
        *,
        topic: str = "connectorsync/{stream}",
        payload: str = "datapoint",
        fields: str = "plain",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 100,
        timeout: float = 30.0,
        keepalive: int = 60,
        verify: bool | str = True,
        protocol: str = "5",
    ):
        parts = urlsplit(url)
        if parts.scheme not in _PORTS or not parts.hostname:
            raise ConfigurationError(
                f"MQTTRemote url must be mqtt://host[:port] or mqtts://host[:port]; "
                f"got {parts.scheme or '?'}://{parts.hostname or '?'}"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError("MQTTRemote: put credentials in username=/password=")
        if not topic or "+" in topic or "#" in topic:
            raise ConfigurationError(f"MQTTRemote topic must be a topic name; got {topic!r}")
        _check_choice("payload", payload, ("datapoint", "batch"))
        _check_choice("fields", fields, ("plain", "thingsboard"))
        _check_choice("protocol", protocol, _PROTOCOLS)
        for name, value in (("max_inflight", max_inflight), ("keepalive", keepalive)):
            if not (isinstance(value, int) and 0 < value <= 65535):
                raise ConfigurationError(f"MQTTRemote {name} must be 1..65535; got {value!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(f"MQTTRemote timeout must be positive; got {timeout!r}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or _PORTS[parts.scheme]}"
        self.host, self.port = parts.hostname, parts.port or _PORTS[parts.scheme]
        self.tls = parts.scheme == "mqtts"
        self.topic, self.payload, self.fields = topic, payload, fields
        self.client_id = client_id or f"connectorsync-{uuid.uuid4().hex[:12]}"
        self.max_inflight, self.timeout, self.keepalive = max_inflight, float(timeout), keepalive
        self._username, self._password, self._verify = username, password, verify
        self._protocol = protocol
        self._config: dict[str, Any] = {
            "kind": "mqtt",
            "url": url,
            "topic": topic,
            "payload": payload,
            "fields": fields,
            "client_id": client_id,
            "username": username,
            "password": password,
            "max_inflight": max_inflight,
            "timeout": timeout,
            "keepalive": keepalive,
            "verify": verify,
            "protocol": protocol,
        }
        self._lock = threading.Lock()  # held by a push; close() does not wait for it
        self._session: _Session | None = None
        # Per stream, datapoints the broker acknowledged during a push that failed: the same
        # batch sent again (after a refusal or a drop) does not publish them twice.
        self._delivered: dict[str, dict[int, tuple[float, str]]] = {}

    def __repr__(self) -> str:
        return f"MQTTRemote({self.url!r}, topic={self.topic!r})"

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:func:`~connectorsync.remotes.remote_from_config`):
        ``{"kind": "mqtt", ...}`` with the constructor's arguments, or ``{"kind":
        "thingsboard_mqtt", "host": ..., "token": ...}`` for :func:`thingsboard_mqtt`'s;
        credentials too (the Logger keeps them only in the owner-only cache file)."""
        return copy.deepcopy(self._config)

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """Connect (if not connected) and return ``client_id@host:port``."""
        with self._lock:
            self._connected()
        return f"{self.client_id}@{self.host}:{self.port}"

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Nothing to create: a topic exists once published to. Returns None."""
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}``: a broker takes any stream and keeps no schema."""
        return {}

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Publish ``batch`` with QoS 1, at most ``max_inflight`` messages unacknowledged;
        return once every message was acknowledged (PUBACK).

        :raises AmbiguousRemoteError: the connection dropped, or the broker fell silent for
            ``timeout`` seconds, with messages unacknowledged (the batch is sent again)
        :raises TransientRemoteError: the broker could not be reached; nothing was sent
        :raises AuthError: credentials or topic refused (CONNACK or PUBACK not authorized)
        :raises RejectedError: a PUBACK refused a message (MQTT 5); the rest were delivered
        """
        if not batch:
            return
        with self._lock:
            todo = self._undelivered(stream, batch)
            if todo:
                topic = self.topic.replace("{stream}", stream)
                session = self._connected()
                try:
                    self._publish(session, stream, topic, todo)
                except RemoteError:
                    if session.lost or session.stalled:
                        self._drop()
                    raise
            memo = self._delivered.get(stream)
            for point in batch if memo else ():
                memo.pop(point[0], None)  # type: ignore[union-attr]  # acknowledged: settled

    def reconcile(self, stream: str) -> float | None:
        """None: a broker cannot say what it stored, so a batch without its PUBACKs is sent
        again (at least once; duplicates carry the same ``id``)."""
        return None

    def close(self) -> None:
        """Disconnect. Safe to call twice, and from another thread during a push, which then
        ends at once (ambiguous: its batch is sent again by a later pass)."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop(polite=True)
            finally:
                self._lock.release()
            return
        session = self._session
        if session is not None:
            session.abort()

    # ----------------------------------------------------------------------- plumbing

    def _undelivered(self, stream: str, batch: Sequence[Datapoint]) -> list[Datapoint]:
        memo = self._delivered.get(stream)
        if not memo:
            return list(batch)
        # A pass sends a stream in id order and never goes back below what it has not
        # settled: what lies below this batch was acknowledged or dead-lettered meanwhile.
        # (Forgetting too much costs a duplicate, never a loss.)
        first = batch[0][0]
        for stale in [i for i in memo if i < first] if len(memo) < _MEMO else list(memo):
            del memo[stale]
        return [p for p in batch if memo.get(p[0]) != (p[1], p[2])]

    def _publish(self, session: _Session, stream: str, topic: str, todo: list[Datapoint]) -> None:
        memo = self._delivered.setdefault(stream, {})
        messages = self._messages(stream, todo)
        window = min(self.max_inflight, session.receive_maximum)
        pending: dict[int, list[Datapoint]] = {}
        refused: tuple[int, str] | None = None
        sent = 0
        while True:
            for mid, code in session.take_acks():
                points = pending.pop(mid, [])
                if code < 0x80:
                    memo.update((p[0], (p[1], p[2])) for p in points)
                elif refused is None or code == _PUBACK_AUTH:
                    refused = (code, session.reason_text(code))
            while sent < len(messages) and len(pending) < window and not session.lost:
                body, points = messages[sent]
                info = session.client.publish(topic, body, qos=1)
                if info.rc != 0:
                    session.lost = True
                    break
                pending[info.mid] = points
                sent += 1
            if not pending and sent == len(messages):
                break
            if session.lost or not session.pump(self.timeout):
                unacked = sum(map(len, pending.values())) + sum(len(m[1]) for m in messages[sent:])
                why = "the connection dropped" if session.lost else f"no PUBACK in {self.timeout} s"
                raise AmbiguousRemoteError(
                    f"MQTT {self.url}, stream {stream!r}: {why} with {unacked} datapoint(s) "
                    "unacknowledged; they are sent again"
                )
        if refused is not None:
            code, text = refused
            message = f"MQTT {self.url}: the broker refused a message of stream {stream!r}"
            if code == _PUBACK_AUTH:
                raise AuthError(f"{message}: not authorized (check the credentials and ACL)")
            cls = TransientRemoteError if code in _PUBACK_TRANSIENT else RejectedError
            raise cls(f"{message}: {code:#04x} {text}", status=code, body=text)

    def _messages(
        self, stream: str, points: list[Datapoint]
    ) -> list[tuple[bytes, list[Datapoint]]]:
        item = _thingsboard_item if self.fields == "thingsboard" else _plain_item
        name = json.dumps(stream)
        if self.payload == "batch":
            body = "[" + ",".join(item(name, p) for p in points) + "]"
            return [(body.encode(), points)]
        return [(item(name, p).encode(), [p]) for p in points]

    def _connected(self) -> _Session:
        """The live session, or a new one. Reading what is waiting first tells a connection the
        broker closed (it restarted) from a live one, so that the push reconnects instead of
        publishing into a dead socket."""
        session = self._session
        if session is not None and session.alive():
            return session
        self._drop()
        self._session = self._connect()
        return self._session

    def _connect(self) -> _Session:
        mqtt = _paho()
        version = mqtt.MQTTv5 if self._protocol == "5" else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": version}
        if version == mqtt.MQTTv311:
            kwargs["clean_session"] = True
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        client.connect_timeout = self.timeout
        client.max_inflight_messages = self.max_inflight
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self.tls:
            context = ssl.create_default_context(
                cafile=self._verify if isinstance(self._verify, str) else None
            )
            if self._verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        session = _Session(client)
        where = f"MQTT {self.url}"
        extra = {"clean_start": True} if version == mqtt.MQTTv5 else {}
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive, **extra)
        except ssl.SSLCertVerificationError as exc:
            _close_sockets(exc)
            raise TransientRemoteError(
                f"{where}: TLS certificate verification failed ({exc.verify_message}); "
                "give the broker's CA file as verify="
            ) from None
        except (OSError, ssl.SSLError) as exc:
            _close_sockets(exc)
            raise TransientRemoteError(f"{where}: cannot connect: {_reason(exc)}") from None
        except ValueError as exc:  # paho's own checks (a client id too long for 3.1.1)
            raise ConfigurationError(f"{where}: {exc}") from None
        if not session.pump(self.timeout, until=lambda: session.connack is not None):
            client.disconnect()
            why = "closed the connection" if session.lost else f"did not answer in {self.timeout} s"
            raise TransientRemoteError(f"{where}: the broker {why} (no CONNACK)")
        code = session.connack or 0
        if code >= 0x80:
            text = session.reason_text(code)
            session.close()
            message = f"{where}: connection refused: {code:#04x} {text}"
            if code in _CONNACK_AUTH:
                raise AuthError(f"{message} (check the username and password)", status=code)
            cls = TransientRemoteError if code in _CONNACK_TRANSIENT else RemoteError
            raise cls(message, status=code)
        log.debug("connected to %s as %s", self.url, self.client_id)
        return session

    def _drop(self, *, polite: bool = False) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close(polite=polite)


class _Session:
    """One connection of a paho client, driven in the caller's thread: the callbacks only
    note what arrived, for the caller to read."""

    def __init__(self, client: Client):
        self.client = client
        self.connack: int | None = None
        self.receive_maximum = 65535
        self.lost = False
        self.stalled = False
        self._acks: list[tuple[int, int]] = []
        self._codes: dict[int, str] = {}
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = int(code.value)
        self._codes[self.connack] = str(code)
        maximum = getattr(props, "ReceiveMaximum", None)
        if maximum:
            self.receive_maximum = int(maximum)

    def _on_publish(self, client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
        value = int(code.value)
        if value >= 0x80:
            self._codes[value] = str(code)
        self._acks.append((mid, value))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.lost = True

    def take_acks(self) -> list[tuple[int, int]]:
        acks, self._acks = self._acks, []
        return acks

    def reason_text(self, code: int) -> str:
        return self._codes.get(code, "")

    def pump(self, timeout: float, until: Any = None) -> bool:
        """Run the network until ``until()`` (default: an acknowledgement came); False when
        the connection is lost or nothing came for ``timeout`` seconds."""
        done = until or (lambda: bool(self._acks))
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stalled = True
                return False
            if self.client.loop(timeout=min(remaining, 1.0)) != 0:
                self.lost = True
            if self.lost:
                return done()
        return True

    def alive(self) -> bool:
        """Still connected: whatever the broker sent meanwhile (a close) is read first."""
        if self.lost or self.stalled:
            return False
        if self.client.loop(timeout=0) != 0:
            self.lost = True
        return not self.lost

    def abort(self) -> None:
        """From another thread: end the connection, so that a push waiting on it ends now."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self, *, polite: bool = False) -> None:
        with contextlib.suppress(Exception):  # closing: whatever state paho is in
            if polite and not self.lost:
                self.client.disconnect()
        with contextlib.suppress(Exception):
            sock = self.client.socket()
            if sock is not None:
                sock.close()


def thingsboard_mqtt(host: str, token: str, **kwargs: Any) -> MQTTRemote:
    """An :class:`MQTTRemote` for ThingsBoard's device MQTT API.

    Publishes ``{"ts": <ms>, "values": {...}}`` to ``v1/devices/me/telemetry`` with the
    device's access token as the MQTT username: a JSON object is sent as the values as it
    is (its keys become telemetry keys); any other value ``v`` becomes ``{stream: v}``.
    ThingsBoard keeps one value per key and ``ts``, so a duplicate (at least once) stores
    nothing twice. ``payload="batch"`` sends a list of them per message.

    :param host: the server, ``"thingsboard.example.com"`` (``mqtt://`` on port 1883) or a
        url, ``"mqtts://thingsboard.example.com:8883"``
    :param token: the device's access token; never shown
    :param kwargs: more :class:`MQTTRemote` options (``payload``, ``timeout``, ``verify``...)
    """
    if not token:
        raise ConfigurationError("thingsboard_mqtt() needs the device's access token")
    config = {"kind": "thingsboard_mqtt", "host": host, "token": token, **kwargs}
    kwargs.setdefault("topic", THINGSBOARD_TOPIC)
    kwargs.setdefault("fields", "thingsboard")
    url = host if "://" in host else f"mqtt://{host}"
    remote = MQTTRemote(url, username=token, **kwargs)
    remote._config = config
    return remote


def _plain_item(name: str, point: Datapoint) -> str:
    # The cache holds each value as JSON text already: no decode/encode round trip.
    return f'{{"stream":{name},"id":{point[0]},"t":{point[1]!r},"d":{point[2]}}}'


def _thingsboard_item(name: str, point: Datapoint) -> str:
    _, t, d = point
    values = d if d.startswith("{") else f"{{{name}:{d}}}"
    return f'{{"ts":{round(t * 1000)},"values":{values}}}'


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(f"MQTTRemote {name} must be one of {choices}; got {value!r}")


def _close_sockets(exc: BaseException) -> None:
    """Close the socket a failed ``connect`` leaves open: paho does not close it when the
    TLS handshake fails, and only its frames (in the traceback) still hold it."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in list(frame.f_locals.values()):
            if isinstance(value, socket.socket):
                with contextlib.suppress(OSError):
                    value.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
