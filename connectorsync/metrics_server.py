"""The ``/metrics`` HTTP server of ``metrics_port``: small, bounded, and gone on close.

A metrics endpoint answers one scraper now and then, on 127.0.0.1; it must never cost the
program that logs more than a few threads, whatever a client does. Guarantees
(``tests/test_metrics.py``):

- At most :data:`MAX_CONNECTIONS` connections are served at once, each by a thread of its
  own; one more is closed at once, without a thread
  (``test_idle_connections_are_bounded_and_gone_after_close``).
- Each read and write waits at most :data:`IO_TIMEOUT` seconds, and a connection is cut
  :data:`REQUEST_DEADLINE` seconds after it was accepted, however slowly it trickles in: a
  slow client (slowloris) holds one slot for that long and never blocks the others
  (``test_a_slow_client_does_not_block_a_scrape_and_is_cut``).
- :meth:`MetricsServer.close` stops listening, cuts every open connection and joins every
  thread: nothing of it is left, no thread and no socket.
- In a child process forked from the one serving, :meth:`MetricsServer.close` closes that
  child's copies of the sockets and returns: the loop and the threads are the parent's, and
  the parent goes on serving (``test_close_in_a_forked_child_returns_and_the_parent_serves``).
- Nothing is printed: a client that goes away or times out is logged at DEBUG only, never
  a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import socketserver
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import ConfigurationError

log = logging.getLogger(__name__)

#: The only address the metrics server listens on: the metrics say what a device holds.
LOOPBACK = "127.0.0.1"
#: Connections served at once (a scraper uses one; a few spare for people with curl).
MAX_CONNECTIONS = 8
#: Seconds each read or write of a connection may wait.
IO_TIMEOUT = 5.0
#: Seconds from accepting a connection to cutting it: a scrape takes milliseconds.
REQUEST_DEADLINE = 5.0
#: Seconds close() waits for each connection's thread once its socket is cut.
JOIN_TIMEOUT = 5.0


class MetricsServer:
    """Serves a WSGI app (prometheus_client's) on 127.0.0.1 at ``port`` (0: any free one)
    from a thread of its own, until :meth:`close`.

    :raises ConfigurationError: the port cannot be listened on (in use, say)
    """

    def __init__(self, port: int, app: Any):
        try:
            self._server = make_server(LOOPBACK, port, app, _Server, handler_class=_Quiet)
        except OSError as exc:
            raise ConfigurationError(
                f"metrics_port {port}: cannot listen on {LOOPBACK}:{port} ({exc.strerror}); "
                "choose another port, or 0 for any free one"
            ) from exc
        self._pid = os.getpid()
        # A short poll: close() waits for the loop to see the shutdown, and each poll cuts
        # the connections past their deadline.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="connectorsync-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_port}/metrics"

    def close(self) -> None:
        """Stop listening, cut every connection, join every thread. Call once."""
        if os.getpid() != self._pid:
            # A forked child: no loop runs here to see a shutdown (it would wait for ever),
            # and cutting a connection would end the parent's too: close our copies only.
            self._server.forget()
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # never holds up the interpreter's exit; close() joins them
    block_on_close = False  # server_close() joins them itself, after cutting their sockets

    def __init__(self, *args: Any, **kwargs: Any):
        self._lock = threading.Lock()
        # Each open connection: when it is cut, and the thread serving it.
        self._open: dict[socket.socket, tuple[float, threading.Thread]] = {}
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._lock:
            room = len(self._open) < MAX_CONNECTIONS
        if not room:
            log.debug("metrics: %d connections open; one more closed", MAX_CONNECTIONS)
        return room  # False: socketserver closes it at once

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="connectorsync-metrics-connection",
            daemon=True,
        )
        with self._lock:
            self._open[request] = (time.monotonic() + REQUEST_DEADLINE, thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # closes the socket
        finally:
            with self._lock:
                self._open.pop(request, None)

    def service_actions(self) -> None:
        """Each poll of the loop: cut the connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, (deadline, _) in self._open.items() if deadline < now]
        for sock in late:
            log.debug("metrics: a connection took over %.0f s; cut", REQUEST_DEADLINE)
            _cut(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: not worth a traceback on stderr."""
        log.debug("metrics: a connection failed", exc_info=True)

    def forget(self) -> None:
        """In a forked child: close this process's copies of the sockets, nothing more (the
        lock may have been held by a parent's thread at the fork: not taken)."""
        super().server_close()
        for sock in list(self._open):
            sock.close()
        self._open.clear()

    def server_close(self) -> None:
        super().server_close()  # the listening socket
        with self._lock:
            threads = [thread for _, thread in self._open.values()]
            for sock in self._open:
                _cut(sock)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)


def _cut(sock: socket.socket) -> None:
    """End a connection another thread serves: its reads and writes return at once, and
    that thread closes the socket (closing it here could close a reused descriptor)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Quiet(WSGIRequestHandler):
    timeout = IO_TIMEOUT  # StreamRequestHandler sets it on the socket: each read, each write

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a line on stderr each."""

    def get_stderr(self) -> Any:
        """Where wsgiref writes a failed response's traceback: the DEBUG log."""
        return _DebugLog()


class _DebugLog(io.StringIO):
    def write(self, text: str) -> int:
        if text.strip():
            log.debug("metrics: %s", text.rstrip())
        return len(text)
