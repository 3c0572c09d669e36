"""A real NATS server with JetStream (Debian's ``nats-server``) in a temporary directory.

:class:`NATSServer` writes a config file of its own under ``tmpdir`` (a listener on
127.0.0.1 only, JetStream with its store in ``tmpdir``, no monitoring port; optionally users
with passwords, a token, TLS with a given certificate, a ``max_payload``, or operator mode:
JWT-authenticated accounts of a :class:`NATSOperator`, whose users log in with ``.creds``
files), starts
``nats-server -c <file>`` and waits until the port accepts connections.
:meth:`NATSServer.stop` sends SIGTERM to the pid (SIGKILL after ``timeout``) and reaps it;
:meth:`~NATSServer.restart` keeps the port and the JetStream store, so streams and their
messages outlive it. It never touches a system service.

The test's side of JetStream, through nats-py (the ``nats`` extra; the tests install it):
:meth:`NATSServer.add_stream` makes a stream (subjects, ``duplicate_window``, limits with
``discard: new``), :meth:`~NATSServer.stream_messages` and :meth:`~NATSServer.count` read
back what a stream holds, so a test counts on the server what was stored.

:class:`NATSFaultProxy` sits between a client and the server and injects what a server
does not do on demand: it loses acknowledgements (armed, it lets publishes through, JetStream
stores them, and cuts the connection when an acknowledgement comes back), and refuses chosen
publishes itself, answering as JetStream does for a message over a stream's size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._nats_jwt import NATSOperator
from ._process import ChildProcess, free_port
from ._proxy import AnswerLosingProxy, shut

__all__ = [
    "NATSFaultProxy",
    "NATSOperator",
    "NATSServer",
    "NATSStartError",
    "StoredMessage",
    "find_nats_server",
]

_FALLBACK_PATHS = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")
_T = TypeVar("_T")


class NATSStartError(RuntimeError):
    """nats-server did not start or did not listen in time; the message ends with its log."""


def find_nats_server() -> str | None:
    """The path of the ``nats-server`` binary (Debian puts it in /usr/sbin), or None."""
    for path in (shutil.which("nats-server"), *_FALLBACK_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    return None


@dataclass(frozen=True)
class StoredMessage:
    """A message as a JetStream stream holds it: its sequence, subject, ``Nats-Msg-Id``
    header (or None) and payload."""

    seq: int
    subject: str
    msg_id: str | None
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


class NATSServer(ChildProcess):
    """A ``nats-server -js`` of its own on 127.0.0.1, keeping its store under ``tmpdir``.

    :param users: ``{user: password}``: only these log in
    :param permissions: ``{user: {"publish": [subjects], "subscribe": [subjects]}}``: what
        each user may do (nats-server's ``permissions``); a user not named may do anything
    :param token: the one token that logs in (not with ``users``)
    :param tls: ``(certfile, keyfile)``: the listener speaks TLS with them (``tls://``)
    :param max_payload: the largest message (headers and payload) the server takes, bytes
    :param operator: operator mode (not with ``users`` or ``token``): only users of the
        operator's ``DEVICES`` account log in, each with a ``.creds`` file; JetStream is
        that account's. The test's own side logs in as a user of it too (the ``nkeys``
        package is needed)
    """

    _noun = "server"
    _program = "nats-server"

    def __init__(  # noqa: PLR0913 - a server's settings, keyword-only past the port
        self,
        tmpdir: str | os.PathLike[str],
        port: int = 0,
        *,
        users: Mapping[str, str] | None = None,
        permissions: Mapping[str, Mapping[str, list[str]]] | None = None,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
        max_payload: int | None = None,
        operator: NATSOperator | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if sum(bool(given) for given in (users, token, operator)) > 1:
            raise ValueError("NATSServer: one of users=, token=, operator=")
        self.dir = os.fspath(tmpdir)
        self.users = dict(users or {})
        self.permissions = {u: dict(p) for u, p in (permissions or {}).items()}
        self.token = token
        self.tls = tls
        self.max_payload = max_payload
        self.operator = operator
        self.start_timeout = start_timeout
        self._port = port
        self._proc = None
        self._log_file = os.path.join(self.dir, "nats-server.log")

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (``tls://`` with TLS)."""
        if self._port == 0:
            raise RuntimeError("the server has not been started yet")
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self._port}"

    def start(self) -> NATSServer:
        """Start nats-server and wait until it listens; a no-op if it runs. Returns self.

        :raises NATSStartError: no nats-server, it exited, or it did not listen in time
        """
        if self.running:
            return self
        binary = find_nats_server()
        if binary is None:
            raise NATSStartError("nats-server not found: `apt-get install nats-server`")
        os.makedirs(self.dir, exist_ok=True)
        chosen = self._port == 0
        for attempt in range(3):
            if self._port == 0:
                self._port = free_port()
            try:
                self._launch(binary)
                return self
            except NATSStartError as exc:
                if not (chosen and "address already in use" in str(exc).lower() and attempt < 2):
                    raise
                self._port = 0
        return self

    def _launch(self, binary: str) -> None:
        config = os.path.join(self.dir, "nats-server.conf")
        with open(config, "w", encoding="utf-8") as f:
            f.write(self._config())
        self._spawn([binary, "-c", config], self.dir, self._log_file, self._ready, NATSStartError)

    def _ready(self) -> bool:
        # JetStream is up once the server listens: it starts before the client listener.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
            return True
        return False

    def _config(self) -> str:
        lines = [
            f"listen: 127.0.0.1:{self._port}",
            "server_name: connectorsync_test",
            f"jetstream {{ store_dir: {json.dumps(os.path.join(self.dir, 'jetstream'))} }}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.users:
            users = ", ".join(
                f"{{user: {json.dumps(u)}, password: {json.dumps(p)}"
                + (
                    f", permissions: {json.dumps(self.permissions[u])}"
                    if u in self.permissions
                    else ""
                )
                + "}"
                for u, p in self.users.items()
            )
            lines.append(f"authorization {{ users: [{users}] }}")
        if self.token is not None:
            lines.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        if self.operator is not None:
            lines.extend(self.operator.server_config())
        if self.tls:
            cert, key = (json.dumps(p) for p in self.tls)
            lines.append(f"tls {{ cert_file: {cert}, key_file: {key} }}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------- the test's JetStream

    def add_stream(  # noqa: PLR0913 - a stream's settings
        self,
        name: str,
        subjects: list[str],
        *,
        duplicate_window: float = 120.0,
        max_msgs: int = -1,
        max_bytes: int = -1,
        max_msg_size: int = -1,
    ) -> None:
        """Create the stream ``name`` on ``subjects`` (file storage, ``discard: new``: a full
        stream refuses new messages rather than dropping old ones)."""

        async def add(js: Any) -> None:
            from nats.js.api import DiscardPolicy, StreamConfig

            config = StreamConfig(
                name=name,
                subjects=subjects,
                duplicate_window=duplicate_window,
                max_msgs=max_msgs,
                max_bytes=max_bytes,
                max_msg_size=max_msg_size,
                discard=DiscardPolicy.NEW,
            )
            await js.add_stream(config)

        self._run(add)

    def set_limits(self, name: str, *, max_msgs: int = -1, max_bytes: int = -1) -> None:
        """Change the stream's limits (-1: none), keeping its other settings."""

        async def update(js: Any) -> None:
            info = await js.stream_info(name)
            config = info.config
            config.max_msgs, config.max_bytes = max_msgs, max_bytes
            await js.update_stream(config)

        self._run(update)

    def delete_stream(self, name: str) -> None:
        async def delete(js: Any) -> None:
            await js.delete_stream(name)

        self._run(delete)

    def purge_stream(self, name: str) -> None:
        """Remove every message of the stream (a full stream then takes messages again)."""

        async def purge(js: Any) -> None:
            await js.purge_stream(name)

        self._run(purge)

    def count(self, name: str) -> int:
        """How many messages the stream ``name`` holds."""

        async def count(js: Any) -> int:
            info = await js.stream_info(name)
            return int(info.state.messages)

        return self._run(count)

    def stream_messages(self, name: str) -> list[StoredMessage]:
        """Every message the stream ``name`` holds, in sequence order."""

        async def read(js: Any) -> list[StoredMessage]:
            info = await js.stream_info(name)
            first, last = info.state.first_seq, info.state.last_seq
            found: list[StoredMessage] = []
            if not info.state.messages:
                return found
            sub = await js.subscribe(">", stream=name, ordered_consumer=True, pending_msgs_limit=-1)
            try:
                while len(found) < info.state.messages:
                    msg = await sub.next_msg(timeout=10)
                    seq = msg.metadata.sequence.stream
                    if first <= seq <= last:
                        header = (msg.headers or {}).get("Nats-Msg-Id")
                        found.append(StoredMessage(seq, msg.subject, header, msg.data))
            finally:
                await sub.unsubscribe()
            return found

        return self._run(read)

    def client_options(self) -> dict[str, Any]:
        """What ``nats.connect`` needs to log in here as the test (the first user, the
        token, or a user of the operator's account; TLS trusting the server's own certificate)."""
        options: dict[str, Any] = {"servers": [self.url], "allow_reconnect": False}
        if self.users:
            user, password = next(iter(self.users.items()))
            options.update(user=user, password=password)
        if self.token is not None:
            options["token"] = self.token
        if self.operator is not None:
            creds = os.path.join(self.dir, "test-side.creds")
            if not os.path.exists(creds):
                self.operator.user_creds(creds, "test-side")
            options["user_credentials"] = creds
        if self.tls:
            options["tls"] = ssl.create_default_context(cafile=self.tls[0])
        return options

    def _run(self, action: Callable[[Any], Awaitable[_T]]) -> _T:
        async def session() -> _T:
            import nats  # the nats extra (the tests install it)

            nc = await nats.connect(**self.client_options())
            try:
                return await action(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(session())


class NATSFaultProxy(AnswerLosingProxy):
    """A loopback TCP proxy to the NATS server at ``127.0.0.1:port`` that reads the client's
    side of the NATS protocol.

    - :meth:`lose_next_answers` arms it: the next time data from the server holds a
      JetStream publish acknowledgement (``"seq":``), the connection is cut there and that
      data never reaches the client. What the client published is stored; it never hears
      so. Every acknowledgement in that chunk of data is lost at once (at least one).
    - :meth:`refuse`: a publish whose payload satisfies ``predicate(payload)`` is not
      forwarded; the proxy answers it as JetStream answers a message over a stream's
      ``max_msg_size`` (400, err_code 10054, "message size exceeds maximum allowed").
    - :meth:`published`: the payload of every publish a client sent, refused or not.
    """

    def __init__(self, port: int) -> None:
        self._refuse: Callable[[bytes], bool] | None = None
        self._published: list[bytes] = []
        super().__init__(port, "nats")

    def refuse(self, predicate: Callable[[bytes], bool]) -> None:
        self._refuse = predicate

    def published(self) -> list[bytes]:
        with self._lock:
            return list(self._published)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        to_client = threading.Lock()  # both relays may write to the client
        self._thread(self._from_client, client, upstream, to_client)
        self._thread(self._from_server, upstream, client, to_client)

    def _from_server(
        self, server: socket.socket, client: socket.socket, to_client: threading.Lock
    ) -> None:
        try:
            while data := server.recv(1 << 16):
                if b'"seq":' in data and self.take_armed():
                    break  # stored on the server; the client never hears of it
                with to_client:
                    client.sendall(data)
        except OSError:
            pass
        finally:
            shut(server, client)

    def _from_client(
        self, client: socket.socket, server: socket.socket, to_client: threading.Lock
    ) -> None:
        buffer = bytearray()
        subscriptions: dict[str, str] = {}  # subject -> sid
        try:
            while data := client.recv(1 << 16):
                buffer += data
                out = bytearray()
                while (command := _next_command(buffer)) is not None:
                    head, body, raw = command
                    words = head.split()
                    verb = words[0].upper() if words else b""
                    if verb == b"SUB":
                        subscriptions[words[1].decode()] = words[-1].decode()
                    if verb in (b"PUB", b"HPUB") and body is not None:
                        payload = body[int(words[-2]) :] if verb == b"HPUB" else body
                        with self._lock:
                            self._published.append(bytes(payload))
                        refuse = self._refuse
                        reply = (
                            words[2].decode() if len(words) >= (5 if verb == b"HPUB" else 4) else ""
                        )
                        if refuse is not None and reply and refuse(payload):
                            answer = _REFUSAL
                            sid = _sid_for(subscriptions, reply)
                            frame = b"MSG %s %s %d\r\n%s\r\n" % (
                                reply.encode(),
                                sid.encode(),
                                len(answer),
                                answer,
                            )
                            with to_client:
                                client.sendall(frame)
                            continue
                    out += raw
                if out:
                    server.sendall(out)
        except OSError:
            pass
        finally:
            shut(client, server)


_REFUSAL = (
    b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}'
)


def _next_command(buffer: bytearray) -> tuple[bytes, bytes | None, bytes] | None:
    """The next whole client command in ``buffer`` (taken out of it): its line, the body
    of a PUB/HPUB (None for others), and its bytes as they came; None until one is whole."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    words = head.split()
    verb = words[0].upper() if words else b""
    if verb in (b"PUB", b"HPUB"):
        size = int(words[-1])
        whole = end + 2 + size + 2
        if len(buffer) < whole:
            return None
        raw = bytes(buffer[:whole])
        del buffer[:whole]
        return head, raw[end + 2 : end + 2 + size], raw
    raw = bytes(buffer[: end + 2])
    del buffer[: end + 2]
    return head, None, raw


def _sid_for(subscriptions: dict[str, str], reply: str) -> str:
    """The sid of the client's subscription that gets messages on ``reply``."""
    for subject, sid in subscriptions.items():
        if subject == reply or (subject.endswith(".*") and reply.startswith(subject[:-1])):
            return sid
    return "0"
