"""A cache written by connectordb 0.3.5's own Logger migrates in place and syncs completely."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import connectordb
import connectordb.logger
import pytest

from connectorsync import Logger
from connectorsync.cache import MIGRATIONS, SCHEMA_VERSION
from connectorsync.cli import main
from connectorsync.errors import ConfigurationError
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.live import connection_pragma
from connectorsync.testing.probe import CacheProbe

from .conftest import PYTHON, ROOT, child_env


def make_connectordb_cache(path: str, apikey: str, url: str) -> list[tuple[str, float, object]]:
    """Fill a cache with connectordb 0.3.5's Logger; return (stream, t, value) it holds."""

    def init(lg: connectordb.logger.Logger) -> None:
        lg.apikey = apikey
        lg.serverurl = url
        lg.addStream_force("temperature", {"type": "number"})
        lg.addStream_force("status", {"type": "object"})
        lg.syncperiod = 30

    old = connectordb.logger.Logger(path, on_create=init)
    old.data = {"site": "greenhouse"}
    for i in range(50):
        old.insert("temperature", 20 + i / 10)
    old.insert("status", {"door": "open"})
    old.database.close()
    conn = apsw.Connection(path)
    rows = [
        (s, t, json.loads(d))
        for s, t, d in conn.execute("SELECT stream, timestamp, jsondata FROM cache ORDER BY rowid")
    ]
    conn.close()
    return rows


def test_connectordb_cache_migrates_and_syncs(cache_path: str, server: ConnectorDBServer) -> None:
    rows = make_connectordb_cache(cache_path, server.apikey, server.url)

    lg = Logger(cache_path)
    assert lg.apikey == server.apikey
    assert lg.serverurl == server.url
    assert lg.syncperiod == 30
    assert lg.data == {"site": "greenhouse"}
    assert lg.streams == {"temperature": {"type": "number"}, "status": {"type": "object"}}
    assert len(lg) == len(rows) == 51
    conn = apsw.Connection(cache_path)
    assert list(conn.execute("PRAGMA user_version")) == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & {"cache", "metadata", "connectordb_cache"}
    conn.close()

    report = lg.sync()
    assert report.ok, report.errors
    assert report.sent == {"temperature": 50, "status": 1}
    assert len(lg) == 0
    lg.close()
    for stream in ("temperature", "status"):
        expected = [(t, v) for s, t, v in rows if s == stream]
        stored = server.datapoints(f"alice/sensor/{stream}")
        assert [p["d"] for p in stored] == [v for _, v in expected]
        # Timestamps kept (ties moved by at most a microsecond each).
        for p, (t, _) in zip(stored, expected, strict=True):
            assert abs(p["t"] - t) < 1e-3

    # The real connectordb client reads back what connectorsync synced.
    cdb = connectordb.ConnectorDB(server.apikey, url=server.url)
    try:
        assert [p["d"] for p in cdb["temperature"][:]] == [20 + i / 10 for i in range(50)]
        assert cdb["status"][-1]["d"] == {"door": "open"}
    finally:
        cdb.close()


def test_migration_keeps_ties_in_order_and_bad_rows_as_dead_letters(cache_path: str) -> None:
    rows = make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    conn = apsw.Connection(cache_path)
    t = rows[-1][1] + 10
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, '1')", (t,))
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, '2')", (t,))  # a tie
    conn.execute("INSERT INTO cache VALUES ('temperature', ?, 'not json')", (t + 1,))
    conn.execute("INSERT INTO cache VALUES ('ghost', ?, '3')", (t + 2,))  # unregistered stream
    conn.close()

    with Logger(cache_path) as lg:
        assert len(lg) == 51 + 2
        assert lg.status().streams["temperature"].deadletters == 1
    with CacheProbe(cache_path) as probe:
        points = probe.rows("temperature")
        times = [p[1] for p in points]
        assert all(a < b for a, b in itertools.pairwise(times))
        assert [p[2] for p in points[-2:]] == ["1", "2"]
        reasons = [letter.reason for letter in probe.deadletters()]
    assert sorted(reasons) == [
        "connectordb cache held data for an unregistered stream",
        "connectordb cache held data that is not JSON",
    ]


