"""The HTTP side of the test ConnectorDB server: the v0.3 REST API and fault hooks.

Guarantees:

* Responses always carry a Content-Length, so HTTP/1.1 keep-alive works, and
  errors are JSON ``{"code", "msg", "ref"}`` with the same status.
* A request body is read completely (or, past 10 MiB, discarded) before
  anything else, so a refused request never leaves bytes on the connection.
* Injected faults apply to the next matching requests in arrival order; each
  request consumes at most one fault of each kind.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ._httpd import Drop as _Drop
from ._httpd import LoopbackHandler
from ._store import ApiError, Batch, Store

if TYPE_CHECKING:
    from .server import _HTTPServer

MAX_BODY = 10 * 1024 * 1024
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"

Predicate = Callable[[str, dict[str, Any]], bool]
Reply = tuple[int, str, bytes]


def _error_reply(status: int, msg: str) -> Reply:
    body = {"code": status, "msg": msg, "ref": str(uuid.uuid4())}
    return status, _JSON, json.dumps(body).encode()


def _json_reply(value: Any) -> Reply:
    return 200, _JSON, json.dumps(value).encode()


def _text_reply(text: str) -> Reply:
    return 200, _TEXT, text.encode()


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
        self._respond(*reply, headers)

    def _dispatch(self) -> None:
        app = self.server.app
        app._record(self.command, self.path)
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
            self._abort()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    # -- the REST API -----------------------------------------------------------

    def _route(self, body: bytes) -> Reply:
        url = urlsplit(self.path)
        if not url.path.startswith("/api/v1/"):
            raise ApiError(404, "Not found")
        rest = url.path[len("/api/v1/") :]
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        user, device = self._authenticate(query)
        if rest == "":
            return self._whoami(user, device, query)
        if not rest.startswith("crud/"):
            raise ApiError(404, "Not found")
        parts = [unquote(p) for p in rest[len("crud/") :].rstrip("/").split("/")]
        if "" in parts:
            raise ApiError(404, "Not found")
        if parts[0] != user:
            raise ApiError(403, f"Permission denied: {user}/{device} may not access {parts[0]}")
        store = self.server.store
        if len(parts) == 1:
            return self._user(store, parts[0])
        if len(parts) == 2:
            return self._device(store, parts, query, own=(parts[1] == device))
        if len(parts) == 3:
            return self._stream(store, "/".join(parts), body)
        if len(parts) == 4 and parts[3] == "data":
            return self._data(store, "/".join(parts[:3]), query, body)
        raise ApiError(404, "Not found")

    def _whoami(self, user: str, device: str, query: dict[str, str]) -> Reply:
        if self.command != "GET":
            raise ApiError(405, "Method not allowed")
        if query.get("q", "this") != "this":
            raise ApiError(400, "Unsupported query")
        return _text_reply(user + "/" + device)

    def _user(self, store: Store, name: str) -> Reply:
        if self.command != "GET":
            raise ApiError(405, "Method not allowed")
        if not store.user_exists(name):
            raise ApiError(404, "User does not exist")
        return _json_reply({"name": name})

    def _authenticate(self, query: dict[str, str]) -> tuple[str, str]:
        apikey = query.get("apikey")
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                apikey = base64.b64decode(auth[6:], validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                raise ApiError(401, "Malformed Authorization header") from None
        found = self.server.store.device_for_key(apikey) if apikey else None
        if found is None:
            raise ApiError(401, "Authentication failed: a valid apikey is required")
        return found

    def _device(self, store: Store, parts: list[str], query: dict[str, str], own: bool) -> Reply:
        if self.command != "GET":
            raise ApiError(405, "Method not allowed")
        apikey = store.device_apikey(parts[0], parts[1])
        if apikey is None:
            raise ApiError(404, "Device does not exist")
        if query.get("q") == "ls":
            return _json_reply(store.list_streams(parts[0], parts[1]))
        device = {
            "name": parts[1],
            "user": parts[0],
            "nickname": "",
            "description": "",
            "icon": "",
            "public": False,
            "role": "none",
            "enabled": True,
        }
        if own:
            device["apikey"] = apikey
        return _json_reply(device)

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

    def _data(self, store: Store, path: str, query: dict[str, str], body: bytes) -> Reply:
        method = self.command
        if method in ("POST", "PUT"):
            batch = Batch(body)
            reject = self.server.app._faults.reject
            rejected = reject is not None and any(
                reject(path, {"t": t, "d": d})
                for t, d in zip(batch.times, batch.values, strict=True)
            )
            store.insert(path, batch, restamp=(method == "PUT"), rejected=rejected)
            return _text_reply("ok")
        if method != "GET":
            raise ApiError(405, "Method not allowed")
        if query.get("transform"):
            raise ApiError(400, "Transforms are not supported")
        if query.get("downlink", "false").lower() not in ("false", "0", ""):
            raise ApiError(400, "Downlink substreams are not supported")
        q = query.get("q")
        if q is not None:
            if q != "length":
                raise ApiError(400, f"Unsupported query {q!r}")
            return _text_reply(str(store.length(path)))
        by_index = "i1" in query or "i2" in query
        if by_index and any(k in query for k in ("t1", "t2", "limit")):
            raise ApiError(400, "Query by index or by time, not both")
        try:
            if by_index or not query.keys() & {"t1", "t2", "limit"}:
                text = store.read_index(path, int(query.get("i1", 0)), int(query.get("i2", 0)))
            else:
                t1, t2 = float(query.get("t1", "-inf")), float(query.get("t2", 0))
                limit = int(query.get("limit", 0))
                if math.isnan(t1) or math.isnan(t2) or limit < 0:
                    raise ValueError
                text = store.read_time(path, t1, t2, limit)
        except ValueError:
            raise ApiError(400, "Invalid range query") from None
        return 200, _JSON, text.encode()
