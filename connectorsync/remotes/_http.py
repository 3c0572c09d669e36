"""The HTTP plumbing every built-in remote shares, and the only place its rules are decided.

- :class:`Client`: one remote's ``requests.Session`` and its one request function,
  :meth:`Client.request`, which maps every failure onto the error tree.
- :class:`Statuses`: what an HTTP status means, one table built on :data:`DEFAULT_STATUSES`
  plus a remote's few overrides (httpx's ``HTTPCORE_EXC_MAP`` idea), so "is a 501 worth
  retrying" is decided once, here.
- :func:`within_limit`, :class:`Prepared`: request bodies, capped, made ahead and
  compressed (:func:`compression_setting`, :func:`compress`).
- :func:`mask_url`, :func:`hide_password`, :func:`hide_in_logs`, :func:`short_reason`:
  what is shown.

The rule that matters for delivery: a write whose request may have reached the server before
the failure (a dropped connection, no answer in time) is ambiguous, so the syncer asks the
remote what it stored before sending again; a failure to connect at all is transient:
nothing was sent. Redirects are never followed: a POST redirected with 301/302 would come
back a GET, and its 200 would look like an acknowledgement of data that was never stored.
"""

from __future__ import annotations

import email.utils
import html
import json
import logging
import re
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import (
    AmbiguousRemoteError,
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from .base import MAX_SECONDS, Datapoint

# ----------------------------------------------------------------------------- statuses

#: Hides secrets in a text that is shown.
Mask = Callable[[str], str]
#: What a status means: an error class, or a function of the answer's short reason that picks
#: one (for a remote whose status alone does not say, like ConnectorDB's 403).
Meaning = type[RemoteError] | Callable[[str], type[RemoteError]]
#: Keys are a status (``403``) or a class of them (``"4xx"``); a status wins over its class.
StatusMap = Mapping[int | str, Meaning]

#: The shared reading of statuses; a remote overrides a few (:func:`statuses`).
DEFAULT_STATUSES: StatusMap = {
    "3xx": RemoteError,  # never followed (see above): the message names where it points
    "4xx": RemoteError,  # a remote says which of its 4xx refuse the data (writes=)
    "5xx": TransientRemoteError,  # the server's trouble, which passes (500, 502, 503, 504...)
    401: AuthError,
    403: AuthError,  # about access, unless the remote says its 403 also refuses data
    408: TransientRemoteError,  # the server gave up waiting for our request: send it again
    429: TransientRemoteError,  # too many requests: wait (Retry-After) and send it again
    501: RemoteError,  # Not Implemented: waiting will not teach the server the method
}
DEFAULT_HINTS: Mapping[int | str, str] = {"3xx": "set the url to where it points"}


@dataclass(frozen=True)
class Statuses:
    """One remote's reading of HTTP statuses: which error each non-2xx answer raises, for a
    read and for a write (where some 4xx refuse the data), and the hint added to its message."""

    reads: StatusMap
    writes: StatusMap
    hints: Mapping[int | str, str]

    def error(
        self, what: str, response: requests.Response, *, write: bool, mask: Mask
    ) -> RemoteError:
        """The error for a non-2xx ``response``: ``"<what>: <status> <short reason> (<hint>)"``,
        with ``status``, ``body`` (the short reason) and, when transient, ``retry_after``."""
        status = response.status_code
        body = short_reason(mask(response.text))
        meaning = _lookup(self.writes if write else self.reads, status) or RemoteError
        cls = meaning if isinstance(meaning, type) else meaning(body)
        message = f"{what}: {status} {body}".strip()
        hint = _lookup(self.hints, status)
        if 300 <= status < 400:
            hint = f"redirected to {mask(response.headers.get('Location', '?'))}: {hint}"
        if hint:
            message += f" ({hint})"
        if issubclass(cls, TransientRemoteError):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            error: RemoteError = cls(message, status=status, body=body, retry_after=retry_after)
        else:
            error = cls(message, status=status, body=body)
        return error


def statuses(
    *,
    overrides: StatusMap | None = None,
    writes: StatusMap | None = None,
    hints: Mapping[int | str, str] | None = None,
) -> Statuses:
    """A remote's :class:`Statuses`: :data:`DEFAULT_STATUSES` with ``overrides`` for every
    call, and ``writes`` on top of those for a call that stores data."""
    reads = {**DEFAULT_STATUSES, **(overrides or {})}
    return Statuses(reads, {**reads, **(writes or {})}, {**DEFAULT_HINTS, **(hints or {})})


def _lookup(table: Mapping[int | str, Any], status: int) -> Any:
    found = table.get(status)
    return found if found is not None else table.get(f"{status // 100}xx")


# ----------------------------------------------------------------------------- requests


class Client:
    """One remote's HTTP: a ``requests.Session`` (set ``auth`` and ``headers`` on
    :attr:`session`), its timeout, its :class:`Statuses` and what hides its secrets.

    :param base: left out of the url where a call is named in messages (the server's url)
    :param mask: hides secrets in every message (the url, the answer, a redirect's target)
    """

    def __init__(
        self,
        statuses: Statuses,
        *,
        timeout: float,
        verify: bool | str,
        base: str = "",
        mask: Mask = str,
    ):
        self.session = requests.Session()
        self.session.verify = verify
        self.statuses = statuses
        self.timeout = timeout
        self._base = base
        secrets = url_secrets(base)
        self._mask: Mask = lambda text: hide_password(_replace(mask(text), secrets))
        self._sent = 0
        self._sent_lock = threading.Lock()

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies sent so far, as they went on the wire (compressed, when
        they were), headers not included. A request counts once it may have reached the
        server: not when connecting failed, counted when its answer was an error or never came."""
        with self._sent_lock:
            return self._sent

    def send(
        self, method: str, url: str, data: bytes, *, encoding: str | None, **kwargs: Any
    ) -> requests.Response:
        """:meth:`request` for a write of the body ``data``, whose ``Content-Encoding`` is
        ``encoding`` (None: plain; :attr:`Prepared.encoding`)."""
        if encoding is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Encoding": encoding}
        return self.request(method, url, data=data, write=True, **kwargs)

    def request(
        self, method: str, url: str, *, write: bool = False, **kwargs: Any
    ) -> requests.Response:
        """Make one request; return the response if it is 2xx, else raise what it means.

        :param write: the request stores data, so a failure after it went out is ambiguous
            and the remote's ``writes`` statuses apply
        :raises TransientRemoteError: nothing was sent (refused, unresolvable, connect
            timeout), a read failed, or a transient status (Retry-After read)
        :raises AmbiguousRemoteError: a write may have been stored before the failure
        :raises RemoteError: (or a subclass, by :attr:`statuses`) any other answer, or
            anything else requests refuses (a malformed url, say)
        """
        what = f"{method} {self._mask(url.removeprefix(self._base))}"
        data = kwargs.get("data")
        size = len(data.encode() if isinstance(data, str) else data or b"")
        try:
            response = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientRemoteError(f"{what}: connection timed out ({host_port(url)})") from exc
        except requests.exceptions.ConnectionError as exc:
            # "Failed to establish" means nothing was sent; a dropped connection may be either.
            never_sent = _never_sent(exc)
            if not never_sent:
                self._count(size)
            cls = AmbiguousRemoteError if write and not never_sent else TransientRemoteError
            raise cls(
                f"{what}: connection failed ({host_port(url)}): {self._mask(_reason(exc))}"
            ) from exc
        except requests.exceptions.Timeout as exc:
            self._count(size)
            cls = AmbiguousRemoteError if write else TransientRemoteError
            raise cls(f"{what}: no answer within {self.timeout} s") from exc
        except requests.exceptions.RequestException as exc:
            raise RemoteError(f"{what}: {self._mask(_reason(exc))}") from exc
        self._count(size)
        if 200 <= response.status_code < 300:
            return response
        with response:
            raise self.statuses.error(what, response, write=write, mask=self._mask)

    def close(self) -> None:
        """Close the session's connections. Safe to call twice."""
        self.session.close()

    def _count(self, size: int) -> None:
        with self._sent_lock:
            self._sent += size


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent
    or unreadable. Never negative."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _never_sent(exc: Exception) -> bool:
    text = str(exc)
    return "Failed to establish a new connection" in text or "NameResolutionError" in text


def host_port(url: str) -> str:
    """``host:port`` of ``url`` (the scheme's port when it names none), for messages: which
    server could not be reached (no credentials: those sit before the host)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return "?"
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def _reason(exc: Exception) -> str:
    # requests wraps the useful part ("[Errno 111] Connection refused") in pool internals.
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found.group(0).strip()
    return text if len(text) < 300 else text[:300] + "..."


# ----------------------------------------------------------------------------- bodies

#: A body over this is refused before it is sent (RejectedError, status 413), so the syncer
#: halves the batch. ConnectorDB refuses bodies over 10 MiB, influxd over its
#: ``max-body-size`` (25 MB by default): 8 MiB stays below both. It counts the body before
#: compression: a server limits what it must decompress and hold (ConnectorDBServer counts
#: the decompressed body), and gzip makes none more than 0.05% larger.
MAX_BODY_BYTES = 8 * 1024 * 1024


def within_limit(
    stream: str, batch: Sequence[Datapoint], data: bytes, limit: int = MAX_BODY_BYTES
) -> bytes:
    """``data``, the body of ``batch``, if it has at most ``limit`` bytes.

    :raises RejectedError: (status 413) it is larger: the syncer halves the batch
    """
    if len(data) > limit:
        raise RejectedError(
            f"stream {stream!r}: a batch of {len(batch)} datapoints is {len(data)} bytes, "
            f"over the {limit}-byte limit",
            status=413,
        )
    return data


#: The gzip level. 6 (zlib's default) over 1: on bench_wire's number stream 3.6 bytes per
#: datapoint instead of 5.5 (43 plain); 15-35% fewer bytes than 1 on the data measured, for
#: up to 2 us of CPU per datapoint here (several times that on a Raspberry Pi: still far
#: faster than a cellular link carries it, and done beside the wire, by ``prepare``).
#: 9 saves another 5-8% for 4x the CPU of 6.
GZIP_LEVEL = 6


def compression_setting(owner: str, value: object) -> str | None:
    """A remote's ``compression=`` argument, checked: ``"gzip"``, or None for plain bodies
    (``"none"`` too).

    :raises ConfigurationError: anything else (the message names ``owner`` and the value)
    """
    if value is None or value == "none":
        return None
    if value == "gzip":
        return "gzip"
    raise ConfigurationError(
        f"{owner} compression must be 'gzip' or None (or 'none'); got {value!r}"
    )


def timeout_setting(owner: str, value: object) -> float:
    """A remote's ``timeout=`` argument, checked: seconds, a number > 0 and at most
    :data:`~connectorsync.remotes.base.MAX_SECONDS`.

    :raises ConfigurationError: anything else (the message names ``owner`` and the value)
    """
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 < value <= MAX_SECONDS  # NaN and infinity too fail this
    ):
        return float(value)
    raise ConfigurationError(
        f"{owner} timeout must be a number of seconds > 0 and at most {MAX_SECONDS:g}; "
        f"got {value!r}"
    )


def header_safe(owner: str, what: str, value: object) -> None:
    """Refuse a credential or header that HTTP cannot send: a header (HTTP Basic auth too)
    carries latin-1 only and no line break; each failed every pass, with an error that
    quoted the secret (requests' "Invalid ... in header value: 'Token ...'") or a character
    of it. The message never shows the value
    (``test_http_remote.py::test_a_secret_http_cannot_send_is_refused_when_built``).

    :raises ConfigurationError: ``value`` (a str; None and other types are left alone) has a
        character outside latin-1, or a line break (it would end the header)
    """
    if not isinstance(value, str):
        return
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        problem = "a character outside latin-1, which an HTTP header cannot carry"
    else:
        if "\r" not in value and "\n" not in value:
            return
        problem = "a line break, which would end its HTTP header (read from a file? strip it)"
    raise ConfigurationError(f"{owner} {what} has {problem} (not shown)")


def compress(data: bytes, compression: str | None) -> bytes:
    """``data`` as it goes on the wire with ``compression`` (a :func:`compression_setting`)."""
    if compression is None:
        return data
    # wbits=31: the gzip format (header and CRC), which Content-Encoding: gzip means.
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


class Prepared:
    """Request bodies made ahead of ``push``, for remotes that offer ``prepare``
    (:class:`~connectorsync.remotes.base.Preparable`).

    ``encode(stream, batch)`` makes the body of a batch (and raises, for instance
    :class:`~connectorsync.errors.RejectedError`, when it cannot); ``compression`` (a
    :func:`compression_setting`) is applied after it, so limits checked by ``encode``
    (:func:`within_limit`) count the bytes before compression. :meth:`prepare` makes it
    early; :meth:`body` hands it to ``push``, only for the very same batch object and stream,
    so what is sent is always exactly what ``encode`` makes of the batch being pushed. At most
    two bodies are kept (the next batch, and one prepared but never pushed).

    :ivar encoding: the ``Content-Encoding`` of its bodies (None: plain), for
        :meth:`Client.send`
    """

    _KEEP = 2

    def __init__(
        self,
        encode: Callable[[str, Sequence[Datapoint]], bytes],
        compression: str | None = None,
    ):
        self._encode = encode
        self.encoding = compression
        self._lock = threading.Lock()
        # id(batch) -> (stream, batch, body); holding the batch keeps its id from being reused.
        self._bodies: dict[int, tuple[str, Sequence[Datapoint], bytes]] = {}

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` now. Thread-safe; never raises: whatever ``encode``
        raises, ``push`` meets again when it makes the body itself, in the syncer's thread."""
        try:
            body = self._make(stream, batch)
        except Exception:
            return
        with self._lock:
            while len(self._bodies) >= self._KEEP:
                del self._bodies[next(iter(self._bodies))]  # the oldest
            self._bodies[id(batch)] = (stream, batch, body)

    def body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        """The body of ``batch`` as it goes on the wire: the one prepared for this very
        object, else made now."""
        with self._lock:
            entry = self._bodies.pop(id(batch), None)
        if entry is not None and entry[0] == stream and entry[1] is batch:
            return entry[2]
        return self._make(stream, batch)

    def _make(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        return compress(self._encode(stream, batch), self.encoding)


# ----------------------------------------------------------------------------- secrets
# urllib3 logs each request line, url path included, at DEBUG ("POST /api/v1/<token>/...").
# A filter on its logger (records are logged to it directly) masks the secrets of every live
# remote that registered some; nothing else about logging is touched.

_URLLIB3_LOGGER = "urllib3.connectionpool"
_secrets_lock = threading.Lock()
_secrets: weakref.WeakKeyDictionary[object, tuple[str, ...]] = weakref.WeakKeyDictionary()


class _SecretsFilter(logging.Filter):
    """Replaces each registered secret with ``***`` in urllib3's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _secrets_lock:
            # Longest first: a secret may contain another (a token and its quoted form).
            secrets = sorted({s for group in _secrets.values() for s in group}, key=len)[::-1]
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself
            return True
        masked = message
        for secret in secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = _SecretsFilter()

#: What stands for a hidden password.
HIDDEN = "***"
# A url's scheme: a letter, then letters, digits, "+", "-", "." (RFC 3986 3.1).
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, the user kept: ``http://user:***@host``.

    The one function that decides how a url is shown (reprs, status, the CLI, log lines,
    error messages); :func:`hide_password` applies it to each url inside a text. The url is
    split as requests splits it (``urllib.parse.urlsplit``: scheme, then the authority after
    ``//``) and its password, between the first ``:`` of the user part and its last ``@``,
    may hold anything: ``'``, ``:``, ``@``, ``%40``, non-ASCII letters. urllib ends the
    authority at the first ``/``, ``?`` or ``#``, but a password typed with one of those goes
    on past it, so the url's last ``@`` is taken as the end: when in doubt, more is hidden,
    never less (``tests/test_cli.py::test_hostile_passwords_in_urls_are_never_shown``).
    """
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:  # a malformed url (an unclosed "[" of an IPv6 host): show no part
        return f"{url.partition('://')[0]}://{HIDDEN}" if "://" in url else HIDDEN
    if not netloc:
        return url  # no authority ("mailto:", a bare path): no password to hide
    start = url.find("//") + 2
    end = url.rfind("@")
    colon = url.find(":", start, end) if end > start else -1
    if colon < 0:
        return url  # no user part, or a user name alone: no secret
    return f"{url[: colon + 1]}{HIDDEN}{url[end:]}"


def url_secrets(url: str) -> tuple[str, ...]:
    """What of ``url``'s password a message may quote without the url around it: the
    password, as typed and decoded, and, for one typed with a bare ``/``, ``?`` or ``#``, its
    pieces (urllib3 says "'alice:pa' is not a valid host or port" for ``alice:pa/ss@host``).
    Pieces under 3 characters are left: hiding every "a" of a message would say nothing."""
    masked = mask_url(url)
    if masked == url:
        return ()
    start = masked.index(HIDDEN)
    password = url[start : len(url) - (len(masked) - start - len(HIDDEN))]
    found = {password, urllib.parse.unquote(password)}
    for sep in "/?#":
        found.update(p for part in list(found) for p in part.split(sep) if len(p) >= 3)
    return tuple(sorted(found, key=len, reverse=True))  # a longer one first: it holds others


def _replace(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text


def hide_password(text: str) -> str:
    """``text`` with the password of every url in it hidden by :func:`mask_url`. For reprs,
    messages and command line output; a url stays usable only where it is kept, never where
    it is shown. A url in a text runs from its scheme to the next white space, or, when a
    ``:`` follows its ``//`` before any ``@``, past white space to the last ``@`` of its
    line: a password may hold a space (requests sends it as ``%20``) and an ``@``, and when
    in doubt more is hidden, never less."""
    out: list[str] = []
    done = 0
    while (mark := text.find("://", done)) >= 0:
        begin = mark
        while begin > done and text[begin - 1] in _SCHEME_CHARS:
            begin -= 1
        finish = _word_end(text, mark + 3)
        word = text[mark + 3 : finish]
        if ":" in word.split("@", 1)[0]:  # a password may follow, up to the line's last @
            line_end = text.find("\n", finish)
            at = text.rfind("@", finish, len(text) if line_end < 0 else line_end)
            if at >= 0:
                finish = _word_end(text, at)
        out.append(text[done:begin])
        out.append(mask_url(text[begin:finish]) if begin < mark else text[begin:finish])
        done = finish
    out.append(text[done:])
    return "".join(out)


def _word_end(text: str, start: int) -> int:
    while start < len(text) and not text[start].isspace():
        start += 1
    return start


def hide_in_logs(owner: object, secrets: Iterable[str]) -> None:
    """Keep ``secrets`` out of urllib3's log lines for as long as ``owner`` lives.

    For a remote whose urls hold a secret (a ThingsBoard token). The registry holds ``owner``
    weakly; the filter is installed once on ``urllib3.connectionpool``, and only there.
    (``tests/test_http_remote.py::test_thingsboard_token_is_in_no_urllib3_debug_line``)
    """
    group = tuple(s for s in secrets if s)
    if not group:
        return
    with _secrets_lock:
        _secrets[owner] = group
        logger = logging.getLogger(_URLLIB3_LOGGER)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# ----------------------------------------------------------------------------- reasons

REASON_CHARS = 120
_TAG = re.compile(
    r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|</?[A-Za-z!][^>]*>", re.IGNORECASE | re.DOTALL
)


def short_reason(body: str, limit: int = REASON_CHARS) -> str:
    """A remote's answer as a short single-line reason, for error messages and ``last_error``.

    The ``msg``, ``error`` or ``message`` field of a JSON object when there is one (ConnectorDB,
    InfluxDB 1.x, 2.x); else the text with HTML tags stripped (a proxy's error page), entities
    decoded, whitespace collapsed. Cut to ``limit`` characters (and an ellipsis). Empty for an
    empty body. (``tests/test_remote_errors.py::test_short_reason_of_a_body``)
    """
    text = body
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        found = next((payload[k] for k in ("msg", "error", "message") if payload.get(k)), None)
        if found is not None:
            text = str(found)
    else:
        text = html.unescape(_TAG.sub(" ", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
