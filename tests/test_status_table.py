"""One reading of HTTP statuses for every remote (``remotes/_http.py``, DEFAULT_STATUSES).

Whether a status is worth retrying is decided once, for ConnectorDB, InfluxDB and HTTP alike:
408, 429 and 5xx are transient, but 501 Not Implemented, which waiting will not fix.
``responses`` is used here because this is the mapping of status codes to errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import responses

from connectorsync import ConnectorDBRemote, HTTPRemote, InfluxDBRemote
from connectorsync.errors import RemoteError, TransientRemoteError

URL = "http://remote.test"
BATCH = [(1, 1.7e9, "1.5"), (2, 1.7e9 + 1, "2.5")]

# (name, the url the call reaches, the method, make the remote, make the call)
Call = tuple[str, str, str, Callable[[], Any], Callable[[Any], Any]]
CALLS: list[Call] = [
    (
        "connectordb push",
        f"{URL}/api/v1/crud/u/d/s/data",
        "POST",
        lambda: ConnectorDBRemote(URL, "k", timeout=5),
        lambda r: r.push("u/d/s", BATCH),
    ),
    (
        "connectordb ping",
        f"{URL}/api/v1/",
        "GET",
        lambda: ConnectorDBRemote(URL, "k", timeout=5),
        lambda r: r.ping(),
    ),
    (
        "influxdb push",
        f"{URL}/write",
        "POST",
        lambda: InfluxDBRemote(URL, "db", timeout=5),
        lambda r: r.push("s", BATCH),
    ),
    (
        "influxdb ping",
        f"{URL}/ping",
        "GET",
        lambda: InfluxDBRemote(URL, "db", timeout=5),
        lambda r: r.ping(),
    ),
    (
        "http push",
        f"{URL}/ingest",
        "POST",
        lambda: HTTPRemote(f"{URL}/ingest", timeout=5),
        lambda r: r.push("s", BATCH),
    ),
    (
        "http ping",
        f"{URL}/health",
        "GET",
        lambda: HTTPRemote(f"{URL}/ingest", ping_url=f"{URL}/health", timeout=5),
        lambda r: r.ping(),
    ),
]


def raised(call: Call, status: int, headers: dict[str, str] | None = None) -> RemoteError:
    _, url, method, make, act = call
    responses.add(method, url, body="the answer", status=status, headers=headers or {})
    remote = make()
    try:
        with pytest.raises(RemoteError) as info:
            act(remote)
    finally:
        remote.close()
    assert info.value.status == status and info.value.body == "the answer"
    return info.value


@pytest.mark.parametrize("call", CALLS, ids=[c[0] for c in CALLS])
@responses.activate
def test_501_is_not_transient_for_any_remote(call: Call) -> None:
    """A 'Not Implemented' will not get better by waiting: a plain RemoteError, no retry."""
    assert type(raised(call, 501)) is RemoteError


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 599])
@pytest.mark.parametrize("call", CALLS, ids=[c[0] for c in CALLS])
@responses.activate
def test_other_5xx_are_transient_for_every_remote(call: Call, status: int) -> None:
    error = raised(call, status, {"Retry-After": "7"})
    assert type(error) is TransientRemoteError
    assert error.retry_after == 7.0


@pytest.mark.parametrize("status", [408, 429])
@pytest.mark.parametrize("call", CALLS, ids=[c[0] for c in CALLS])
@responses.activate
def test_408_and_429_are_transient_for_every_remote(call: Call, status: int) -> None:
    assert type(raised(call, status)) is TransientRemoteError