def test_real_connectordb_client_reads_what_connectorsync_synced(
    logger: Logger, server: ConnectorDBServer
) -> None:
    logger.addStream("status", {"type": "object", "properties": {"ok": {"type": "boolean"}}})
    logger.insert_many("temperature", [{"t": 1.7e9 + i, "d": i * 1.5} for i in range(10)])
    logger.insert("status", {"ok": True})
    assert logger.sync().ok
    cdb = connectordb.ConnectorDB(server.apikey, url=server.url)
    try:
        temp = cdb["temperature"]
        assert temp.exists() and temp.schema == {"type": "number"}
        assert len(temp) == 10
        assert [(p["t"], p["d"]) for p in temp[:]] == [(1.7e9 + i, i * 1.5) for i in range(10)]
        assert cdb["status"][-1]["d"] == {"ok": True}
    finally:
        cdb.close()


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_migrated_cache_uses_wal(cache_path: str, durability: str) -> None:
    make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    with Logger(cache_path, durability=durability) as lg:
        assert connection_pragma(lg, "journal_mode") == "wal"
        with CacheProbe(cache_path) as probe:
            assert probe.pragma("journal_mode") == "wal"


def test_migrated_connectordb_cache_is_owner_only(
    cache_path: str, server: ConnectorDBServer
) -> None:
    make_connectordb_cache(cache_path, server.apikey, server.url)
    os.chmod(cache_path, 0o644)  # connectordb left it readable by all, apikey and all
    with Logger(cache_path) as lg:
        lg.insert("temperature", 30.0)  # WAL files exist now
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(cache_path + suffix):
                assert stat.S_IMODE(os.stat(cache_path + suffix).st_mode) == 0o600, suffix
    assert stat.S_IMODE(os.stat(cache_path).st_mode) == 0o600


