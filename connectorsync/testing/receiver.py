"""A loopback HTTP server that records what is posted to it, with fault injection.

:class:`HTTPReceiver` stands in for any JSON-over-HTTP sink (the other end of an
:class:`~connectorsync.remotes.http.HTTPRemote`) and for ThingsBoard's device telemetry API
(``POST /api/v1/<token>/telemetry``). Its faults work like
:class:`~connectorsync.testing.ConnectorDBServer`'s: refuse the next requests with a status,
drop connections before or after recording, refuse bodies holding certain items.

Guarantees:

* It binds 127.0.0.1 only; :meth:`HTTPReceiver.start` returns once the socket listens.
* A body is recorded all or nothing, and only when it was accepted (2xx) or dropped after
  commit (:meth:`HTTPReceiver.drop_after_commit`).
* A body sent with ``Content-Encoding: gzip`` is decompressed before it is read as JSON,
  at most ``MAX_BODY`` bytes of it (more: 413); :attr:`Received.body` keeps it as it arrived.
* :meth:`HTTPReceiver.stop` closes the listening socket and every open connection and waits
  for their threads; ``start`` afterwards listens on the same port and keeps what it recorded.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ._encoding import decoded
from ._faults import Faults as _Faults
from ._httpd import Drop as _Drop
from ._httpd import LoopbackHandler, LoopbackHTTPServer
from ._service import LoopbackService

__all__ = ["HTTPReceiver", "Received"]

#: ``predicate(path, item)``: refuse the body (400) when it is true for one of its items.
ItemPredicate = Callable[[str, Any], bool]
_TELEMETRY_PREFIX = "/api/v1/"
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One request as it arrived: method, path (with its query), headers (names in lower
    case), raw body (compressed, when it was sent so)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def content(self) -> bytes:
        """The body decompressed (``Content-Encoding: gzip``), else as it arrived."""
        if self.headers.get("content-encoding", "").lower() == "gzip":
            return gzip.decompress(self.body)
        return self.body


class _Refused(Exception):
    """Answer with this status before the request is looked at."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(LoopbackHTTPServer):
    """The receiver's server: its handler reaches the receiver through it."""

    def __init__(self, app: HTTPReceiver, port: int) -> None:
        self.app = app
        super().__init__(port, _Handler, "receiver-conn")


