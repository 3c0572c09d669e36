"""The syncer's life (issue 9): one syncer per cache file whatever path names it, callbacks
that call back into the Logger, credentials fixed mid-way, closing and stopping while a
request hangs, and never two background threads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectorsync import AuthError, ClosedError, ConnectorSyncError, Logger
from connectorsync.testing import ConnectorDBServer

from .conftest import syncer_threads, syncing_child, wait_for, within

STREAM = "alice/sensor/temperature"
#: A bound on a hang, not a timing: the calls below return in well under a second.
PROMPT = 5.0

pytestmark = pytest.mark.timeout(60)  # a hang fails the test instead of blocking the run


def values(server: ConnectorDBServer) -> list[Any]:
    """The values stored in the stream; [] while it does not exist."""
    try:
        return [p["d"] for p in server.datapoints(STREAM)]
    except KeyError:
        return []


def opened(path: str | Path, server: ConnectorDBServer, **kwargs: Any) -> Logger:
    """A Logger on ``server`` with the number stream ``temperature``, whose background
    syncer makes its first pass at once after ``start()`` (``sync_jitter=0``)."""
    kwargs.setdefault("sync_jitter", 0)

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    return Logger(str(path), on_create=init, **kwargs)


def own_cache(tmp_path: Path) -> str:
    """A cache file with a name of its own: its syncer thread is told apart from any other
    test's still winding down (the thread is named after the file name)."""
    return str(tmp_path / f"{uuid.uuid4().hex[:12]}.db")


def can_sync_again(path: str, server: ConnectorDBServer) -> None:
    """Another Logger on the same file syncs (no lock was left held), and nothing is lost."""
    with Logger(path) as again:
        again.insert("temperature", 99.0)
        report = within(PROMPT, again.sync, what="a sync by the next Logger")
        assert report.ok, report.errors
        assert len(again) == 0
    assert values(server)[-1] == 99.0


# ----------------------------------------------------------------------------- one syncer


def test_a_symlink_to_the_cache_gives_no_second_syncer(
    tmp_path: Path, cache_path: str, server: ConnectorDBServer
) -> None:
    """The sync lock belongs to the file, not to the path string: a process syncing through
    a symlink keeps a Logger on the real path from syncing too (duplicates, false dead
    letters)."""
    opened(cache_path, server).close()
    link = tmp_path / "link.db"
    link.symlink_to(cache_path)
    with syncing_child(str(link)) as child, Logger(cache_path) as lg:
        lg.insert("temperature", 1.0)
        report = lg.sync()
        assert "another process syncs" in report.errors.get("*", ""), report
        assert f"pid {child.pid}" in report.errors["*"]
        assert len(lg) == 1 and values(server) == []


def test_a_symlink_in_the_same_process_gives_no_second_syncer(
    tmp_path: Path, cache_path: str, server: ConnectorDBServer
) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(cache_path)
    with opened(cache_path, server) as first:
        first.syncperiod = 3600
        first.start()
        wait_for(lambda: first.lastsynctime > 0, what="the first pass")
        with Logger(str(link)) as second:
            second.insert("temperature", 1.0)
            report = second.sync()
            said = report.errors.get("*", "")
            assert "another Logger of this process syncs" in said, report  # not "process"
            assert len(second) == 1 and values(server) == []
        first.stop()
    with Logger(str(link)) as second:
        assert second.sync().sent == {"temperature": 1}


# ----------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("background", [False, True], ids=["manual", "background"])
@pytest.mark.parametrize("callback", ["onsync", "onsyncfail"])
def test_sync_from_a_callback_raises_a_clear_error(
    tmp_path: Path, server: ConnectorDBServer, callback: str, background: bool, fast_backoff: None
) -> None:
    """No deadlock: the inner sync() is refused with a ConnectorSyncError saying why, the
    outer pass ends, close() returns and the next Logger on the file can sync."""
    path = own_cache(tmp_path)
    seen: list[BaseException] = []

    def sync_again(*_: object) -> None:
        try:
            lg.sync()
        except BaseException as exc:  # what the callback saw is the point of the test
            seen.append(exc)

    lg = opened(path, server, **{callback: sync_again})
    lg.syncperiod = 3600
    lg.insert("temperature", 1.0)
    if callback == "onsyncfail":
        server.fail_next(1, 503)  # the pass fails: onsyncfail runs
    if background:
        lg.start()
        wait_for(lambda: seen, timeout=PROMPT, what="the callback")
    else:
        within(PROMPT, lg.sync, what="sync() whose callback calls sync()")
    within(PROMPT, lg.close, what="close()")
    assert isinstance(seen[0], ConnectorSyncError), repr(seen[0])
    assert callback in str(seen[0]) and "sync()" in str(seen[0])
    wait_for(lambda: not syncer_threads(path), timeout=PROMPT, what="the syncer thread to end")
    can_sync_again(path, server)
    assert values(server).count(1.0) == 1


