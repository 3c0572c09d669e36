"""A real MQTT broker (Debian's ``mosquitto``) in a temporary directory, and a fault proxy.

:class:`MosquittoBroker` writes a config file of its own under ``tmpdir`` (a listener on
127.0.0.1 only, anonymous access or a password file made with ``mosquitto_passwd -b``, TLS
with a given certificate, persistence in ``tmpdir``), starts ``mosquitto -c <file>`` and
waits until the port accepts connections. ``acl=`` gives it an ACL file (mosquitto refuses a
publish to a topic the file does not allow: under MQTT 5 with PUBACK 0x87, under 3.1.1 with a
plain PUBACK, the message dropped), ``max_packet_size=`` a limit on whole packets (told to
MQTT 5 clients in CONNACK; a bigger packet gets the connection closed).
:meth:`MosquittoBroker.stop` sends SIGTERM to the pid (SIGKILL after ``timeout``) and reaps
it; :meth:`~MosquittoBroker.restart` keeps the port and the persisted sessions. It never
touches the system service.

:class:`MQTTFaultProxy` sits between a client and the broker and injects what a broker does
not do on demand: it refuses chosen PUBLISHes itself (MQTT 5: a PUBACK with reason 0x99,
payload format invalid; MQTT 3.1.1: a plain PUBACK, the message dropped, as a 3.1.1 broker
refuses), or lets a PUBLISH through and cuts the connection when its PUBACK (QoS 2: its
PUBCOMP, or its PUBREC) comes back (a lost acknowledgement), swallows PUBLISHes (a network
that loses them: what QoS 0 cannot see), and cuts every connection on demand (a connection
that dies without DISCONNECT: the broker publishes its will).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._process import ChildProcess, free_port
from ._proxy import LoopbackProxy, shut

__all__ = [
    "MQTTFaultProxy",
    "MQTTSubscriber",
    "MosquittoBroker",
    "MosquittoStartError",
    "Publish",
    "find_mosquitto",
]

_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class MosquittoStartError(RuntimeError):
    """mosquitto did not start or did not listen in time; the message ends with its log."""


def find_mosquitto() -> str | None:
    """The path of the ``mosquitto`` binary (Debian puts it in /usr/sbin), or None."""
    for path in (shutil.which("mosquitto"), *_FALLBACK_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    return None


class MosquittoBroker(ChildProcess):
    """A ``mosquitto`` of its own on 127.0.0.1, keeping its files under ``tmpdir``.

    :param users: ``{username: password}``: anonymous access is off and only these log in
    :param tls: ``(certfile, keyfile)``: the listener speaks TLS with them (``mqtts://``)
    :param acl: the text of an ACL file (mosquitto's ``acl_file`` format: ``user NAME`` then
        ``topic [read|write|readwrite] TOPIC`` lines; lines before the first ``user`` are
        the anonymous clients'). An :class:`MQTTSubscriber` needs read access to what it
        counts and write access to ``connectorsync-flush/#`` (its flush markers).
    :param max_packet_size: the broker's ``max_packet_size``: the largest whole packet
        (fixed header, topic, properties, payload) it takes, in bytes
    """

    _noun = "broker"
    _program = "mosquitto"

    def __init__(  # noqa: PLR0913 - a broker's settings, keyword-only past the port
        self,
        tmpdir: str | os.PathLike[str],
        port: int = 0,
        *,
        users: Mapping[str, str] | None = None,
        tls: tuple[str, str] | None = None,
        acl: str | None = None,
        max_packet_size: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.dir = os.fspath(tmpdir)
        self.users = dict(users or {})
        self.tls = tls
        self.acl = acl
        self.max_packet_size = max_packet_size
        self.start_timeout = start_timeout
        self._port = port
        self._proc = None
        self._log_file = os.path.join(self.dir, "mosquitto.log")

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>`` (``mqtts://`` with TLS)."""
        if self._port == 0:
            raise RuntimeError("the broker has not been started yet")
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self._port}"

    def start(self) -> MosquittoBroker:
        """Start mosquitto and wait until it listens; a no-op if it runs. Returns self.

        :raises MosquittoStartError: no mosquitto, it exited, or it did not listen in time
        """
        if self.running:
            return self
        binary = find_mosquitto()
        if binary is None:
            raise MosquittoStartError("mosquitto not found: `apt-get install mosquitto`")
        os.makedirs(self.dir, exist_ok=True)
        chosen = self._port == 0
        for attempt in range(3):
            if self._port == 0:
                self._port = free_port()
            try:
                self._launch(binary)
                return self
            except MosquittoStartError as exc:
                if not (chosen and "Address already in use" in str(exc) and attempt < 2):
                    raise
                self._port = 0
        return self

    def _launch(self, binary: str) -> None:
        config = os.path.join(self.dir, "mosquitto.conf")
        with open(config, "w", encoding="utf-8") as f:
            f.write(self._config())
        self._spawn(
            [binary, "-c", config], self.dir, self._log_file, self._listens, MosquittoStartError
        )

    def _listens(self) -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
            return True
        return False

    def _config(self) -> str:
        lines = [
            f"listener {self._port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            # Run as root, mosquitto would become user "mosquitto" and could not write here.
            f"user {getpass.getuser()}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 0",  # keep all for a persistent subscriber while it is away
            f"allow_anonymous {'false' if self.users else 'true'}",
        ]
        if self.users:
            path = os.path.join(self.dir, "passwords")
            open(path, "w").close()
            for user, password in self.users.items():
                subprocess.run(
                    [_passwd_binary(), "-b", path, user, password], check=True, timeout=30
                )
            lines.append(f"password_file {path}")
        if self.tls:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
        if self.acl is not None:
            path = os.path.join(self.dir, "acl")
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.acl)
            lines.append(f"acl_file {path}")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        return "\n".join(lines) + "\n"


