"""Dead letters keep their time (``connectorsync/resend.py``, ``cache/deadletters.py``).

A retried dead letter is sent with its original timestamp, against the real ConnectorDB test
server and a real influxd; where the remote cannot take it (ConnectorDB refuses times older
than its newest) it stays a dead letter saying why, unless the caller asks for new times
(``restamp=True``), which then respects the storage limits as an insert does. Wrong-typed ids
are refused with an error that is a connectorsync error and a TypeError.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import apsw
import pytest

from connectorsync import CacheFullError, ConnectorSyncError, Logger, RemoteError
from connectorsync.cli import main
from connectorsync.remotes.connectordb import ConnectorDBRemote
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer

from .test_migration import make_connectordb_cache

STREAM = "alice/sensor/temperature"
T0 = 1_700_000_000.0


def stored(server: ConnectorDBServer) -> list[tuple[float, float]]:
    return [(p["t"], p["d"]) for p in server.datapoints(STREAM)]


def refuse_negatives(server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] < 0)


# ----------------------------------------------------------------------------- ConnectorDB


def test_a_retried_letter_keeps_its_time_on_connectordb(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """A reading refused at T0+1 (the newest the remote was sent) arrives at T0+1, once."""
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    assert logger.sync().deadlettered == {"temperature": 1}
    server.reject(None)
    logger.retry_deadletters()
    logger.sync()  # (on b064757, the letter was queued with a new time and sent here)
    assert stored(server) == [(T0, 1.0), (T0 + 1, -1.0)]
    assert logger.deadletters() == []
    assert len(logger) == 0


def test_two_retries_at_once_send_each_letter_once(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """Retries run one at a time, as passes do (under the pass lock and the file's sync
    lock): two threads that both asked the remote's newest before either sent would each
    send the letter, and ConnectorDB takes a second copy at an equal time."""
    import threading

    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    assert logger.sync().deadlettered == {"temperature": 1}
    server.reject(None)
    server.delay(0.3)  # each request takes a while: the two retries overlap
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def retry() -> None:
        start.wait()
        try:
            outcomes.append(logger.retry_deadletters())
        except ConnectorSyncError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    server.delay(0)
    assert sorted(o for o in outcomes if isinstance(o, int)) == [0, 1], outcomes
    assert stored(server) == [(T0, 1.0), (T0 + 1, -1.0)]
    assert logger.deadletters() == []


def test_connectordb_keeps_an_older_letter_with_the_reason(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """A letter older than what ConnectorDB holds cannot go there with its time: it stays a
    dead letter saying why and what to do, nothing is sent (no copy at a new time), and a
    second retry does the same (no loop). restamp=True sends it, at a new time."""
    refuse_negatives(server)
    points = [{"t": T0 + i, "d": d} for i, d in enumerate([1.0, -1.0, 2.0, 3.0])]
    logger.insert_many("temperature", points)
    assert logger.sync().deadlettered == {"temperature": 1}
    server.reject(None)
    for _ in range(2):
        assert logger.retry_deadletters() == 0
        (letter,) = logger.deadletters()
        assert (letter.t, letter.d, letter.attempts) == (T0 + 1, -1.0, 1)
        assert "newer datapoints" in letter.reason and "restamp=True" in letter.reason
        assert logger.sync().sent == {}
        assert stored(server) == [(T0, 1.0), (T0 + 2, 2.0), (T0 + 3, 3.0)]
    assert logger.retry_deadletters(restamp=True) == 1
    assert logger.sync().sent == {"temperature": 1}
    assert [d for _, d in stored(server)] == [1.0, 2.0, 3.0, -1.0]
    assert stored(server)[-1][0] > T0 + 3
    assert logger.deadletters() == []


def test_a_letter_the_remote_holds_already_is_not_sent_twice(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """A letter at the very time of ConnectorDB's newest datapoint had arrived (its answer
    lost): retrying settles it, with no second copy."""
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    logger.sync()
    server.reject(None)
    arrived = ConnectorDBRemote(server.url, server.apikey)  # type: ignore[attr-defined]
    try:
        arrived.push("temperature", [(1, T0 + 1, "-1.0")])
    finally:
        arrived.close()
    assert logger.retry_deadletters() == 1
    logger.sync()
    assert stored(server) == [(T0, 1.0), (T0 + 1, -1.0)]
    assert logger.deadletters() == []


def test_a_refused_letter_stays_with_the_reason(logger: Logger, server: ConnectorDBServer) -> None:
    """Refused again: the letter stays, with the remote's reason and one more attempt; the
    letters the remote takes go (a refused batch is bisected)."""
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": -1.0}, {"t": T0 + 1, "d": -2.0}])
    assert logger.sync().deadlettered == {"temperature": 2}
    server.reject(lambda stream, point: point["d"] == -1.0)
    assert logger.retry_deadletters() == 1  # the batch of both is bisected: -2.0 goes
    assert stored(server) == [(T0 + 1, -2.0)]
    (letter,) = logger.deadletters()
    assert (letter.d, letter.attempts) == (-1.0, 2)
    assert "did not conform" in letter.reason
    # Now ConnectorDB holds a newer one: kept without asking it, saying so.
    server.reject(None)
    assert logger.retry_deadletters() == 0
    (letter,) = logger.deadletters()
    assert (letter.d, letter.attempts) == (-1.0, 2)
    assert "newer datapoints" in letter.reason
    assert stored(server) == [(T0 + 1, -2.0)]


def test_a_lost_answer_is_settled_by_connectordb_newest(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """The letter's request is stored but its answer lost: ConnectorDB's newest timestamp is
    the letter's, so it was delivered (exactly once; no copy sent again)."""
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    logger.sync()
    server.reject(None)
    server.drop_after_commit()
    assert logger.retry_deadletters() == 1
    assert logger.deadletters() == []
    logger.retry_deadletters()
    assert stored(server) == [(T0, 1.0), (T0 + 1, -1.0)]


