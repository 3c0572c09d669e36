"""MQTTRemote: publish datapoints to an MQTT broker with QoS 1; :func:`thingsboard_mqtt`, a preset.

A datapoint is acknowledged by its PUBACK: :meth:`MQTTRemote.push` returns once the broker
acknowledged every message of the batch. A broker cannot say what it stored, so delivery is
**at least once**: when the connection drops (or no PUBACK comes within ``timeout``) with
messages unacknowledged, the push raises :class:`~connectorsync.errors.AmbiguousRemoteError`
and the pass sends the batch again. Each message carries the datapoint's cache id (``"id"``,
never reused within a cache file), so a consumer drops a duplicate by ``(stream, id)``; what
the broker did acknowledge before the drop is remembered and not sent again, so duplicates
are only the messages whose PUBACK was lost (``tests/test_mqtt.py::
test_a_broker_restart_in_the_middle_of_a_sync_loses_nothing``,
``test_a_lost_puback_is_sent_again_and_nothing_is_lost``).

What the broker did not take is never deleted as delivered, as far as the protocol lets a
client see it:

- MQTT 5 (the default): a PUBACK with a reason code of 0x80 or more (0x87 not authorized by
  the ACL, 0x97 quota exceeded, 0x99 payload format invalid, ...) refuses that message: the
  push raises :class:`~connectorsync.errors.RejectedError` with the broker's reason, the
  pass bisects the batch and dead-letters exactly the refused datapoints
  (``test_mqtt.py::test_mqtt5_a_publish_the_acl_refuses_is_a_dead_letter_with_the_reason``).
  A refused message is remembered, so bisecting does not publish it again; a connection on
  which a message was refused is not used for the next push (mosquitto closes it)
  (``test_mqtt_hostile.py::test_a_batch_message_the_acl_refuses_is_dead_lettered_over_a_slow_link``).
- MQTT 3.1.1 cannot tell: a broker acknowledges a message it then discards (mosquitto does so
  for an ACL refusal or ``message_size_limit``). The remote's ``repr`` (shown as
  ``Logger.status().remote`` and by ``connectorsync status``) and :attr:`MQTTRemote.caveat`
  say so (``test_mqtt.py::test_mqtt311_cannot_see_a_refusal_and_status_says_so``).
- A message whose PUBLISH packet (fixed header, topic, packet id, properties, payload) would
  exceed the broker's maximum packet size (MQTT 5: CONNACK's Maximum Packet Size; either
  version: ``max_packet_size=``) is never sent, as a broker closes the connection on it: it
  is refused like a PUBACK 0x95 would, so the datapoint becomes a dead letter before it is
  sent, nothing behind it waits, and nothing before it is sent twice
  (``test_mqtt.py::test_an_oversized_datapoint_is_a_dead_letter_before_it_is_sent``).

paho-mqtt (the ``mqtt`` extra: ``pip install 'connectorsync[mqtt]'``) is needed to build the
remote (:class:`~connectorsync.errors.ConfigurationError` without it). It is driven
synchronously, in the caller's thread: no network thread of paho's, no reconnecting behind
the syncer's back, and no resending by a session (the cache is the session: a client starts
clean, and what was not acknowledged is resent by the pass). Every call ends within
``timeout`` seconds of silence from the broker; :meth:`MQTTRemote.close` from another thread
ends a push under way at once, also one waiting for the broker's CONNACK (its batch is then
ambiguous, and resent) (``test_mqtt_hostile.py::
test_close_ends_a_push_waiting_for_the_brokers_connack``).

Errors: credentials refused at connect (CONNACK 0x86, 0x87, 0x8A, 0x8C) raise
:class:`~connectorsync.errors.AuthError`; a broker that cannot be reached, refuses, is busy
or unavailable, or whose certificate fails verification,
:class:`~connectorsync.errors.TransientRemoteError`; a refused message (above),
:class:`~connectorsync.errors.RejectedError`. The username and password are never shown: not
in the repr, a message or a log line.
"""

from __future__ import annotations

