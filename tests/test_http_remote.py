"""HTTPRemote and the ThingsBoard preset: bodies, urls, secrets, delivery, status mapping.

``responses`` is used only for the mapping of status codes to errors; everything else talks
to a real loopback HTTPReceiver.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import responses

from connectorsync import Logger
from connectorsync.errors import (
    AmbiguousRemoteError,
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from connectorsync.remotes import http as http_module
from connectorsync.remotes.base import Datapoint
from connectorsync.remotes.http import HTTPRemote, thingsboard
from connectorsync.testing.receiver import HTTPReceiver

T0 = 1_700_000_000.0
TOKEN = "TB-SECRET-TOKEN"


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver(tokens=[TOKEN]).start()
    try:
        yield rcv
    finally:
        rcv.stop()


@pytest.fixture
def remote(receiver: HTTPReceiver) -> Iterator[HTTPRemote]:
    r = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    try:
        yield r
    finally:
        r.close()


def batch(*values: Any, start: float = T0) -> list[Datapoint]:
    return [(i + 1, start + i * 0.5, json.dumps(v)) for i, v in enumerate(values)]


def posts(receiver: HTTPReceiver) -> int:
    return sum(1 for r in receiver.requests if r.method == "POST")


# ----------------------------------------------------------------------------- bodies


def test_default_body(receiver: HTTPReceiver, remote: HTTPRemote) -> None:
    values = [21.5, -3, 'a "quoted" ü', True, None, [1, 2], {"a": {"b": [None]}}]
    remote.push("temperature", batch(*values))
    (request,) = receiver.requests
    assert request.method == "POST" and request.path == "/ingest/temperature"
    assert request.headers["content-type"] == "application/json"
    assert receiver.bodies("/ingest/temperature") == [
        [{"stream": "temperature", "t": T0 + i * 0.5, "d": v} for i, v in enumerate(values)]
    ]
    remote.push("temperature", [])  # nothing sent
    assert len(receiver.requests) == 1


def test_stream_in_the_url_is_percent_encoded(receiver: HTTPReceiver, remote: HTTPRemote) -> None:
    remote.push("alice/sensor/temperature", batch(1.0))
    remote.push("a b?c", batch(2.0))
    assert [r.path for r in receiver.requests] == [
        "/ingest/alice/sensor/temperature",
        "/ingest/a%20b%3Fc",
    ]
    assert receiver.items("/ingest/a b?c") == [{"stream": "a b?c", "t": T0, "d": 2.0}]


def test_a_fixed_url_takes_every_stream(receiver: HTTPReceiver) -> None:
    r = HTTPRemote(receiver.url + "/all", timeout=5)
    try:
        r.push("one", batch(1.0))
        r.push("two", batch(2.0))
    finally:
        r.close()
    assert [i["stream"] for i in receiver.items("/all")] == ["one", "two"]


def test_custom_encode(receiver: HTTPReceiver) -> None:
    seen: list[tuple[str, list[tuple[float, Any]]]] = []

    def encode(stream: str, points: list[tuple[float, Any]]) -> Any:
        seen.append((stream, points))
        return {"series": stream, "points": [[t, v] for t, v in points]}

    r = HTTPRemote(receiver.url + "/x", encode=encode, timeout=5)
    text = HTTPRemote(
        receiver.url + "/text",
        encode=lambda stream, points: "\n".join(f"{stream} {v}" for _, v in points),
        headers={"Content-Type": "text/plain"},
        timeout=5,
    )
    try:
        r.push("s", batch({"k": 1}, [2]))
        text.push("s", batch(1.5, "two"))
    finally:
        r.close()
        text.close()
    assert seen == [("s", [(T0, {"k": 1}), (T0 + 0.5, [2])])]
    assert receiver.bodies("/x") == [{"series": "s", "points": [[T0, {"k": 1}], [T0 + 0.5, [2]]]}]
    assert receiver.requests[-1].body == b"s 1.5\ns two"
    assert receiver.requests[-1].headers["content-type"] == "text/plain"


def test_a_value_encode_cannot_take_becomes_a_dead_letter(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    def encode(stream: str, points: list[tuple[float, Any]]) -> Any:
        return [{"t": t, "v": float(v)} for t, v in points]

    r = HTTPRemote(receiver.url + "/ingest", encode=encode, timeout=5)
    try:
        with Logger(cache_path, remote=r) as lg:
            lg.add_stream("s", {})
            lg.insert_many("s", [1, 2, "three", 4])
            report = lg.sync()
            assert report.sent == {"s": 3} and report.deadlettered == {"s": 1}
            (letter,) = lg.deadletters()
            assert letter.d == "three"
            assert letter.reason.startswith("encode failed: ValueError")
    finally:
        r.close()
    assert [i["v"] for i in receiver.items("/ingest")] == [1.0, 2.0, 4.0]


def test_an_oversized_batch_is_refused_unsent(
    receiver: HTTPReceiver, remote: HTTPRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "MAX_BODY_BYTES", 100)
    with pytest.raises(RejectedError, match="100-byte limit") as info:
        remote.push("s", batch("x" * 100))
    assert info.value.status == 413
    assert receiver.requests == []


# ----------------------------------------------------------------------------- the contract


def test_ping_schema_and_reconcile(receiver: HTTPReceiver) -> None:
    r = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    checked = HTTPRemote(receiver.url + "/ingest", ping_url=receiver.url + "/health", timeout=5)
    try:
        assert r.ping() == receiver.url + "/ingest/{stream}"
        assert receiver.requests == []  # no ping_url: nothing checked
        assert checked.ping() == receiver.url + "/ingest"
        assert [(q.method, q.path) for q in receiver.requests] == [("GET", "/health")]
        r.ensure_stream("s", {"type": "number"})
        assert r.stream_schema("s") == {} and r.reconcile("s") is None
        assert len(receiver.requests) == 1  # neither asks anything
        receiver.respond("/health", 503, b"down")
        with pytest.raises(TransientRemoteError):
            checked.ping()
        receiver.stop()
        with pytest.raises(TransientRemoteError, match="connection failed"):
            checked.ping()
    finally:
        r.close()
        checked.close()


def test_lost_answer_means_at_least_once(cache_path: str, receiver: HTTPReceiver) -> None:
    """The receiver stored the batch but the answer was lost: the batch goes again, so it is
    there twice, and nothing is missing."""
    r = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    try:
        with Logger(cache_path, remote=r) as lg:
            lg.add_stream("s", {"type": "number"})
            lg.insert_many("s", [{"t": T0 + i, "d": float(i)} for i in range(3)])
            receiver.drop_after_commit(1)
            report = lg.sync()
            assert isinstance(report.exception, AmbiguousRemoteError)
            assert report.sent == {} and len(lg) == 3  # nothing can be proved delivered
            report = lg.sync()
            assert report.ok and report.sent == {"s": 3} and len(lg) == 0
    finally:
        r.close()
    assert [i["d"] for i in receiver.items("/ingest/s")] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]


def test_a_request_dropped_unread_is_sent_again_once(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    r = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    try:
        with Logger(cache_path, remote=r) as lg:
            lg.add_stream("s", {"type": "number"})
            lg.insert_many("s", [1.0, 2.0])
            receiver.drop_before(1)
            assert isinstance(lg.sync().exception, AmbiguousRemoteError)
            assert lg.sync().sent == {"s": 2}
    finally:
        r.close()
    assert [i["d"] for i in receiver.items("/ingest/s")] == [1.0, 2.0]


def test_connection_refused_is_transient(receiver: HTTPReceiver, remote: HTTPRemote) -> None:
    receiver.stop()
    with pytest.raises(TransientRemoteError, match="connection failed"):
        remote.push("s", batch(1.0))


def test_no_answer_in_time_is_ambiguous_for_a_push_only() -> None:
    """A server that takes the connection and never answers: a read timeout after sending."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        r = HTTPRemote(url + "/x", ping_url=url + "/ping", timeout=0.2)
        try:
            with pytest.raises(AmbiguousRemoteError, match=r"no answer within 0\.2 s"):
                r.push("s", batch(1.0))
            with pytest.raises(TransientRemoteError) as info:
                r.ping()  # a read: nothing to be ambiguous about
            assert type(info.value) is TransientRemoteError
        finally:
            r.close()


