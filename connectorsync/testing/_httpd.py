"""The HTTP server under the test servers: 127.0.0.1 only, one thread per connection, and
every connection tracked, so that stopping a server can cut the ones still open (a client
must see a real dropped connection, not a server that lingers)."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

# A too-large body up to this size is read and discarded so that the client gets the 413:
# closing with unread data makes the kernel reset the connection, and the client would see a
# connection error instead of the answer. A larger one is left unread and the connection closed.
_DRAIN_LIMIT = 64 * 1024 * 1024


class Drop(Exception):
    """Raised in a handler to close the connection without answering."""


class LoopbackHTTPServer(HTTPServer):
    """An HTTPServer on 127.0.0.1:``port`` (0: a free port) with one thread per connection."""

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], thread_name: str):
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self._thread_name = thread_name
        self._serving: threading.Thread | None = None
        super().__init__(("127.0.0.1", port), handler)

    def serve_in_thread(self, name: str) -> None:
        """Serve from a daemon thread called ``name``; the socket listens already."""
        self._serving = threading.Thread(
            target=self.serve_forever,
            args=(0.02,),  # the poll interval bounds how long stop_serving() waits
            name=name,
            daemon=True,
        )
        self._serving.start()

    def stop_serving(self) -> None:
        """Stop serving, cut every open connection, close the listening socket and wait for
        the serving thread."""
        self.shutdown()
        self.close_connections()
        self.server_close()
        if self._serving is not None:
            self._serving.join()
            self._serving = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind also looks up the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=self._thread_name,
            daemon=True,
        )
        with self._conns_lock:
            self._conns[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets and closed sockets are routine
            super().handle_error(request, client_address)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Cut every open connection and wait for its thread to finish."""
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in conns:
            thread.join(timeout)


class LoopbackHandler(BaseHTTPRequestHandler):
    """What the test servers' request handlers share: keep-alive, quiet, the body read whole
    first, and the two ways a request ends: an answer, or a connection cut without one."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def respond(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``status`` with ``body`` (and ``content_type``, unless empty)."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self, max_body: int, refuse: Callable[[int, str], Exception]) -> bytes:
        """The request's whole body, read before anything else so that no answer leaves
        bytes unread on the connection.

        :raises Exception: ``refuse(status, message)``: 411 for a body without a Content-Length
            (chunked), 400 for an invalid Content-Length (both close the connection after the
            answer), 413 for one over ``max_body`` bytes (read and discarded first, up to 64 MiB)
        :raises Drop: the client went away mid-body
        """
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise refuse(411, "A Content-Length is required")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise refuse(400, "Invalid Content-Length") from None
        if length > max_body:
            self._discard(length)
            raise refuse(413, f"The request body is larger than {max_body} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise Drop  # the client went away mid-body
        return body

    def _discard(self, length: int) -> None:
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                raise Drop
            length -= len(chunk)

    def abort(self) -> None:
        """Close the connection without answering (the client sees it drop)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
