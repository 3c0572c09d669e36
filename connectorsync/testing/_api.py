"""The HTTP side of the test ConnectorDB server: the v0.3 REST API and fault hooks.

Here: authentication, routing, streams and their data; users, devices, the root queries
and ``meta`` are in ``_crud``, who may do what in ``_accounts``.

Guarantees:

* Responses always carry a Content-Length, so HTTP/1.1 keep-alive works, and
  errors are JSON ``{"code", "msg", "ref"}`` with the same status.
* A request body is read completely (or, past 10 MiB, discarded) before
  anything else, so a refused request never leaves bytes on the connection.
* A body sent with ``Content-Encoding: gzip`` is decompressed, and the 10 MiB limit applies
  to what it decompresses to as well: a larger one (a gzip bomb) is refused with 413 having
  decompressed no more than 10 MiB (:func:`._encoding.decoded`); other encodings get 415.
* Injected faults apply to the next matching requests in arrival order; each
  request consumes at most one fault of each kind.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _crud
from ._accounts import Access
from ._encoding import decoded
from ._faults import Faults
from ._httpd import Drop as _Drop
from ._httpd import LoopbackHandler, LoopbackHTTPServer
from ._store import ApiError, Batch, Store, Writer

MAX_BODY = 10 * 1024 * 1024
_JSON = _crud.JSON

Predicate = Callable[[str, dict[str, Any]], bool]
Reply = tuple[int, str, bytes]


def _error_reply(status: int, msg: str) -> Reply:
    body = {"code": status, "msg": msg, "ref": str(uuid.uuid4())}
    return status, _JSON, json.dumps(body).encode()


_json_reply = _crud.json_reply
_text_reply = _crud.text_reply


class _App(Protocol):
    """What a handler uses of its :class:`~connectorsync.testing.ConnectorDBServer` (which
    imports this module: so it is named by what it offers)."""

    _faults: Faults
    _stopping: threading.Event

    def _record(self, method: str, path: str, size: int) -> None: ...


class _HTTPServer(LoopbackHTTPServer):
    """The ConnectorDB API's server: its handler reaches the app and the store through it."""

    def __init__(self, app: _App, store: Store, port: int) -> None:
        self.app = app
        self.store = store
        super().__init__(port, _Handler, "connectordb-conn")


