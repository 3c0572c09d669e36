"""HTTPRemote: POST each batch as JSON to any HTTP endpoint; :func:`thingsboard`, a preset.

A plain HTTP sink only says "got it" (2xx) or not: it cannot say what it stored. So after an
answer is lost (:class:`~connectorsync.errors.AmbiguousRemoteError`) :meth:`HTTPRemote.reconcile`
returns None and the syncer sends the batch again: delivery is **at least once**, and the
receiver sees that batch twice. Make the receiver idempotent (e.g. keyed on stream and ``t``)
if duplicates matter. (``tests/test_http_remote.py::test_lost_answer_means_at_least_once``)

Every call carries a timeout and verifies TLS (``verify=`` takes a CA bundle path).
Redirects are not followed: a POST redirected with 301/302 would become a GET and a
"success" that stored nothing. Header values are never shown, and every string in
``secrets`` (a token inside the url, say) is masked as ``***`` in the repr, in messages and
in urllib3's DEBUG log lines (:func:`._http.hide_in_logs`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from ..errors import ConfigurationError, RejectedError, RemoteError
from ._http import (
    MAX_BODY_BYTES,
    Client,
    Prepared,
    compression_setting,
    header_safe,
    hide_in_logs,
    hide_password,
    statuses,
    timeout_setting,
    within_limit,
)
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote

#: Turns a stream name and its ``(t, value)`` pairs into the request body: a JSON-able value
#: (sent as JSON), or ``str``/``bytes`` (sent as they are).
Encoder = Callable[[str, list[tuple[float, Any]]], Any]

# A plain sink's 4xx to a POST refuses the data (so the syncer bisects), but for a wrong url
# (404) and the statuses every remote reads alike (401, 403, 408, 429).
STATUSES = statuses(
    overrides={404: RemoteError},
    writes={"4xx": RejectedError},
    hints={401: "check the credentials", 403: "check the credentials", 404: "check the url"},
)
_DUMPS = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode


@register_remote
class HTTPRemote:
    """Any HTTP endpoint that takes a batch of datapoints as one JSON POST.

    The default body is ``[{"stream": s, "t": t, "d": value}, ...]``; ``encode`` makes
    another. 2xx is an acknowledgement. 401/403 raise
    :class:`~connectorsync.errors.AuthError`, 408/429/5xx
    :class:`~connectorsync.errors.TransientRemoteError` (with ``Retry-After``), 404, 3xx and
    501 :class:`~connectorsync.errors.RemoteError`, any other 4xx (413 too)
    :class:`~connectorsync.errors.RejectedError`, so the syncer bisects the batch.

    :param url: where to POST; ``{stream}`` in it is replaced by the stream name,
        percent-encoded (slashes kept)
    :param headers: extra request headers (e.g. ``Authorization``); never shown
    :param encode: ``encode(stream, [(t, value), ...]) -> body``; an exception from it refuses
        the batch (RejectedError with its message), so a value it cannot take becomes a dead
        letter instead of blocking the stream
    :param ping_url: checked with a GET (2xx) by :meth:`ping`; without it ``ping`` checks nothing
    :param secrets: strings to mask wherever the url is shown (tokens inside the url)
    :param timeout: seconds for connecting and for each read
    :param verify: TLS verification: True, False, or a CA bundle path
    :param compression: None (``"none"``, the default: not every endpoint reads compressed
        bodies) or ``"gzip"``: each batch is sent with ``Content-Encoding: gzip``. The body
        limit counts the body before compression.
    :raises ConfigurationError: a url that is not http(s), credentials in it, a bad timeout,
        an unknown compression
    """

    delivery_kind = DeliveryKind.AT_LEAST_ONCE
    kind: ClassVar[str] = "http"
    #: The presets of this class, each a function of this module of that name.
    presets: ClassVar[tuple[str, ...]] = ("thingsboard",)

    def __init__(  # noqa: PLR0913 - an endpoint's settings, keyword-only past the url
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        encode: Encoder | None = None,
        ping_url: str | None = None,
        secrets: Iterable[str] = (),
        timeout: float = 30.0,
        verify: bool | str = True,
        compression: str | None = None,
    ):
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        for name, value in (("url", url), ("ping_url", ping_url)):
            if value is None:
                continue
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigurationError(
                    f"HTTPRemote {name} must be an http:// or https:// url; "
                    f"got {self._mask(value)!r}"
                )
            if parts.username is not None or parts.password is not None:
                raise ConfigurationError(
                    f"HTTPRemote {name}: put credentials in headers=, not in the url"
                )
        timeout = timeout_setting("HTTPRemote", timeout)
        for header, value in (headers or {}).items():
            header_safe("HTTPRemote", "header name", header)
            header_safe("HTTPRemote", f"header {header!r}", value)
        self.compression = compression_setting("HTTPRemote", compression)
        self.url = url
        self.ping_url = ping_url
        # What to_config() gives (credentials too, for the cache file); an encode function
        # cannot be recorded, but thingsboard()'s: the preset records itself.
        self._config: dict[str, Any] = {
            "kind": self.kind,
            "url": url,
            "headers": dict(headers or {}),
        }
        self._config.update(ping_url=ping_url, secrets=list(self._secrets))
        self._config.update(timeout=timeout, verify=verify, compression=self.compression)
        hide_in_logs(self, self._secrets)
        self.timeout = float(timeout)
        self._encode = encode
        self._http = Client(STATUSES, timeout=self.timeout, verify=verify, mask=self._mask)
        self._http.session.headers["Content-Type"] = "application/json"
        self._http.session.headers.update(headers or {})
        self._bodies = Prepared(self._checked_body, self.compression)

    def __repr__(self) -> str:
        return f"HTTPRemote({self._mask(self.url)!r})"

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:meth:`from_config`):
        ``{"kind": "http", ...}`` with the constructor's arguments, or ``{"kind":
        "thingsboard", "url": ..., "token": ...}`` for :func:`thingsboard`'s; headers and token
        too (secrets: the Logger keeps them only in the owner-only cache file). With an
        ``encode`` function of your own: ``{"kind": "custom", "what": ...}``, which
        ``from_config`` refuses (a function is not data; only your program has it)."""
        if self._encode is not None and self._config["kind"] == self.kind:
            name = getattr(self._encode, "__qualname__", type(self._encode).__qualname__)
            module = getattr(self._encode, "__module__", None)
            what = f"an HTTPRemote with an encode function of your own ({module}.{name})"
            return {"kind": "custom", "what": what}
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HTTPRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`):
        ``{"kind": "thingsboard", ...}`` is built by :func:`thingsboard`."""
        kind, arguments = config_arguments(cls, config)
        return build_from_config(kind, thingsboard if kind == "thingsboard" else cls, arguments)

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """GET ``ping_url`` (2xx) when there is one; return the url (masked) either way."""
        if self.ping_url is not None:
            self._http.request("GET", self.ping_url)
        return self._mask(self.url)

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Nothing to create: the url takes any stream. Returns None (no schema is kept);
        ``properties`` are accepted and ignored: an HTTP sink has none."""
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}``: an HTTP sink takes any stream and keeps no schema."""
        return {}

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the default body of ``batch`` ahead of :meth:`push` (see
        :class:`._http.Prepared`). With an ``encode`` function it does nothing: that function
        runs in the syncer's thread only."""
        if self._encode is None:
            self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        url = self.url.replace("{stream}", quote(stream, safe="/"))
        self._http.send("POST", url, data, encoding=self._bodies.encoding)

    def reconcile(self, stream: str) -> float | None:
        """None: a plain HTTP sink cannot say what it stored, so a batch whose answer was lost
        is sent again (at least once)."""
        return None

    def bytes_sent(self) -> int:
        """Bytes of request bodies sent, as on the wire (:class:`.base.Metered`)."""
        return self._http.bytes_sent

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------------- plumbing

    def _checked_body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        # MAX_BODY_BYTES is read here, at each call, so that a test can lower it
        # (tests/test_http_remote.py::test_an_oversized_batch_is_refused_unsent).
        return within_limit(stream, batch, self._body(stream, batch), MAX_BODY_BYTES)

    def _body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        if self._encode is None:
            # The cache holds each value as JSON text already: no decode/encode round trip.
            name = json.dumps(stream)
            return (
                "[" + ",".join(f'{{"stream":{name},"t":{t!r},"d":{d}}}' for _, t, d in batch) + "]"
            ).encode()
        points = [(t, json.loads(d)) for _, t, d in batch]
        try:
            body = self._encode(stream, points)
            if isinstance(body, bytes):
                return body
            if isinstance(body, str):
                return body.encode()
            return _DUMPS(body).encode()
        except Exception as exc:  # the user's function: whatever it raises refuses the batch
            reason = f"encode failed: {type(exc).__name__}: {exc}"
            raise RejectedError(f"stream {stream!r}: {reason}", body=reason) from exc

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return hide_password(text)


def thingsboard(url: str, token: str, **kwargs: Any) -> HTTPRemote:
    """An :class:`HTTPRemote` for ThingsBoard's device HTTP API.

    Posts ``[{"ts": <ms>, "values": {...}}, ...]`` to ``{url}/api/v1/{token}/telemetry``:
    a JSON object is sent as the values as it is (its keys become telemetry keys); any other
    value ``v`` becomes ``{stream: v}``. ``ts`` is ``t`` rounded to whole milliseconds, so two
    datapoints of a stream less than 1 ms apart land on the same ThingsBoard timestamp.
    :meth:`~HTTPRemote.ping` checks the token (``GET .../attributes``). The token is masked
    in the repr and in every message.

    :param url: the ThingsBoard server, e.g. ``"https://thingsboard.example.com"``
    :param token: the device's access token
    :param kwargs: more :class:`HTTPRemote` options (``timeout``, ``verify``, ``headers``,
        ``compression``: off by default; turn it on only where the server, or a proxy in
        front of it, reads ``Content-Encoding: gzip``)
    """
    if not token:
        raise ConfigurationError("thingsboard() needs the device's access token")
    config = {"kind": "thingsboard", "url": url, "token": token, **kwargs}
    base = url.rstrip("/") + "/api/v1/" + quote(token, safe="")
    secrets = {token, quote(token, safe=""), *kwargs.pop("secrets", ())}
    kwargs.setdefault("encode", thingsboard_encode)
    kwargs.setdefault("ping_url", base + "/attributes")
    remote = HTTPRemote(base + "/telemetry", secrets=secrets, **kwargs)
    if config.pop("encode", thingsboard_encode) is thingsboard_encode:  # else one of your own
        if "secrets" in config:
            config["secrets"] = sorted(config["secrets"])  # JSON has no set
        config["compression"] = remote.compression
        remote._config = config
    return remote


def thingsboard_encode(stream: str, points: list[tuple[float, Any]]) -> list[dict[str, Any]]:
    """ThingsBoard's telemetry body: an object's keys as they are, anything else as
    ``{stream: value}``; ``ts`` in whole milliseconds."""
    return [
        {"ts": round(t * 1000), "values": value if isinstance(value, dict) else {stream: value}}
        for t, value in points
    ]
