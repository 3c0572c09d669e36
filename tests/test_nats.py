"""NATSRemote against a real nats-server with JetStream (skipped without one:
``conftest.require_nats``), counted on the server by reading the stream back. The remote
contract (refusals, lost answers, outages) is in ``test_remote_contract.py``; here: message
ids, a lost acknowledgement and a server restart under load counted on the server,
credentials (user/password, token), TLS, max_payload, a full stream, no stream, the
duplicate_window warning, and no leaks after close()."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger, NATSRemote
from connectorsync.errors import (
    AmbiguousRemoteError,
    AuthError,
    ClosedError,
    ConfigurationError,
    TransientRemoteError,
)
from connectorsync.remotes.config import remote_from_config
from connectorsync.testing.nats import NATSFaultProxy, NATSServer

from .conftest import PYTHON, ROOT, child_env, start_nats, wait_for, within

T0 = 1_700_000_000.0
STREAM = "SENSORS"
IDENTITY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NATSServer]:
    """A nats-server with the stream SENSORS on ``sensors.>``."""
    made = start_nats(tmp_path / "nats")
    try:
        made.add_stream(STREAM, ["sensors.>"])
        yield made
    finally:
        made.stop()


def logger(path: str, remote: NATSRemote, **options: Any) -> Logger:
    return Logger(
        path,
        remote=remote,
        on_create=lambda lg: (lg.add_stream("temperature", {}), lg.add_stream("gps", {})),
        **options,
    )


def stored(server: NATSServer, subject: str | None = None) -> list[dict[str, Any]]:
    """The messages the stream holds (``subject``'s only), as JSON."""
    found = server.stream_messages(STREAM)
    return [m.json() for m in found if subject is None or m.subject == subject]


def test_each_datapoint_is_one_message_named_by_cache_and_id(
    nats_server: NATSServer, cache_path: str
) -> None:
    remote = NATSRemote(nats_server.url, timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": 20 + i / 4} for i in range(50)])
            lg.insert("gps", {"lat": 1.5}, T0)
            assert lg.sync().sent == {"temperature": 50, "gps": 1}
            identity = lg.identity
        messages = nats_server.stream_messages(STREAM)
        temps = [m for m in messages if m.subject == "sensors.temperature"]
        assert [(m.json()["t"], m.json()["d"]) for m in temps] == [
            (T0 + i, 20 + i / 4) for i in range(50)
        ]
        for m in messages:
            body = m.json()
            assert m.msg_id == f"{identity}:{body['stream']}:{body['id']}:{body['t']!r}"
        assert [m.json() for m in messages if m.subject == "sensors.gps"] == [
            {"stream": "gps", "id": temps[-1].json()["id"] + 1, "t": T0, "d": {"lat": 1.5}}
        ]
        assert remote.bytes_sent() == sum(len(m.data) for m in messages)
        assert remote.ping() == f"anonymous@127.0.0.1:{nats_server.port}"
    finally:
        remote.close()


def test_two_caches_never_share_a_message_id(nats_server: NATSServer, tmp_path: Path) -> None:
    """The same datapoint id in two caches: two messages, neither dropped as a duplicate."""
    for name in ("a.db", "b.db"):
        remote = NATSRemote(nats_server.url, timeout=5)
        with logger(str(tmp_path / name), remote) as lg:
            lg.insert("temperature", 1.0, T0)
            assert lg.sync().sent == {"temperature": 1}
        remote.close()
    ids = [m.msg_id for m in nats_server.stream_messages(STREAM)]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_an_id_the_cache_gives_again_after_a_rollback_is_not_a_duplicate(
    nats_server: NATSServer, tmp_path: Path
) -> None:
    """With ``durability="normal"`` a power cut can take back an insert the remote already
    has (its WAL frames never reached the card); the next insert then gets the same id. The
    file copied back from before the insert stands for that rollback: the new reading, with
    the reused id, is a message of its own, not a duplicate of the delivered one."""
    path = tmp_path / "cache.db"
    remote = NATSRemote(nats_server.url, timeout=5)
    try:
        with logger(str(path), remote, durability="normal"):
            pass
        before = tmp_path / "before.db"
        shutil.copyfile(path, before)
        with logger(str(path), remote, durability="normal") as lg:
            lg.insert("temperature", 1.0, T0)
            assert lg.sync().sent == {"temperature": 1}
        for leftover in (f"{path}-wal", f"{path}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        shutil.copyfile(before, path)  # the power cut's rollback
        with logger(str(path), remote, durability="normal") as lg:
            lg.insert("temperature", 2.0, T0 + 1)
            assert lg.sync().sent == {"temperature": 1}
    finally:
        remote.close()
    bodies = [m.json() for m in nats_server.stream_messages(STREAM)]
    assert [b["id"] for b in bodies] == [bodies[0]["id"]] * 2  # the id came back
    assert [b["d"] for b in bodies] == [1.0, 2.0]


def test_a_lost_ack_then_a_resend_stores_nothing_twice(
    nats_server: NATSServer, cache_path: str
) -> None:
    proxy = NATSFaultProxy(nats_server.port)
    remote = NATSRemote(proxy.url, timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(100)])
            remote.ping()  # connected: the next acknowledgement is the first publish's
            proxy.lose_next_answers(1)
            report = lg.sync()
            assert isinstance(report.exception, AmbiguousRemoteError), report.errors
            assert len(lg) == 100 and nats_server.count(STREAM) > 0  # stored, unheard
            assert lg.sync().sent == {"temperature": 100}
            assert len(lg) == 0
        assert sorted(m["d"] for m in stored(nats_server)) == list(range(100))
    finally:
        remote.close()
        proxy.close()


def test_a_server_restart_in_the_middle_of_a_sync_loses_and_duplicates_nothing(
    nats_server: NATSServer, cache_path: str, fast_backoff: None
) -> None:
    """Restarted while the syncer drains 20,000 datapoints: the stream holds each exactly
    once (counted on the server)."""
    count = 20_000
    remote = NATSRemote(nats_server.url, timeout=5)
    lg = logger(cache_path, remote, batch_size=2000, sync_jitter=0)
    try:
        lg.insert_many("temperature", [{"t": T0 + i / 8, "d": i} for i in range(count)])
        lg.start()
        wait_for(lambda: nats_server.count(STREAM) > 2000, what="the sync to be under way")
        nats_server.restart()
        wait_for(lambda: len(lg) == 0, timeout=60, what="delivery after the restart")
    finally:
        lg.close()
        remote.close()
    assert nats_server.count(STREAM) == count
    assert sorted(m["d"] for m in stored(nats_server)) == list(range(count))


@pytest.mark.timeout(120)  # without the race below, the stopped server's pass waits 600 s
def test_a_server_gone_between_passes_is_seen_at_once_not_after_the_timeout(
    nats_server: NATSServer, cache_path: str
) -> None:
    """The server stops while the remote's connection stands idle between passes: the next
    pass finds the connection ended (its PING raced with the end) and fails as transient,
    instead of waiting ``timeout`` for a PONG that never comes; back, everything goes."""
    remote = NATSRemote(nats_server.url, timeout=600)
    try:
        with logger(cache_path, remote, sync_jitter=0) as lg:
            lg.insert("temperature", 1.0)
            assert lg.sync().exception is None
            nats_server.stop()
            lg.insert("temperature", 2.0)
            report = lg.sync()
            assert isinstance(report.exception, TransientRemoteError), report
            assert len(lg) == 1
            nats_server.start()
            assert lg.sync().exception is None
            assert len(lg) == 0
    finally:
        remote.close()
    assert sorted(m["d"] for m in stored(nats_server)) == [1.0, 2.0]


def test_refused_credentials_pause_syncing(tmp_path: Path, cache_path: str) -> None:
    server = start_nats(tmp_path / "nats", users={"device": "right"})
    remote = NATSRemote(server.url, user="device", password="WRONG-PW-123", timeout=5)
    try:
        server.add_stream(STREAM, ["sensors.>"])
        with logger(cache_path, remote, sync_jitter=0) as lg:
            lg.insert("temperature", 1.0)
            report = lg.sync()
            assert isinstance(report.exception, AuthError)
            assert "WRONG-PW-123" not in str(report.exception)
            lg.start()
            wait_for(lambda: lg.status().paused, what="syncing to pause")
            assert len(lg) == 1 and lg.deadletters() == []
            assert "WRONG-PW-123" not in repr(lg.status()) + repr(remote)
        assert server.count(STREAM) == 0
    finally:
        remote.close()
        server.stop()


@pytest.mark.parametrize("how", ["user", "token"])
def test_user_password_and_token_log_in(tmp_path: Path, how: str) -> None:
    secret = "S3CRET-value"
    if how == "user":
        server = start_nats(tmp_path / "nats", users={"device": secret})
        good = NATSRemote(server.url, user="device", password=secret, timeout=5)
        bad = NATSRemote(server.url, user="device", password="nope", timeout=5)
    else:
        server = start_nats(tmp_path / "nats", token=secret)
        good = NATSRemote(server.url, token=secret, timeout=5)
        bad = NATSRemote(server.url, token="nope", timeout=5)
    try:
        server.add_stream(STREAM, ["sensors.>"])
        for remote in (good, bad):
            remote.bind_cache(IDENTITY)
        good.push("temperature", [(1, T0, "1.5")])
        assert server.count(STREAM) == 1
        assert good.ping() == ("device" if how == "user" else "token") + f"@127.0.0.1:{server.port}"
        with pytest.raises(AuthError, match="credentials refused"):
            bad.push("temperature", [(2, T0 + 1, "2")])
        assert server.count(STREAM) == 1
        for remote in (good, bad):
            assert secret not in repr(remote)
    finally:
        good.close()
        bad.close()
        server.stop()


def self_signed(directory: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_verifies_the_server_by_default(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = start_nats(tmp_path / "nats", tls=(cert, key))
    remotes = [NATSRemote(server.url, timeout=5), NATSRemote(server.url, ca=cert, timeout=5)]
    plain = NATSRemote(server.url.replace("tls://", "nats://"), timeout=5)  # server asks TLS
    try:
        server.add_stream(STREAM, ["sensors.>"])
        assert server.url.startswith("tls://")
        for remote in (*remotes, plain):
            remote.bind_cache(IDENTITY)
        for unverified in (remotes[0], plain):
            with pytest.raises(TransientRemoteError, match="certificate verification failed"):
                unverified.push("temperature", [(1, T0, "1")])
        remotes[1].push("temperature", [(1, T0, "1")])
        assert server.count(STREAM) == 1
    finally:
        for remote in (*remotes, plain):
            remote.close()
        server.stop()


def test_a_message_over_max_payload_is_a_dead_letter(tmp_path: Path, cache_path: str) -> None:
    server = start_nats(tmp_path / "nats", max_payload=1024)
    remote = NATSRemote(server.url, timeout=5)
    try:
        server.add_stream(STREAM, ["sensors.>"])
        with logger(cache_path, remote) as lg:
            values: list[Any] = [float(i) for i in range(10)]
            values[4] = "x" * 2000
            lg.insert_many("temperature", [{"t": T0 + i, "d": v} for i, v in enumerate(values)])
            report = lg.sync()
            assert report.sent == {"temperature": 9} and report.deadlettered == {"temperature": 1}
            (letter,) = lg.deadletters()
            assert letter.d == "x" * 2000 and "max_payload of 1024 bytes" in letter.reason
            assert len(lg) == 0
        assert [m["d"] for m in stored(server)] == [v for i, v in enumerate(values) if i != 4]
    finally:
        remote.close()
        server.stop()


def test_a_full_stream_that_discards_new_holds_the_data(
    nats_server: NATSServer, cache_path: str
) -> None:
    nats_server.add_stream("SMALL", ["small.>"], max_msgs=5)
    remote = NATSRemote(nats_server.url, subject="small.{stream}", timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(8)])
            report = lg.sync()
            assert isinstance(report.exception, TransientRemoteError)
            assert "is full and discards new messages" in str(report.exception)
            assert "maximum messages exceeded" in str(report.exception)
            assert len(lg) == 8 and lg.deadletters() == []
            assert nats_server.count("SMALL") == 5
            nats_server.set_limits("SMALL", max_msgs=100)  # room again
            assert lg.sync().sent == {"temperature": 8}
        found = [m.json()["d"] for m in nats_server.stream_messages("SMALL")]
        assert found == list(range(8))  # each once: the first five dropped as duplicates
    finally:
        remote.close()


def test_no_stream_for_the_subject_is_a_clear_error(
    nats_server: NATSServer, cache_path: str
) -> None:
    remote = NATSRemote(nats_server.url, subject="elsewhere.{stream}", timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert("temperature", 1.0, T0)
            report = lg.sync()
            error = report.exception
            assert isinstance(error, TransientRemoteError)  # kept, retried with backoff
            assert "no JetStream stream holds subject 'elsewhere.temperature'" in str(error)
            assert "nats stream add" in str(error) and "create_stream=" in str(error)
            assert len(lg) == 1
            nats_server.add_stream("ELSEWHERE", ["elsewhere.>"])  # the operator makes it
            assert lg.sync().sent == {"temperature": 1}
        assert nats_server.count("ELSEWHERE") == 1
    finally:
        remote.close()


def test_create_stream_makes_one_when_asked(nats_server: NATSServer) -> None:
    remote = NATSRemote(nats_server.url, subject="made.{stream}", create_stream="MADE", timeout=5)
    try:
        remote.bind_cache(IDENTITY)
        assert remote.ensure_stream("temperature", {}) is None
        remote.push("temperature", [(1, T0, "1")])
        assert nats_server.count("MADE") == 1
    finally:
        remote.close()


def test_a_resend_outside_the_duplicate_window_is_said(
    nats_server: NATSServer, cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch sent without an answer, and sent again after the stream's duplicate_window:
    a WARNING with the stream, the age and the window, a counter, and a note in status."""
    nats_server.add_stream("BRIEF", ["brief.>"], duplicate_window=0.5)
    proxy = NATSFaultProxy(nats_server.port)
    remote = NATSRemote(proxy.url, subject="brief.{stream}", timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
            remote.ping()
            proxy.lose_next_answers(1)
            assert isinstance(lg.sync().exception, AmbiguousRemoteError)
            assert remote.late_resends == 0
            threading.Event().wait(1.0)  # past the window (a wait, not a timed assert)
            with caplog.at_level(logging.WARNING, logger="connectorsync.remotes.nats"):
                assert lg.sync().sent == {"temperature": 10}
            assert remote.late_resends > 0
            (record,) = [r for r in caplog.records if r.name == "connectorsync.remotes.nats"]
            assert "later than the duplicate_window" in record.getMessage()
            assert "'temperature'" in record.getMessage() and "0.5 s" in record.getMessage()
            assert "may be stored twice" in repr(remote)
            lg.sync()  # status shows the remote as the last pass began
            assert "may be stored twice" in (lg.status().remote or "")
    finally:
        remote.close()
        proxy.close()


def test_a_resend_within_the_window_says_nothing(nats_server: NATSServer, cache_path: str) -> None:
    proxy = NATSFaultProxy(nats_server.port)
    remote = NATSRemote(proxy.url, timeout=5)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
            remote.ping()
            proxy.lose_next_answers(1)
            assert isinstance(lg.sync().exception, AmbiguousRemoteError)
            assert lg.sync().sent == {"temperature": 10}
            assert remote.late_resends == 0 and "may be stored twice" not in repr(remote)
    finally:
        remote.close()
        proxy.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done())


def test_close_leaves_no_thread_socket_or_task(nats_server: NATSServer) -> None:
    gc.collect()
    threads, fds, tasks = threading.active_count(), open_fds(), live_tasks()
    # localhost: a name, resolved in the loop's executor (a thread) unlike an address
    remote = NATSRemote(f"nats://localhost:{nats_server.port}", timeout=5)
    remote.bind_cache(IDENTITY)
    remote.push("temperature", [(i, T0 + i, str(i)) for i in range(1, 500)])
    assert live_tasks() > tasks  # nats-py's reader, flusher, subscription
    remote.close()
    remote.close()  # twice is harmless
    gc.collect()
    assert threading.active_count() == threads
    assert open_fds() == fds
    assert live_tasks() == tasks
    with pytest.raises(ClosedError):
        remote.push("temperature", [(600, T0, "1")])


def test_close_from_another_thread_ends_a_push(nats_server: NATSServer) -> None:
    """A push waiting for acknowledgements that never come ends when close() is called."""
    proxy = NATSFaultProxy(nats_server.port)
    silent = NATSRemote(proxy.url, timeout=600)
    try:
        silent.bind_cache(IDENTITY)
        silent.ping()
        nats_server.stop()  # nobody acknowledges; the proxy holds the client's connection
        errors: list[BaseException] = []

        def push() -> None:
            try:
                silent.push("temperature", [(1, T0, "1")])
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=push)
        thread.start()
        threading.Event().wait(0.3)
        silent.close()
        thread.join(10)
        assert not thread.is_alive()
        assert errors and isinstance(errors[0], (AmbiguousRemoteError, TransientRemoteError))
    finally:
        silent.close()
        proxy.close()


def test_without_a_cache_identity_push_says_what_to_do(nats_server: NATSServer) -> None:
    remote = NATSRemote(nats_server.url, timeout=5)
    try:
        with pytest.raises(ConfigurationError, match=r"no cache identity.*identity="):
            remote.push("temperature", [(1, T0, "1")])
        remote.bind_cache(IDENTITY)
        remote.bind_cache(IDENTITY)  # the same again: nothing
        with pytest.raises(ConfigurationError, match=r"bound to the cache .* already"):
            remote.bind_cache("f" * 32)
    finally:
        remote.close()


def test_one_remote_cannot_serve_two_caches(nats_server: NATSServer, tmp_path: Path) -> None:
    remote = NATSRemote(nats_server.url, timeout=5)
    try:
        logger(str(tmp_path / "a.db"), remote).close()
        with pytest.raises(ConfigurationError, match="one remote object delivers one cache"):
            logger(str(tmp_path / "b.db"), remote)
    finally:
        remote.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://127.0.0.1"}, "url must be nats://host"),
        ({"url": "nats://u:SECRETPW@127.0.0.1"}, "url must be|put credentials"),
        ({"subject": "a.*.{stream}"}, "subject must be"),
        ({"subject": "a..b"}, "subject must be"),
        ({"window": 0}, "window must be 1..65535"),
        ({"timeout": -1}, "timeout must be"),
        ({"user": "u"}, "user= and password= go together"),
        ({"user": "u", "password": "p", "token": "t"}, "one of user=, token=, credentials="),
        ({"credentials": "/nonexistent.creds"}, "credentials must be a .creds file"),
        ({"ca": "/nonexistent.pem"}, "ca must be the path of a CA file"),
        ({"create_stream": "no spaces"}, "create_stream must be a stream name"),
        ({"identity": "a:b"}, "identity must be"),
    ],
)
def test_bad_arguments_are_refused_when_built(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"url": "nats://127.0.0.1", **kwargs}
    with pytest.raises(ConfigurationError, match=message) as raised:
        NATSRemote(**arguments)
    assert "SECRETPW" not in str(raised.value)


def test_described_as_data_without_showing_credentials() -> None:
    remote = NATSRemote(
        "tls://h.example", subject="x.{stream}", user="u", password="PW-1", window=8, timeout=3
    )
    config = remote.to_config()
    assert json.loads(json.dumps(config)) == config and config["password"] == "PW-1"
    again = remote_from_config(config)
    assert isinstance(again, NATSRemote) and again.to_config() == config
    assert repr(again) == repr(remote) == "NATSRemote('tls://h.example:4222', subject='x.{stream}')"
    assert "PW-1" not in repr(remote)
    remote.close()
    again.close()


def test_a_subject_the_user_may_not_publish_to_pauses_syncing(
    tmp_path: Path, cache_path: str
) -> None:
    """The server refuses this user the subject ("Permissions Violation", and no answer to
    the publish): AuthError at once, not a wait for an acknowledgement that never comes."""
    users = {"admin": "admin-pw", "device": "device-pw"}
    allowed = {"device": {"publish": ["sensors.temperature", "$JS.API.>"]}}
    server = start_nats(tmp_path / "nats", users=users, permissions=allowed)
    remote = NATSRemote(server.url, user="device", password="device-pw", timeout=30)
    try:
        server.add_stream(STREAM, ["sensors.>"])
        with logger(cache_path, remote) as lg:
            lg.insert("temperature", 1.0, T0)
            lg.insert("gps", 2.0, T0)
            report = within(20, lg.sync)
            assert report.sent == {"temperature": 1}
            assert isinstance(report.exception, AuthError)
            assert "does not permit this user to publish to 'sensors.gps'" in report.errors["gps"]
            assert len(lg) == 1 and lg.deadletters() == []
        assert [m["stream"] for m in stored(server)] == ["temperature"]
    finally:
        remote.close()
        server.stop()


def test_connectorsync_sync_builds_the_remote_again_with_the_same_ids(
    tmp_path: Path, cache_path: str
) -> None:
    """The cache records the remote (credentials in the owner-only file only); the command
    builds it again, binds it to the same cache identity, and delivers: resent or not, the
    ids are the cache's."""
    server = start_nats(tmp_path / "nats", users={"device": "PW-S3CRET-9"})
    remote = NATSRemote(server.url, user="device", password="PW-S3CRET-9", timeout=5)
    try:
        server.add_stream(STREAM, ["sensors.>"])
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(5)])
            identity = lg.identity
        done = subprocess.run(
            [PYTHON, "-m", "connectorsync", "sync", cache_path],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PW-S3CRET-9" not in done.stdout + done.stderr
        messages = server.stream_messages(STREAM)
        assert [m.json()["d"] for m in messages] == list(range(5))
        assert {m.msg_id.split(":")[0] for m in messages if m.msg_id} == {identity}
    finally:
        remote.close()
        server.stop()


def test_called_from_inside_an_asyncio_loop_it_says_what_to_do(nats_server: NATSServer) -> None:
    remote = NATSRemote(nats_server.url, timeout=5, identity=IDENTITY)

    async def inside() -> None:
        remote.push("temperature", [(1, T0, "1")])

    try:
        with pytest.raises(ConfigurationError, match="without a running asyncio event loop"):
            asyncio.run(inside())
        remote.push("temperature", [(1, T0, "1")])  # from a plain thread: fine
        assert nats_server.count(STREAM) == 1
    finally:
        remote.close()
