"""The remotes of a cache (``connectorsync/cache/routing.py``): adding and removing them,
``give_up_after`` and fallbacks, on a real SQLite file with the real schema."""

from __future__ import annotations

import apsw
import pytest

from connectorsync import ConfigurationError
from connectorsync.cache import positions, routing
from connectorsync.cache.migrations import MIGRATIONS


@pytest.fixture
def conn(tmp_path) -> apsw.Connection:  # type: ignore[no-untyped-def]
    conn = apsw.Connection(str(tmp_path / "cache.db"))
    with conn:
        for _, step in MIGRATIONS:
            step(conn)
        conn.execute("INSERT INTO streams (name, schema) VALUES ('s', '{}')")
        routing.route_stream(conn, 1, "s")
    return conn


def _insert(conn: apsw.Connection, times: list[float]) -> list[int]:
    ids = []
    with conn:
        for t in times:
            conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (1, ?, '0')", (t,))
            ids.append(conn.last_insert_rowid())
    return ids


def _held(conn: apsw.Connection, name: str) -> int:
    return positions.held_count(conn, routing.remotes(conn)[name].id, 1)


def _cached(conn: apsw.Connection) -> list[float]:
    return [t for (t,) in conn.execute("SELECT t FROM datapoints ORDER BY id")]


def test_a_failing_remote_gives_up_what_is_older_than_give_up_after(conn) -> None:  # type: ignore[no-untyped-def]
    """The other remote delivers; the failing one holds the rest until it has failed for
    give_up_after, then releases what is older than that (counted), so the cache empties."""
    with conn:
        routing.add(conn, routing.RemoteRow(0, "dead", give_up_after=60.0), backfill=True)
    _insert(conn, [100.0, 110.0, 150.0, 190.0])
    with conn:  # default delivers everything
        positions.take(conn, positions.DEFAULT, 1, 1, 4)
        routing.failing(conn, "dead", 100.0)
        routing.failing(conn, "dead", 120.0)  # the first failure is kept
    assert _cached(conn) == [100.0, 110.0, 150.0, 190.0]  # dead holds them all
    with conn:
        assert routing.give_up(conn, "dead", now=159.0) == 0  # failing for 59 s only
        assert routing.give_up(conn, "dead", now=200.0) == 2  # older than 140: 100, 110
    assert _cached(conn) == [150.0, 190.0]
    assert _held(conn, "dead") == 2
    counted = dict(conn.execute("SELECT key, value FROM settings"))
    assert int(counted[routing.RELEASED + "dead"]) == 2
    with conn:
        routing.failing(conn, "dead", None)  # it came back: nothing more is given up
        assert routing.give_up(conn, "dead", now=1000.0) == 0


def test_a_fallback_takes_what_the_primary_gave_up_and_nothing_reaches_both(conn) -> None:  # type: ignore[no-untyped-def]
    with conn:
        routing.add(conn, routing.RemoteRow(0, "spare", streams=[]), backfill=True)
        routing.add(
            conn,
            routing.RemoteRow(0, "cloud", give_up_after=10.0, fallback="spare"),
            backfill=True,
        )
    ids = _insert(conn, [1.0, 2.0, 3.0, 50.0])
    with conn:
        positions.take(conn, positions.DEFAULT, 1, ids[0], ids[-1])
        positions.take(conn, routing.remotes(conn)["cloud"].id, 1, ids[1], ids[1])  # cloud has 2.0
        routing.failing(conn, "cloud", 0.0)
        assert routing.give_up(conn, "cloud", now=40.0) == 2  # 1.0 and 3.0
    assert _held(conn, "spare") == 2 and _held(conn, "cloud") == 1  # 50.0 stays with cloud
    spare = positions.position(conn, routing.remotes(conn)["spare"].id, 1)
    assert spare is not None
    run = spare.span_after(0)
    assert run is not None and run[0] < ids[0] <= run[1] and ids[1] > run[1]  # not 2.0
    assert _cached(conn) == [1.0, 3.0, 50.0]
    counted = dict(conn.execute("SELECT key, value FROM settings"))
    assert int(counted[routing.HANDED_OVER + "cloud"]) == 2
    with pytest.raises(ConfigurationError, match="fallback of cloud"), conn:
        routing.remove(conn, "spare")


def test_give_up_stops_before_the_batch_in_flight(conn) -> None:  # type: ignore[no-untyped-def]
    """What went out without an answer may be on the remote: it stays the remote's."""
    with conn:
        routing.add(conn, routing.RemoteRow(0, "slow", give_up_after=1.0), backfill=True)
    ids = _insert(conn, [1.0, 2.0, 3.0])
    rid = routing.remotes(conn)["slow"].id
    with conn:
        positions.take(conn, positions.DEFAULT, 1, ids[0], ids[-1])
        conn.execute(
            "UPDATE positions SET inflight_lo = ?, inflight = ? WHERE remote = ?",
            (ids[1], ids[1], rid),
        )
        routing.failing(conn, "slow", 0.0)
        assert routing.give_up(conn, "slow", now=100.0) == 1  # 1.0 only
    assert _cached(conn) == [2.0, 3.0]


def test_adding_and_removing_remotes_says_what_is_wrong(conn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="'nope' is not a remote"), conn:
        routing.add(conn, routing.RemoteRow(0, "x", fallback="nope"), backfill=True)
    with pytest.raises(ConfigurationError, match="named 'default' already"), conn:
        routing.add(conn, routing.RemoteRow(0, "default"), backfill=True)
    with pytest.raises(ConfigurationError, match="no remote named 'x'; remotes: default"), conn:
        routing.remove(conn, "x")
    assert list(routing.remotes(conn)) == ["default"]


def test_a_stream_no_remote_routes_keeps_its_datapoints(conn) -> None:  # type: ignore[no-untyped-def]
    """Removing the only remote leaves the data for the next one (added with backfill)."""
    _insert(conn, [1.0, 2.0])
    with conn:
        routing.remove(conn, "default")
    assert _cached(conn) == [1.0, 2.0]
    with conn:
        routing.add(conn, routing.RemoteRow(0, "new"), backfill=True)
        assert positions.take(conn, routing.remotes(conn)["new"].id, 1, 1, 2) == 2
    assert _cached(conn) == []


def test_the_remotes_role_of_a_cache_adds_counts_and_removes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through ``Cache.remotes()``: each call is one committed transaction."""
    from connectorsync.cache import Cache

    cache, created = Cache.open(str(tmp_path / "c.db"))
    cache.finish_opening(created, "normal")
    try:
        sid = cache.put_stream("s", "{}").id
        for t in (1.0, 2.0, 3.0):
            cache.append(sid, t, "0", restamp=False)
        remotes = cache.remotes()
        remotes.add(routing.RemoteRow(0, "late"), backfill=False)
        remotes.add(routing.RemoteRow(0, "all", streams=["s*"]), backfill=True)
        assert list(remotes.all()) == ["default", "late", "all"]
        assert remotes.held("default") == {"s": 3}
        assert remotes.held("late") == {"s": 0}  # starts at the next insert
        assert remotes.held("all") == {"s": 3}
        cache.append(sid, 4.0, "0", restamp=False)
        assert remotes.held("late") == {"s": 1}
        assert remotes.remove("all") == 0  # default still holds everything
        with pytest.raises(ConfigurationError, match="a remote's name is a letter"):
            remotes.add(routing.RemoteRow(0, "no spaces"))
        assert list(remotes.all()) == ["default", "late"]
    finally:
        cache.close()
