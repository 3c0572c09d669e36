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
in urllib3's DEBUG log lines (:func:`.base.hide_in_logs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

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
    hide_in_logs,
    hide_password,
    parse_retry_after,
    send,
    short_reason,
)

#: Turns a stream name and its ``(t, value)`` pairs into the request body: a JSON-able value
#: (sent as JSON), or ``str``/``bytes`` (sent as they are).
Encoder = Callable[[str, list[tuple[float, Any]]], Any]

#: A body over this is refused before sending (RejectedError), so the syncer halves the batch.
MAX_BODY_BYTES = 8 * 1024 * 1024
_DUMPS = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode


class HTTPRemote:
    """Any HTTP endpoint that takes a batch of datapoints as one JSON POST.

    The default body is ``[{"stream": s, "t": t, "d": value}, ...]``; ``encode`` makes
    another. 2xx is an acknowledgement. 401/403 raise
    :class:`~connectorsync.errors.AuthError`, 408/429/5xx
    :class:`~connectorsync.errors.TransientRemoteError` (with ``Retry-After``), 404 and 3xx
    :class:`~connectorsync.errors.RemoteError`, any other 4xx (413 too)
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
    """

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        encode: Encoder | None = None,
        ping_url: str | None = None,
        secrets: Iterable[str] = (),
        timeout: float = 30.0,
        verify: bool | str = True,
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
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(
                f"HTTPRemote timeout must be a positive number; got {timeout!r}"
            )
        self.url = url
        self.ping_url = ping_url
        hide_in_logs(self, self._secrets)
        self.timeout = float(timeout)
        self._encode = encode
        self._session = requests.Session()
        self._bodies = Prepared(self._checked_body)
        self._session.verify = verify
        self._session.headers["Content-Type"] = "application/json"
        self._session.headers.update(headers or {})

    def __repr__(self) -> str:
        return f"HTTPRemote({self._mask(self.url)!r})"

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """GET ``ping_url`` (2xx) when there is one; return the url (masked) either way."""
        if self.ping_url is not None:
            self._request("GET", self.ping_url)
        return self._mask(self.url)

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        """Nothing to create: the url takes any stream."""

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}``: an HTTP sink takes any stream and keeps no schema."""
        return {}

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the default body of ``batch`` ahead of :meth:`push` (see
        :class:`.base.Prepared`). With an ``encode`` function it does nothing: that function
        runs in the syncer's thread only."""
        if self._encode is None:
            self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        url = self.url.replace("{stream}", quote(stream, safe="/"))
        self._request("POST", url, data=data, sent_matters=True)

    def reconcile(self, stream: str) -> float | None:
        """None: a plain HTTP sink cannot say what it stored, so a batch whose answer was lost
        is sent again (at least once)."""
        return None

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------------- plumbing

    def _checked_body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        data = self._body(stream, batch)
        if len(data) > MAX_BODY_BYTES:
            raise RejectedError(
                f"stream {stream!r}: a batch of {len(batch)} datapoints is {len(data)} bytes, "
                f"over the {MAX_BODY_BYTES}-byte limit",
                status=413,
            )
        return data

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

    def _request(
        self, method: str, url: str, *, sent_matters: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One HTTP call mapped onto the error tree; the only place errors are mapped.

        ``sent_matters``: for a write, a failure after the request went out is ambiguous.
        """
        what = f"{method} {self._mask(url)}"
        response = send(
            self._session,
            method,
            url,
            what=what,
            timeout=self.timeout,
            write=sent_matters,
            mask=self._mask,
            allow_redirects=False,
            **kwargs,
        )
        with response:
            if 200 <= response.status_code < 300:
                return response
            raise self._error(what, response, is_push=sent_matters)

    def _error(self, what: str, response: requests.Response, *, is_push: bool) -> RemoteError:
        status = response.status_code
        body = short_reason(self._mask(response.text))
        message = f"{what}: {status} {body}".strip()
        if 300 <= status < 400:
            where = self._mask(response.headers.get("Location", "?"))
            return RemoteError(
                f"{message} (redirected to {where}: set the url to where it points)",
                status=status,
                body=body,
            )
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientRemoteError(message, status=status, body=body, retry_after=retry_after)
        if status in (401, 403):
            return AuthError(message + " (check the credentials)", status=status, body=body)
        if status == 404:
            return RemoteError(message + " (check the url)", status=status, body=body)
        if is_push and 400 <= status < 500:
            return RejectedError(message, status=status, body=body)
        return RemoteError(message, status=status, body=body)

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
    :param kwargs: more :class:`HTTPRemote` options (``timeout``, ``verify``, ``headers``)
    """
    if not token:
        raise ConfigurationError("thingsboard() needs the device's access token")
    base = url.rstrip("/") + "/api/v1/" + quote(token, safe="")
    secrets = {token, quote(token, safe=""), *kwargs.pop("secrets", ())}
    kwargs.setdefault("encode", thingsboard_encode)
    kwargs.setdefault("ping_url", base + "/attributes")
    return HTTPRemote(base + "/telemetry", secrets=secrets, **kwargs)


def thingsboard_encode(stream: str, points: list[tuple[float, Any]]) -> list[dict[str, Any]]:
    """ThingsBoard's telemetry body: an object's keys as they are, anything else as
    ``{stream: value}``; ``ts`` in whole milliseconds."""
    return [
        {"ts": round(t * 1000), "values": value if isinstance(value, dict) else {stream: value}}
        for t, value in points
    ]