import copy
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..errors import (
    AmbiguousRemoteError,
    AuthError,
    ClosedError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from ._http import timeout_setting
from ._mqtt_session import (
    PACKET_TOO_LARGE,
    PROTOCOL_MAX_PACKET,
    Outcome,
    Refusals,
    Session,
    check_topic,
    close_sockets,
    describe,
    load_paho,
    publish_size,
)
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote

log = logging.getLogger(__name__)

#: ThingsBoard's device telemetry topic (the token is the MQTT username).
THINGSBOARD_TOPIC = "v1/devices/me/telemetry"
_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PROTOCOLS = ("5", "3.1.1")
# CONNACK reason codes (MQTT 5; paho maps 3.1.1's 4 and 5 onto 0x86 and 0x87).
_CONNACK_AUTH = {0x86, 0x87, 0x8A, 0x8C}  # bad credentials, not authorized, banned, auth method
_CONNACK_TRANSIENT = {0x88, 0x89, 0x97, 0x9F}  # unavailable, busy, quota, connection rate
_MEMO = 1_000_000  # datapoints whose outcome is remembered during failed pushes, at most
#: :attr:`MQTTRemote.caveat` of an MQTT 3.1.1 remote.
CAVEAT_311 = (
    "MQTT 3.1.1 cannot tell a refused message: a broker acknowledges a message its ACL or "
    "size limit refuses and discards it, and the datapoint is then deleted as delivered; "
    'use protocol="5" to have refusals kept as dead letters'
)


@register_remote
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
    :param protocol: ``"5"`` (a refused message is told apart by its PUBACK's reason code
        and becomes a dead letter) or ``"3.1.1"`` (a broker may acknowledge a message and
        discard it: :attr:`caveat`)
    :param max_packet_size: the largest PUBLISH packet the broker takes, in bytes (whole
        packet: fixed header, topic, properties, payload); a datapoint whose message would be
        larger becomes a dead letter without being sent. MQTT 5 brokers say theirs in
        CONNACK (the smaller of the two counts); give it for 3.1.1, where a broker closes
        the connection on a bigger packet and a datapoint would block its stream
    :raises ConfigurationError: a bad argument (named, with the value), or paho-mqtt is not
        installed (``pip install 'connectorsync[mqtt]'``)
    """

    delivery_kind = DeliveryKind.AT_LEAST_ONCE
    kind: ClassVar[str] = "mqtt"
    #: The presets of this class, each a function of this module of that name.
    presets: ClassVar[tuple[str, ...]] = ("thingsboard_mqtt",)

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
        max_packet_size: int | None = None,
    ):
        # Refused here rather than at the first push: without paho a device would log for
        # ever and never deliver.
        self._mqtt = load_paho()
        if not isinstance(url, str):
            raise ConfigurationError(
                f"MQTTRemote url must be a str, mqtt://host[:port] or mqtts://host[:port]; "
                f"got {type(url).__name__}"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - parsed lazily: a bad port raises here
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in _PORTS or not parts.hostname:
            raise ConfigurationError(
                f"MQTTRemote url must be mqtt://host[:port] or mqtts://host[:port]; "
                f"got {_shown_url(url)!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError("MQTTRemote: put credentials in username=/password=")
        check_topic(topic)
        _check_choice("payload", payload, ("datapoint", "batch"))
        _check_choice("fields", fields, ("plain", "thingsboard"))
        _check_choice("protocol", protocol, _PROTOCOLS)
        for name, value in (("max_inflight", max_inflight), ("keepalive", keepalive)):
            if not (isinstance(value, int) and 0 < value <= 65535):
                raise ConfigurationError(f"MQTTRemote {name} must be 1..65535; got {value!r}")
        timeout = timeout_setting("MQTTRemote", timeout)
        if max_packet_size is not None and not (
            isinstance(max_packet_size, int)
            and not isinstance(max_packet_size, bool)
            and 0 < max_packet_size <= PROTOCOL_MAX_PACKET
        ):
            raise ConfigurationError(
                f"MQTTRemote max_packet_size must be None or bytes, 1..{PROTOCOL_MAX_PACKET}; "
                f"got {max_packet_size!r}"
            )
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or _PORTS[parts.scheme]}"
        self.host, self.port = parts.hostname, parts.port or _PORTS[parts.scheme]
        self.tls = parts.scheme == "mqtts"
        self.topic, self.payload, self.fields = topic, payload, fields
        self.client_id = client_id or f"connectorsync-{uuid.uuid4().hex[:12]}"
        self.max_inflight, self.timeout, self.keepalive = max_inflight, float(timeout), keepalive
        self._username, self._password, self._verify = username, password, verify
        self._protocol = protocol
        self.max_packet_size = max_packet_size
        #: What this remote cannot promise, in words (None: nothing beyond at least once).
        #: Shown in its ``repr``, so in ``Logger.status().remote`` and ``connectorsync status``.
        self.caveat: str | None = CAVEAT_311 if protocol == "3.1.1" else None
        self._config: dict[str, Any] = {"kind": self.kind, "url": url, "topic": topic}
        self._config.update(payload=payload, fields=fields, client_id=client_id)
        self._config.update(username=username, password=password, max_inflight=max_inflight)
        self._config.update(timeout=timeout, keepalive=keepalive, verify=verify)
        self._config.update(protocol=protocol)
        if max_packet_size is not None:
            self._config["max_packet_size"] = max_packet_size
        self._lock = threading.Lock()  # held by a push; close() does not wait for it
        self._session: Session | None = None
        # close() is final: the push under way ends and never reconnects, and push() and
        # ping() refuse from then on (a pass still running would open a session nobody closes)
        self._closed = False
        self._cautious: set[str] = set()  # streams whose last push had a drop (_rounds)
        # Per stream, what the broker said of datapoints during a push that failed: None for
        # acknowledged, the reason for refused (a message of its own). The same batch sent
        # again (after a drop, or bisected after a refusal) publishes neither twice.
        self._outcomes: dict[str, dict[int, Outcome]] = {}

    def __repr__(self) -> str:
        if self.caveat is None:
            return f"MQTTRemote({self.url!r}, topic={self.topic!r})"
        return (
            f"MQTTRemote({self.url!r}, topic={self.topic!r}, protocol={self._protocol!r})"
            f" [{self.caveat}]"
        )

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:meth:`from_config`):
        ``{"kind": "mqtt", ...}`` with the constructor's arguments, or ``{"kind":
        "thingsboard_mqtt", "host": ..., "token": ...}`` for :func:`thingsboard_mqtt`'s;
        credentials too (the Logger keeps them only in the owner-only cache file)."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MQTTRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`):
        ``{"kind": "thingsboard_mqtt", ...}`` is built by :func:`thingsboard_mqtt`."""
        kind, arguments = config_arguments(cls, config)
        build = thingsboard_mqtt if kind == "thingsboard_mqtt" else cls
        return build_from_config(kind, build, arguments)

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """Connect (if not connected) and return ``client_id@host:port``."""
        with self._lock:
            self._check_open()
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
        return once every message was acknowledged (PUBACK). A message too large for the
        broker is not sent (the rest is); a datapoint the broker acknowledged or refused
        during an earlier push of the same datapoints is not published again.

        :raises AmbiguousRemoteError: the connection dropped, or the broker fell silent for
            ``timeout`` seconds, with messages unacknowledged (the batch is sent again)
        :raises TransientRemoteError: the broker could not be reached; nothing was sent
        :raises AuthError: credentials refused at connect (CONNACK); nothing was sent
        :raises RejectedError: a message was refused (an MQTT 5 PUBACK of 0x80 or more, or
            too large to send); ``body`` is the reason, the rest were delivered
        """
        if not batch:
            return
        with self._lock:
            self._check_open()
            memo = self._memo(stream, batch[0][0])
            refused = Refusals()
            self._rounds(stream, batch, memo, refused)
            if not refused.items:
                for point in batch:
                    memo.pop(point[0], None)  # acknowledged: settled
                return
            if len(batch) == 1:
                memo.pop(batch[0][0], None)  # refused alone: a dead letter now, settled
            code, reason = refused.items[0]
            raise RejectedError(
                f"MQTT {self.url}, stream {stream!r}: {len(refused.items)} message(s) refused; "
                f"the first: {reason}",
                status=code,
                body=reason,
            )

    def reconcile(self, stream: str) -> float | None:
        """None: a broker cannot say what it stored, so a batch without its PUBACKs is sent
        again (at least once; duplicates carry the same ``id``)."""
        return None

    def close(self) -> None:
        """Disconnect, for good: ``push`` and ``ping`` raise :class:`ClosedError` afterwards
        (make a new remote to connect again). Safe to call twice, and from another thread
        during a push, which then ends at once (ambiguous: its batch is sent again by a later
        pass) without connecting again."""
        self._closed = True  # before reading the session: a push connecting checks it after
        if self._lock.acquire(blocking=False):
            try:
                self._drop(polite=True)
            finally:
                self._lock.release()
            return
        session = self._session  # setting its session
        if session is not None:
            session.abort()

    # ----------------------------------------------------------------------- plumbing

    def _rounds(
        self,
        stream: str,
        batch: Sequence[Datapoint],
        memo: dict[int, Outcome],
        refused: Refusals,
    ) -> None:
        """Publish what of ``batch`` the broker has not answered, connecting again after a
        drop as long as each connection got answers: each round settles at least one
        message, so this ends; a connection without any answer (or a ``close()``) ends it
        with :class:`AmbiguousRemoteError`."""
        topic = self.topic.replace("{stream}", stream)
        dropped: AmbiguousRemoteError | None = None
        # After a drop, one message at a time: a broker that closes the connection right
        # after refusing a message (mosquitto 2.0 does, after a PUBACK 0x87; a 3.1.1 broker
        # may instead of a PUBACK) closes it with messages unread behind it, and the reset
        # that follows can take the PUBACK with it; one message in flight leaves nothing
        # unread. Until a push of the stream goes through without a drop.
        cautious = stream in self._cautious
        while todo := refused.unsettled(batch, memo):
            try:
                session = self._connected()
            except RemoteError:
                if dropped is not None:  # what was in flight may have been stored
                    raise dropped from None
                raise
            answered = session.answered  # the connection may have served earlier pushes
            try:
                self._publish(session, stream, topic, todo, memo, refused, cautious=cautious)
                break
            except AmbiguousRemoteError as exc:
                self._drop()
                cautious = True
                self._cautious.add(stream)
                if not (session.lost and session.answered > answered and not self._closed):
                    raise
                dropped = exc
                log.debug("%s; connecting again to go on", exc)
            except RemoteError:
                if session.lost or session.stalled:
                    self._drop()
                raise
        if dropped is None:
            self._cautious.discard(stream)

    def _memo(self, stream: str, first: int) -> dict[int, Outcome]:
        """What the broker said of ``stream``'s datapoints in earlier pushes, those below
        ``first`` forgotten."""
        memo = self._outcomes.setdefault(stream, {})
        # A pass sends a stream in id order and never goes back below what it has not
        # settled: what lies below this batch was acknowledged or dead-lettered meanwhile.
        # (Forgetting too much costs a duplicate, never a loss.)
        if memo:
            for stale in [i for i in memo if i < first] if len(memo) < _MEMO else list(memo):
                del memo[stale]
        return memo

    def _packet_limit(self, session: Session) -> int:
        """The largest PUBLISH the broker takes: its CONNACK's and ``max_packet_size``'s."""
        limits = [PROTOCOL_MAX_PACKET, self.max_packet_size, session.maximum_packet_size]
        return min(limit for limit in limits if limit is not None)

    def _publish(  # noqa: PLR0913 - one push's state, handed down
        self,
        session: Session,
        stream: str,
        topic: str,
        todo: list[Datapoint],
        memo: dict[int, Outcome],
        refused: Refusals,
        *,
        cautious: bool = False,
    ) -> None:
        """Publish ``todo`` and wait for every PUBACK, noting each outcome of a message of
        one datapoint in ``memo``, and each message refused (by its PUBACK, or too large to
        be sent) in ``refused``. ``cautious``: one message in flight at a time."""
        limit = self._packet_limit(session)
        wire_topic, v5 = topic.encode(), self._protocol == "5"
        messages: list[tuple[bytes, list[Datapoint]]] = []
        for body, points in self._messages(stream, todo):
            size = publish_size(wire_topic, len(body), v5=v5)
            if size <= limit:
                messages.append((body, points))
                continue
            # A broker closes the connection on a packet over its maximum: sent, it would be
            # a lost answer on every pass, and the stream behind it blocked for ever.
            reason = (
                f"not sent: the message to topic {topic!r} would be a packet of {size} bytes, "
                f"over the broker's maximum packet size of {limit} bytes"
            )
            refused.add(PACKET_TOO_LARGE, reason, points)
        window = 1 if cautious else min(self.max_inflight, session.receive_maximum)
        pending: dict[int, list[Datapoint]] = {}
        sent = 0
        while True:
            for mid, code in session.take_acks():
                points = pending.pop(mid, [])
                if code < 0x80:
                    memo.update((p[0], Outcome(p[1], p[2], code, "")) for p in points)
                    continue
                reason = (
                    f"the broker refused the message to topic {topic!r}: PUBACK {code:#04x} "
                    f"{session.reason_text(code)}"
                )
                refused.add(code, reason, points)
                if len(points) == 1:  # a message of its own: the refusal is this datapoint's
                    point = points[0]
                    memo[point[0]] = Outcome(point[1], point[2], code, reason)
            while sent < len(messages) and len(pending) < window and not session.lost:
                body, points = messages[sent]
                info = session.client.publish(topic, body, qos=1)
                if info.rc != 0:
                    session.lost = True
                    break
                pending[info.mid] = points
                sent += 1
            if not pending and sent == len(messages):
                return
            if session.lost or not session.pump(self.timeout):
                unacked = sum(map(len, pending.values())) + sum(len(m[1]) for m in messages[sent:])
                why = "the connection dropped" if session.lost else f"no PUBACK in {self.timeout} s"
                raise AmbiguousRemoteError(
                    f"MQTT {self.url}, stream {stream!r}: {why} with {unacked} datapoint(s) "
                    "unacknowledged; they are sent again"
                )

    def _messages(
        self, stream: str, points: list[Datapoint]
    ) -> list[tuple[bytes, list[Datapoint]]]:
        item = _thingsboard_item if self.fields == "thingsboard" else _plain_item
        name = json.dumps(stream)
        if self.payload == "batch":
            body = "[" + ",".join(item(name, p) for p in points) + "]"
            return [(body.encode(), points)]
        return [(item(name, p).encode(), [p]) for p in points]

    def _connected(self) -> Session:
        """The live session, or a new one. Reading what is waiting first tells a connection the
        broker closed (it restarted) from a live one, so that the push reconnects instead of
        publishing into a dead socket."""
        session = self._session
        if session is not None and session.alive():
            return session
        self._drop()
        try:
            return self._connect()
        except BaseException:
            self._session = None
            raise

    def _connect(self) -> Session:
        mqtt = self._mqtt
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
        # Set before connecting, so that close() from another thread can end the wait.
        self._session = session = Session(client)
        where = f"MQTT {self.url}"
        extra = {"clean_start": True} if version == mqtt.MQTTv5 else {}
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive, **extra)
        except ssl.SSLCertVerificationError as exc:
            close_sockets(exc)
            raise TransientRemoteError(
                f"{where}: TLS certificate verification failed ({exc.verify_message}); "
                "give the broker's CA file as verify="
            ) from None
        except (OSError, ssl.SSLError) as exc:
            close_sockets(exc)
            raise TransientRemoteError(f"{where}: cannot connect: {describe(exc)}") from None
        except ValueError as exc:  # paho's own checks (a client id too long for 3.1.1)
            raise ConfigurationError(f"{where}: {exc}") from None
        if self._closed or not session.pump(self.timeout, until=session.connacked):
            session.close()
            why = "closed the connection" if session.lost else f"did not answer in {self.timeout} s"
            if self._closed:
                raise TransientRemoteError(f"{where}: close() ended the connecting; nothing sent")
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

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"MQTT {self.url}: this remote was closed; nothing sent")

    def _drop(self, *, polite: bool = False) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close(polite=polite)


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


def _shown_url(url: str) -> str:
    """``url`` for an error message: whatever stands before an ``@`` (credentials) masked."""
    return f"***@{url.rsplit('@', 1)[1]}" if "@" in url else url
