"""A pass returns its report (issue 17): the background syncer retries by the report and calls
its listener after each of its passes; ``sync()`` applies its failure policy (``onsyncfail``,
``syncraise``) to the report of its own pass, whatever the background thread does meanwhile."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from connectorsync import ConnectorDBRemote, Logger, SyncReport, TransientRemoteError
from connectorsync.options import Options
from connectorsync.syncer import PassHooks, Syncer
from connectorsync.testing import ConnectorDBServer

from .conftest import wait_for

STREAM = "alice/sensor/temperature"
#: A bound on a hang, not a timing: every wait below ends in well under a second.
PROMPT = 10.0

pytestmark = pytest.mark.timeout(60)  # a hang fails the test instead of blocking the run


def opened(path: str, server: ConnectorDBServer, **kwargs: Any) -> Logger:
    """A Logger on ``server`` with the number stream ``temperature``; its background syncer
    passes at once after ``start()`` and then waits an hour (retries aside)."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    return Logger(path, on_create=init, sync_jitter=0, syncperiod=3600, **kwargs)


def in_background() -> bool:
    return threading.current_thread().name.startswith("connectorsync-syncer")


def test_sync_applies_its_policy_to_its_own_pass(
    cache_path: str, server: ConnectorDBServer, fast_backoff: None
) -> None:
    """While the background thread sits inside ``onsyncfail`` of its own failed pass (outside
    every lock, answering the opposite), a ``sync()`` whose pass fails raises exactly when its
    own ``onsyncfail`` says so (or ``syncraise`` without one), and raises its own pass's error.
    The background thread's answer is never raised anywhere, and its loop lives on."""
    answers = {"background": True, "manual": False}
    seen: dict[str, list[Exception]] = {"background": [], "manual": []}
    entered: queue.Queue[None] = queue.Queue()  # the background thread is in onsyncfail
    release: queue.Queue[None] = queue.Queue()  # ... and may return from it

    def onsyncfail(error: Exception) -> bool:
        kind = "background" if in_background() else "manual"
        seen[kind].append(error)
        if kind == "background":
            entered.put(None)
            release.get(timeout=PROMPT)
        return answers[kind]

    lg = opened(cache_path, server, onsyncfail=onsyncfail)
    try:
        lg.insert("temperature", 1.0)
        server.fail_next(1, 503)
        lg.start()
        entered.get(timeout=PROMPT)  # the background pass failed: its onsyncfail waits

        server.fail_next(1, 503)
        report = lg.sync()  # its onsyncfail says False; the background one will say True
        assert not report.ok and "503" in (report.message or "")
        assert seen["manual"] == [report.exception]

        answers.update(background=False, manual=True)
        server.fail_next(1, 503)  # for the background thread's retry
        release.put(None)
        entered.get(timeout=PROMPT)  # its retry failed too: onsyncfail waits again
        server.fail_next(1, 503)
        with pytest.raises(TransientRemoteError) as info:
            lg.sync()  # its onsyncfail says True; the background one will say False
        assert info.value is seen["manual"][-1]

        lg.onsyncfail = None
        lg.syncraise = True
        server.fail_next(1, 503)
        with pytest.raises(TransientRemoteError):
            lg.sync()
        assert len(seen["manual"]) == 2  # no onsyncfail any more: syncraise decided

        release.put(None)  # the background thread retries, and delivers
        wait_for(lambda: len(lg) == 0, timeout=PROMPT, what="the background retry to deliver")
        assert [p["d"] for p in server.datapoints(STREAM)] == [1.0]
        assert len(seen["background"]) == 2
    finally:
        release.put(None)
        lg.close()


def test_the_listener_hears_the_background_passes_only(
    cache_path: str, server: ConnectorDBServer, fast_backoff: None
) -> None:
    """``Syncer.sync()`` returns its report and tells nobody; the background thread retries a
    failed pass by its report (no exception raised for it) and hands every report, failed or
    not, to the listener, in the order of its passes."""
    with opened(cache_path, server) as lg:
        lg.insert("temperature", 1.0)
    heard: list[SyncReport] = []
    options = Options(syncperiod=3600.0)
    options.sync_jitter = 0
    remote = ConnectorDBRemote(server.url, server.apikey)  # type: ignore[attr-defined]
    syncer = Syncer(cache_path, options, remote, PassHooks(), heard.append, "0" * 32)
    try:
        report = syncer.sync()
        assert report.sent == {"temperature": 1}
        assert heard == []  # returned, not told

        with Logger(cache_path) as lg:
            lg.insert("temperature", 2.0)
        server.fail_next(2, 503)
        syncer.start()
        wait_for(lambda: len(heard) == 3, timeout=PROMPT, what="two failures, then a pass")
        assert [r.ok for r in heard] == [False, False, True]
        assert isinstance(heard[0].exception, TransientRemoteError)
        assert heard[2].sent == {"temperature": 1}
        assert [p["d"] for p in server.datapoints(STREAM)] == [1.0, 2.0]
    finally:
        syncer.close()
        remote.close()