@pytest.mark.parametrize("background", [False, True], ids=["manual", "background"])
def test_close_from_a_callback_closes_the_logger(
    tmp_path: Path, server: ConnectorDBServer, background: bool
) -> None:
    path = own_cache(tmp_path)
    closed = []

    def close(*_: object) -> None:
        lg.close()
        closed.append(True)

    lg = opened(path, server, onsync=close)
    lg.syncperiod = 3600
    lg.insert("temperature", 1.0)
    if background:
        lg.start()
        wait_for(lambda: closed, timeout=PROMPT, what="close() in onsync")
    else:
        within(PROMPT, lg.sync, what="sync() whose onsync closes the Logger")
        assert closed
    with pytest.raises(ClosedError):
        lg.insert("temperature", 2.0)
    within(PROMPT, lg.close, what="a second close()")
    wait_for(lambda: not syncer_threads(path), timeout=PROMPT, what="the syncer thread to end")
    can_sync_again(path, server)
    assert values(server) == [1.0, 99.0]


def test_an_onsync_that_raises_during_close_does_not_break_close(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path = own_cache(tmp_path)
    closing = []

    def onsync() -> None:
        if closing:
            raise RuntimeError("onsync fails while closing")

    lg = opened(path, server, onsync=onsync)
    lg.syncperiod = 3600
    lg.start()
    wait_for(lambda: lg.lastsynctime > 0, what="the first pass")
    lg.insert("temperature", 1.0)
    closing.append(True)
    within(PROMPT, lg.close, what="close()")  # the last pass's onsync raises: close goes on
    with pytest.raises(ClosedError):
        lg.status()
    wait_for(lambda: not syncer_threads(path), timeout=PROMPT, what="the syncer thread to end")
    can_sync_again(path, server)
    assert values(server) == [1.0, 99.0]


def test_insert_in_on_create_is_kept(cache_path: str, server: ConnectorDBServer) -> None:
    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)

    with Logger(cache_path, on_create=init) as lg:
        assert len(lg) == 1
        assert lg.sync().sent == {"temperature": 1}
    assert values(server) == [1.0]


def test_sync_in_on_create_is_a_clear_error(cache_path: str, server: ConnectorDBServer) -> None:
    seen: list[BaseException] = []

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        try:
            lg.sync()
        except BaseException as exc:  # what on_create saw is the point of the test
            seen.append(exc)

    with Logger(cache_path, on_create=init) as lg:
        assert isinstance(seen[0], ConnectorSyncError), repr(seen[0])
        assert "on_create" in str(seen[0]) and "sync()" in str(seen[0])
        lg.insert("temperature", 1.0)
        assert lg.sync().sent == {"temperature": 1}


def test_start_in_on_create_syncs_once_created(tmp_path: Path, server: ConnectorDBServer) -> None:
    path = own_cache(tmp_path)

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.syncperiod = 3600
        lg.sync_jitter = 0
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        lg.start()

    lg = within(PROMPT, Logger, path, init, what="Logger(on_create=...start())")
    try:
        wait_for(lambda: values(server) == [1.0], timeout=PROMPT, what="the background pass")
        assert len(syncer_threads(path)) == 1
    finally:
        lg.close()


# ----------------------------------------------------------------------------- credentials


