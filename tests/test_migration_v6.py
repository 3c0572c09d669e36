"""Schema v6 (a position per remote and stream): a v5 cache's one remote becomes ``default``
and keeps its batch in flight, what it knows of the streams on the remote, and its dead
letters."""

from __future__ import annotations

import os

import apsw

from connectorsync import HTTPRemote, Logger
from connectorsync.cache.migrations import MIGRATIONS
from connectorsync.testing.receiver import HTTPReceiver


def _v5_cache(path: str) -> None:
    """A v5 cache as connectorsync left it: stream "s" with six datapoints, ids 2 and 3 in
    flight, created on the remote; one dead letter."""
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    with conn:
        for _, step in MIGRATIONS[:5]:
            step(conn)
        conn.execute("PRAGMA user_version=5")
        conn.execute(
            "INSERT INTO streams (name, schema, remote_created, inflight_lo, inflight) "
            "VALUES ('s', '{\"type\":\"integer\"}', 1, 2, 3)"
        )
        for i in range(6):
            conn.execute(
                "INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)", (1.7e9 + i, str(i))
            )
        conn.execute(
            "INSERT INTO deadletters (stream, t, d, reason, failed_at) "
            "VALUES ('s', 1.6e9, '\"x\"', 'refused: not an integer', 1.6e9)"
        )
    conn.close()
    os.chmod(path, 0o600)


def test_a_v5_cache_keeps_its_batch_in_flight_and_dead_letters_as_default(
    tmp_path, receiver: HTTPReceiver
) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "cache.db")
    _v5_cache(path)
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    with Logger(path, remote=remote, batch_size=10) as lg:
        assert os.path.exists(path + ".v5-backup")
        assert [d.reason for d in lg.deadletters()] == ["refused: not an integer"]
        assert lg.cleardata() == 4  # values 0, 3, 4, 5; 1 and 2 (ids 2, 3) are in flight
        assert len(lg) == 2
        assert lg.sync().sent == {"s": 2}  # the batch in flight goes first, once
        assert len(lg) == 0
    assert [item["d"] for item in receiver.items("/ingest/s")] == [1, 2]