class _Handler(LoopbackHandler):
    server: _Server

    def _send(
        self, status: int, payload: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        if isinstance(payload, _Raw):
            content_type = payload.content_type if payload.body else ""
            self.respond(status, content_type, payload.body, headers)
        else:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.respond(status, "application/json" if body else "", body, headers)

    def _dispatch(self) -> None:
        app = self.server.app
        try:
            try:
                body = self._read_body(MAX_BODY, _Refused)
                content = decoded(body, self.headers.get("Content-Encoding"), MAX_BODY, _Refused)
            except _Refused as refused:
                self._send(refused.status, {"error": refused.message})
                return
            headers = {key.lower(): value for key, value in self.headers.items()}
            request = Received(self.command, self.path, headers, body)
            app._log(request)
            status, payload, extra = app._handle(request, content)
            self._send(status, payload, extra)
        except _Drop:
            self.abort()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


class HTTPReceiver(LoopbackService):
    """A loopback HTTP server that records JSON bodies per path.

    ``POST`` (or ``PUT``) of a JSON body to any path is recorded and answered 200 with an
    empty body; a body that is not JSON (with a JSON content type) gets 400. ``GET`` answers
    200 ``{"ok": true}``, or what :meth:`respond` set for the path.

    ThingsBoard's device API: ``POST /api/v1/<token>/telemetry`` and
    ``GET /api/v1/<token>/attributes`` answer 401 unless ``token`` was given in ``tokens`` or
    to :meth:`add_token`.

    :param port: 0 picks a free port at the first start and keeps it
    :param tokens: ThingsBoard device tokens that are accepted
    :param auth: when set, every other route needs exactly this ``Authorization`` header
        value, else 401
    """

    _noun = "receiver"

    def __init__(self, port: int = 0, *, tokens: Iterable[str] = (), auth: str | None = None):
        self._port = port
        self.auth = auth
        self._tokens = set(tokens)
        self._httpd: _Server | None = None
        self._lifecycle = threading.Lock()
        self._faults = _Faults()
        self._data_lock = threading.Lock()
        self._received: list[Received] = []
        self._bodies: dict[str, list[Any]] = {}
        self._answers: dict[str, tuple[int, bytes, str]] = {}

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> HTTPReceiver:
        """Listen and serve; a no-op if already serving. Returns self."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            self._httpd = _Server(self, self._port)
            self._port = self._httpd.server_address[1]
            self._httpd.serve_in_thread("receiver")
            return self

    def stop(self) -> None:
        """Close the listening socket and every connection. Idempotent."""
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            httpd.stop_serving()

    # -- what arrived ----------------------------------------------------------------

    def add_token(self, token: str) -> None:
        """Accept ThingsBoard device ``token`` from now on."""
        with self._data_lock:
            self._tokens.add(token)

    @property
    def requests(self) -> list[Received]:
        """Every request received so far (recorded or not), in arrival order."""
        with self._data_lock:
            return list(self._received)

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies recorded at ``path`` (without query, percent-decoded), in arrival
        order."""
        with self._data_lock:
            return list(self._bodies.get(path, []))

    def items(self, path: str) -> list[Any]:
        """The recorded bodies' items, in order: a list body gives its elements, any other
        body itself."""
        out: list[Any] = []
        for body in self.bodies(path):
            out.extend(body if isinstance(body, list) else [body])
        return out

    def telemetry(self, token: str) -> list[Any]:
        """The telemetry items ThingsBoard device ``token`` posted, in order."""
        return self.items(f"{_TELEMETRY_PREFIX}{token}/telemetry")

    def respond(
        self, path: str, status: int = 200, body: bytes = b"", content_type: str = "text/plain"
    ) -> None:
        """Answer every request to ``path`` (without query, percent-decoded) with this,
        recording nothing."""
        with self._data_lock:
            self._answers[path] = (status, body, content_type)

    def clear(self) -> None:
        """Forget what was received."""
        with self._data_lock:
            self._received.clear()
            self._bodies.clear()

    # -- fault injection ------------------------------------------------------------

    def fail_next(
        self, n: int = 1, status: int = 503, retry_after: Any = None, path: str | None = None
    ) -> None:
        """Answer the next n requests (whose path contains ``path``, if given) with
        ``status`` and a JSON error, plus ``Retry-After`` if given, recording nothing."""
        self._faults.fail_next(n, status, retry_after, None, path)

    def drop_before(self, n: int = 1) -> None:
        """Close the next n POST/PUT connections without recording or answering."""
        self._faults.add_drops(before=n)

    def drop_after_commit(self, n: int = 1) -> None:
        """Record the next n accepted POST/PUT bodies, then close the connection instead of
        answering: a lost acknowledgement."""
        self._faults.add_drops(after=n)

    def delay(self, seconds: float, n: int | None = None) -> None:
        """Sleep ``seconds`` before handling each of the next n requests (they are recorded
        in :attr:`requests` first); n=None: every request until ``delay(0)``."""
        self._faults.set_delay(seconds, n)

    def reject(self, predicate: ItemPredicate | None) -> None:
        """Refuse (400, nothing recorded) a body holding an item for which
        ``predicate(path, item)`` is true; None clears it."""
        self._faults.reject = predicate

    def clear_faults(self) -> None:
        self._faults.clear()

    # -- handling -----------------------------------------------------------------------

    def _log(self, request: Received) -> None:
        with self._data_lock:
            self._received.append(request)

    def _handle(self, request: Received, content: bytes) -> tuple[int, Any, dict[str, str] | None]:
        time.sleep(self._faults.take_delay())
        raw_path = urlsplit(request.path).path
        path = unquote(raw_path)
        failure = self._faults.take_failure(request.method, request.path)
        if failure is not None:
            status, retry_after = failure
            headers = None if retry_after is None else {"Retry-After": str(retry_after)}
            return status, {"error": "injected failure", "status": status}, headers
        with self._data_lock:
            answer = self._answers.get(path)
        if answer is not None:
            return self._canned(answer)
        denied = self._check_auth(raw_path, request.headers)
        if denied:
            return 401, {"error": denied}, None
        if request.method in ("GET", "HEAD"):
            return 200, {"ok": True}, None
        if request.method not in ("POST", "PUT"):
            return 405, {"error": "method not allowed"}, None
        if self._faults.take_drop(after=False):
            raise _Drop
        content_type = request.headers.get("content-type", "")
        body: Any = None
        if content and "json" in content_type.lower():
            try:
                body = json.loads(content)
            except ValueError:
                return 400, {"error": "the body is not valid JSON"}, None
            reject = self._faults.reject
            items = body if isinstance(body, list) else [body]
            if reject is not None and any(reject(path, item) for item in items):
                return 400, {"error": "refused: at least one item is not acceptable"}, None
        with self._data_lock:
            if body is not None:
                self._bodies.setdefault(path, []).append(body)
        if self._faults.take_drop(after=True):
            raise _Drop
        return 200, None, None

    def _canned(self, answer: tuple[int, bytes, str]) -> tuple[int, Any, dict[str, str] | None]:
        # A canned body goes out as it is, not as JSON: wrap it so _send writes it raw.
        status, body, content_type = answer
        return status, _Raw(body, content_type), None

    def _check_auth(self, path: str, headers: dict[str, str]) -> str | None:
        # ``path`` as sent: a token holding an encoded '/' stays one part.
        if path.startswith(_TELEMETRY_PREFIX):
            parts = path[len(_TELEMETRY_PREFIX) :].split("/")
            if len(parts) == 2 and parts[1] in ("telemetry", "attributes"):
                with self._data_lock:
                    known = unquote(parts[0]) in self._tokens
                return None if known else "unknown device token"
        if self.auth is not None and headers.get("authorization") != self.auth:
            return "authorization required"
        return None


class _Raw:
    """A canned answer body, written as is."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
