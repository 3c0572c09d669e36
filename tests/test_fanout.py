"""Several remotes per Logger (issue 17): ``Logger(path, remotes={...})``, ``add_remote`` and
``remove_remote``, on a real cache file, delivering over a real loopback HTTP receiver (one
path per remote, each made to fail on its own)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connectorsync import ConfigurationError, HTTPRemote, Logger
from connectorsync.testing.receiver import HTTPReceiver

HOUR = 3600.0


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "cache.db")


def remote(receiver: HTTPReceiver, name: str) -> HTTPRemote:
    return HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=5)


def arrived(receiver: HTTPReceiver, name: str, stream: str = "s") -> list[int]:
    return [item["d"] for item in receiver.items(f"/{name}/{stream}")]


def down(receiver: HTTPReceiver, name: str) -> None:
    """Every request to the remote ``name`` fails with 503 until ``receiver.clear_faults()``."""
    receiver.fail_next(10**6, 503, path=f"/{name}/")


def test_a_remote_that_is_down_never_holds_back_the_other(path, receiver) -> None:  # type: ignore[no-untyped-def]
    down(receiver, "cloud")
    remotes = {"gateway": remote(receiver, "gateway"), "cloud": remote(receiver, "cloud")}
    with Logger(path, remotes=remotes) as lg:
        lg.addStream_force("s", {"type": "integer"})
        for round_ in range(3):
            lg.insert_many("s", list(range(round_ * 4, round_ * 4 + 4)))
            report = lg.sync()
            assert not report.ok and report.sent == {"s": 4}  # the gateway took them
            assert report.remotes["gateway"].ok and not report.remotes["cloud"].ok
        assert len(lg) == 12  # kept for the cloud
        status = lg.status()
        assert set(status.remotes) == {"gateway", "cloud"}  # no "default" in a new cache
        assert status.remotes["gateway"].held == 0
        assert status.remotes["cloud"].held == 12
        assert status.remotes["cloud"].failing_since is not None
        receiver.clear_faults()
        assert lg.sync().sent == {"s": 12} and len(lg) == 0
        assert lg.status().remotes["cloud"].failing_since is None
    assert arrived(receiver, "gateway") == list(range(12))
    assert arrived(receiver, "cloud") == list(range(12))


def test_give_up_after_bounds_the_disk_while_a_remote_is_dead(path, receiver) -> None:  # type: ignore[no-untyped-def]
    """Datapoints an hour old; the cloud has been failing longer than give_up_after: it lets
    them go (counted), and the cache empties as the gateway delivers."""
    down(receiver, "cloud")
    with Logger(path, remote=remote(receiver, "gateway")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("cloud", remote(receiver, "cloud"), give_up_after=0.2)
        old = time.time() - HOUR
        for i in range(5):
            lg.insert("s", i, timestamp=old + i)
        assert lg.sync().sent == {"s": 5}
        assert len(lg) == 5  # the cloud holds them: failing since this pass
        time.sleep(0.3)  # failing for longer than give_up_after now
        lg.sync()
        assert len(lg) == 0
        status = lg.status().remotes["cloud"]
        assert (status.released, status.held) == (5, 0)
        lg.insert("s", 99)  # new: the cloud holds it again (not older than 0.2 s)
        lg.sync()
        assert lg.status().remotes["cloud"].held == 1
    assert arrived(receiver, "cloud") == []


def test_a_fallback_takes_what_the_primary_gave_up_and_nothing_reaches_both(path, receiver) -> None:  # type: ignore[no-untyped-def]
    down(receiver, "cloud")
    with Logger(path, remote=remote(receiver, "gateway")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("spare", remote(receiver, "spare"), streams=[])  # takes handovers only
        lg.add_remote("cloud", remote(receiver, "cloud"), give_up_after=0.2, fallback="spare")
        old = time.time() - HOUR
        for i in range(4):
            lg.insert("s", i, timestamp=old + i)
        lg.sync()
        time.sleep(0.3)
        lg.sync()  # the cloud gives up: the spare holds them now
        lg.sync()  # ...and delivers them
        assert len(lg) == 0
        assert lg.status().remotes["cloud"].handed_over == 4
        receiver.clear_faults()  # the cloud is back: new data only
        lg.insert("s", 10)
        lg.sync()
        assert len(lg) == 0
    assert arrived(receiver, "spare") == [0, 1, 2, 3]
    assert arrived(receiver, "cloud") == [10]
    assert arrived(receiver, "gateway") == [0, 1, 2, 3, 10]


def test_a_remote_added_with_and_without_backfill(path, receiver) -> None:  # type: ignore[no-untyped-def]
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1, 2])
        lg.add_remote("late", remote(receiver, "late"), backfill=False)
        lg.add_remote("all", remote(receiver, "all"))
        lg.insert_many("s", [3])
        assert lg.sync().sent == {"s": 4 + 1 + 4}  # per remote, added up
        assert len(lg) == 0
        assert set(lg.remotes) == {"default", "late", "all"}
    assert arrived(receiver, "a") == [0, 1, 2, 3]
    assert arrived(receiver, "late") == [3]
    assert arrived(receiver, "all") == [0, 1, 2, 3]


def test_removing_a_remote_releases_what_only_it_held(path, receiver) -> None:  # type: ignore[no-untyped-def]
    down(receiver, "b")
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("b", remote(receiver, "b"))
        lg.insert_many("s", [0, 1, 2])
        lg.sync()
        assert len(lg) == 3  # b holds them
        assert lg.remove_remote("b") == 3
        assert len(lg) == 0 and set(lg.remotes) == {"default"}
        assert set(lg.status().remotes) == {"default"}
        with pytest.raises(ConfigurationError, match="no remote named 'b'"):
            lg.remove_remote("b")
        with pytest.raises(ConfigurationError, match="first remote"):
            lg.remove_remote("default")
    assert arrived(receiver, "a") == [0, 1, 2]


def test_reopening_with_the_same_remotes_resends_nothing(path, receiver) -> None:  # type: ignore[no-untyped-def]
    def remotes() -> dict[str, HTTPRemote]:
        return {"x": remote(receiver, "x"), "y": remote(receiver, "y")}

    down(receiver, "y")
    with Logger(path, remotes=remotes()) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
        lg.sync()
    receiver.clear_faults()
    with Logger(path, remotes=remotes()) as lg:
        lg.insert_many("s", [2])
        assert lg.sync().sent == {"s": 1 + 3}
        assert len(lg) == 0
    assert arrived(receiver, "x") == [0, 1, 2]
    assert arrived(receiver, "y") == [0, 1, 2]


def test_a_cache_given_other_remotes_keeps_what_its_old_one_holds(path, receiver) -> None:  # type: ignore[no-untyped-def]
    """The old "default" still holds its backlog: nothing is released but by remove_remote."""
    down(receiver, "old")
    with Logger(path, remote=remote(receiver, "old")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
    receiver.clear_faults()
    with Logger(path, remotes={"new": remote(receiver, "new")}) as lg:
        assert lg.sync().sent == {"s": 2}
        assert len(lg) == 2 and lg.status().remotes["default"].held == 2
        assert lg.remove_remote("default") == 2
        assert len(lg) == 0
    assert arrived(receiver, "new") == [0, 1] and arrived(receiver, "old") == []


def test_bad_remotes_are_refused_with_what_was_expected(path, receiver) -> None:  # type: ignore[no-untyped-def]
    one = remote(receiver, "a")
    with pytest.raises(ConfigurationError, match="not both"):
        Logger(path, remote=one, remotes={"b": one})
    with pytest.raises(ConfigurationError, match="non-empty mapping"):
        Logger(path, remotes={})
    with Logger(path, remote=one) as lg:
        with pytest.raises(ConfigurationError, match="already"):
            lg.add_remote("default", one)
        with pytest.raises(ConfigurationError, match="a remote's name"):
            lg.add_remote("two words", one)
        with pytest.raises(ConfigurationError, match="fallback 'nope' is not a remote"):
            lg.add_remote("b", one, fallback="nope")
        with pytest.raises(ConfigurationError, match="give_up_after"):
            lg.add_remote("b", one, give_up_after=-1)
        assert set(lg.remotes) == {"default"} and set(lg.status().remotes) == {"default"}


def test_a_remote_added_again_takes_its_new_settings_and_keeps_its_position(path, receiver) -> None:  # type: ignore[no-untyped-def]
    """add_remote on reopening, as a program does at each start: the remote keeps what it
    holds (nothing sent twice), and give_up_after given now holds from now on."""
    down(receiver, "cloud")
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("cloud", remote(receiver, "cloud"))
        old = time.time() - HOUR
        lg.insert("s", 0, timestamp=old)
        lg.insert("s", 1, timestamp=old + 1)
        lg.sync()
        assert lg.status().remotes["cloud"].held == 2
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.add_remote("cloud", remote(receiver, "cloud"), give_up_after=0.2)
        assert lg.status().remotes["cloud"].held == 2  # its position stays
        lg.insert("s", 2, timestamp=old + 2)  # old enough to be given up...
        lg.sync()
        time.sleep(0.3)
        lg.sync()  # ...now that give_up_after holds
        assert lg.status().remotes["cloud"].released == 3 and len(lg) == 0
        with pytest.raises(ConfigurationError, match="fallback 'nope' is not a remote"):
            lg.add_remote("cloud2", remote(receiver, "cloud"), fallback="nope")
    assert arrived(receiver, "a") == [0, 1, 2]


def test_a_refused_removal_keeps_delivering(path, receiver) -> None:  # type: ignore[no-untyped-def]
    """The fallback of another remote cannot be removed, and is not stopped by trying."""
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("spare", remote(receiver, "spare"))
        lg.add_remote("cloud", remote(receiver, "cloud"), give_up_after=60, fallback="spare")
        with pytest.raises(ConfigurationError, match="fallback of cloud"):
            lg.remove_remote("spare")
        assert set(lg.remotes) == {"default", "spare", "cloud"}
        lg.insert("s", 1)
        assert lg.sync().sent == {"s": 3} and len(lg) == 0
    assert arrived(receiver, "spare") == [1]


def test_a_fallback_s_dead_letter_queued_again_goes_to_it(path, receiver) -> None:  # type: ignore[no-untyped-def]
    """A fallback holds only what it is handed: a letter it refused, queued again with a new
    time, must be held by it all the same, not leave the cache unsent (found by the model)."""
    down(receiver, "cloud")
    receiver.reject(lambda path, item: path.startswith("/spare/") and item["d"] == 2)
    with Logger(path, remote=remote(receiver, "a")) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.add_remote("spare", remote(receiver, "spare"), streams=[])
        lg.add_remote("cloud", remote(receiver, "cloud"), give_up_after=0.2, fallback="spare")
        old = time.time() - HOUR
        for i in range(3):
            lg.insert("s", i, timestamp=old + i)
        lg.sync()
        time.sleep(0.3)
        lg.sync()  # handed to the spare...
        lg.sync()  # ...which refuses 2
        assert [d.d for d in lg.deadletters()] == [2] and len(lg) == 0
        receiver.reject(None)
        assert lg.retry_deadletters(restamp=True) == 1
        assert lg.status().remotes["spare"].held == 1
        lg.sync()
        assert len(lg) == 0 and lg.deadletters() == []
    assert arrived(receiver, "spare") == [0, 1, 2]
    assert arrived(receiver, "a") == [0, 1, 2]  # no second copy