def test_an_apikey_fixed_from_onsyncfail_is_tried_at_once(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """The corrected apikey is tried at once, not a whole syncperiod later."""
    failures: list[BaseException] = []

    def fix(exc: Exception) -> None:
        failures.append(exc)
        lg.apikey = server.apikey  # type: ignore[attr-defined]

    lg = opened(own_cache(tmp_path), server, onsyncfail=fix)
    try:
        lg.apikey = "wrong" * 8
        lg.syncperiod = 600
        lg.insert_many("temperature", [1.0, 2.0])
        lg.start()
        wait_for(lambda: values(server) == [1.0, 2.0], timeout=PROMPT, what="the data")
        assert isinstance(failures[0], AuthError), failures
        status = lg.status()
        assert status.paused is False, status
        wait_for(lambda: len(lg) == 0, timeout=PROMPT, what="the acknowledged data deleted")
    finally:
        lg.close()


# ----------------------------------------------------------------------------- hung requests


def held(server: ConnectorDBServer) -> Callable[[], bool]:
    """A condition: the server holds a request now (it was received after ``delay``)."""
    seen = len(server.requests)
    return lambda: len(server.requests) > seen


def hang_mid_request(path: str, server: ConnectorDBServer) -> Logger:
    """A Logger (default http_timeout, 30 s) whose background syncer waits on a request the
    server holds for a minute, with three datapoints cached."""
    lg = opened(path, server)
    lg.syncperiod = 3600
    lg.start()
    wait_for(lambda: lg.lastsynctime > 0, what="the first pass")
    lg.insert_many("temperature", [1.0, 2.0, 3.0])
    server.delay(60)
    request = held(server)
    lg.sync_threshold = 1  # the next insert wakes the syncer
    lg.insert("temperature", 4.0)
    wait_for(request, what="the held request")
    return lg


def release(server: ConnectorDBServer, path: str) -> None:
    """End the held request (a restart cuts it), and wait for the old syncer to go."""
    server.delay(0)
    server.stop()
    server.start()
    wait_for(lambda: not syncer_threads(path), what="the old syncer thread to end")


def test_close_returns_in_its_timeout_while_a_request_hangs(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path = own_cache(tmp_path)
    lg = hang_mid_request(path, server)
    began = time.monotonic()
    within(30, lg.close, 1, what="close(timeout=1)")
    assert time.monotonic() - began < PROMPT
    release(server, path)
    with Logger(path) as again:
        assert again.sync().ok
    assert values(server) == [1.0, 2.0, 3.0, 4.0]  # nothing lost, nothing twice


def test_a_logger_reopened_while_a_closed_ones_request_hangs_says_so(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """Issue 16: close(timeout) left a request hanging (it ends within http_timeout); a new
    Logger on the cache in this process said "another process syncs this cache (pid <its
    own pid>)". It says a request of this process is still ending, then syncs."""
    path = own_cache(tmp_path)
    lg = hang_mid_request(path, server)
    within(30, lg.close, 1, what="close(timeout=1)")
    try:
        with Logger(path) as again:
            again.insert("temperature", 5.0)
            report = within(PROMPT, again.sync, what="a sync while the old request hangs")
            said = report.errors.get("*", "")
            assert "another process" not in said, said
            assert "this process" in said and "still ending" in said, said
            assert "http_timeout" in said, said
            syncer = again.status().syncer or ""
            assert "this process" in syncer and "pid" not in syncer, syncer
            assert len(again) == 5  # the four of the held request, and this one
    finally:
        release(server, path)
    with Logger(path) as again:
        assert within(PROMPT, again.sync, what="a sync once the request ended").ok
        assert again.status().syncer is None
    assert values(server) == [1.0, 2.0, 3.0, 4.0, 5.0]  # nothing lost, nothing twice


def test_stop_returns_promptly_while_a_request_hangs(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path = own_cache(tmp_path)
    lg = hang_mid_request(path, server)
    try:
        began = time.monotonic()
        within(30, lg.stop, what="stop()")
        assert time.monotonic() - began < PROMPT
    finally:
        lg.close(timeout=0)
    release(server, path)
    with Logger(path) as again:
        assert again.sync().ok
    assert values(server) == [1.0, 2.0, 3.0, 4.0]


def test_stop_start_during_a_hung_request_leaves_one_thread(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path = own_cache(tmp_path)
    lg = hang_mid_request(path, server)
    try:
        within(30, lg.stop, what="stop()")
        assert len(syncer_threads(path)) <= 1
        lg.start()  # while the request is still held
        assert len(syncer_threads(path)) == 1
        lg.stop()
        lg.start()
        assert len(syncer_threads(path)) == 1
        server.delay(0)
        server.stop()  # the held request ends: the one thread goes on and delivers
        server.start()
        wait_for(lambda: values(server) == [1.0, 2.0, 3.0, 4.0], what="the data")
        assert len(syncer_threads(path)) == 1
    finally:
        lg.close()
