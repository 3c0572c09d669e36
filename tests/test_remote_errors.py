"""How ConnectorDBRemote maps HTTP statuses and network failures onto the error tree.

``responses`` is used here, and only here: for the mapping of status codes. Everything else
talks to a real loopback server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import requests
import responses

from connectorsync import (
    AmbiguousRemoteError,
    AuthError,
    ConnectorDBRemote,
    InfluxDBRemote,
    Logger,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from connectorsync.remotes import short_reason
from connectorsync.remotes.http import HTTPRemote
from connectorsync.testing.receiver import HTTPReceiver

URL = "http://connectordb.test"
DATA = f"{URL}/api/v1/crud/u/d/s/data"
STREAM = f"{URL}/api/v1/crud/u/d/s"
BATCH = [(1, 1.7e9, "1.5"), (2, 1.7e9 + 1, "2.5")]


def error(status: int, msg: str) -> dict:
    return {"code": status, "msg": msg, "ref": "0000"}


@pytest.fixture
def remote():
    remote = ConnectorDBRemote(URL, "SECRETKEY", timeout=5)
    yield remote
    remote.close()


@pytest.mark.parametrize(
    ("status", "msg", "expected"),
    [
        (401, "Invalid API key", AuthError),
        (403, "At least one datapoint did not conform to the stream's schema", RejectedError),
        (403, "Timestamps are not ordered!", RejectedError),
        (403, "Greater timestamp already exists for the stream. Insert Failed.", RejectedError),
        (403, "Permission denied", AuthError),
        (403, "Stream u/d/s does not exist", RemoteError),
        (400, "Could not parse datapoints", RejectedError),
        (413, "Request too large", RejectedError),
        (408, "Request timeout", TransientRemoteError),
        (429, "Slow down", TransientRemoteError),
        (500, "Internal error", TransientRemoteError),
        (502, "Bad gateway", TransientRemoteError),
        (503, "Unavailable", TransientRemoteError),
        (504, "Gateway timeout", TransientRemoteError),
        (404, "Not found", RemoteError),
    ],
)
@responses.activate
def test_push_status_mapping(remote, status: int, msg: str, expected: type) -> None:
    responses.post(DATA, json=error(status, msg), status=status)
    with pytest.raises(expected) as info:
        remote.push("u/d/s", BATCH)
    assert type(info.value) is expected
    assert info.value.status == status
    assert info.value.body == msg
    assert msg in str(info.value)
    assert "SECRETKEY" not in str(info.value)


@responses.activate
def test_push_sends_the_batch_as_json_with_basic_auth(remote) -> None:
    responses.post(DATA, body="ok")
    remote.push("u/d/s", BATCH)
    request = responses.calls[0].request
    assert request.body == b'[{"t":1700000000.0,"d":1.5},{"t":1700000001.0,"d":2.5}]'
    # HTTP Basic auth, user "" and the apikey as password: base64 of ":SECRETKEY".
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b":SECRETKEY").decode()
    remote.push("u/d/s", [])  # an empty batch sends nothing
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        (None, None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
    ],
)
@responses.activate
def test_retry_after_is_read(remote, header, seconds) -> None:
    headers = {"Retry-After": header} if header else {}
    responses.post(DATA, json=error(429, "Slow down"), status=429, headers=headers)
    with pytest.raises(TransientRemoteError) as info:
        remote.push("u/d/s", BATCH)
    assert info.value.retry_after == seconds


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@responses.activate
def test_a_redirect_is_never_an_acknowledgement(remote, status: int) -> None:
    """Followed, a redirected POST comes back a GET whose 200 would delete unstored data."""
    https = DATA.replace("http:", "https:")
    responses.post(DATA, status=status, headers={"Location": https})
    responses.get(https, json=[])
    responses.post(https, body="ok")
    with pytest.raises(RemoteError) as info:
        remote.push("u/d/s", BATCH)
    assert type(info.value) is RemoteError and f"redirected to {https}" in str(info.value)
    assert len(responses.calls) == 1


@responses.activate
def test_lost_answer_to_a_push_is_ambiguous(remote) -> None:
    responses.post(DATA, body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(AmbiguousRemoteError):
        remote.push("u/d/s", BATCH)
    responses.post(DATA, body=requests.exceptions.ConnectionError("Connection aborted."))
    with pytest.raises(AmbiguousRemoteError):
        remote.push("u/d/s", BATCH)


@responses.activate
def test_failure_to_connect_is_transient_even_for_a_push(remote) -> None:
    responses.post(
        DATA,
        body=requests.exceptions.ConnectionError(
            "Failed to establish a new connection: [Errno 111] Connection refused"
        ),
    )
    with pytest.raises(TransientRemoteError):
        remote.push("u/d/s", BATCH)
    responses.post(DATA, body=requests.exceptions.ConnectTimeout("connect timed out"))
    with pytest.raises(TransientRemoteError):
        remote.push("u/d/s", BATCH)


@responses.activate
def test_reads_are_never_ambiguous(remote) -> None:
    responses.get(f"{DATA}?i1=-1&i2=0", body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(TransientRemoteError) as info:
        remote.reconcile("u/d/s")
    assert type(info.value) is TransientRemoteError


@responses.activate
def test_stream_schema_and_reconcile(remote) -> None:
    responses.get(STREAM, json={"name": "s", "schema": '{"type":"number"}'})
    responses.get(f"{DATA}?i1=-1&i2=0", json=[{"t": 1.7e9, "d": 1}])
    assert remote.stream_schema("u/d/s") == {"type": "number"}
    assert remote.reconcile("u/d/s") == 1.7e9
    responses.replace(responses.GET, STREAM, json=error(404, "no such stream"), status=404)
    responses.replace(responses.GET, f"{DATA}?i1=-1&i2=0", json=[])
    assert remote.stream_schema("u/d/s") is None
    assert remote.reconcile("u/d/s") is None


@responses.activate
def test_ensure_stream_creates_only_when_missing(remote) -> None:
    responses.get(STREAM, json=error(404, "no such stream"), status=404)
    responses.post(STREAM, json={"name": "s"})
    remote.ensure_stream("u/d/s", {"type": "number"})
    assert responses.calls[1].request.body == '{"schema": "{\\"type\\": \\"number\\"}"}'
    responses.replace(responses.GET, STREAM, json={"name": "s", "schema": "{}"})
    remote.ensure_stream("u/d/s", {"type": "number"})
    assert [c.request.method for c in responses.calls] == ["GET", "POST", "GET"]


@responses.activate
def test_bare_stream_names_are_relative_to_the_pinged_device(remote) -> None:
    responses.get(f"{URL}/api/v1/?q=this", body="alice/sensor")
    responses.post(f"{URL}/api/v1/crud/alice/sensor/temperature/data", body="ok")
    remote.push("temperature", BATCH)
    assert [c.request.method for c in responses.calls] == ["GET", "POST"]


def test_oversized_batch_is_rejected_before_sending(remote) -> None:
    big = [(i, 1.7e9 + i, '"' + "x" * 1000 + '"') for i in range(9000)]
    with pytest.raises(RejectedError, match="byte limit"):
        remote.push("u/d/s", big)


@responses.activate
def test_https_is_assumed_and_verify_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """What each request is sent with, as requests hands it to its transport."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would replace verify=True
        monkeypatch.delenv(name, raising=False)
    responses.get("https://connectordb.test/api/v1/", body="u/d")
    responses.get("https://c.test/api/v1/", body="u/d")
    remote = ConnectorDBRemote("connectordb.test", "k")
    assert remote.serverurl == "https://connectordb.test"
    remote.ping()
    assert responses.calls[-1].request.url.startswith("https://connectordb.test/")
    assert responses.calls[-1].request.req_kwargs["verify"] is True  # type: ignore[attr-defined]
    remote.close()
    remote = ConnectorDBRemote("https://c.test", "k", verify="/etc/ssl/private-ca.pem")
    remote.ping()
    assert responses.calls[-1].request.req_kwargs["verify"] == "/etc/ssl/private-ca.pem"  # type: ignore[attr-defined]
    remote.close()