def test_an_unreachable_remote_fails_the_retry_and_changes_nothing(
    logger: Logger, server: ConnectorDBServer
) -> None:
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    logger.sync()
    server.reject(None)
    (before,) = logger.deadletters()
    server.fail_next(5, status=503)
    with pytest.raises(RemoteError):
        logger.retry_deadletters()
    assert logger.deadletters() == [before]
    server.clear_faults()
    assert logger.retry_deadletters() == 1
    assert stored(server) == [(T0, 1.0), (T0 + 1, -1.0)]


def test_a_letter_newer_than_cached_datapoints_waits_for_them(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """A connectordb 0.3.5 cache migrates with a row that is not JSON, newer than the rows
    still cached, as a dead letter. Sent first, it would get those rows refused by
    ConnectorDB: it stays, saying so, until they are delivered; then it is sent (and here
    refused by the schema, with that reason)."""
    rows = make_connectordb_cache(cache_path, server.apikey, server.url)  # type: ignore[attr-defined]
    conn = apsw.Connection(cache_path)
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, 'not json')", (rows[-1][1] + 10,))
    conn.close()
    with Logger(cache_path) as lg:
        (letter,) = lg.deadletters()
        assert lg.retry_deadletters() == 0
        (kept,) = lg.deadletters()
        assert "cached datapoints older than it" in kept.reason
        assert kept.attempts == letter.attempts  # not attempted
        assert lg.sync().sent == {"temperature": 50, "status": 1}
        assert lg.retry_deadletters() == 0
        (refused,) = lg.deadletters()
        assert (refused.id, refused.t) == (letter.id, letter.t)
        assert refused.attempts == letter.attempts + 1
        assert "did not conform" in refused.reason
    assert len(stored(server)) == 50


# ----------------------------------------------------------------------------- InfluxDB


@pytest.fixture
def influx_logger(cache_path: str, influxd: InfluxDBServer) -> Iterator[tuple[Logger, str]]:
    db = "test_" + uuid.uuid4().hex[:12]
    influxd.create_database(db)
    assert influxd.admin is not None
    user, password = influxd.admin
    remote = InfluxDBRemote(influxd.url, db, username=user, password=password, timeout=5)
    with Logger(cache_path, remote=remote) as lg:
        lg.add_stream("m", {})
        yield lg, db


def test_a_retried_letter_keeps_its_time_on_influxdb(
    influx_logger: tuple[Logger, str], influxd: InfluxDBServer
) -> None:
    """InfluxDB takes any time order: a letter older than datapoints delivered after it is
    sent with its own time (T0+1), ahead of what is cached, not at the newest + 1 µs."""
    lg, db = influx_logger
    lg.insert_many("m", [{"t": T0, "d": "text"}, {"t": T0 + 1, "d": 1.5}])
    report = lg.sync()
    assert report.sent == {"m": 1} and report.deadlettered == {"m": 1}  # a field type conflict
    influxd.query('DROP MEASUREMENT "m"', db)  # the conflict is gone (and what was there)
    lg.insert_many("m", [{"t": T0 + 2, "d": 2.5}, {"t": T0 + 3, "d": 3.5}])
    assert lg.sync().sent == {"m": 2}
    lg.insert("m", 4.5, T0 + 4)  # cached, not sent yet
    assert lg.retry_deadletters() == 1
    lg.sync()
    assert lg.deadletters() == [] and len(lg) == 0
    assert [(p["time"], p["value"]) for p in influxd.points("m", db)] == [
        (round((T0 + i) * 1e9), i + 0.5) for i in range(1, 5)
    ]