def test_headers_are_sent_and_never_shown(receiver: HTTPReceiver) -> None:
    receiver.auth = "Bearer HEADER-SECRET"
    good = HTTPRemote(receiver.url + "/in", headers={"Authorization": "Bearer HEADER-SECRET"})
    bad = HTTPRemote(receiver.url + "/in", headers={"Authorization": "Bearer OTHER-SECRET"})
    try:
        good.push("s", batch(1.0))
        assert receiver.requests[-1].headers["authorization"] == "Bearer HEADER-SECRET"
        with pytest.raises(AuthError) as info:
            bad.push("s", batch(1.0))
        assert info.value.status == 401
        for text in (str(info.value), repr(good), repr(bad)):
            assert "SECRET" not in text
    finally:
        good.close()
        bad.close()
    assert len(receiver.items("/in")) == 1


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("ftp://h/x", {}, "http:// or https://"),
        ("/relative", {}, "http:// or https://"),
        ("http://user:pw@h/x", {}, "not in the url"),
        ("http://h/x", {"ping_url": "h/ping"}, "ping_url"),
        ("http://h/x", {"timeout": 0}, "timeout"),
        ("http://h/SECRET/x", {"secrets": ["SECRET"], "timeout": -1}, "timeout"),
    ],
)
def test_configuration_errors(url: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        HTTPRemote(url, **kwargs)
    assert "SECRET" not in str(info.value) and "pw" not in str(info.value)


# ----------------------------------------------------------------------------- ThingsBoard


def test_thingsboard_body_and_url(receiver: HTTPReceiver) -> None:
    tb = thingsboard(receiver.url + "/", TOKEN, timeout=5)
    try:
        assert tb.ping() == receiver.url + "/api/v1/***/telemetry"
        assert receiver.requests[-1].path == f"/api/v1/{TOKEN}/attributes"  # the token checked
        tb.push("temperature", batch(21.5, -3, "warm", [1, 2], None))
        tb.push("env", [(1, T0 + 0.0006, json.dumps({"humidity": 40, "co2": {"ppm": 400}}))])
    finally:
        tb.close()
    assert receiver.requests[-1].path == f"/api/v1/{TOKEN}/telemetry"
    assert receiver.telemetry(TOKEN) == [
        {"ts": 1_700_000_000_000, "values": {"temperature": 21.5}},
        {"ts": 1_700_000_000_500, "values": {"temperature": -3}},
        {"ts": 1_700_000_001_000, "values": {"temperature": "warm"}},
        {"ts": 1_700_000_001_500, "values": {"temperature": [1, 2]}},
        {"ts": 1_700_000_002_000, "values": {"temperature": None}},
        # an object's keys are the telemetry keys, as they are; ts in whole milliseconds
        {"ts": 1_700_000_000_001, "values": {"humidity": 40, "co2": {"ppm": 400}}},
    ]


def test_thingsboard_token_is_a_secret(receiver: HTTPReceiver) -> None:
    good = thingsboard(receiver.url, TOKEN, timeout=5)
    wrong = thingsboard(receiver.url, "WRONG-TB-TOKEN/x y", timeout=5)
    try:
        with pytest.raises(AuthError) as info:
            wrong.ping()
        with pytest.raises(AuthError) as pushed:
            wrong.push("s", batch(1.0))
        receiver.stop()
        with pytest.raises(TransientRemoteError) as refused:
            good.push("s", batch(1.0))
        texts = [str(info.value), str(pushed.value), str(refused.value), repr(good), repr(wrong)]
        for text in texts:
            assert TOKEN not in text and "WRONG-TB-TOKEN" not in text and "WRONG-TB" not in text
        assert "/api/v1/***/telemetry" in str(refused.value)
    finally:
        good.close()
        wrong.close()
    with pytest.raises(ConfigurationError, match="token"):
        thingsboard(receiver.url, "")


# ----------------------------------------------------------------------------- status mapping

URL = "http://sink.test/ingest"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (202, None),
        (204, None),
        (301, RemoteError),
        (302, RemoteError),
        (307, RemoteError),
        (400, RejectedError),
        (409, RejectedError),
        (413, RejectedError),
        (415, RejectedError),
        (422, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (404, RemoteError),
        (408, TransientRemoteError),
        (429, TransientRemoteError),
        (500, TransientRemoteError),
        (502, TransientRemoteError),
        (503, TransientRemoteError),
        (504, TransientRemoteError),
        (599, TransientRemoteError),
    ],
)
@responses.activate
def test_push_status_mapping(status: int, expected: type | None) -> None:
    headers = {"Location": "http://elsewhere.test/SECRET"} if 300 <= status < 400 else {}
    body = "" if status == 204 else "the answer"  # a 204 has no content
    responses.post(URL, body=body, status=status, headers=headers)
    r = HTTPRemote(URL, secrets=["SECRET"], timeout=5)
    try:
        if expected is None:
            r.push("s", batch(1.0))
            return
        with pytest.raises(expected) as info:
            r.push("s", batch(1.0))
        assert type(info.value) is expected
        assert info.value.status == status and info.value.body == "the answer"
        assert len(responses.calls) == 1  # no redirect followed, nothing retried
        if 300 <= status < 400:
            assert "redirected to http://elsewhere.test/***" in str(info.value)
    finally:
        r.close()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("soon", None),
        (None, None),
        ("Fri, 01 Jan 2100 00:00:00 GMT", "future"),
    ],
)
@responses.activate
def test_retry_after(header: str | None, seconds: Any) -> None:
    responses.post(URL, status=503, headers={"Retry-After": header} if header else {})
    r = HTTPRemote(URL, timeout=5)
    try:
        with pytest.raises(TransientRemoteError) as info:
            r.push("s", batch(1.0))
    finally:
        r.close()
    if seconds == "future":
        assert info.value.retry_after is not None and info.value.retry_after > 3600
    else:
        assert info.value.retry_after == seconds


