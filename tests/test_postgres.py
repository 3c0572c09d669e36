"""PostgresRemote against a real PostgreSQL (skipped without one: ``conftest.require_postgres``;
one server for the session, a table of its own per test), counted on the server. The remote
contract (outage, refusal, lost answer, credentials) is in ``test_remote_contract.py``; here:
the table and its typed column, the device from the cache identity, a lost COMMIT answer and a
server restart under load storing nothing twice, refused credentials pausing, a missing
database, refused values becoming dead letters, and the password never shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger, PostgresRemote
from connectorsync.errors import (
    AmbiguousRemoteError,
    AuthError,
    ClosedError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from connectorsync.remotes import DeliveryKind, remote_from_config
from connectorsync.resend import UNANSWERED
from connectorsync.testing.postgres import PostgresFaultProxy, PostgresServer

from .conftest import ROOT, child_env, wait_for

T0 = 1_700_000_000.0
SECRET = "Pg-S3cret-Never-Shown"


def logger(path: str, remote: Any, **options: Any) -> Logger:
    return Logger(
        path,
        remote=remote,
        on_create=lambda lg: (lg.add_stream("temperature", {}), lg.add_stream("gps", {})),
        **options,
    )


_MADE: list[PostgresRemote] = []


@pytest.fixture(autouse=True)
def _close_remotes() -> Iterator[None]:
    """A Logger leaves a remote it was given open (its owner's): each test's are closed."""
    yield
    while _MADE:
        _MADE.pop().close()


def remote(server: PostgresServer, table: str, **kwargs: Any) -> PostgresRemote:
    kwargs.setdefault("timeout", 5)
    return made(PostgresRemote(server.dsn(port=kwargs.pop("port", None)), table, **kwargs))


def made(r: PostgresRemote) -> PostgresRemote:
    _MADE.append(r)
    return r


def test_a_sync_creates_the_table_and_stores_each_datapoint_under_the_cache_identity(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    r = remote(postgres, pg_table)
    assert r.delivery_kind is DeliveryKind.IDEMPOTENT
    with logger(cache_path, r) as lg:
        lg.insert_many("temperature", [{"t": T0 + i / 4, "d": 20 + i / 8} for i in range(30)])
        lg.insert("gps", {"lat": 1.5, "lon": [-2.25, "x\\y\t\n"]}, T0)
        assert lg.sync().sent == {"temperature": 30, "gps": 1}
        identity = lg.identity
        assert r.device == identity  # bound by the Logger before its first pass
        assert lg.status().bytes_sent["temperature"] > 0  # COPY payload, counted
    assert postgres.rows(pg_table) == [
        (identity, "gps", T0, {"lat": 1.5, "lon": [-2.25, "x\\y\t\n"]}),
        *[(identity, "temperature", T0 + i / 4, 20 + i / 8) for i in range(30)],
    ]
    columns = postgres.query(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (pg_table,),
    )
    assert columns == [
        ("device", "text"),
        ("stream", "text"),
        ("t", "timestamp with time zone"),
        ("id", "bigint"),
        ("value", "jsonb"),
    ]
    assert r.hypertable is False  # TimescaleDB is not installed here: a plain table


def test_two_caches_into_one_table_are_told_apart(
    postgres: PostgresServer, pg_table: str, tmp_path: Path
) -> None:
    """The same stream and timestamps from two cache files: two devices, nothing dropped."""
    identities = []
    for name in ("a.db", "b.db"):
        with logger(str(tmp_path / name), remote(postgres, pg_table)) as lg:
            lg.insert("temperature", 1.0, T0)
            assert lg.sync().sent == {"temperature": 1}
            identities.append(lg.identity)
    assert identities[0] != identities[1]
    assert sorted(row[0] for row in postgres.rows(pg_table)) == sorted(identities)


def test_a_remote_serves_one_cache(postgres: PostgresServer, pg_table: str) -> None:
    r = remote(postgres, pg_table)
    with pytest.raises(ConfigurationError, match="device="):
        r.push("temperature", [(1, T0, "1")])  # by hand, no device: said at push
    r.bind_cache("a" * 32)
    r.bind_cache("a" * 32)  # again: nothing changes
    with pytest.raises(ConfigurationError, match="another cache"):
        r.bind_cache("b" * 32)
    r.push("temperature", [(1, T0, "1")])
    assert postgres.rows(pg_table) == [("a" * 32, "temperature", T0, 1)]
    named = remote(postgres, pg_table, device="sensor-7")
    named.bind_cache("c" * 32)  # an explicit device wins
    named.push("temperature", [(1, T0, "2")])
    assert ("sensor-7", "temperature", T0, 2) in postgres.rows(pg_table)
    r.close()
    named.close()


def test_a_typed_table_keeps_each_number_in_a_double_precision_column_too(
    postgres: PostgresServer, pg_table: str
) -> None:
    r = remote(postgres, pg_table, device="d", typed=True)
    r.push("temperature", [(1, T0, "21.5"), (2, T0 + 1, "-3"), (3, T0 + 2, '"warm"')])
    r.push("gps", [(4, T0, '{"lat": 1}')])
    numbers = postgres.query(f"SELECT stream, number FROM {pg_table} ORDER BY stream, t")
    assert numbers == [("gps", None), ("temperature", 21.5), ("temperature", -3.0),
                       ("temperature", None)]  # fmt: skip
    kinds = dict(
        postgres.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            (pg_table,),
        )
    )
    assert kinds["number"] == "double precision"
    r.close()


def test_a_lost_commit_answer_stores_nothing_twice(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    """The proxy lets COMMIT reach the server and cuts the answer: the batch is committed and
    the client cannot know. The push is ambiguous; the next pass sends the batch again and
    the unique key keeps one row each (counted on the server)."""
    proxy = PostgresFaultProxy(postgres.port)
    try:
        r = remote(postgres, pg_table, port=proxy.port)
        with logger(cache_path, r) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(100)])
            r.ping()  # connected, the table made: the next COMMIT is the batch's
            proxy.lose_next_answers(1)
            report = lg.sync()
            assert isinstance(report.exception, AmbiguousRemoteError)
            assert proxy.commits_cut == 1
            assert postgres.count(pg_table) == 100  # committed, unacknowledged
            assert len(lg) == 100  # so nothing deleted
            assert lg.sync().sent == {"temperature": 100}  # sent again
            assert len(lg) == 0
        assert postgres.count(pg_table) == 100 and postgres.duplicates(pg_table) == 0
    finally:
        proxy.close()


def test_a_letter_sent_again_without_an_answer_says_it_may_be_stored(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    """A dead letter retried once its refusal was lifted, and the answer to its COMMIT lost:
    the retry raises, the letter stays saying that the remote may hold it (it does), and the
    next retry settles it, stored once (counted on the server)."""
    proxy = PostgresFaultProxy(postgres.port)
    try:
        r = remote(postgres, pg_table, port=proxy.port)
        r.ping()  # makes the table
        postgres.query(f"ALTER TABLE {pg_table} ADD CONSTRAINT no_negatives CHECK (value >= '0')")
        with logger(cache_path, r) as lg:
            lg.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
            assert lg.sync().deadlettered == {"temperature": 1}
            postgres.query(f"ALTER TABLE {pg_table} DROP CONSTRAINT no_negatives")
            proxy.lose_next_answers(1)
            with pytest.raises(AmbiguousRemoteError):
                lg.retry_deadletters()
            (letter,) = lg.deadletters()
            assert letter.reason.startswith(UNANSWERED), letter.reason
            assert postgres.count(pg_table) == 2  # it is stored, and still a dead letter
            assert lg.retry_deadletters() == 1
            assert lg.deadletters() == []
        assert postgres.count(pg_table) == 2 and postgres.duplicates(pg_table) == 0
    finally:
        proxy.close()


def test_a_push_cut_before_commit_is_transient_and_stores_nothing(
    postgres: PostgresServer, pg_table: str
) -> None:
    proxy = PostgresFaultProxy(postgres.port)
    try:
        r = remote(postgres, pg_table, port=proxy.port, device="d")
        r.ping()
        blocker = threading.Event()
        # A lock on the table makes the INSERT wait; the network fails meanwhile.
        admin = postgres.admin(database=postgres.database)
        admin.autocommit = False
        admin.execute(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE")

        def cut_when_waiting() -> None:
            wait_for(
                lambda: postgres.query("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0,
                what="the INSERT to wait for the lock",
            )
            proxy.cut_all()
            blocker.set()

        cutter = threading.Thread(target=cut_when_waiting)
        cutter.start()
        with pytest.raises(TransientRemoteError):
            r.push("temperature", [(1, T0, "1")])
        cutter.join()
        admin.rollback()
        admin.close()
        wait_for(lambda: postgres.count(pg_table) == 0 and _no_waiters(postgres))
        r.push("temperature", [(1, T0, "1")])  # a new connection
        assert postgres.count(pg_table) == 1
        r.close()
    finally:
        proxy.close()


def _no_waiters(server: PostgresServer) -> bool:
    return server.query("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] == 0


def test_a_server_restart_in_the_middle_of_a_sync_loses_and_duplicates_nothing(
    postgres: PostgresServer, pg_table: str, cache_path: str, fast_backoff: None
) -> None:
    """Restarted while the syncer drains 20,000 datapoints: every one is stored, once."""
    count = 20_000
    r = remote(postgres, pg_table)
    lg = logger(cache_path, r, batch_size=500, sync_jitter=0)
    try:
        lg.insert_many("temperature", [{"t": T0 + i / 8, "d": i} for i in range(count)])
        lg.start()
        wait_for(lambda: postgres.count(pg_table) >= 2000, what="the sync to be under way")
        postgres.restart()
        stored_before = postgres.count(pg_table)
        wait_for(lambda: len(lg) == 0, timeout=60, what="delivery after the restart")
    finally:
        lg.close()
        postgres.start()
    assert stored_before < count  # the restart came in the middle
    assert postgres.count(pg_table) == count and postgres.duplicates(pg_table) == 0
    stored = postgres.query(f"SELECT value FROM {pg_table} ORDER BY t")
    assert [row[0] for row in stored] == list(range(count))


def test_refused_credentials_pause_syncing_and_keep_the_data(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    r = made(PostgresRemote(postgres.dsn(password=SECRET), pg_table, timeout=5))
    with logger(cache_path, r, sync_jitter=0) as lg:
        lg.insert("temperature", 1.0)
        report = lg.sync()
        assert isinstance(report.exception, AuthError)
        assert "password authentication failed" in str(report.exception)
        lg.start()
        wait_for(lambda: lg.status().paused, what="syncing to pause")
        assert len(lg) == 1 and lg.deadletters() == []
        shown = repr(lg.status()) + repr(r) + str(report.exception) + repr(report)
        assert SECRET not in shown
    assert postgres.count(pg_table) == 0


def test_a_missing_database_is_a_clear_error_and_keeps_the_data(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    r = made(PostgresRemote(postgres.dsn(database="no_such_db"), pg_table, timeout=5))
    with logger(cache_path, r) as lg:
        lg.insert("temperature", 1.0)
        report = lg.sync()
        error = report.exception
        assert type(error) is RemoteError
        assert 'database "no_such_db" does not exist' in str(error)
        assert "check the database name" in str(error)
        assert len(lg) == 1 and lg.deadletters() == []


def test_a_server_that_is_down_is_transient(postgres: PostgresServer, pg_table: str) -> None:
    proxy = PostgresFaultProxy(postgres.port)
    port = proxy.port
    proxy.close()  # nothing listens there now
    r = remote(postgres, pg_table, port=port, device="d")
    with pytest.raises(TransientRemoteError, match="Connection refused"):
        r.push("temperature", [(1, T0, "1")])


@pytest.mark.parametrize(
    ("typed", "bad"),
    [
        (False, '"nul \\u0000 inside"'),  # jsonb holds no \u0000
        (True, "1" + "0" * 400),  # a number beyond double precision
    ],
)
def test_a_refused_value_is_a_dead_letter_and_the_rest_is_stored(
    postgres: PostgresServer, pg_table: str, cache_path: str, typed: bool, bad: str
) -> None:
    r = remote(postgres, pg_table, typed=typed)
    import json

    value = json.loads(bad)
    with logger(cache_path, r) as lg:
        points = [{"t": T0 + i, "d": float(i)} for i in range(40)]
        points[17]["d"] = value
        lg.insert_many("temperature", points)
        report = lg.sync()
        assert report.sent == {"temperature": 39} and report.deadlettered == {"temperature": 1}
        (letter,) = lg.deadletters()
        assert letter.t == T0 + 17 and letter.d == value
        assert "PostgreSQL refused the value" in letter.reason and "SQLSTATE 22" in letter.reason
        assert len(lg) == 0
    stored = postgres.query(f"SELECT extract(epoch FROM t)::float8 FROM {pg_table} ORDER BY t")
    assert [row[0] for row in stored] == [T0 + i for i in range(40) if i != 17]


def test_the_password_is_never_shown(
    postgres: PostgresServer, pg_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    for dsn in (
        postgres.dsn(password=SECRET),
        f"host=127.0.0.1 port={postgres.port} dbname=connectorsync user=connectorsync "
        f"password={SECRET}",
    ):
        r = PostgresRemote(dsn, pg_table, device="d", timeout=5)
        shown.append(repr(r))
        for call in (r.ping, lambda r=r: r.push("s", [(1, T0, "1")]), lambda r=r: r.reconcile("s")):
            with pytest.raises(AuthError) as caught:
                call()
            shown.append(str(caught.value) + repr(caught.value))
        r.close()
    good = remote(postgres, pg_table, device="d", password=SECRET)  # the wrong one, by keyword
    with pytest.raises(AuthError) as caught:
        good.ping()
    shown.append(str(caught.value) + repr(good))
    with pytest.raises(ConfigurationError) as bad_dsn:
        PostgresRemote(f"postgresql://u:{SECRET} x@127.0.0.1/db")
    shown.append(str(bad_dsn.value))
    assert "***" in str(bad_dsn.value)
    shown.append(caplog.text)
    for text in shown:
        assert SECRET not in text


def test_described_as_data_and_built_again(postgres: PostgresServer, pg_table: str) -> None:
    r = made(PostgresRemote(postgres.dsn(), pg_table, typed=True, timeout=7, hypertable=False))
    config = r.to_config()
    assert config["kind"] == "postgres" and config["dsn"] == postgres.dsn()
    again = remote_from_config(config)
    assert isinstance(again, PostgresRemote) and again.to_config() == config
    assert again.ping() == "connectorsync/connectorsync"
    again.close()


def test_bad_arguments_are_refused_when_built() -> None:
    with pytest.raises(ConfigurationError, match="table must be a name"):
        PostgresRemote("postgresql://u@127.0.0.1/db", "drop table; --")
    with pytest.raises(TypeError, match="typed must be True or False"):
        PostgresRemote("postgresql://u@127.0.0.1/db", typed="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        PostgresRemote("postgresql://u@127.0.0.1/db", timeout=0)
    with pytest.raises(ConfigurationError, match="dsn must be a str") as caught:
        PostgresRemote(None)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError)


def test_close_is_final_and_ends_a_push_under_way(postgres: PostgresServer, pg_table: str) -> None:
    r = remote(postgres, pg_table, device="d")
    r.ping()
    admin = postgres.admin(database=postgres.database)
    admin.autocommit = False
    admin.execute(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE")  # the push waits
    errors: list[BaseException] = []

    def push() -> None:
        try:
            r.push("temperature", [(1, T0, "1")])
        except BaseException as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    wait_for(lambda: not _no_waiters(postgres), what="the push to wait for the lock")
    r.close()
    pusher.join(10)
    assert not pusher.is_alive()
    admin.rollback()
    admin.close()
    assert len(errors) == 1 and isinstance(errors[0], TransientRemoteError)
    with pytest.raises(ClosedError):
        r.push("temperature", [(1, T0, "1")])
    r.close()  # twice is harmless
    wait_for(lambda: _no_waiters(postgres))
    assert postgres.count(pg_table) == 0


def test_a_value_refused_alone_by_hand_is_rejected_with_the_reason(
    postgres: PostgresServer, pg_table: str
) -> None:
    r = remote(postgres, pg_table, device="d")
    with pytest.raises(RejectedError, match="stream 'temperature'") as caught:
        r.push("temperature", [(1, T0, "1"), (2, T0 + 1, '"\\u0000"')])
    assert "\\u0000" in caught.value.body
    assert postgres.count(pg_table) == 0  # one transaction: nothing of the batch
    r.close()


def test_a_connection_that_died_while_kept_is_replaced_without_a_failed_push(
    postgres: PostgresServer, pg_table: str
) -> None:
    """A server restart between two pushes kills the kept connection: the next push finds it
    dead before sending its batch, and goes on at once on a new one."""
    r = remote(postgres, pg_table, device="d")
    r.push("temperature", [(1, T0, "1")])
    postgres.restart()
    r.push("temperature", [(2, T0 + 1, "2")])  # no TransientRemoteError
    assert postgres.count(pg_table) == 2


def test_a_table_locked_past_the_timeout_is_transient(
    postgres: PostgresServer, pg_table: str
) -> None:
    r = remote(postgres, pg_table, device="d", timeout=1)
    r.ping()
    admin = postgres.admin(database=postgres.database)
    admin.autocommit = False
    admin.execute(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(TransientRemoteError, match="timeout"):
            r.push("temperature", [(1, T0, "1")])
    finally:
        admin.rollback()
        admin.close()
    r.push("temperature", [(1, T0, "1")])
    assert postgres.count(pg_table) == 1


def test_a_server_gone_silent_is_cut_by_the_watchdog(
    postgres: PostgresServer, pg_table: str
) -> None:
    """Nothing reaches the server (the proxy holds every message back), so its own timeouts
    cannot act: the remote's watchdog cuts the connection and the push fails, transient."""
    proxy = PostgresFaultProxy(postgres.port)
    try:
        r = remote(postgres, pg_table, device="d", timeout=1, port=proxy.port)
        r.ping()
        proxy.delay(4)
        with pytest.raises(TransientRemoteError):
            r.push("temperature", [(1, T0, "1")])
        proxy.delay(0)
        r.close()
    finally:
        proxy.close()
    assert postgres.count(pg_table) == 0


def _backends(server: PostgresServer) -> list[int]:
    """The server pids of the sessions connectorsync holds (its application_name)."""
    rows = server.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'connectorsync'")
    return sorted(row[0] for row in rows)


def test_a_refused_batch_keeps_the_connection_for_its_bisection(
    postgres: PostgresServer, pg_table: str
) -> None:
    """The server answered: the transaction is rolled back and the connection kept, so
    bisecting a refused batch costs no new connections."""
    r = remote(postgres, pg_table, device="d")
    r.ping()
    before = _backends(postgres)
    for _ in range(3):
        with pytest.raises(RejectedError):
            r.push("temperature", [(1, T0, '"\\u0000"')])
    r.push("temperature", [(2, T0 + 1, "2")])
    assert _backends(postgres) == before and len(before) == 1
    assert postgres.count(pg_table) == 1


NO_PSYCOPG = """\
import sys


class NoPsycopg:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoPsycopg())
"""

BUILD_WITHOUT_PSYCOPG = """\
try:
    import psycopg  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("psycopg is importable: the test proves nothing")
import connectorsync  # works without the extra
from connectorsync import ConfigurationError, PostgresRemote
try:
    PostgresRemote("postgresql://u@127.0.0.1/db", device="d")
except ConfigurationError as exc:
    print("REFUSED:", exc)
else:
    print("BUILT")
"""


def test_without_psycopg_building_the_remote_fails_naming_the_extra(tmp_path: Path) -> None:
    """An interpreter in which psycopg cannot be imported (a sitecustomize blocks it):
    ``import connectorsync`` works, building a PostgresRemote raises ConfigurationError naming
    the ``connectorsync[postgres]`` extra (rather than a remote that never delivers)."""
    (tmp_path / "sitecustomize.py").write_text(NO_PSYCOPG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WITHOUT_PSYCOPG],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED:"), result.stdout
    assert "connectorsync[postgres]" in result.stdout


def test_two_datapoints_within_one_microsecond_are_both_stored(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    """timestamptz keeps microseconds; the cache keeps a stream's times apart by as little as
    its 1 µs nudge of a tie (0.88 to 1.12 µs in floating point), so two datapoints can share
    a microsecond: the cache id in the key keeps them apart (a key of device, stream and t
    alone took the second for a resend and dropped it)."""
    near = T0 + 3 + 2.5e-7  # another float than T0 + 3, the same microsecond
    assert near != T0 + 3
    with logger(cache_path, remote(postgres, pg_table)) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(4)])
        lg.insert_many("temperature", [{"t": near, "d": 99}, {"t": T0 + 5, "d": 5}])
        lg.insert_many("temperature", [{"t": T0 + 6 + i * 1e-6, "d": 6 + i} for i in range(50)])
        assert lg.sync().sent == {"temperature": 56}
    stored = [row[3] for row in postgres.rows(pg_table)]
    assert stored == [0, 1, 2, 3, 99, 5, *range(6, 56)]
    assert postgres.duplicates(pg_table) == 0


def test_connectorsync_sync_rebuilds_the_remote_and_binds_the_cache_identity(
    postgres: PostgresServer, pg_table: str, cache_path: str
) -> None:
    """The Logger records the remote's configuration (password included, in the owner-only
    cache file); ``connectorsync sync CACHE`` in another process builds it again, binds the
    cache's identity, and delivers; no output shows the password."""
    with logger(cache_path, remote(postgres, pg_table)) as lg:
        lg.insert("temperature", 1.5, T0)
        postgres.stop()
        try:
            assert isinstance(lg.sync().exception, TransientRemoteError)  # recorded, kept
        finally:
            postgres.start()
        identity = lg.identity
    shown = ""
    for command in ("sync", "status"):
        done = subprocess.run(
            [sys.executable, "-m", "connectorsync", command, cache_path],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        shown += done.stdout + done.stderr
    assert postgres.rows(pg_table) == [(identity, "temperature", T0, 1.5)]
    assert "PostgresRemote(" in shown and postgres.password not in shown