def test_status_shows_a_connectordb_cache_and_leaves_it_alone(
    cache_path: str, server: ConnectorDBServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status`` shows a connectordb 0.3.5 cache's streams and counts while the old program
    keeps inserting, never changes the file, and says how to migrate; the other commands that
    only look refuse it, saying so."""
    from connectorsync.cli import main

    secret_url = server.url.replace("http://", "http://alice:S3C'R@ET@")
    rows = make_connectordb_cache(cache_path, server.apikey, secret_url)
    old = connectordb.logger.Logger(cache_path)  # the 0.3.5 program, still running
    try:
        for inserted in range(3):
            os.utime(cache_path, ns=(1_000_000_000, 1_000_000_000))  # any write would move it
            before = snapshot(cache_path)
            out = io.StringIO()
            assert main(["status", cache_path], out=out) == 0
            text = out.getvalue()
            assert snapshot(cache_path) == before
            assert f"{len(rows) + inserted} datapoints cached in 2 streams" in text
            lines = {line.split()[0]: line.split() for line in text.splitlines() if line}
            assert lines["temperature"][1] == str(50 + inserted) and lines["status"][1] == "1"
            assert f"connectorsync migrate {cache_path}" in text
            assert "alice:***@127.0.0.1" in text
            old.insert("temperature", 99.5 + inserted)  # it still works on its file
        data = json.loads(run("status", cache_path, "--json")[1])
        assert data["streams"]["temperature"]["cached"] == 53 and data["cached"] == 54
        assert data["format"] == "connectordb 0.3.5" and "connectorsync migrate" in data["migrate"]
        code, out_text = run("status", cache_path, "--check")
        assert code == 1 and "connectorsync migrate" in out_text
        shown = json.dumps(data) + out_text + capsys.readouterr().err
        for argv in (["export", cache_path], ["deadletters", cache_path, "list"]):
            code, out_text = run(*argv)
            err = capsys.readouterr().err
            assert code == 2 and out_text == ""
            assert "connectordb 0.3.5" in err and "stop the old program first" in err
            shown += err
        assert server.apikey not in shown and "S3C" not in shown
        assert len(old) == len(rows) + 3
    finally:
        old.database.close()


@contextlib.contextmanager
def inserting_connectordb_program(path: str, count: int) -> Iterator[Callable[[], int | None]]:
    """The connectordb 0.3.5 program inserting ``count`` datapoints into its cache at
    ``path``, its file open until the block ends. Yields ``failed()``: None while it
    inserts, then how many of its inserts raised."""
    import select

    code = (
        "import sys\n"
        "from connectordb.logger import Logger\n"
        f"lg = Logger({path!r})\n"
        "print('open', flush=True)\n"
        "failed = 0\n"
        f"for i in range({count}):\n"
        "    try:\n"
        "        lg.insert('temperature', float(i))\n"
        "    except Exception:\n"
        "        failed += 1\n"
        "print(failed, flush=True)\n"
        "sys.stdin.read()\n"  # the file stays open until the test closes our stdin
    )
    proc = subprocess.Popen(
        [PYTHON, "-c", code],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: list[int] = []

    def failed() -> int | None:
        assert proc.stdout is not None
        if not result and select.select([proc.stdout], [], [], 0)[0]:
            result.append(int(proc.stdout.readline()))
        return result[0] if result else None

    try:
        assert proc.stdout.readline() == "open\n"
        yield failed
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()


@pytest.mark.parametrize("command", ["status", "export", "deadletters"])
def test_status_never_makes_the_old_program_fail_an_insert(
    cache_path: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connectordb 0.3.5 program sets no busy timeout: a reader's lock held while it
    commits fails its insert at once ("database is locked"). ``status`` run again and again
    while it inserts 1,500 datapoints made it fail 59 of them (in 76 runs); ``export`` and
    ``deadletters``, which refuse such a cache, about one in two runs."""
    from connectorsync.cli import main

    rows = make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    runs = 0
    argv = {"status": ["status"], "export": ["export"], "deadletters": ["deadletters", "list"]}
    with inserting_connectordb_program(cache_path, 1500) as failed:
        while failed() is None:
            out = io.StringIO()
            code = main([*argv[command], cache_path], out=out)
            if command == "status":
                assert code == 0 and "datapoints cached in 2 streams" in out.getvalue()
            else:
                assert code == 2 and "stop the old program first" in capsys.readouterr().err
            runs += 1
        assert failed() == 0, f"after {runs} runs"
    assert json.loads(run("status", cache_path, "--json")[1])["cached"] == len(rows) + 1500


@pytest.mark.parametrize("how", ["migrate", "Logger"])
def test_a_refused_migration_never_makes_the_old_program_fail_an_insert(
    cache_path: str, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``migrate`` (or opening a Logger) while the old program runs is refused; it took the
    write lock first, then looked through /proc for who has the file open: the old program,
    which sets no busy timeout, failed its inserts meanwhile (934 in 51 runs of migrate)."""
    rows = make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    runs = 0
    with inserting_connectordb_program(cache_path, 1500) as failed:
        while failed() is None:
            if how == "migrate":
                code, _ = run("migrate", cache_path)
                assert code != 0 and "stop the old program first" in capsys.readouterr().err
            else:
                with pytest.raises(ConfigurationError, match="stop the old program first"):
                    Logger(cache_path)
            runs += 1
        assert failed() == 0, f"after {runs} refusals"
    assert backups(cache_path) == []
    assert json.loads(run("status", cache_path, "--json")[1])["cached"] == len(rows) + 1500


# --------------------------------------------------------------------------- explicit migration


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def snapshot(path: str) -> tuple[bytes, int, int]:
    """The file's bytes, modification time and mode: any write would change one."""
    with open(path, "rb") as f:
        info = os.stat(path)
        return f.read(), info.st_mtime_ns, stat.S_IMODE(info.st_mode)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def connectordb_program(path: str) -> Iterator[subprocess.Popen[str]]:
    """The connectordb 0.3.5 program, running in another process with the cache at ``path``
    open, until the block ends (then it exits, closing the file)."""
    code = (
        "import sys\n"
        "from connectordb.logger import Logger as CDBLogger\n"
        f"lg = CDBLogger({path!r})\n"
        "print('open', len(lg), flush=True)\n"
        "sys.stdin.read()\n"  # until the test closes our stdin
        "lg.database.close()\n"
    )
    proc = subprocess.Popen(
        [PYTHON, "-c", code],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("open ")
        yield proc
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        if proc.wait(timeout=30) != 0:
            proc.kill()
        proc.stdout.close()


def backups(path: str) -> list[str]:
    folder = Path(path).parent
    return sorted(str(p) for p in folder.iterdir() if "-backup" in p.name)


def test_migrate_refuses_while_the_connectordb_program_runs_then_backs_up_and_migrates(
    cache_path: str, server: ConnectorDBServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_connectordb_cache(cache_path, server.apikey, server.url)
    os.chmod(cache_path, 0o644)  # as connectordb leaves it under a usual umask
    with connectordb_program(cache_path) as old:
        before = snapshot(cache_path)
        code, out = run("migrate", cache_path)
        err = capsys.readouterr().err
        assert code == 2 and out == ""
        assert "stop the old program first" in err and f"pid {old.pid}" in err
        assert snapshot(cache_path) == before
        with pytest.raises(ConfigurationError, match="stop the old program first"):
            Logger(cache_path)
        assert snapshot(cache_path) == before
        assert backups(cache_path) == []
        original = before[0]

    code, out = run("migrate", cache_path)
    assert code == 0, capsys.readouterr().err
    [backup] = backups(cache_path)
    assert backup == cache_path + ".connectordb-backup"
    assert f"backup: {backup}" in out
    assert mode(backup) == 0o600
    with open(backup, "rb") as f:
        assert f.read() == original
    assert mode(cache_path) == 0o600
    conn = apsw.Connection(cache_path)
    assert list(conn.execute("PRAGMA user_version")) == [(SCHEMA_VERSION,)]
    conn.close()

    with Logger(cache_path) as lg:
        assert len(lg) == len(rows)
        report = lg.sync()
        assert report.ok, report.errors
        assert report.sent == {"temperature": 50, "status": 1}
    for stream in ("temperature", "status"):
        expected = [v for s, _, v in rows if s == stream]
        assert [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")] == expected
    assert mode(cache_path) == 0o600
    with open(backup, "rb") as f:
        assert f.read() == original  # the backup is left alone: it is the way back


def test_logger_backs_up_a_connectordb_cache_before_migrating_and_logs_where(
    cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    with open(cache_path, "rb") as f:
        original = f.read()
    with caplog.at_level(logging.WARNING, logger="connectorsync.cache"), Logger(cache_path) as lg:
        assert len(lg) == 51
    backup = cache_path + ".connectordb-backup"
    assert backups(cache_path) == [backup]
    with open(backup, "rb") as f:
        assert f.read() == original
    assert mode(backup) == 0o600
    warnings = [
        r
        for r in caplog.records
        if r.name == "connectorsync.cache.schema" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and backup in warnings[0].getMessage()


def test_migrate_never_overwrites_an_existing_backup(cache_path: str) -> None:
    make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    with open(cache_path, "rb") as f:
        original = f.read()
    earlier = cache_path + ".connectordb-backup"
    with open(earlier, "wb") as f:
        f.write(b"a backup made earlier, kept")
    code, out = run("migrate", cache_path)
    assert code == 0
    [new] = [b for b in backups(cache_path) if b != earlier]
    assert new.startswith(earlier) and f"backup: {new}" in out
    with open(earlier, "rb") as f:
        assert f.read() == b"a backup made earlier, kept"
    with open(new, "rb") as f:
        assert f.read() == original
    assert mode(new) == 0o600


def test_migrate_an_older_connectorsync_cache_backs_up_what_it_held(cache_path: str) -> None:
    conn = apsw.Connection(cache_path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    MIGRATIONS[0][1](conn)  # a v1 cache, as an older connectorsync left it
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO streams (name, schema) VALUES ('temperature', '{}')")
    conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (1, 1.7e9, '21.5')")
    conn.close()
    os.chmod(cache_path, 0o600)

    code, out = run("migrate", cache_path)
    assert code == 0
    backup = cache_path + ".v1-backup"
    assert backups(cache_path) == [backup] and f"backup: {backup}" in out
    assert mode(backup) == 0o600 and mode(cache_path) == 0o600
    conn = apsw.Connection(backup, flags=apsw.SQLITE_OPEN_READONLY)
    assert list(conn.execute("PRAGMA user_version")) == [(1,)]
    assert list(conn.execute("SELECT t, d FROM datapoints")) == [(1.7e9, "21.5")]
    conn.close()
    with Logger(cache_path) as lg:
        assert len(lg) == 1


def test_migrate_a_current_cache_says_so_and_writes_nothing(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        lg.addStream("temperature", {"type": "number"})
    before = snapshot(cache_path)
    code, out = run("migrate", cache_path)
    assert code == 0
    assert "nothing to migrate" in out
    assert snapshot(cache_path) == before and backups(cache_path) == []


def test_migrate_refuses_a_missing_file_or_not_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.db")
    assert run("migrate", missing)[0] == 2
    assert not os.path.exists(missing)
    other = str(tmp_path / "other.db")
    conn = apsw.Connection(other)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    before = snapshot(other)
    assert run("migrate", other)[0] == 2
    assert "not a connectorsync cache" in capsys.readouterr().err
    assert snapshot(other) == before and backups(other) == []


def test_a_v3_cache_migrates_to_v4_with_empty_stream_properties(
    cache_path: str, server: ConnectorDBServer
) -> None:
    conn = apsw.Connection(cache_path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    for _, step in MIGRATIONS[:3]:  # a v3 cache, as connectorsync 3-schema versions left it
        step(conn)
    conn.execute("PRAGMA user_version=3")
    conn.execute(
        "INSERT INTO streams (name, schema) VALUES ('temperature', '{\"type\":\"number\"}')"
    )
    conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (1, 1.7e9, '21.5')")
    conn.close()
    os.chmod(cache_path, 0o600)

    assert SCHEMA_VERSION >= 4 and MIGRATIONS[3][0] == "v4_stream_properties"
    with Logger(cache_path, apikey=server.apikey, serverurl=server.url) as lg:
        assert lg.streams == {"temperature": {"type": "number"}} and len(lg) == 1
        lg.addStream("door", {"type": "boolean"}, nickname="Door")
        assert lg.sync().sent == {"temperature": 1}
    assert backups(cache_path) == [cache_path + ".v3-backup"]
    conn = apsw.Connection(cache_path, flags=apsw.SQLITE_OPEN_READONLY)
    assert list(conn.execute("PRAGMA user_version")) == [(SCHEMA_VERSION,)]
    assert dict(conn.execute("SELECT name, properties FROM streams")) == {
        "temperature": "{}",
        "door": '{"nickname": "Door"}',
    }
    conn.close()
    assert server.datapoints("alice/sensor/temperature")[0]["d"] == 21.5


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 4 MiB (tmpfs), so that a disk fills for real."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("room", [0.5, 2.0])  # free space left, times the cache's size
def test_migrate_on_a_nearly_full_disk_changes_nothing_and_says_so(
    small_disk: Path, room: float, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from connectorsync.errors import CacheError

    path = str(small_disk / "cache.db")

    def init(lg: connectordb.logger.Logger) -> None:
        lg.apikey = "K3Y"
        lg.serverurl = "http://127.0.0.1:9"
        lg.addStream_force("note", {"type": "string"})

    old = connectordb.logger.Logger(path, on_create=init)
    for i in range(1500):
        old.insert("note", f"{i:05d}" + "x" * 200)
    old.database.close()
    size = os.path.getsize(path)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - int(room * size)))
    before = snapshot(path)
    code, out = run("migrate", path)  # no apsw error escapes: a message and exit 1
    err = capsys.readouterr().err
    assert code == 1 and out == "", err
    assert "nothing was changed" in err and "free some space" in err
    with pytest.raises(CacheError, match="nothing was changed"):
        Logger(path)  # opening it would migrate it too
    assert snapshot(path) == before
    assert sorted(os.listdir(small_disk)) == ["cache.db", "filler"]  # no backup, no journal

    filler.unlink()  # room again: the backup is the file as it was, byte for byte
    code, out = run("migrate", path)
    assert code == 0, capsys.readouterr().err
    (backup,) = backups(path)
    with open(backup, "rb") as f:
        assert f.read() == before[0]
    with Logger(path) as lg:
        assert len(lg) == 1500


def test_a_kill_during_the_backup_leaves_no_partial_copy_under_a_backup_name(
    cache_path: str,
) -> None:
    """``migrate`` killed (-9) while it copies the file: whatever is left under a backup's
    name is a whole copy of the file as it was (the copy used to be written in place, so a
    kill left a truncated file named like a good backup); then a reopen migrates it."""
    import signal
    import time

    make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    conn = apsw.Connection(cache_path)  # made big at once: a copy that takes a while
    with conn:
        conn.executemany(
            "INSERT INTO cache (stream, timestamp, jsondata) VALUES ('status', ?, ?)",
            ((2e9 + i, json.dumps({"pad": f"{i:06d}" + "p" * 1000})) for i in range(30000)),
        )
    conn.close()
    with open(cache_path, "rb") as f:
        original = f.read()
    proc = subprocess.Popen(
        [PYTHON, "-m", "connectorsync", "migrate", cache_path],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and not backups(cache_path):  # the copy has begun
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for backup in backups(cache_path):
        if backup.endswith("-backup") or backup.split("-backup-")[-1].replace("-", "").isdigit():
            with open(backup, "rb") as f:
                assert f.read() == original, f"{backup} is not a whole copy"
    with Logger(cache_path) as lg:  # the file itself: as it was, or migrated
        assert len(lg) == 30051
    assert not [b for b in backups(cache_path) if b.endswith(".partial")]