@pytest.mark.parametrize(("status", "expected"), [(400, RemoteError), (401, AuthError)])
@responses.activate
def test_ping_status_mapping(status: int, expected: type) -> None:
    """Only a push refuses data: a 4xx on ping is not a RejectedError."""
    responses.get(URL + "/ping", status=status)
    r = HTTPRemote(URL, ping_url=URL + "/ping", timeout=5)
    try:
        with pytest.raises(expected) as info:
            r.ping()
        assert type(info.value) is expected
    finally:
        r.close()


def test_thingsboard_token_is_in_no_urllib3_debug_line(
    receiver: HTTPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")
    remote = thingsboard(receiver.url, TOKEN, timeout=5)
    try:
        remote.ping()
        remote.push("temperature", [(1, T0, "21.5")])
    finally:
        remote.close()
    assert receiver.telemetry(TOKEN) == [{"ts": T0 * 1000, "values": {"temperature": 21.5}}]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/api/v1/***/telemetry" in line for line in lines), lines
    assert not any(TOKEN in line for line in lines), lines
    assert TOKEN not in caplog.text
    # Only the token is hidden: another remote's lines stay as they are.
    other = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    try:
        other.push("plain", [(1, T0, "1")])
    finally:
        other.close()
    assert any("/ingest/plain" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("secret", ["S3cr3t\n", "S3cr3t☃é"])
@pytest.mark.parametrize("where", ["influx token", "influx password", "http header"])
def test_a_secret_http_cannot_send_is_refused_when_built(
    tmp_path: Any, where: str, secret: str
) -> None:
    """A credential with a line break (a token read from a file, its newline kept) or a
    character outside latin-1 cannot go in an HTTP header. It was taken; then every pass
    failed, and its error (in ``sync()``'s report, ``status().last_error``, the log) showed
    the whole token ("Invalid ... in header value: 'Token S3cr3t\\n'") or a character of it
    and its position (UnicodeEncodeError). Now refused when built, the secret not shown."""
    from connectorsync import InfluxDBRemote

    builds = {
        "influx token": lambda: InfluxDBRemote("http://127.0.0.1:9", database="d", token=secret),
        "influx password": lambda: InfluxDBRemote(
            "http://127.0.0.1:9", database="d", username="u", password=secret
        ),
        "http header": lambda: HTTPRemote(
            "http://127.0.0.1:9/in", headers={"Authorization": f"Bearer {secret}"}
        ),
    }
    with pytest.raises(ConfigurationError) as refused:
        builds[where]()
    message = str(refused.value)
    assert "S3cr3t" not in message and "☃" not in message, message
    assert ("line break" if "\n" in secret else "latin-1") in message, message