# ----------------------------------------------------------------------------- short reasons
# A proxy in front of a remote answers with an HTML page (issue 9, defect 16): the error
# keeps the status and a short single-line reason, not the page.

PROXY_PAGE = (
    b"<!DOCTYPE html>\n<html>\n<head><title>501 Not Implemented</title>\n"
    b"<style>body { font-family: sans-serif; margin: 4em; }</style></head>\n<body>\n"
    b"<h1>Not Implemented</h1>\n<p>The proxy server could not handle the request\n"
    b"<em>POST&nbsp;/write</em>.</p>\n<p>Reason: the method is not implemented here.</p>\n"
    + b"<hr>\n<address>Apache/2.4.57 (Debian) Server at proxy.example Port 80</address>\n" * 4
    + b"</body></html>\n"
)


def assert_short_reason(message: str, status: int = 501) -> None:
    assert "\n" not in message, message
    assert str(status) in message, message
    assert "<" not in message and "font-family" not in message, message
    assert len(message) < 200, message


@pytest.fixture
def proxy() -> Iterator[HTTPReceiver]:
    """A real loopback server answering every path we use with a proxy's HTML 501 page."""
    rcv = HTTPReceiver().start()
    for path in ("/api/v1/", "/ping", "/write", "/ingest/s"):
        rcv.respond(path, 501, PROXY_PAGE, "text/html")
    try:
        yield rcv
    finally:
        rcv.stop()


def test_html_error_page_becomes_a_short_reason_for_every_remote(proxy: HTTPReceiver) -> None:
    remotes = [
        (ConnectorDBRemote(proxy.url, "k", timeout=5), lambda r: r.ping()),
        (InfluxDBRemote(proxy.url, "db", timeout=5), lambda r: r.push("s", BATCH)),
        (HTTPRemote(proxy.url + "/ingest/{stream}", timeout=5), lambda r: r.push("s", BATCH)),
    ]
    for remote, call in remotes:
        with pytest.raises(RemoteError) as caught:  # transient, but for ConnectorDB's 501
            call(remote)
        remote.close()
        assert_short_reason(str(caught.value))
        assert caught.value.status == 501
        assert "Not Implemented" in str(caught.value)
        assert len(caught.value.body) <= 130 and "\n" not in caught.value.body


def test_html_error_page_in_status_and_sync_report(
    proxy: HTTPReceiver, cache_path: str, fast_backoff: None
) -> None:
    remote = HTTPRemote(proxy.url + "/ingest/{stream}", timeout=5)
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream("s", {"type": "number"})
        lg.insert("s", 1.5)
        report = lg.sync()
        assert not report.ok
        assert_short_reason(report.errors["s"])
        last_error = lg.status().last_error
        assert last_error is not None
        assert_short_reason(last_error)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"code": 400, "msg": "Bad\\n  datapoint", "ref": "1"}', "Bad datapoint"),
        ('{"error": "partial write: field type conflict"}', "partial write: field type"),
        ('{"message": "bucket not found"}', "bucket not found"),
        ("plain   text\r\nover lines", "plain text over lines"),
        ("<p>a &amp; b</p>", "a & b"),
        ("x" * 5000, "x" * 100),
        ("", ""),
    ],
)
def test_short_reason_of_a_body(body: str, expected: str) -> None:
    reason = short_reason(body)
    assert expected in reason
    assert "\n" not in reason and len(reason) <= 121
