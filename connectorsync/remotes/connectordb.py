"""ConnectorDBRemote: the ConnectorDB v0.3 REST API over a ``requests.Session``.

Every call carries a timeout and verifies TLS (``verify=`` takes a CA bundle path for a
private CA). The apikey travels only in the Basic auth header: it is never logged, never in a
repr and never in an error message.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import requests

from ..errors import (
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from .base import (
    Datapoint,
    DeliveryKind,
    Prepared,
    hide_password,
    parse_retry_after,
    send,
    short_reason,
)

# ConnectorDB's messages for datapoints it refuses (403); any other 403 is about access.
_REJECTION_WORDS = ("conform", "schema", "timestamp", "ordered")
_MISSING = re.compile(r"does not exist|not found", re.IGNORECASE)
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The server refuses bodies over 10 MiB; stay well below so a batch never hits that.
MAX_BODY_BYTES = 8 * 1024 * 1024


class ConnectorDBRemote:
    """A ConnectorDB v0.3 server.

    :param serverurl: e.g. ``"http://localhost:3124"``
    :param apikey: the device's apikey
    :param timeout: seconds for connecting and for each read
    :param verify: TLS verification: True, False, or a CA bundle path
    """

    delivery_kind = DeliveryKind.ORDERED

    def __init__(
        self,
        serverurl: str,
        apikey: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
    ):
        if not serverurl:
            raise ConfigurationError("ConnectorDBRemote needs a serverurl")
        try:
            (apikey or "").encode("latin-1")
        except UnicodeEncodeError:  # else every request fails; the message never shows the key
            raise ConfigurationError(
                "apikey has a character outside latin-1, which HTTP Basic auth cannot send"
            ) from None
        if not serverurl.startswith(("http://", "https://")):
            serverurl = "https://" + serverurl
        self.serverurl = serverurl.rstrip("/")
        self.timeout = timeout
        self._api = self.serverurl + "/api/v1/"
        self._session = requests.Session()
        self._bodies = Prepared(self._encode_body)
        self._session.auth = ("", apikey or "")
        self._session.verify = verify
        self._session.headers["Content-Type"] = "application/json"
        self._device: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConnectorDBRemote({hide_password(self.serverurl)!r})"

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """``user/device`` of the apikey (``GET /api/v1/?q=this``)."""
        response = self._request("GET", self._api, params={"q": "this"})
        self._device = response.text.strip()
        return self._device

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        try:
            response = self._request("GET", self._crud(stream))
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise
        schema = response.json().get("schema") or "{}"
        return json.loads(schema) if isinstance(schema, str) else schema

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        if self.stream_schema(stream) is not None:
            return
        body = json.dumps({"schema": json.dumps(schema)})
        try:
            self._request("POST", self._crud(stream), data=body)
        except RemoteError as exc:
            if exc.status != 409:  # created meanwhile by someone else: fine
                raise

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` ahead of :meth:`push` (see :class:`.base.Prepared`)."""
        self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        self._request("POST", self._crud(stream) + "/data", data=data, sent_matters=True)

    @staticmethod
    def _encode_body(stream: str, batch: Sequence[Datapoint]) -> bytes:
        # The cache holds each value as JSON text already: no decode/encode round trip.
        body = "[" + ",".join(f'{{"t":{t!r},"d":{d}}}' for _, t, d in batch) + "]"
        data = body.encode()
        if len(data) > MAX_BODY_BYTES:
            raise RejectedError(
                f"stream {stream!r}: a batch of {len(batch)} datapoints is {len(data)} bytes, "
                f"over the {MAX_BODY_BYTES}-byte limit",
                status=413,
            )
        return data

    def reconcile(self, stream: str) -> float | None:
        response = self._request("GET", self._crud(stream) + "/data", params={"i1": -1, "i2": 0})
        points = response.json() or []
        return float(points[-1]["t"]) if points else None

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------------- plumbing

    def _crud(self, stream: str) -> str:
        if "/" not in stream:
            with self._lock:
                device = self._device
            if device is None:
                device = self.ping()
            stream = f"{device}/{stream}"
        return self._api + "crud/" + quote(stream)

    def _request(
        self, method: str, url: str, *, sent_matters: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One HTTP call mapped onto the error tree.

        ``sent_matters``: for a write, a failure after the request went out is ambiguous.
        """
        what = f"{method} {url.removeprefix(self.serverurl)}"
        response = send(
            self._session,
            method,
            url,
            what=what,
            timeout=self.timeout,
            write=sent_matters,
            mask=hide_password,
            # A POST redirected with 301/302 would come back a GET, and its 200 would look
            # like an acknowledgement of data that was never stored.
            allow_redirects=False,
            **kwargs,
        )
        if response.status_code < 300:
            return response
        raise self._error(what, response)

    def _error(self, what: str, response: requests.Response) -> RemoteError:
        status = response.status_code
        body = short_reason(response.text)
        message = f"{what}: {status} {body}".strip()
        if 300 <= status < 400:
            where = hide_password(response.headers.get("Location", "?"))
            return RemoteError(
                f"{message} (redirected to {where}: set serverurl to where it points)",
                status=status,
                body=body,
            )
        if status in TRANSIENT_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientRemoteError(message, status=status, body=body, retry_after=retry_after)
        if status == 401:
            return AuthError(message + " (check the apikey)", status=status, body=body)
        if status == 403 and _MISSING.search(body):
            # The stream is gone (deleted remotely): not the data's fault, nor the key's.
            return RemoteError(message, status=status, body=body)
        if status == 403 and not any(word in body.lower() for word in _REJECTION_WORDS):
            return AuthError(message, status=status, body=body)
        if status in (400, 403, 413) and what.startswith("POST ") and what.endswith("/data"):
            return RejectedError(message, status=status, body=body)
        return RemoteError(message, status=status, body=body)
