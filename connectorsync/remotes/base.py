"""The contract every remote keeps. The syncer talks to remotes through this and nothing else.

A remote stores datapoints somewhere else. The syncer calls it from one thread at a time,
except :meth:`Prepared.prepare` (below). Every method either returns as documented or raises
one of these, and nothing else:

- :class:`~connectorsync.errors.TransientRemoteError`: network trouble, a timeout before the
  request was sent, 408/429/5xx. Nothing was stored; the syncer retries later.
- :class:`~connectorsync.errors.AmbiguousRemoteError`: the request was sent but no answer came
  back (connection dropped, read timeout). The data may or may not be stored: the syncer asks
  :meth:`Remote.reconcile` before sending it again.
- :class:`~connectorsync.errors.RejectedError`: the remote refused the datapoints themselves.
  Only :meth:`Remote.push` raises it; resending the same batch will fail the same way.
- :class:`~connectorsync.errors.AuthError`: the credentials were refused. Nothing was stored.
- :class:`~connectorsync.errors.RemoteError`: anything else the remote answered with.

Every network call carries a timeout: no method blocks forever. A remote's ``repr`` names
where it delivers and never shows a credential: the Logger records it in the cache file.

Optionally, a remote has ``prepare(stream, batch)``: the syncer calls it, in a second thread,
with the next batch while the current one is on the wire, so that building a request body
overlaps waiting for the remote. :class:`Prepared` keeps such bodies for ``push``.
"""

from __future__ import annotations

import email.utils
import enum
import html
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import requests

from ..errors import AmbiguousRemoteError, RemoteError, TransientRemoteError

# A datapoint as the cache hands it over: (cache id, t in seconds, data as JSON text).
# Remotes that speak JSON can put the text in their body as it is, without decoding it.
Datapoint = tuple[int, float, str]


class DeliveryKind(enum.Enum):
    """How a remote stores a batch; the sync pass settles a batch sent without an answer
    (or cut short by a crash) by this and nothing else.

    - ``ORDERED``: all or nothing, in order, refusing older timestamps (ConnectorDB). The
      remote's newest timestamp says what arrived; the rest is sent again. Exactly once.
    - ``IDEMPOTENT``: may store part of a batch, and storing a datapoint twice changes nothing
      (InfluxDB: same measurement, tags and time overwrite). The whole batch is sent again;
      delivery is never inferred. Exactly once, as stored.
    - ``AT_LEAST_ONCE``: cannot say what it stored (a plain HTTP endpoint). The whole batch is
      sent again: duplicates are possible after a lost answer, never a loss.
    """

    ORDERED = "ordered"
    IDEMPOTENT = "idempotent"
    AT_LEAST_ONCE = "at_least_once"