# ----------------------------------------------------------------------------- restamp limits


def three_letters(logger: Logger, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: True)
    logger.insert_many("temperature", [1.0, 2.0, 3.0])
    assert logger.sync().deadlettered == {"temperature": 3}
    server.reject(None)


def test_restamped_letters_respect_max_cached(logger: Logger, server: ConnectorDBServer) -> None:
    """Queued with new times, letters count against max_cached as inserts do: refused all
    with CacheFullError and nothing changed (b064757: 40 cached of 20), or, with drop_oldest,
    the oldest dropped and counted."""
    three_letters(logger, server)
    logger.insert_many("temperature", [4.0, 5.0])
    logger.max_cached = 4
    with pytest.raises(CacheFullError, match="max_cached"):
        logger.retry_deadletters(restamp=True)
    assert len(logger) == 2 and len(logger.deadletters()) == 3
    logger.on_full = "drop_oldest"
    assert logger.retry_deadletters(restamp=True) == 3
    assert len(logger) <= 4 and logger.status().dropped >= 1
    assert logger.deadletters() == []
    logger.insert("temperature", 6.0)  # the next insert is not refused


def test_restamped_letters_respect_max_cache_bytes(
    logger: Logger, server: ConnectorDBServer
) -> None:
    three_letters(logger, server)
    logger.max_cache_bytes = 1  # below what the file uses already
    with pytest.raises(CacheFullError, match="max_cache_bytes"):
        logger.retry_deadletters(restamp=True)
    assert len(logger) == 0 and len(logger.deadletters()) == 3


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("ids", [5, "12", [1, "2"], [1.5], b"1"])
def test_wrong_typed_ids_raise_a_connectorsync_type_error(
    logger: Logger, server: ConnectorDBServer, ids: object
) -> None:
    three_letters(logger, server)
    for method in (logger.purge_deadletters, logger.retry_deadletters):
        with pytest.raises(ConnectorSyncError) as info:
            method(ids)  # type: ignore[operator]
        assert isinstance(info.value, TypeError)
        assert "ids" in str(info.value) and method.__name__ in str(info.value)
    assert len(logger.deadletters()) == 3


# ----------------------------------------------------------------------------- command line


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_cli_retry_keeps_the_time_and_restamp_asks_for_new_ones(
    logger: Logger, server: ConnectorDBServer
) -> None:
    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0 + i, "d": d} for i, d in enumerate([-1.0, 2.0])])
    logger.sync()
    server.reject(None)
    path = logger.path
    logger.close()
    code, out = run("deadletters", path, "retry", "--all")
    assert code == 0
    assert out.startswith("sent 0 dead letters again, with their own timestamps\n")
    assert "1 stay" in out
    assert stored(server) == [(T0 + 1, 2.0)]
    code, out = run("deadletters", path, "retry", "--all", "--restamp")
    assert (code, out) == (0, "queued 1 dead letters to be sent again, with new timestamps\n")
    assert run("sync", path)[0] == 0
    assert [d for _, d in stored(server)] == [2.0, -1.0]


def test_an_id_no_letter_can_have_is_no_letter(logger: Logger) -> None:
    """An id past SQLite's 64 bits raised a bare OverflowError; it names no letter."""
    assert logger.purge_deadletters([2**70]) == 0
    assert logger.retry_deadletters([2**70]) == 0


def test_a_retry_waiting_behind_a_pass_when_close_comes_sends_and_deletes_nothing(
    logger: Logger, server: ConnectorDBServer
) -> None:
    """retry_deadletters() waits for the pass under way; close() comes meanwhile: the retry
    then raises ClosedError, sends nothing and deletes nothing (it went on and deleted
    letters after close() returned)."""
    import threading

    from connectorsync import ClosedError

    refuse_negatives(server)
    logger.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
    assert logger.sync().deadlettered == {"temperature": 1}
    server.reject(None)
    logger.insert("temperature", 2.0)
    server.delay(1.0)  # the next pass's requests take a while
    passing = threading.Thread(target=logger.sync)
    passing.start()
    outcome: list[object] = []

    def retry() -> None:
        try:
            outcome.append(logger.retry_deadletters())
        except ConnectorSyncError as exc:
            outcome.append(exc)

    retrying = threading.Thread(target=retry)
    retrying.start()
    retrying.join(timeout=0.3)  # it waits for the pass
    logger.close(timeout=0.5)
    passing.join(timeout=30)
    retrying.join(timeout=30)
    server.delay(0)
    assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
    assert (T0 + 1, -1.0) not in stored(server)
