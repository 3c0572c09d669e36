"""The command line, driven on real cache files against a real loopback server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess

import pytest
import requests

from connectorsync import ConfigurationError, ConnectorDBRemote, InfluxDBRemote, Logger
from connectorsync.cli import build_parser, main
from connectorsync.testing import ConnectorDBServer

from .conftest import PYTHON, ROOT, child_env


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def cache(cache_path: str, server: ConnectorDBServer) -> str:
    """A cache with a backlog: 3 temperatures, 2 humidities."""
    with Logger(cache_path, apikey=server.apikey) as lg:
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.addStream("humidity", {"type": "number"})
        lg.insert_many("temperature", [{"t": 1.7e9 + i, "d": 20.0 + i} for i in range(3)])
        lg.insert_many("humidity", [{"t": 1.7e9 + i, "d": 50.0 + i} for i in range(2)])
    return cache_path


def test_status_text_and_json(cache: str) -> None:
    code, out = run("status", cache)
    assert code == 0
    assert "5 datapoints cached in 2 streams" in out
    assert "temperature  3" in out and "humidity     2" in out
    assert "last sync:     -" in out and "syncer:        none running" in out
    code, out = run("status", cache, "--json")
    data = json.loads(out)
    assert code == 0 and data["cached"] == 5
    assert data["streams"]["temperature"] == {
        "cached": 3,
        "oldest": 1.7e9,
        "newest": 1.7e9 + 2,
        "deadletters": 0,
        "thinned": 0,
    }
    assert data["last_sync"] is None and data["paused"] is False
    assert data["thinned"] == 0 and "thinned: 0" in run("status", cache)[1]


def test_status_names_the_process_that_syncs(cache: str) -> None:
    with Logger(cache, sync_jitter=0) as lg:
        lg.syncperiod = 3600
        lg.start()
        from .conftest import wait_for

        wait_for(lambda: lg.lastsynctime > 0, what="the first pass")
        code, out = run("status", cache)
    assert code == 0
    assert "syncer:        pid " in out and "next attempt:  20" in out
    assert "last sync:     20" in out


def test_sync_delivers_and_reports(cache: str, server: ConnectorDBServer) -> None:
    code, out = run("sync", cache)
    assert code == 0, out
    assert out == "sent 5 datapoints\n"
    assert len(server.datapoints("alice/sensor/temperature")) == 3
    assert run("status", cache)[1].startswith(f"{cache}: 0 datapoints cached")


def test_sync_failure_exits_1_and_says_why(cache: str, server: ConnectorDBServer) -> None:
    server.fail_next(10, status=503)
    code, out = run("sync", cache)
    assert code == 1
    assert "sent 0 datapoints" in out and "error: " in out and "503" in out


def test_export_jsonl_csv_stream_and_file(cache: str, tmp_path) -> None:
    code, out = run("export", cache)
    points = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(points) == 5
    assert points[0] == {"stream": "humidity", "t": 1.7e9, "d": 50.0}
    code, out = run("export", cache, "--format", "csv", "--stream", "temperature")
    assert out.splitlines() == [
        "stream,t,d",
        "temperature,1700000000.0,20.0",
        "temperature,1700000001.0,21.0",
        "temperature,1700000002.0,22.0",
    ]
    target = tmp_path / "out.jsonl"
    assert run("export", cache, "-o", str(target))[0] == 0
    assert len(target.read_text().splitlines()) == 5
    assert run("export", cache, "--stream", "nope")[0] == 2


def test_deadletters_list_retry_purge(cache: str, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] in (21.0, 51.0))
    assert run("sync", cache)[1].startswith("sent 3 datapoints, 2 refused")
    code, out = run("deadletters", cache, "list")
    assert code == 0
    assert "did not conform" in out and "temperature" in out and "21.0" in out
    letters = json.loads(run("deadletters", cache, "list", "--json")[1])
    assert sorted(d["d"] for d in letters) == [21.0, 51.0]
    assert run("deadletters", cache, "retry")[0] == 2  # neither ids nor --all
    server.reject(None)
    code, out = run("deadletters", cache, "retry", str(letters[0]["id"]), "--restamp")
    assert (code, out) == (0, "queued 1 dead letters to be sent again, with new timestamps\n")
    assert run("sync", cache)[0] == 0
    code, out = run("deadletters", cache, "purge", "--all")
    assert (code, out) == (0, "purged 1 dead letters\n")
    assert run("deadletters", cache, "list")[1] == "no dead letters\n"


def test_status_shows_the_remote_and_sync_uses_it(
    cache: str, server: ConnectorDBServer, capsys
) -> None:
    """A cache whose program syncs to InfluxDB: status says so, and `sync` sends to that
    InfluxDB (down here: exit 1), not to the ConnectorDB server in the settings instead.
    (tests/test_cli_remotes.py delivers to each kind of remote.)"""
    assert run("status", cache)[1].count("remote:        -\n") == 1  # never synced
    influx = InfluxDBRemote("http://127.0.0.1:9", database="sensors")
    with Logger(cache, remote=influx) as lg:
        assert lg.status().remote == "InfluxDBRemote('http://127.0.0.1:9', database='sensors')"
    # Another program opening the cache with its own remote (but not syncing) changes nothing.
    with Logger(cache, remote=ConnectorDBRemote(server.url, server.apikey)) as lg:
        assert lg.status().remote == repr(influx)
    code, out = run("status", cache)
    assert "remote:        InfluxDBRemote('http://127.0.0.1:9', database='sensors')" in out
    assert json.loads(run("status", cache, "--json")[1])["remote"] == repr(influx)
    code, out = run("sync", cache)
    assert code == 1 and out.startswith("sent 0 datapoints\nerror: ")
    assert "GET /ping: connection failed" in out
    # No datapoint reached the server (the fixture's addStream created the stream there).
    assert server.datapoints("alice/sensor/temperature") == []
    # Once a pass went to the server in the settings, that is the remote recorded.
    with Logger(cache) as lg:
        assert lg.sync().ok
        assert lg.status().remote == f"ConnectorDBRemote({server.url!r})" == repr(lg.remote)
    assert run("sync", cache) == (0, "sent 0 datapoints\n")


def test_missing_and_foreign_files_exit_2(tmp_path, capsys) -> None:
    assert run("status", str(tmp_path / "missing.db"))[0] == 2
    assert "no such cache file" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # never created
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a database " * 100)
    assert run("status", str(foreign))[0] == 2
    assert "notes.txt" in capsys.readouterr().err
    other = tmp_path / "other.db"
    import apsw

    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    assert run("export", str(other))[0] == 2
    assert "not a connectorsync cache" in capsys.readouterr().err


def test_every_command_has_help_and_is_documented(capsys) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    docs = (ROOT / "docs" / "cli.rst").read_text()
    for name in commands:
        assert f"connectorsync {name}" in docs, f"{name} is not in docs/cli.rst"
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        assert f"usage: connectorsync {name}" in capsys.readouterr().out


def test_no_command_prints_help_and_fails() -> None:
    code, out = run()
    assert code == 2 and "status" in out and "deadletters" in out


def test_serve_runs_a_test_server_until_sigterm(tmp_path) -> None:
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "connectorsync",
            "serve",
            "--device",
            "a/b",
            "--path",
            str(tmp_path / "server.db"),
        ],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        apikey = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = requests.get(
            f"{url}/api/v1/", params={"q": "this"}, auth=("", apikey), timeout=5
        )
        assert response.text == "a/b"
        response.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_demo_command() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "connectorsync", "demo"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "The server holds 8 datapoints" in result.stdout


def test_a_password_in_the_serverurl_is_never_shown(
    cache: str, server: ConnectorDBServer, capsys
) -> None:
    secret_url = server.url.replace("http://", "http://alice:S3CRET-PW@")
    with Logger(cache) as lg:
        lg.serverurl = secret_url
        assert lg.sync().ok  # the remote still gets the url as it is
        assert lg.serverurl == secret_url
        assert repr(lg.remote) == f"ConnectorDBRemote({secret_url.replace('S3CRET-PW', '***')!r})"
        assert "S3CRET-PW" not in str(lg.status().remote)
    for argv in (["status", cache], ["status", cache, "--json"], ["sync", cache]):
        code, out = run(*argv)
        assert code == 0 and "S3CRET-PW" not in out + capsys.readouterr().err
    assert "alice:***@127.0.0.1" in run("status", cache)[1]
    # A remote recorded as it was before (by an older version) is shown masked too.
    import apsw

    conn = apsw.Connection(cache)
    recorded = json.dumps(f"ConnectorDBRemote({secret_url!r})")
    conn.execute("UPDATE settings SET value = ? WHERE key = 'remote'", (recorded,))
    conn.close()
    code, out = run("status", cache)
    assert code == 0 and "S3CRET-PW" not in out and "alice:***@" in out
    code, out = run("sync", cache)
    assert code == 0 and "S3CRET-PW" not in out + capsys.readouterr().err


def snapshot(path: str) -> tuple[bytes, int]:
    import os

    with open(path, "rb") as f:
        return f.read(), os.stat(path).st_mtime_ns


def test_commands_that_only_look_write_nothing(cache: str, capsys) -> None:
    import os

    with Logger(cache) as lg:  # a status of a clock not yet trusted used to record the boot
        lg.ntp_server = "127.0.0.1:9"
    os.utime(cache, ns=(1_000_000_000, 1_000_000_000))  # any write would move it
    before = snapshot(cache)
    assert run("status", cache)[0] == 0
    assert run("status", cache, "--json")[0] == 0
    assert run("export", cache)[0] == 0
    assert run("export", cache, "--stream", "humidity", "--format", "csv")[0] == 0
    assert run("deadletters", cache, "list")[0] == 0
    assert snapshot(cache) == before
    for suffix in ("-wal", "-journal"):
        assert not os.path.exists(cache + suffix) or os.path.getsize(cache + suffix) == 0


def test_status_of_an_older_schema_says_how_to_migrate_and_changes_nothing(
    tmp_path, capsys
) -> None:
    import apsw

    from connectorsync.cache import MIGRATIONS

    path = str(tmp_path / "old.db")
    conn = apsw.Connection(path)
    MIGRATIONS[0][1](conn)  # a v1 cache, as an older connectorsync left it
    conn.execute("PRAGMA user_version=1")
    conn.close()
    before = snapshot(path)
    for argv in (["status", path], ["export", path], ["deadletters", path, "list"]):
        code, out = run(*argv)
        err = capsys.readouterr().err
        assert code == 2 and out == ""
        assert "schema version 1" in err and "connectorsync.Logger" in err
    assert snapshot(path) == before
    conn = apsw.Connection(path)
    assert list(conn.execute("PRAGMA user_version")) == [(1,)]
    conn.close()


def test_status_shows_the_error_of_a_failed_manual_sync(
    cache: str, server: ConnectorDBServer
) -> None:
    """No syncer runs any more: the error its last (manual) pass recorded is still shown."""
    server.stop()  # the server is down
    with Logger(cache) as lg:
        report = lg.sync()
        assert not report.ok
    code, out = run("status", cache)
    assert code == 0
    assert "last error:    -" not in out and "last error:    " in out
    assert "next attempt:  -" in out and "syncer:        none running" in out
    data = json.loads(run("status", cache, "--json")[1])
    assert data["last_error"] and data["next_attempt"] is None and data["paused"] is False


def test_sync_exits_1_when_datapoints_were_refused(cache: str, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] == 21.0)
    code, out = run("sync", cache)
    assert (code, out.splitlines()[0].split(" (")[0]) == (1, "sent 4 datapoints, 1 refused")
    assert run("sync", cache) == (0, "sent 0 datapoints\n")  # nothing refused in this pass


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, as a shell runs it."""
    return subprocess.run(
        [PYTHON, "-m", "connectorsync", *argv],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def old_cache(tmp_path, name: str = "old.db") -> str:
    """A schema version 1 cache, as an older connectorsync left it."""
    import apsw

    from connectorsync.cache import MIGRATIONS

    path = str(tmp_path / name)
    conn = apsw.Connection(path)
    MIGRATIONS[0][1](conn)
    conn.execute("PRAGMA user_version=1")
    conn.close()
    return path


def test_verbose_and_quiet_flags_set_what_is_logged(tmp_path, cache: str, server) -> None:
    """Default: warnings and errors on stderr; -v adds INFO, -vv DEBUG; -q only errors."""
    result = cli("migrate", old_cache(tmp_path))
    assert result.returncode == 0 and "migration" not in result.stderr  # INFO: not shown
    result = cli("-v", "migrate", old_cache(tmp_path, "older.db"))
    assert result.returncode == 0, result.stderr
    assert "connectorsync.cache.schema: INFO: cache " in result.stderr
    assert "migration" in result.stderr
    server.reject(lambda stream, point: point["d"] == 21.0)
    result = cli("sync", cache, "-q")  # after the command too
    assert result.returncode == 1 and result.stderr == ""  # the refusal is a WARNING
    server.reject(None)
    with Logger(cache) as lg:
        lg.retry_deadletters(restamp=True)
    server.reject(lambda stream, point: True)
    result = cli("sync", cache)
    assert (
        "connectorsync.delivery: WARNING: stream 'temperature': 1 datapoint(s) refused"
        in result.stderr
    )
    import logging

    from connectorsync.cli import log_to_stderr

    for flags, shown in (([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG"), (["-q"], "ERROR")):
        args = build_parser().parse_args([*flags, "status", cache])
        with log_to_stderr(args):
            assert logging.getLogger("connectorsync.syncer").getEffectiveLevel() == getattr(
                logging, shown
            )
    assert logging.getLogger("connectorsync").level == logging.NOTSET  # put back after


def test_deadletters_purge_says_it_once(cache: str, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] == 21.0)
    assert run("sync", cache)[0] == 1
    result = cli("deadletters", cache, "purge", "--all")
    assert (result.returncode, result.stdout, result.stderr) == (0, "purged 1 dead letters\n", "")


def test_export_into_a_pipe_closed_early_ends_quietly(cache: str) -> None:
    """`connectorsync export CACHE | head -1`: the reader goes away; no traceback, exit 0."""
    with Logger(cache) as lg:  # more than a pipe's buffer holds, so the writer is cut off
        lg.insert_many("temperature", [{"t": 1.8e9 + i, "d": float(i)} for i in range(20_000)])
    proc = subprocess.Popen(
        [PYTHON, "-m", "connectorsync", "export", cache],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0, err
    assert json.loads(first)["stream"] == "humidity" and err == b""


def test_deadletters_takes_action_and_cache_in_either_order(
    cache: str, server: ConnectorDBServer, capsys
) -> None:
    server.reject(lambda stream, point: point["d"] in (21.0, 51.0))
    assert run("sync", cache)[0] == 1
    assert run("deadletters", "list", cache) == run("deadletters", cache, "list")
    letters = json.loads(run("deadletters", "list", cache, "--json", "--stream", "humidity")[1])
    assert [d["d"] for d in letters] == [51.0]
    assert run("deadletters", "purge", cache, str(letters[0]["id"])) == (
        0,
        "purged 1 dead letters\n",
    )
    assert run("deadletters", cache, "retry", "--all", "--restamp")[1].startswith("queued 1 ")
    capsys.readouterr()
    assert run("deadletters", cache, cache) == (2, "")
    assert "list, retry or purge" in capsys.readouterr().err


def test_status_check_ok(cache: str, capsys) -> None:
    assert run("status", cache, "--check") == (0, "ok\n")
    assert run("status", cache, "--check", "--max-lag", str(10 * 365 * 86400)) == (0, "ok\n")
    assert run("status", cache, "--max-lag", "60")[0] == 2  # only with --check
    assert "--max-lag goes with --check" in capsys.readouterr().err


def test_status_check_fails_when_syncing_fails(cache: str, server: ConnectorDBServer) -> None:
    server.stop()
    with Logger(cache) as lg:
        assert not lg.sync().ok
    code, out = run("status", cache, "--check")
    assert code == 1 and out.startswith("syncing fails: ") and out.count("\n") == 1


def test_status_check_fails_while_syncing_is_paused(cache: str, server: ConnectorDBServer) -> None:
    from .conftest import wait_for

    with Logger(cache, apikey="wrong", sync_jitter=0) as lg:
        lg.start()
        wait_for(lambda: lg.status().paused, what="refused credentials to pause syncing")
        # Another process reads the lease, which the courier writes just after it pauses.
        seen: list[tuple[int, str]] = []
        wait_for(
            lambda: seen.append(run("status", cache, "--check")) or "paused" in seen[-1][1],
            what="the lease to say paused",
        )
        code, out = seen[-1]
    assert code == 1 and out.startswith("syncing paused: credentials refused")
    assert out.count("\n") == 1


def test_status_check_fails_when_the_oldest_datapoint_is_too_old(cache: str) -> None:
    code, out = run("status", cache, "--check", "--max-lag", "3600")
    assert code == 1
    assert out.startswith("oldest cached datapoint (humidity, ") and "more than 3600 s" in out
    with Logger(cache) as lg:
        lg.cleardata()
        lg.insert("temperature", 20.0)
    assert run("status", cache, "--check", "--max-lag", "3600") == (0, "ok\n")


def test_status_check_fails_when_dead_letters_exist(cache: str, server: ConnectorDBServer) -> None:
    server.reject(lambda stream, point: point["d"] in (21.0, 51.0))
    assert run("sync", cache)[0] == 1
    code, out = run("status", cache, "--check")
    assert (code, out) == (1, f"2 dead letters (see: connectorsync deadletters {cache} list)\n")


def sync_with_stderr_on(cache: str, terminal: bool) -> tuple[int, str]:
    """`connectorsync sync CACHE` in a process of its own, stderr a terminal or a pipe."""
    import os
    import pty

    reader, writer = pty.openpty() if terminal else os.pipe()
    if terminal:  # a new terminal is 0 x 0: give it the size of a real one
        import fcntl
        import struct
        import termios

        fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [PYTHON, "-m", "connectorsync", "sync", cache],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=writer,
    )
    os.close(writer)
    chunks = []
    while True:
        try:
            chunk = os.read(reader, 65536)
        except OSError:  # a terminal whose other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    return proc.wait(timeout=30), b"".join(chunks).decode()


def test_sync_shows_a_progress_bar_on_a_terminal_only(cache: str, server) -> None:
    server.reject(lambda stream, point: point["d"] == 21.0)
    code, err = sync_with_stderr_on(cache, terminal=True)
    assert code == 1
    assert "4/5" in err and "datapoints/s" in err  # the bar, at its end (1 was refused)
    # The log line goes around the bar, on a line of its own.
    refused = [line for line in err.splitlines() if "refused" in line]
    assert len(refused) == 1 and refused[0].lstrip("\r").startswith("connectorsync.delivery")
    with Logger(cache) as lg:
        lg.retry_deadletters(restamp=True)
    code, err = sync_with_stderr_on(cache, terminal=False)
    assert code == 1 and "datapoints/s" not in err and "5/5" not in err and "1/1" not in err
    assert err.startswith("connectorsync.delivery: WARNING: stream 'temperature'")


# A password that holds each character a hand-made url may hold; the parts around it are
# checked separately, so no piece of it may show.
HOSTILE = ("'", "@", ":", "/", "%40", "é☃", "?#", " ", " x@y ", "@ ")
# A raw '/', '?' or '#' ends a url's host part: such a serverurl is refused when set.
UNPARSEABLE = ("/", "?#")


@pytest.mark.parametrize("char", HOSTILE)
def test_hostile_passwords_in_urls_are_never_shown(
    cache: str, server: ConnectorDBServer, char: str, capsys, caplog
) -> None:
    import logging

    password = f"Kq7Z{char}Wv9X"
    secret_url = server.url.replace("http://", f"http://alice:{password}@")
    shown: list[str] = []
    with caplog.at_level(logging.DEBUG):
        with Logger(cache) as lg:
            if char in UNPARSEABLE:
                # Its host part ends inside the password: refused, without echoing a piece.
                with pytest.raises(ConfigurationError, match="percent-encoded") as refused:
                    lg.serverurl = secret_url
                text = str(refused.value)
                assert "alice:***@" in text
                for piece in ("Kq7Z", "Wv9X", password):
                    assert piece not in text, piece
                return
            lg.serverurl = secret_url
            report = lg.sync()  # refused or not: whatever it says is shown
            assert lg.serverurl == secret_url  # kept as given
            shown += [repr(lg.remote), str(lg.status().remote), str(lg.status().last_error)]
            shown += list(report.errors.values())
            assert repr(lg.remote).startswith("ConnectorDBRemote('http://alice:***@")
        for argv in (["status", cache], ["status", cache, "--json"], ["sync", cache]):
            shown.append(run(*argv)[1])
            shown.append(capsys.readouterr().err)
    shown += [r.getMessage() for r in caplog.records]
    text = "\n".join(shown)
    assert "alice:***@" in text
    for piece in ("Kq7Z", "Wv9X", password):
        assert piece not in text, piece


@pytest.mark.parametrize("char", HOSTILE)
def test_a_hostile_password_recorded_unhidden_is_hidden_when_shown(cache: str, char) -> None:
    """An older connectorsync recorded the remote's repr with such a password in it."""
    import apsw

    url = f"http://alice:Kq7Z{char}Wv9X@127.0.0.1:9"
    conn = apsw.Connection(cache)
    recorded = json.dumps(f"ConnectorDBRemote({url!r})")
    conn.execute("INSERT OR REPLACE INTO settings VALUES ('remote', ?)", (recorded,))
    conn.close()
    with Logger(cache) as lg:
        remote = str(lg.status().remote)
    code, out = run("status", cache)
    assert code == 0 and "alice:***@127.0.0.1:9" in out and "alice:***@127.0.0.1:9" in remote
    for piece in ("Kq7Z", "Wv9X"):
        assert piece not in out + remote


ADMIN_PASSWORD = "Adm1n-S3CRET-pw"


def serve(*argv: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "connectorsync", "serve", *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),  # the usual umask, which leaves files 0644
    )


@pytest.mark.parametrize("how", ["env", "file"])
def test_serve_keeps_secrets_off_argv_and_its_file_owner_only(tmp_path, how: str) -> None:
    import stat

    import connectordb

    path = tmp_path / "server.db"
    env = child_env()
    argv = ["--device", "a/b", "--path", str(path), "--admin", "root"]
    if how == "env":
        env["CONNECTORSYNC_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    else:
        secret = tmp_path / "admin-password"
        secret.write_text(ADMIN_PASSWORD + "\n")
        argv += ["--admin-password-file", str(secret)]
    proc = serve(*argv, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr and proc.stderr.read()
        proc.stdout.readline()  # the device's apikey
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            cmdline = f.read().decode()
        assert "root" in cmdline and ADMIN_PASSWORD not in cmdline
        db = connectordb.ConnectorDB("root", ADMIN_PASSWORD, url=url)  # the password works
        assert db.path == "root/user"
        db.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_serve_refuses_a_password_on_the_command_line(tmp_path) -> None:
    env = child_env()
    env.pop("CONNECTORSYNC_ADMIN_PASSWORD", None)
    for argv, says in (
        (["--admin", f"root:{ADMIN_PASSWORD}"], "--admin takes the NAME only"),
        (["--admin", "root"], "no password"),  # no terminal to ask on, nothing given
    ):
        proc = serve(*argv, env=env)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and says in err, err
        assert ADMIN_PASSWORD not in out + err


def test_ctrl_c_in_sync_says_one_line_and_exits_130(
    cache_path: str, server: ConnectorDBServer
) -> None:
    import threading

    values = [float(i) for i in range(200)]
    with Logger(cache_path, apikey=server.apikey, batch_size=20) as lg:  # 10 requests
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [{"t": 1.7e9 + i, "d": v} for i, v in enumerate(values)])
    server.delay(1.0)  # each request: a slow server
    proc = subprocess.Popen(
        [PYTHON, "-m", "connectorsync", "sync", cache_path],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        inserts = threading.Event()

        def two_inserts_arrived() -> bool:
            return sum(path.endswith("/data") for _, path in server.requests) >= 2

        for _ in range(600):  # up to 60 s: the child starts, then sends its first batches
            if two_inserts_arrived() or proc.poll() is not None:
                break
            inserts.wait(0.1)
        assert two_inserts_arrived(), "the sync never sent its batches"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("connectorsync sync: interrupted: sent ")
    assert "still cached" in lines[0]
    sent = int(lines[0].split("sent ")[1].split()[0].replace(",", ""))
    cached = int(lines[0].split(", ")[1].split()[0].replace(",", ""))
    assert cached > 0 and sent + cached <= len(values)  # a batch may be acked meanwhile
    server.delay(0)
    # Nothing lost, nothing twice: the next sync sends the rest, the batch in flight settled.
    assert run("sync", cache_path)[0] == 0
    stored = server.datapoints("alice/sensor/temperature")
    assert [p["d"] for p in stored] == values


def test_serve_makes_the_files_a_killed_server_left_owner_only(tmp_path) -> None:
    """An older serve made ``--path`` 0644, and was killed: its -wal (apikeys in it) stayed
    0644. The file itself was made owner-only at the next start, the -wal and -shm beside it
    were left readable by anyone, and SQLite went on writing new apikeys into them."""
    import stat

    path = tmp_path / "server.db"
    killed = serve("--device", "a/b", "--path", str(path), env=child_env())
    assert killed.stdout is not None and killed.stdout.readline().startswith("http://")
    killed.stdout.readline()  # its device's apikey: written, in the -wal
    killed.kill()
    killed.communicate()
    for suffix in ("", "-wal", "-shm"):
        assert os.path.getsize(f"{path}{suffix}") > 0, suffix  # left behind, not empty
        os.chmod(f"{path}{suffix}", 0o644)  # as an older serve left them
    proc = serve("--device", "c/d", "--path", str(path), env=child_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("http://127.0.0.1:")
        proc.stdout.readline()  # the device's apikey
        for suffix in ("", "-wal", "-shm"):
            assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()