@runtime_checkable
class Remote(Protocol):
    """What the syncer needs of a remote database."""

    #: How the remote stores a batch (see :class:`DeliveryKind`).
    delivery_kind: DeliveryKind

    def ping(self) -> str:
        """Check the connection and credentials; return who we are there (``user/device``).

        Safe to call any number of times.
        """
        ...

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        """Make sure ``stream`` exists remotely, creating it with ``schema`` if it is missing.

        Calling it twice is safe: an existing stream is left as it is.
        """
        ...

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """The schema of ``stream`` on the remote, or None when the remote has no such stream."""
        ...

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Store ``batch`` (in order, timestamps increasing) in ``stream``, all or nothing.

        Returns only when the remote acknowledged every datapoint of the batch; only then may
        the cache delete them. An empty batch returns at once.

        :raises RejectedError: the remote refused at least one datapoint; nothing was stored
            (or, for remotes that store the valid part, resending the batch is harmless)
        """
        ...

    def reconcile(self, stream: str) -> float | None:
        """The timestamp of the newest datapoint the remote holds for ``stream``, or None.

        Asked only of ``ORDERED`` remotes, after an :class:`AmbiguousRemoteError`: cached
        datapoints at or below this timestamp were delivered. Read-only, safe to call any
        number of times.
        """
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """A remote that can make a batch's request body ahead of :meth:`Remote.push`."""

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` now, in the caller's (a second) thread. Never raises:
        whatever went wrong, ``push`` meets again when it makes the body itself."""
        ...


class Prepared:
    """Request bodies made ahead of ``push``, for remotes that offer ``prepare``.

    ``encode(stream, batch)`` makes the body of a batch (and raises, for instance
    :class:`~connectorsync.errors.RejectedError`, when it cannot). :meth:`prepare` makes it
    early; :meth:`body` hands it to ``push``, only for the very same batch object and stream,
    so what is sent is always exactly what ``encode`` makes of the batch being pushed. At most
    two bodies are kept (the next batch, and one prepared but never pushed).
    """

    _KEEP = 2

    def __init__(self, encode: Callable[[str, Sequence[Datapoint]], bytes]):
        self._encode = encode
        self._lock = threading.Lock()
        # id(batch) -> (stream, batch, body); holding the batch keeps its id from being reused.
        self._bodies: dict[int, tuple[str, Sequence[Datapoint], bytes]] = {}

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` now. Thread-safe; never raises: whatever ``encode``
        raises, ``push`` meets again when it makes the body itself, in the syncer's thread."""
        try:
            body = self._encode(stream, batch)
        except Exception:
            return
        with self._lock:
            while len(self._bodies) >= self._KEEP:
                del self._bodies[next(iter(self._bodies))]  # the oldest
            self._bodies[id(batch)] = (stream, batch, body)

    def body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        """The body of ``batch``: the one prepared for this very object, else made now."""
        with self._lock:
            entry = self._bodies.pop(id(batch), None)
        if entry is not None and entry[0] == stream and entry[1] is batch:
            return entry[2]
        return self._encode(stream, batch)


# ----------------------------------------------------------------------------- HTTP plumbing
# What the built-in HTTP remotes share: one request mapped onto the error tree, and
# Retry-After. The rule that matters for delivery: a write whose request may have reached the
# server before the failure (a dropped connection, no answer in time) is ambiguous, so the
# syncer asks the remote what it stored before sending again; a failure to connect at all is
# transient: nothing was sent.


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    timeout: float,
    write: bool,
    mask: Callable[[str], str] = str,
    **kwargs: Any,
) -> requests.Response:
    """Make one request and return the response, whatever its status.

    :param what: names the call in error messages (e.g. ``"POST /write"``)
    :param write: the request stores data, so a failure after it went out is ambiguous
    :param mask: hides secrets in the text of an error
    :raises TransientRemoteError: nothing was sent (refused, unresolvable, connect timeout),
        or a read failed
    :raises AmbiguousRemoteError: a write may have been stored before the failure
    :raises RemoteError: anything else requests refuses (a malformed url, say)
    """
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except requests.exceptions.ConnectTimeout as exc:
        raise TransientRemoteError(f"{what}: connection timed out") from exc
    except requests.exceptions.ConnectionError as exc:
        # "Failed to establish" means nothing was sent; a dropped connection may be either.
        cls = AmbiguousRemoteError if write and not _never_sent(exc) else TransientRemoteError
        raise cls(f"{what}: connection failed: {mask(_reason(exc))}") from exc
    except requests.exceptions.Timeout as exc:
        cls = AmbiguousRemoteError if write else TransientRemoteError
        raise cls(f"{what}: no answer within {timeout} s") from exc
    except requests.exceptions.RequestException as exc:
        raise RemoteError(f"{what}: {mask(_reason(exc))}") from exc


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

# scheme://user:password@ -> scheme://user:***@ (a password may hold anything but "@" and "/").
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):[^@/\s'\"]*@")


def hide_password(text: str) -> str:
    """``text`` with the password of every url in it replaced by ``***``, the user kept:
    ``http://user:***@host``. For reprs, messages and command line output; a url stays usable
    only where it is kept, never where it is shown."""
    return _USERINFO.sub(r"\1:***@", text)


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


def _never_sent(exc: Exception) -> bool:
    text = str(exc)
    return "Failed to establish a new connection" in text or "NameResolutionError" in text


def _reason(exc: Exception) -> str:
    # requests wraps the useful part ("[Errno 111] Connection refused") in pool internals.
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found.group(0).strip()
    return text if len(text) < 300 else text[:300] + "..."
