"""MQTTRemote: publish datapoints to an MQTT broker (QoS 1 by default); a preset,
:func:`thingsboard_mqtt`.

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

QoS (``qos=``; ``tests/test_mqtt_qos.py``):

- **1** (the default): at least once, as above.
- **0**, only on request: at most once. Nothing comes back, so a datapoint is deleted from
  the cache as soon as its message is written to the socket; a broker or network failure
  loses it unseen, and a refusal is not seen either. None of the contract's delivery kinds
  says that (each promises that nothing is lost), so the remote declares ``at_least_once``,
  which is how the pass settles what it can see (a push that failed before the socket took
  everything is sent again), and says the rest in :attr:`MQTTRemote.caveat`, so in its
  ``repr``, ``Logger.status().remote`` and ``connectorsync status``, and logs it once at
  WARNING when built
  (``test_mqtt_qos.py::test_qos0_deletes_what_the_network_lost_and_says_so``).
- **2**: exactly once into the broker while the remote lives. The broker stores a message at
  its PUBLISH and delivers it at the PUBREL, keeping its packet id until then; the remote
  keeps one persistent session (:mod:`._mqtt_connect`), so after a connection dropped
  anywhere in PUBLISH/PUBREC/PUBREL/PUBCOMP, the reconnect finishes each message by its
  packet id and nothing is stored twice, lost PUBCOMP included
  (``test_mqtt_qos.py::test_qos2_a_lost_pubcomp_stores_nothing_twice``). It cannot promise
  that through a crash (``kill -9``) or :meth:`MQTTRemote.close`: the packet ids in flight
  go with the process, the next remote starts a new session, and the pass sends the batch
  in flight again, so a message whose PUBREL was sent and whose PUBCOMP was not read arrives
  twice (with the same ``id``), one whose PUBREC was not read is stored once (the old
  session's copy is never released)
  (``test_mqtt_qos.py::test_qos2_through_a_crash_is_at_least_once``). Nor through a broker
  restart: a broker that loses the session (no persistence; mosquitto 2.0.11 with an
  MQTT 5 client connected at its shutdown; reconnecting after
  :data:`~._mqtt_settings.SESSION_EXPIRY`) gets the messages in flight again as new ones,
  and mosquitto released a few messages twice after a restart even with the 3.1.1 session
  it kept (nothing lost, duplicates with the same ``id``: ``test_mqtt_qos.py::
  test_qos2_a_broker_restart_in_the_middle_of_a_sync_loses_nothing``). So the remote
  declares ``at_least_once`` too: ``idempotent`` would claim a resend never stores twice.
  A PUBREC of 0x80 or more (MQTT 5) refuses the message like a PUBACK
  (``test_mqtt_qos.py::test_qos2_a_publish_the_acl_refuses_is_a_dead_letter``). Under
  MQTT 3.1.1 at most 20 QoS 2 messages are in flight (mosquitto drops the connection past
  its ``max_inflight_messages``, 20 by default, and 3.1.1 cannot say the broker's limit).

``retain=True`` publishes every message retained: a subscriber that comes later gets the
newest value of each topic at once
(``test_mqtt_qos.py::test_retain_a_late_subscriber_gets_the_last_value``).
``will=`` gives the broker a last will, published when the remote's connection ends without
a DISCONNECT (a crash, a cut network, a keepalive that ran out between passes: set
``keepalive`` above ``syncperiod`` to keep a quiet logger from looking dead); ``close()``
disconnects and sends no will
(``test_mqtt_qos.py::test_will_is_published_when_the_connection_dies``).

paho-mqtt (the ``mqtt`` extra: ``pip install 'connectorsync[mqtt]'``) is needed to build the
remote (:class:`~connectorsync.errors.ConfigurationError` without it). It is driven
synchronously, in the caller's thread: no network thread of paho's, no reconnecting behind
the syncer's back, and no resending by a session (the cache is the session: a client starts
clean, and what was not acknowledged is resent by the pass), but for QoS 2 within the
remote's life (above). Every call ends within
``timeout`` seconds of silence from the broker; :meth:`MQTTRemote.close` from another thread
ends a push under way at once, also one waiting for the broker's CONNACK (its batch is then
ambiguous, and resent) (``test_mqtt_hostile.py::
test_close_ends_a_push_waiting_for_the_brokers_connack``).

Errors: those of connecting (:mod:`._mqtt_connect`); a refused message (above),
:class:`~connectorsync.errors.RejectedError`. The username and password are never shown: not
in the repr, a message or a log line.
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import (
    AmbiguousRemoteError,
    ClosedError,
    ConfigurationError,
    RejectedError,
    RemoteError,
)
from ._http import timeout_setting
from ._mqtt_connect import Connector
from ._mqtt_publish import InFlight, Publisher, plain_item
from ._mqtt_session import Outcome, Refusals, Session, check_topic, load_paho
from ._mqtt_settings import (
    CAVEAT_311,
    CAVEAT_QOS0,
    PROTOCOLS,
    QOS_LEVELS,
    address,
    caveat,
    check_bool,
    check_choice,
    check_count,
    check_packet_size,
    will_setting,
)
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote

if TYPE_CHECKING:
    from paho.mqtt.client import Client

__all__ = [
    "CAVEAT_311",
    "CAVEAT_QOS0",
    "THINGSBOARD_TOPIC",
    "MQTTRemote",
    "plain_item",  # one datapoint's payload in the plain layout (bench_mqtt.py sends the same)
    "thingsboard_mqtt",
]

log = logging.getLogger(__name__)

#: ThingsBoard's device telemetry topic (the token is the MQTT username).
THINGSBOARD_TOPIC = "v1/devices/me/telemetry"
_MEMO = 1_000_000  # datapoints whose outcome is remembered during failed pushes, at most


@register_remote
class MQTTRemote:
    """An MQTT broker: each datapoint (or each batch) published to a topic, with QoS 1 by
    default.

    Payloads, with ``fields="plain"``: per datapoint (``payload="datapoint"``)
    ``{"stream": s, "id": cache id, "t": seconds, "d": value}``; per batch
    (``payload="batch"``) a JSON list of those. With ``fields="thingsboard"``:
    ``{"ts": milliseconds, "values": {...}}`` (an object value as it is, any other value as
    ``{stream: value}``), or a list of them.

    :param url: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS); no credentials in it
    :param topic: the topic of a stream's messages; ``{stream}`` is replaced by its name
    :param payload: ``"datapoint"`` (one message each) or ``"batch"`` (one per batch)
    :param fields: ``"plain"`` or ``"thingsboard"`` (see above)
    :param qos: ``1`` (the default: at least once), ``2`` (exactly once into the broker
        while the remote lives; at least once through a crash) or ``0`` (at most once: a
        datapoint is deleted once written to the socket, lost unseen on a failure; only on
        request, and said in :attr:`caveat`). See the module.
    :param retain: publish every message retained (the broker keeps each topic's newest one
        for subscribers that come later)
    :param will: a last will, ``{"topic": str, "payload": str, "qos": 0|1|2 (1),
        "retain": bool (False)}``: published by the broker when the connection ends without
        a DISCONNECT
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
        qos: int = 1,
        retain: bool = False,
        will: Mapping[str, Any] | None = None,
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
        mqtt = load_paho()
        where = address(url)
        check_topic(topic)
        check_choice("payload", payload, ("datapoint", "batch"))
        check_choice("fields", fields, ("plain", "thingsboard"))
        check_choice("protocol", protocol, PROTOCOLS)
        check_choice("qos", qos, QOS_LEVELS)
        check_bool("retain", retain)
        last_will = will_setting(will)
        check_count("max_inflight", max_inflight)
        check_count("keepalive", keepalive)
        timeout = timeout_setting("MQTTRemote", timeout)
        check_packet_size(max_packet_size)
        self.url, self.host, self.port, self.tls = where.url, where.host, where.port, where.tls
        self.topic, self.payload, self.fields = topic, payload, fields
        self.qos, self.retain, self.will = qos, retain, last_will
        self.client_id = client_id or f"connectorsync-{uuid.uuid4().hex[:12]}"
        self.max_inflight, self.timeout, self.keepalive = max_inflight, float(timeout), keepalive
        self._protocol = protocol
        self.max_packet_size = max_packet_size
        #: What this remote cannot promise, in words (None: nothing beyond at least once).
        #: Shown in its ``repr``, so in ``Logger.status().remote`` and ``connectorsync status``.
        self.caveat: str | None = caveat(qos, protocol)
        if qos == 0:
            log.warning("MQTTRemote %s: %s", self.url, CAVEAT_QOS0)
        self._config: dict[str, Any] = {"kind": self.kind, "url": url, "topic": topic}
        self._config.update(payload=payload, fields=fields, client_id=client_id)
        self._config.update(username=username, password=password, max_inflight=max_inflight)
        self._config.update(timeout=timeout, keepalive=keepalive, verify=verify)
        self._config.update(protocol=protocol)
        if max_packet_size is not None:
            self._config["max_packet_size"] = max_packet_size
        # Given only when not the default, so that older configurations stay as they were.
        if qos != 1:
            self._config["qos"] = qos
        if retain:
            self._config["retain"] = True
        if last_will is not None:
            self._config["will"] = last_will.to_config()
        self._connector = Connector(
            mqtt,
            where,
            client_id=self.client_id,
            protocol=protocol,
            username=username,
            password=password,
            verify=verify,
            timeout=self.timeout,
            keepalive=keepalive,
            max_inflight=max_inflight,
            will=last_will,
            persistent=qos == 2,
        )
        self._publisher = Publisher(
            url=self.url,
            payload=payload,
            fields=fields,
            qos=qos,
            retain=retain,
            max_inflight=max_inflight,
            max_packet_size=max_packet_size,
            timeout=self.timeout,
            v5=protocol == "5",
        )
        self._lock = threading.Lock()  # held by a push; close() does not wait for it
        self._session: Session | None = None
        # QoS 2: the one paho client whose session the broker keeps, and what it has in
        # flight (None for QoS 0 and 1: a new client each connection).
        self._client: Client | None = None
        self._inflight = InFlight() if qos == 2 else None
        # close() is final: the push under way ends and never reconnects, and push() and
        # ping() refuse from then on (a pass still running would open a session nobody closes)
        self._closed = False
        self._cautious: set[str] = set()  # streams whose last push had a drop (_rounds)
        # Per stream, what the broker said of datapoints during a push that failed: None for
        # acknowledged, the reason for refused (a message of its own). The same batch sent
        # again (after a drop, or bisected after a refusal) publishes neither twice.
        self._outcomes: dict[str, dict[int, Outcome]] = {}

    def __repr__(self) -> str:
        shown = f"MQTTRemote({self.url!r}, topic={self.topic!r}"
        if self.qos != 1:
            shown += f", qos={self.qos}"
        if self.caveat is None:
            return shown + ")"
        if self._protocol != "5":
            shown += f", protocol={self._protocol!r}"
        return f"{shown}) [{self.caveat}]"

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

    @property
    def window(self) -> int:
        """Messages published at once and not yet acknowledged: ``max_inflight``, lowered to
        the broker's receive maximum once connected (MQTT 5)."""
        session = self._session
        return min(self.max_inflight, session.receive_maximum if session else self.max_inflight)

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
        """Publish ``batch`` with the remote's QoS, at most ``max_inflight`` messages
        unanswered; return once every message was answered (PUBACK; QoS 2: PUBCOMP; QoS 0:
        written to the socket). A message too large for the broker is not sent (the rest
        is); a datapoint the broker acknowledged or refused during an earlier push of the
        same datapoints is not published again, nor (QoS 2) one whose message is still in
        flight in the remote's session.

        :raises AmbiguousRemoteError: the connection dropped, or the broker fell silent for
            ``timeout`` seconds, with messages unacknowledged (the batch is sent again)
        :raises TransientRemoteError: the broker could not be reached; nothing was sent
        :raises AuthError: credentials refused at connect (CONNACK); nothing was sent
        :raises RejectedError: a message was refused (an MQTT 5 PUBACK or PUBREC of 0x80 or
            more, or too large to send); ``body`` is the reason, the rest were delivered
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
        pass) without connecting again. Sends DISCONNECT: the broker publishes no will."""
        self._closed = True  # before reading the session: a push connecting checks it after
        if self._lock.acquire(blocking=False):
            try:
                self._drop(polite=True)
                self._client = None  # QoS 2: its session's packet ids go with it
                if self._inflight is not None:
                    self._inflight.clear()
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
                self._publisher.publish(
                    session,
                    stream,
                    topic,
                    todo,
                    self._outcomes,
                    refused,
                    inflight=self._inflight,
                    cautious=cautious,
                )
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

    def _connected(self) -> Session:
        """The live session, or a new one. Reading what is waiting first tells a connection the
        broker closed (it restarted) from a live one, so that the push reconnects instead of
        publishing into a dead socket."""
        session = self._session
        if session is not None and session.alive():
            return session
        # Polite when the connection still stands (one a refusal spoiled): no will for it.
        self._drop(polite=True)
        try:
            session = self._connector.connect(
                resume=self._client, closed=lambda: self._closed, expose=self._expose
            )
        except BaseException:
            self._session = None
            raise
        if self._inflight is not None:
            self._client = session.client
            self._inflight.forget(session.forgotten)
        return session

    def _expose(self, session: Session) -> None:
        self._session = session

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"MQTT {self.url}: this remote was closed; nothing sent")

    def _drop(self, *, polite: bool = False) -> None:
        session, self._session = self._session, None
        if session is not None:
            if self._inflight is not None:
                # QoS 2: answers read and not yet taken end messages of this same client;
                # lost, their datapoints would wait for an answer that already came.
                self._inflight.unread += session.take_acks()
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
