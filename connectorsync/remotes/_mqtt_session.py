"""What :class:`~connectorsync.remotes.mqtt.MQTTRemote` needs of paho-mqtt and of MQTT itself:
loading paho, one connection driven in the caller's thread (:class:`Session`), the size a
PUBLISH takes on the wire, and what a broker answered of each datapoint (:class:`Outcome`,
:class:`Refusals`).

Guarantees:

- :func:`load_paho` raises :class:`~connectorsync.errors.ConfigurationError` naming the
  ``connectorsync[mqtt]`` extra when paho-mqtt cannot be imported, so a remote that could
  never deliver is refused when it is built (``tests/test_mqtt.py::
  test_without_paho_building_the_remote_fails_naming_the_extra``).
- :func:`publish_size` is the exact size of the PUBLISH packet paho sends for a QoS 1 or 2
  message without properties (fixed header, topic, packet id, the MQTT 5 property length,
  payload; QoS 0 has no packet id: two bytes less): what a broker's maximum packet size is
  compared with
  (``tests/test_mqtt.py::test_a_datapoint_of_exactly_the_maximum_packet_size_is_delivered``).
- :func:`new_client` makes a paho client that ends a QoS 2 message at a PUBREC with a reason
  code of 0x80 or more (MQTT 5: the broker refused it), as the protocol says, and reports it
  like a PUBACK's: paho 2.x ignores that reason code and goes on with PUBREL, and a refused
  message would look delivered
  (``tests/test_mqtt_qos.py::test_qos2_a_publish_the_acl_refuses_is_a_dead_letter``).
- A :class:`Session` that resumes a client's persistent session (QoS 2) and finds that the
  broker no longer has it (CONNACK without "session present") takes paho's messages in flight
  back (:attr:`Session.forgotten`): resent as new messages they may arrive twice, whereas
  paho would send their PUBREL into a session that is gone and take the broker's blind
  PUBCOMP for a delivery.
"""

from __future__ import annotations

import contextlib
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ConfigurationError
from .base import Datapoint

if TYPE_CHECKING:
    from paho.mqtt.client import Client

#: The largest packet MQTT can frame: a remaining length of at most 268,435,455 bytes (four
#: bytes of variable-length integer) after one byte of packet type.
PROTOCOL_MAX_PACKET = 1 + 4 + 268_435_455

# PUBLISH reason code a client gives a message it did not send because it is too large for
# the broker (MQTT 5's "Packet too large"); used in the dead letter's reason.
PACKET_TOO_LARGE = 0x95
# MQTT's longest topic name (UTF-8 bytes), and the longest stream name ("user/device/name",
# each part at most 29 characters: streams.MAX_NAME_LENGTH), which a topic must leave room for.
_MAX_TOPIC = 65_535
_LONGEST_STREAM = 3 * 29 + 2


def load_paho() -> Any:
    """The ``paho.mqtt.client`` module.

    :raises ConfigurationError: paho-mqtt is not installed (or cannot be imported)
    """
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise ConfigurationError(
            "MQTTRemote needs paho-mqtt 2.x, which cannot be imported here "
            f"({type(exc).__name__}: {exc}): pip install 'connectorsync[mqtt]'"
        ) from None
    return mqtt


def publish_size(topic: bytes, payload: int, *, v5: bool, qos: int = 1) -> int:
    """Bytes on the wire of a PUBLISH of ``payload`` bytes to ``topic`` (UTF-8), as paho
    frames it: no properties, so MQTT 5 adds one byte (a property length of 0); a packet id
    (two bytes) unless ``qos`` is 0."""
    remaining = 2 + len(topic) + (2 if qos else 0) + payload + (1 if v5 else 0)
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def check_topic(topic: object) -> None:
    """A topic every stream's name can go in: a UTF-8 topic name (no wildcard, no U+0000)
    of at most 65,535 bytes with the longest stream name in it. Refused here, as a broker
    (or paho) would refuse it at every push and the streams would never deliver."""
    problem = None
    if not isinstance(topic, str) or not topic:
        problem = "a non-empty str"
    elif "+" in topic or "#" in topic:
        problem = "a topic name, without the wildcards '+' and '#'"
    elif "\x00" in topic:
        problem = "a topic name, without the character U+0000"
    else:
        try:
            size = len(topic.replace("{stream}", "x" * _LONGEST_STREAM).encode())
        except UnicodeEncodeError:
            problem = "encodable as UTF-8 (no lone surrogate)"
        else:
            if size > _MAX_TOPIC:
                problem = f"at most {_MAX_TOPIC} bytes as UTF-8, with a stream's name in it"
    if problem is not None:
        shown = repr(topic) if len(repr(topic)) <= 80 else f"{repr(topic)[:60]}... (long)"
        raise ConfigurationError(f"MQTTRemote topic must be {problem}; got {shown}")


class Outcome(NamedTuple):
    """What the broker said of one datapoint: acknowledged (``code`` under 0x80) or refused
    (``reason``); ``t`` and ``d`` tell it from another datapoint of the same id."""

    t: float
    d: str
    code: int
    reason: str


