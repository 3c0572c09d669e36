"""What :class:`~connectorsync.remotes.mqtt.MQTTRemote` needs of paho-mqtt and of MQTT itself:
loading paho, one connection driven in the caller's thread (:class:`Session`), the size a
PUBLISH takes on the wire, and what a broker answered of each datapoint (:class:`Outcome`,
:class:`Refusals`).

Guarantees:

- :func:`load_paho` raises :class:`~connectorsync.errors.ConfigurationError` naming the
  ``connectorsync[mqtt]`` extra when paho-mqtt cannot be imported, so a remote that could
  never deliver is refused when it is built (``tests/test_mqtt.py::
  test_without_paho_building_the_remote_fails_naming_the_extra``).
- :func:`publish_size` is the exact size of the PUBLISH packet paho sends for a QoS 1
  message without properties (fixed header, topic, packet id, the MQTT 5 property length,
  payload): what a broker's maximum packet size is compared with
  (``tests/test_mqtt.py::test_a_datapoint_of_exactly_the_maximum_packet_size_is_delivered``).
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


def publish_size(topic: bytes, payload: int, *, v5: bool) -> int:
    """Bytes on the wire of a QoS 1 PUBLISH of ``payload`` bytes to ``topic`` (UTF-8), as
    paho frames it: no properties, so MQTT 5 adds one byte (a property length of 0)."""
    remaining = 2 + len(topic) + 2 + payload + (1 if v5 else 0)
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


class Session:
    """One connection of a paho client, driven in the caller's thread: the callbacks only
    note what arrived, for the caller to read."""

    def __init__(self, client: Client):
        self.client = client
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
        return self._codes.get(code, "")

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
