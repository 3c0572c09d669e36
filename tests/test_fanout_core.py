"""Two remotes on one cache, at the level of a pass (``run_pass`` through each remote's
``Cache.outbox``): each takes what it holds, a datapoint leaves once both have it, one that is
down holds back only itself, refusals are dead letters of the remote that refused, and
``give_up_after`` lets a dead one stop holding old data. Real files, a real loopback HTTP
receiver; the Logger API for several remotes is built on this."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connectorsync import HTTPRemote, Logger
from connectorsync.cache import Cache
from connectorsync.cache.routing import RemoteRow
from connectorsync.delivery import PassPlan, SyncReport, run_pass
from connectorsync.resend import resend
from connectorsync.testing.probe import CacheProbe
from connectorsync.testing.receiver import HTTPReceiver


def _remote(receiver: HTTPReceiver, name: str) -> HTTPRemote:
    return HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=5)


@contextlib.contextmanager
def _two_remotes(
    tmp_path: Path, receiver: HTTPReceiver, **second: Any
) -> Iterator[tuple[Logger, Cache]]:
    """A Logger delivering to /default/...; its cache also routes to a remote "b" (given
    ``second`` as RemoteRow fields), through a connection of the test's own."""
    path = str(tmp_path / "cache.db")
    with Logger(path, remote=_remote(receiver, "default")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        cache = Cache.connect(path, "full")
        try:
            cache.remotes().add(RemoteRow(0, "b", **second), backfill=True)
            yield lg, cache
        finally:
            cache.close()


def _pass(cache: Cache, name: str, receiver: HTTPReceiver) -> SyncReport:
    plan = PassPlan(batch_size=4, max_batch_bytes=1 << 20)
    remote = _remote(receiver, name)
    try:
        return run_pass(cache.outbox(name), remote, plan)
    finally:
        remote.close()


def _arrived(receiver: HTTPReceiver, name: str) -> list[int]:
    return [item["d"] for item in receiver.items(f"/{name}/s")]


def test_a_datapoint_leaves_once_every_remote_has_it(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    with _two_remotes(tmp_path, receiver) as (lg, cache):
        lg.insert_many("s", list(range(10)))
        assert _pass(cache, "b", receiver).sent == {"s": 10}
        assert len(lg) == 10  # default has none of them yet
        assert cache.remotes().held("b") == {"s": 0}
        assert cache.remotes().held("default") == {"s": 10}
        assert _pass(cache, "default", receiver).sent == {"s": 10}
        assert len(lg) == 0
    assert _arrived(receiver, "b") == list(range(10))
    assert _arrived(receiver, "default") == list(range(10))


def test_a_remote_that_is_down_holds_back_only_itself(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    receiver.respond("/default/s", 503)
    with _two_remotes(tmp_path, receiver) as (lg, cache):
        for round_ in range(3):
            lg.insert_many("s", list(range(round_ * 5, round_ * 5 + 5)))
            assert not _pass(cache, "default", receiver).ok
            assert _pass(cache, "b", receiver).sent == {"s": 5}
        assert len(lg) == 15  # kept for default, which never took any
        assert cache.remotes().held("default") == {"s": 15}
    assert _arrived(receiver, "b") == list(range(15))  # each once, in order


def test_a_refusal_is_a_dead_letter_of_the_remote_that_refused(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    receiver.reject(lambda path, item: path.startswith("/b/") and item["d"] == 3)
    with _two_remotes(tmp_path, receiver) as (lg, cache):
        lg.insert_many("s", list(range(6)))
        report = _pass(cache, "b", receiver)
        assert report.sent == {"s": 5} and report.deadlettered == {"s": 1}
        assert len(lg) == 6  # default holds them all, 3 included
        assert _pass(cache, "default", receiver).sent == {"s": 6}
        assert len(lg) == 0
        assert [d.d for d in lg.deadletters()] == [3]
    with CacheProbe(str(tmp_path / "cache.db")) as probe:
        assert [letter.d for letter in probe.deadletters()] == ["3"]
    assert _arrived(receiver, "default") == list(range(6))
    assert _arrived(receiver, "b") == [0, 1, 2, 4, 5]


def test_a_dead_remote_gives_up_what_is_older_than_give_up_after(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    """The disk bound holds: once "b" has failed for give_up_after, what it holds that is
    older than that is released, counted, and the cache empties as default delivers."""
    receiver.respond("/b/s", 503)
    with _two_remotes(tmp_path, receiver, give_up_after=3600.0) as (lg, cache):
        for i in range(5):
            lg.insert("s", i, timestamp=1_000_000.0 + i)
        assert not _pass(cache, "b", receiver).ok
        cache.remotes().failing("b", 1_000_000.0)  # failing from the start
        assert _pass(cache, "default", receiver).sent == {"s": 5}
        assert len(lg) == 5  # b holds them
        assert cache.remotes().give_up("b", now=1_000_000.0 + 3599) == 0  # not an hour yet
        assert cache.remotes().give_up("b", now=1_000_002.5 + 3600) == 3  # the 3 before x.5
        assert len(lg) == 2
        assert cache.get_setting("stats.released.b") == 3
    assert _arrived(receiver, "default") == list(range(5))


def test_a_remote_added_without_backfill_starts_at_the_next_insert(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "cache.db")
    with Logger(path, remote=_remote(receiver, "default")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1, 2])
        cache = Cache.connect(path, "full")
        try:
            cache.remotes().add(RemoteRow(0, "b"), backfill=False)
            lg.insert_many("s", [3, 4])
            assert _pass(cache, "b", receiver).sent == {"s": 2}
            assert _pass(cache, "default", receiver).sent == {"s": 5}
            assert len(lg) == 0
        finally:
            cache.close()
    assert _arrived(receiver, "b") == [3, 4]


def test_a_letter_goes_again_only_to_the_remote_that_refused_it(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    """Sent again with its own time (resend) or queued again with a new one (restamp): either
    way only "b" gets it; "default" had it already and gets no second copy."""
    receiver.reject(lambda path, item: path.startswith("/b/") and item["d"] in (3, 7))
    with _two_remotes(tmp_path, receiver) as (lg, cache):
        lg.insert_many("s", list(range(6)))
        assert _pass(cache, "b", receiver).deadlettered == {"s": 1}
        assert _pass(cache, "default", receiver).sent == {"s": 6}
        receiver.reject(None)
        remote_b = _remote(receiver, "b")
        try:
            report = resend(cache.outbox("b"), remote_b, None, 10)
        finally:
            remote_b.close()
        assert (report.sent, report.kept) == (1, 0) and lg.deadletters() == []

        receiver.reject(lambda path, item: path.startswith("/b/") and item["d"] == 7)
        lg.insert_many("s", [6, 7])
        assert _pass(cache, "b", receiver).deadlettered == {"s": 1}
        assert _pass(cache, "default", receiver).sent == {"s": 2}
        receiver.reject(None)
        assert cache.retry_deadletters(None, {"s": cache.streams()["s"].id}) == 1
        assert cache.remotes().held("default") == {"s": 0}
        assert cache.remotes().held("b") == {"s": 1}
        assert _pass(cache, "b", receiver).sent == {"s": 1}
        assert _pass(cache, "default", receiver).sent == {}
        assert len(lg) == 0 and lg.deadletters() == []
    assert _arrived(receiver, "default") == list(range(8))
    assert sorted(_arrived(receiver, "b")) == list(range(8))
    assert len(_arrived(receiver, "b")) == 8