class _Handler(LoopbackHandler):
    """One connection; answers requests until the client or the server closes it."""

    # Headers and body go out through one buffered write, flushed per response.
    wbufsize = 1 << 16
    server: _HTTPServer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by http.server for unparsable requests and unknown methods: answer
        # in JSON, then close, since the rest of the stream cannot be trusted.
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code = HTTPStatus.METHOD_NOT_ALLOWED  # the contract says 405 for any method
        self.close_connection = True
        self._send(_error_reply(code, message or self.responses.get(code, ("Error",))[0]))

    def _send(self, reply: Reply, headers: dict[str, str] | None = None) -> None:
        self.respond(*reply, headers)

    def _dispatch(self) -> None:
        app = self.server.app
        app._record(self.command, self.path, int(self.headers.get("Content-Length") or 0))
        faults = app._faults
        path = urlsplit(self.path).path
        is_insert = (
            self.command in ("POST", "PUT")
            and path.startswith("/api/v1/crud/")
            and path.rstrip("/").endswith("/data")
        )
        headers: dict[str, str] = {}
        try:
            try:
                body = self._read_body(MAX_BODY, ApiError)
                body = decoded(body, self.headers.get("Content-Encoding"), MAX_BODY, ApiError)
                seconds = faults.take_delay()
                # stop() cuts the wait short; the request then dies with the server.
                if seconds > 0 and app._stopping.wait(seconds):
                    raise _Drop
                failure = faults.take_failure(self.command, self.path)
                if failure is not None:
                    status, retry_after = failure
                    if retry_after is not None:
                        headers["Retry-After"] = str(retry_after)
                    raise ApiError(status, "Injected failure")
                if is_insert and faults.take_drop(after=False):
                    raise _Drop
                reply = self._route(body)
            except ApiError as e:
                reply = _error_reply(e.status, e.msg)
            except (_Drop, OSError):
                raise
            except Exception as e:  # a bug: answer 500 and show it
                self.server.handle_error(self.request, self.client_address)
                reply = _error_reply(500, f"Internal error: {e!r}")
            if is_insert and faults.take_drop(after=True):
                raise _Drop
            self._send(reply, headers)
        except _Drop:
            self.abort()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    # -- the REST API -----------------------------------------------------------

    def _route(self, body: bytes) -> Reply:
        url = urlsplit(self.path)
        if not url.path.startswith("/api/v1/"):
            raise ApiError(404, "Not found")
        rest = url.path[len("/api/v1/") :]
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        store = self.server.store
        call = _crud.Call(self.command, query, body, self._authenticate(query), store)
        if rest == "":
            return _crud.root(call)
        if rest.startswith("meta/"):
            return _crud.meta(self.command, rest[len("meta/") :])
        if rest.startswith("query/"):  # merge and dataset: PipeScript, out of this server's scope
            raise ApiError(501, f"The test server does not run {rest!r} queries")
        if rest.rstrip("/") == "crud":
            return _crud.users(call)
        if not rest.startswith("crud/"):
            raise ApiError(404, "Not found")
        parts = [unquote(p) for p in rest[len("crud/") :].rstrip("/").split("/")]
        if "" in parts:
            raise ApiError(404, "Not found")
        if len(parts) == 1:
            return _crud.user(call, parts[0])
        if len(parts) == 2:
            return _crud.device(call, parts[0], parts[1])
        call.access.require(call.access.may_read(parts[0]), f"access {parts[0]}")
        if len(parts) == 3:
            return self._stream(store, "/".join(parts), body)
        if len(parts) == 4 and parts[3] == "data":
            return self._data(call, "/".join(parts[:3]))
        raise ApiError(404, "Not found")

    def _authenticate(self, query: dict[str, str]) -> Access:
        """The sender: Basic auth with "" and an apikey (or ``?apikey=``), or with a user's
        name and password (a login as that user's "user" device)."""
        store = self.server.store
        secret, name = query.get("apikey"), ""
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ApiError(401, "Malformed Authorization header") from None
            name, _, secret = decoded.partition(":")
        found = None
        if name:
            found = store.access_for_login(name, secret or "")
        elif secret:
            found = store.access_for_key(secret)
        if found is None:
            raise ApiError(401, "Authentication failed: a valid apikey or password is required")
        return found

    def _stream(self, store: Store, path: str, body: bytes) -> Reply:
        method = self.command
        if method == "GET":
            stream = store.read_stream(path)
            if stream is None:
                raise ApiError(404, "Stream does not exist")
            return _json_reply(stream)
        if method == "DELETE":
            if not store.delete_stream(path):
                raise ApiError(404, "Stream does not exist")
            return _text_reply("ok")
        if method in ("POST", "PUT"):
            try:
                props = json.loads(body or b"{}")
            except ValueError:
                raise ApiError(400, "The body is not valid JSON") from None
            if props is None:
                props = {}
            if not isinstance(props, dict):
                raise ApiError(400, "Expected a JSON object")
            if method == "POST":
                return _json_reply(store.create_stream(path, props))
            return _json_reply(store.update_stream(path, props))
        raise ApiError(405, "Method not allowed")

    def _data(self, call: _crud.Call, path: str) -> Reply:
        method, store, query = call.method, call.store, call.query
        if method in ("POST", "PUT"):
            batch = Batch(call.body, time.time())
            reject = self.server.app._faults.reject
            rejected = reject is not None and any(
                reject(path, {"t": t, "d": d})
                for t, d in zip(batch.times, batch.values, strict=True)
            )
            writer: Writer = "admin" if call.access.admin else "other"
            if call.access.is_device(*path.split("/")[:2]):
                writer = "own device"
            store.insert(path, batch, method == "PUT", rejected, writer)
            return _text_reply("ok")
        if method != "GET":
            raise ApiError(405, "Method not allowed")
        return _read_data(store, path, query)


def _read_data(store: Store, path: str, query: dict[str, str]) -> Reply:
    """``GET .../data``: by index, by time, or ``?q=length``; ``?downlink=true`` reads the
    downlink substream."""
    if query.get("transform"):
        raise ApiError(400, "Transforms are not supported")
    downlink = query.get("downlink", "false").lower() not in ("false", "0", "")
    q = query.get("q")
    if q is not None:
        if q != "length":
            raise ApiError(400, f"Unsupported query {q!r}")
        return _text_reply(str(store.length(path, downlink)))
    by_index = "i1" in query or "i2" in query
    if by_index and any(k in query for k in ("t1", "t2", "limit")):
        raise ApiError(400, "Query by index or by time, not both")
    try:
        if by_index or not query.keys() & {"t1", "t2", "limit"}:
            span = int(query.get("i1", 0)), int(query.get("i2", 0))
            text = store.read_index(path, *span, downlink=downlink)
        else:
            t1, t2 = float(query.get("t1", "-inf")), float(query.get("t2", 0))
            limit = int(query.get("limit", 0))
            if math.isnan(t1) or math.isnan(t2) or limit < 0:
                raise ValueError
            text = store.read_time(path, (t1, t2), limit, downlink)
    except ValueError:
        raise ApiError(400, "Invalid range query") from None
    return 200, _JSON, text.encode()
