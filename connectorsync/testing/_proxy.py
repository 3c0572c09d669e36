"""A loopback TCP proxy in front of a test server, the base of the proxies that inject faults
a server cannot (an answer lost after the server stored the request, say).

Guarantees: it listens on 127.0.0.1 only and connects only to ``127.0.0.1:port``;
:meth:`LoopbackProxy.close` stops accepting, cuts every connection and waits for the
threads that relay them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any


class LoopbackProxy:
    """Accepts connections on a free loopback port and hands each, with a new connection to
    the server, to :meth:`_relay` (a subclass starts its relaying threads there with
    :meth:`_thread`)."""

    def __init__(self, port: int, scheme: str = "http") -> None:
        self._port = port
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop sees close() promptly
        self.port = int(self._listener.getsockname()[1])
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._acceptor.start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        raise NotImplementedError

    def _thread(self, target: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self._port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._relay(client, upstream)

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        shut(*sockets)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


class AnswerLosingProxy(LoopbackProxy):
    """A proxy that loses the answers to the next requests it recognises: armed by
    :meth:`lose_next_answers`, a subclass asks :meth:`_take` as such a request passes (True:
    let it through, and cut the connection when the server's answer comes back, so that what
    the server stored the client never hears of). By default each connection is relayed by
    two :meth:`_pump` threads sharing a ``drop`` event (set: cut instead of relaying)."""

    def __init__(self, port: int, scheme: str = "http") -> None:
        self._armed = 0
        super().__init__(port, scheme)

    def lose_next_answers(self, n: int = 1) -> None:
        with self._lock:
            self._armed += n

    def _disarm(self) -> None:
        with self._lock:
            self._armed = 0

    def take_armed(self) -> bool:
        """Whether to lose this answer: takes one of the answers armed to be lost. For the
        proxies of other protocols built on this one (public, so subclasses in tests too)."""
        with self._lock:
            if self._armed > 0:
                self._armed -= 1
                return True
            return False

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        drop = threading.Event()
        self._thread(self._pump, client, upstream, drop, True)
        self._thread(self._pump, upstream, client, drop, False)

    def _pump(
        self, src: socket.socket, dst: socket.socket, drop: threading.Event, from_client: bool
    ) -> None:
        raise NotImplementedError


def shut(*sockets: socket.socket) -> None:
    """Shut both directions of each socket (already closed: nothing to do)."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