class Refusals:
    """The messages refused during one push: ``(reason code, reason)`` each, and the ids of
    their datapoints."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []
        self.ids: set[int] = set()

    def add(self, code: int, reason: str, points: Sequence[Datapoint]) -> None:
        self.items.append((code, reason))
        self.ids.update(p[0] for p in points)

    def unsettled(self, batch: Sequence[Datapoint], memo: dict[int, Outcome]) -> list[Datapoint]:
        """What of ``batch`` the broker has not answered yet (refused nor acknowledged);
        refusals remembered from earlier pushes are taken into this one's."""
        todo = []
        for point in batch:
            if point[0] in self.ids:
                continue
            known = memo.get(point[0])
            if known is None or (known.t, known.d) != (point[1], point[2]):
                todo.append(point)
            elif known.code >= 0x80:
                self.add(known.code, known.reason, [point])
        return todo


_CLIENT_CLASS: list[type[Any]] = []  # new_client's class, made once paho is loaded


def new_client(mqtt: Any, **kwargs: Any) -> Client:
    """A ``paho.mqtt.client.Client(CallbackAPIVersion.VERSION2, **kwargs)`` whose QoS 2
    messages end at a refusing PUBREC (the module's docstring)."""
    if not _CLIENT_CLASS:
        _CLIENT_CLASS.append(_refusing_pubrec_client(mqtt))
    client: Client = _CLIENT_CLASS[0](mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    return client


def _refusing_pubrec_client(mqtt: Any) -> type[Any]:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    class RefusingPubrecClient(mqtt.Client):  # type: ignore[misc]
        # The one place that reaches into paho's internals (2.x: its packet being read, its
        # messages in flight, its "message done" step); tests/test_mqtt_qos.py runs it
        # against mosquitto's PUBREC 0x87.
        def _handle_pubrec(self) -> Any:
            packet = bytes(self._in_packet["packet"])
            code = packet[2] if len(packet) > 2 else 0  # MQTT 5 only; 3.1.1 has no code
            if code < 0x80:
                return super()._handle_pubrec()
            mid = int.from_bytes(packet[:2], "big")
            with self._out_message_mutex:
                if mid in self._out_messages:
                    reason = ReasonCode(PacketTypes.PUBREC, identifier=code)
                    return self._do_on_publish(mid, reason, None)
            return mqtt.MQTT_ERR_SUCCESS

    return RefusingPubrecClient


class Session:
    """One connection of a paho client, driven in the caller's thread: the callbacks only
    note what arrived, for the caller to read."""

    def __init__(self, client: Client):
        self.client = client
        #: message ids of paho's messages in flight that the broker's session no longer
        #: knows (it answered without "session present"): paho forgot them; resend them.
        self.forgotten: list[int] = []
        self.connack: int | None = None
        self.receive_maximum = 65535
        #: CONNACK's Maximum Packet Size (MQTT 5), or None when the broker sent none
        self.maximum_packet_size: int | None = None
        self.lost = False
        self.stalled = False
        #: the broker refused a message on this connection (a PUBACK of 0x80 or more)
        self.refused = False
        #: PUBACKs received on this connection, ever
        self.answered = 0
        self._acks: list[tuple[int, int]] = []
        self._codes: dict[int, str] = {}
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        if int(code.value) < 0x80 and not getattr(flags, "session_present", False):
            # paho resends what it has in flight right after this callback: into a session
            # that is gone, a PUBREL would be answered blindly. Take them back instead.
            self.forgotten = [message.mid for message in client.drop_out_messages()]
        self.connack = int(code.value)
        self._codes[self.connack] = str(code)
        maximum = getattr(props, "ReceiveMaximum", None)
        if maximum:
            self.receive_maximum = int(maximum)
        packet = getattr(props, "MaximumPacketSize", None)
        if packet:
            self.maximum_packet_size = int(packet)

    def _on_publish(self, client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
        value = int(code.value)
        if value >= 0x80:
            self._codes[value] = str(code)
            self.refused = True
        self._acks.append((mid, value))
        self.answered += 1

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.lost = True

    def connacked(self) -> bool:
        return self.connack is not None

    def take_acks(self) -> list[tuple[int, int]]:
        """``(message id, reason code)`` of each PUBACK since the last call (3.1.1: code 0)."""
        acks, self._acks = self._acks, []
        return acks

    def reason_text(self, code: int) -> str:
        """The name of a reason code this connection received; of another, paho's name for
        it as a PUBACK's (the same codes as a PUBREC's): an answer read on a connection that
        was dropped is taken on the next one."""
        known = self._codes.get(code)
        if known is not None:
            return known
        try:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.reasoncodes import ReasonCode

            return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
        except (KeyError, ValueError):  # a code paho does not know: no name, the number stays
            return ""

    def pump(self, timeout: float, until: Callable[[], bool] | None = None) -> bool:
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
        """Still connected, and fit for another push: whatever the broker sent meanwhile (a
        close) is read first. A connection on which the broker refused a message is not: a
        broker may close it right after (mosquitto 2.0 does), and a close still on its way
        (over a proxy, a slow link) would take the next push's messages with it unanswered,
        every pass again when a bisected batch is refused as a whole."""
        if self.lost or self.stalled or self.refused:
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
        # The callbacks are the only cycle between the client and this session: broken, the
        # client goes (and paho closes its wake-up socket pair) now, not at the next full
        # garbage collection; a broker that drops every connection would run the process
        # out of file descriptors first.
        client = self.client
        client.on_connect = client.on_publish = client.on_disconnect = None


def close_sockets(exc: BaseException) -> None:
    """Close the socket a failed ``connect`` leaves open: paho does not close it when the
    TLS handshake fails, and only its frames (in the traceback) still hold it."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in list(frame.f_locals.values()):
            if isinstance(value, socket.socket):
                with contextlib.suppress(OSError):
                    value.close()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