def _passwd_binary() -> str:
    found = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    return found


# ----------------------------------------------------------------------------- a subscriber


class MQTTSubscriber:
    """A paho-mqtt client of the test's that subscribes to ``topics`` (with ``qos``, 1 by
    default; 2 to count exactly what the broker released) and keeps every message, in
    arrival order. Its session is persistent (a fixed client id, no clean
    session) and the broker persists it, so a broker restart loses it nothing; it reconnects
    and subscribes again by itself. :meth:`flush` waits until every message the broker
    acknowledged before the call has arrived here.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: str = "#",
        *,
        auth: tuple[str, str] | None = None,
        qos: int = 1,
    ) -> None:
        # The mqtt extra (the tests install it).
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self._lock = threading.Condition()
        self._messages: list[tuple[str, bytes]] = []
        self._subscribed = False
        self._marker = f"connectorsync-flush/{uuid.uuid4().hex}"
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"subscriber-{uuid.uuid4().hex[:8]}",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        # The flush marker travels with the messages' QoS: a QoS 1 marker would overtake QoS 2
        # messages, which a subscriber receives one round trip later (at their PUBREL).
        self._qos = qos
        self._topics = [(topics, qos), (self._marker, qos)]
        if auth is not None:
            self._client.username_pw_set(*auth)
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        self._wait(lambda: self._subscribed, "the subscription")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        client.subscribe(self._topics)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            self._subscribed = True
            self._lock.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        with self._lock:
            self._subscribed = False

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self._messages.append((message.topic, bytes(message.payload)))
            self._lock.notify_all()

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        with self._lock:
            if not self._lock.wait_for(condition, timeout):
                raise TimeoutError(f"MQTTSubscriber: no {what} within {timeout} s")

    def flush(self) -> None:
        """Wait until every message the broker acknowledged before this call has arrived."""
        self._wait(lambda: self._subscribed, "subscription (after a restart?)")
        token = uuid.uuid4().hex.encode()
        self._client.publish(self._marker, token, qos=self._qos or 1)
        self._wait(lambda: (self._marker, token) in self._messages, "flush marker")

    def messages(self, topic: str | None = None) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` of every message so far (``topic``'s only, if given)."""
        with self._lock:
            found = [m for m in self._messages if m[0] != self._marker]
        return [m for m in found if topic is None or m[0] == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ----------------------------------------------------------------------------- the proxy

_PUBLISH, _PUBACK, _CONNECT = 3, 4, 1
_PUBREC, _PUBCOMP = 5, 7


@dataclass(frozen=True)
class Publish:
    """A PUBLISH packet a client sent: its topic, its payload, and its whole size in bytes
    (fixed header, topic, packet id, properties, payload)."""

    topic: str
    payload: bytes
    size: int


def _read_packet(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One whole MQTT packet from ``sock`` (``buffer`` keeps what came beyond it), or None
    at the end of the stream."""
    while True:
        if len(buffer) >= 2:
            length, shift, i = 0, 0, 1
            while i < len(buffer) and i <= 4:
                length |= (buffer[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buffer[i - 1] & 0x80:
                    if len(buffer) >= i + length:
                        packet = bytes(buffer[: i + length])
                        del buffer[: i + length]
                        return packet
                    break
        data = sock.recv(1 << 16)
        if not data:
            return None
        buffer += data


def _body(packet: bytes) -> bytes:
    i = 1
    while packet[i] & 0x80:
        i += 1
    return packet[i + 1 :]


class MQTTFaultProxy(LoopbackProxy):
    """A loopback TCP proxy to the broker at ``127.0.0.1:port`` that understands MQTT framing.

    - :meth:`refuse`: a PUBLISH whose payload satisfies ``predicate(payload)`` is not
      forwarded; the proxy answers it with PUBACK (QoS 2: PUBREC) reason 0x99 (MQTT 5), or
      with a plain one (MQTT 3.1.1: what a broker does with a message its ACL refuses).
    - :meth:`published`: every PUBLISH a client sent, with its size on the wire.
    - :meth:`lose_next_answers`: the next ``n`` PUBLISHes (QoS 1 or 2) are forwarded (the
      broker stores them), and when the broker's answer to one comes back the connection is
      cut instead: its PUBACK (QoS 1); its PUBCOMP (QoS 2: the broker has released it to
      subscribers), or with ``at="pubrec"`` its PUBREC (stored, not released yet).
    - :meth:`swallow_next_publishes`: the next ``n`` PUBLISHes are not forwarded, and
      nothing answers them.
    - :meth:`cut`: cut every connection now, as a network does (no DISCONNECT is sent).
    """

    def __init__(self, port: int) -> None:
        self._refuse: Callable[[bytes], bool] | None = None
        self._lose: list[int] = []  # the packet type to cut at, per PUBLISH armed
        self._swallow = 0
        self._published: list[Publish] = []
        super().__init__(port, "mqtt")

    def published(self, topic: str | None = None) -> list[Publish]:
        """Every PUBLISH a client sent through the proxy (``topic``'s only, if given), in
        order, whether forwarded, refused or swallowed: what went on the wire, duplicates
        included."""
        with self._lock:
            return [p for p in self._published if topic is None or p.topic == topic]

    def refuse(self, predicate: Callable[[bytes], bool]) -> None:
        self._refuse = predicate

    def lose_next_answers(self, n: int = 1, *, at: str = "last") -> None:
        """Cut the connection when the answer to each of the next ``n`` PUBLISHes with QoS
        1 or 2 comes back: ``at="last"`` its PUBACK or PUBCOMP, ``at="pubrec"`` (QoS 2) its
        PUBREC."""
        if at not in ("last", "pubrec"):
            raise ValueError(f"at must be 'last' or 'pubrec'; got {at!r}")
        with self._lock:
            self._lose += [_PUBREC if at == "pubrec" else 0] * n

    def swallow_next_publishes(self, n: int = 1) -> None:
        with self._lock:
            self._swallow += n

    def cut(self) -> None:
        """Cut every connection through the proxy now; new ones are still relayed."""
        with self._lock:
            sockets = list(self._sockets)
        shut(*sockets)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        state = {"v5": False, "cut": set(), "lock": threading.Lock()}
        for target in (self._from_client, self._from_broker):
            self._thread(target, client, upstream, state)

    def _from_client(self, client: socket.socket, broker: socket.socket, state: dict) -> None:  # type: ignore[type-arg]
        buffer = bytearray()
        try:
            while (packet := _read_packet(client, buffer)) is not None:
                kind, body = packet[0] >> 4, _body(packet)
                if kind == _CONNECT:
                    name_len = int.from_bytes(body[:2], "big")
                    state["v5"] = body[2 + name_len] == 5
                elif kind == _PUBLISH:
                    qos = (packet[0] >> 1) & 3
                    topic_len = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + topic_len].decode("utf-8", "replace")
                    mid = body[2 + topic_len : 4 + topic_len] if qos else b""
                    payload = body[2 + topic_len + len(mid) :]
                    if state["v5"]:
                        props_len, i = 0, 0
                        while True:
                            props_len |= (payload[i] & 0x7F) << (7 * i)
                            i += 1
                            if not payload[i - 1] & 0x80:
                                break
                        payload = payload[i + props_len :]
                    with self._lock:
                        self._published.append(Publish(topic, bytes(payload), len(packet)))
                        swallow = self._swallow > 0
                        self._swallow -= swallow
                    if swallow:
                        continue
                    refuse = self._refuse
                    if qos and refuse is not None and refuse(payload):
                        answer = _PUBACK if qos == 1 else _PUBREC  # QoS 2 refuses at PUBREC
                        puback = bytes([answer << 4, 3]) + mid + b"\x99"
                        if not state["v5"]:  # no reason code in 3.1.1: "got it"
                            puback = bytes([answer << 4, 2]) + mid
                        with state["lock"]:
                            client.sendall(puback)
                        continue
                    with self._lock:
                        if qos and self._lose:
                            at = self._lose.pop(0)
                            last = _PUBACK if qos == 1 else _PUBCOMP
                            state["cut"].add((at or last, mid))
                broker.sendall(packet)
        except OSError:
            pass
        finally:
            shut(client, broker)

    def _from_broker(self, client: socket.socket, broker: socket.socket, state: dict) -> None:  # type: ignore[type-arg]
        buffer = bytearray()
        try:
            while (packet := _read_packet(broker, buffer)) is not None:
                if (packet[0] >> 4, _body(packet)[:2]) in state["cut"]:
                    break  # stored (or released); the client never hears of it
                with state["lock"]:
                    client.sendall(packet)
        except OSError:
            pass
        finally:
            shut(client, broker)
