"""ConnectorDBRemote: the ConnectorDB v0.3 REST API over a ``requests.Session``.

Every call carries a timeout and verifies TLS (``verify=`` takes a CA bundle path for a
private CA). The apikey travels only in the Basic auth header: it is never logged, never in a
repr and never in an error message.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar
from urllib.parse import quote

from ..errors import AuthError, ConfigurationError, RejectedError, RemoteError
from ._http import (
    Client,
    Prepared,
    compression_setting,
    hide_password,
    statuses,
    timeout_setting,
    within_limit,
)
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote

# ConnectorDB's messages for datapoints it refuses (403); any other 403 is about access.
_REJECTION_WORDS = ("conform", "schema", "timestamp", "ordered")
_MISSING = re.compile(r"does not exist|not found", re.IGNORECASE)


def _forbidden(reason: str, *, refused: type[RemoteError]) -> type[RemoteError]:
    """What ConnectorDB's 403 means, by its reason: ``refused`` for datapoints it refuses."""
    if _MISSING.search(reason):
        return RemoteError  # the stream is gone (deleted remotely): not the data's, nor the key's
    if any(word in reason.lower() for word in _REJECTION_WORDS):
        return refused
    return AuthError


# Only an insert (a write) refuses data; a 403 elsewhere (ping) is about access.
STATUSES = statuses(
    overrides={403: partial(_forbidden, refused=RemoteError)},
    writes={
        400: RejectedError,
        403: partial(_forbidden, refused=RejectedError),
        413: RejectedError,
    },
    hints={401: "check the apikey", "3xx": "set serverurl to where it points"},
)


@register_remote
class ConnectorDBRemote:
    """A ConnectorDB v0.3 server.

    :param serverurl: e.g. ``"http://localhost:3124"``
    :param apikey: the device's apikey
    :param timeout: seconds for connecting and for each read
    :param verify: TLS verification: True, False, or a CA bundle path
    :param compression: None (``"none"``, the default: a ConnectorDB 0.3 server reads
        plain bodies) or ``"gzip"``, for a server that takes ``Content-Encoding: gzip`` (the
        test server :class:`~connectorsync.testing.ConnectorDBServer` does). Only datapoint
        inserts are compressed; the body limit counts them before compression.
    :raises ConfigurationError: no serverurl, an apikey HTTP cannot send, an unknown
        compression
    """

    delivery_kind = DeliveryKind.ORDERED
    kind: ClassVar[str] = "connectordb"

    def __init__(
        self,
        serverurl: str,
        apikey: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
        compression: str | None = None,
    ):
        if not serverurl:
            raise ConfigurationError("ConnectorDBRemote needs a serverurl")
        try:
            (apikey or "").encode("latin-1")
        except UnicodeEncodeError:  # else every request fails; the message never shows the key
            raise ConfigurationError(
                "apikey has a character outside latin-1, which HTTP Basic auth cannot send"
            ) from None
        # What to_config() gives: the arguments as given (the apikey too, for the cache file).
        self._config: dict[str, Any] = {"kind": self.kind, "serverurl": serverurl}
        self._config.update(apikey=apikey, timeout=timeout, verify=verify)
        timeout = timeout_setting("ConnectorDBRemote", timeout)
        self.compression = compression_setting("ConnectorDBRemote", compression)
        self._config.update(compression=self.compression)
        if not serverurl.startswith(("http://", "https://")):
            serverurl = "https://" + serverurl
        self.serverurl = serverurl.rstrip("/")
        self.timeout = timeout
        self._api = self.serverurl + "/api/v1/"
        self._http = Client(STATUSES, timeout=timeout, verify=verify, base=self.serverurl)
        self._session = self._http.session
        self._session.auth = ("", apikey or "")
        self._session.headers["Content-Type"] = "application/json"
        self._bodies = Prepared(self._encode_body, self.compression)
        self._device: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConnectorDBRemote({hide_password(self.serverurl)!r})"

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:meth:`from_config`):
        ``{"kind": "connectordb", ...}`` with the constructor's arguments, the apikey too. A
        secret: the Logger keeps it only in the (owner-only) cache file; never show it."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConnectorDBRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`)."""
        kind, arguments = config_arguments(cls, config)
        return build_from_config(kind, cls, arguments)

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """``user/device`` of the apikey (``GET /api/v1/?q=this``)."""
        response = self._http.request("GET", self._api, params={"q": "this"})
        self._device = response.text.strip()
        return self._device

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        try:
            response = self._http.request("GET", self._crud(stream))
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise
        schema = response.json().get("schema") or "{}"
        found: dict[str, Any] = json.loads(schema) if isinstance(schema, str) else schema
        return found

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Create ``stream`` if missing: one POST whose body holds the properties and the
        schema as JSON text, as connectordb 0.3.5's ``Stream.create(schema, **properties)``
        sends it. Returns the schema of a stream that was there already."""
        existing = self.stream_schema(stream)
        if existing is not None:
            return existing
        body = json.dumps({**(properties or {}), "schema": json.dumps(schema)})
        try:
            self._http.request("POST", self._crud(stream), data=body)
        except RemoteError as exc:
            if exc.status != 409:  # created meanwhile by someone else: theirs is kept
                raise
            return self.stream_schema(stream)
        return None

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` ahead of :meth:`push` (see :class:`._http.Prepared`)."""
        self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        url = self._crud(stream) + "/data"
        self._http.send("POST", url, data, encoding=self._bodies.encoding)

    @staticmethod
    def _encode_body(stream: str, batch: Sequence[Datapoint]) -> bytes:
        # The cache holds each value as JSON text already: no decode/encode round trip.
        body = "[" + ",".join(f'{{"t":{t!r},"d":{d}}}' for _, t, d in batch) + "]"
        return within_limit(stream, batch, body.encode())

    def reconcile(self, stream: str) -> float | None:
        response = self._http.request(
            "GET", self._crud(stream) + "/data", params={"i1": -1, "i2": 0}
        )
        points = response.json() or []
        return float(points[-1]["t"]) if points else None

    def bytes_sent(self) -> int:
        """Bytes of request bodies sent, as on the wire (:class:`.base.Metered`)."""
        return self._http.bytes_sent

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------------- plumbing

    def _crud(self, stream: str) -> str:
        if "/" not in stream:
            with self._lock:
                device = self._device
            if device is None:
                device = self.ping()
            stream = f"{device}/{stream}"
        return self._api + "crud/" + quote(stream)
