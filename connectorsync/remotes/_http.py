"""What every HTTP remote shares: one request mapped onto the error tree, and Retry-After.

The rule that matters for delivery: a write whose request may have reached the server
before the failure (a dropped connection, no answer in time) is *ambiguous*
(:class:`~connectorsync.errors.AmbiguousRemoteError`), so the syncer asks the remote what it
stored before sending again. A failure to connect at all is *transient*: nothing was sent.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from typing import Any

import requests

from ..errors import AmbiguousRemoteError, RemoteError, TransientRemoteError


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
