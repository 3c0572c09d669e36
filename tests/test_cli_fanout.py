"""The command line and several remotes (issue 17): ``status`` and ``metrics`` show each
remote, ``sync`` builds every remote the cache records again and delivers to each (or to the
one ``--remote`` names), ``deadletters --remote`` acts on one remote's letters. Two remotes in
one cache, each a path of one real loopback HTTP receiver, one made to fail on its own."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectorsync import HTTPRemote, Logger
from connectorsync.cache import Cache
from connectorsync.cli import main
from connectorsync.remotes.config import recorded_remote
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import PYTHON, ROOT, child_env
from .helpers.lab_remote import LabRemote, received


def remote(receiver: HTTPReceiver, name: str) -> HTTPRemote:
    return HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=5)


class MyRemote(HTTPRemote):
    """A remote class of the program's own: the command cannot build it again."""


def arrived(receiver: HTTPReceiver, name: str) -> list[int]:
    return [item["d"] for item in receiver.items(f"/{name}/s")]


def down(receiver: HTTPReceiver, name: str) -> None:
    receiver.fail_next(10**6, 503, path=f"/{name}/")


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def log_offline(path: str, receiver: HTTPReceiver, *, default: bool, count: int = 4) -> None:
    """The program: ``gateway`` (the default remote, or a named one) and ``cloud``; a pass
    while both are down, so each holds ``count`` datapoints."""
    down(receiver, "gateway")
    down(receiver, "cloud")
    if default:
        lg = Logger(path, remote=remote(receiver, "gateway"))
        lg.add_remote("cloud", remote(receiver, "cloud"))
    else:
        lg = Logger(path, remotes={"gateway": remote(receiver, "gateway")})
        lg.add_remote("cloud", remote(receiver, "cloud"))
    with lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", list(range(count)))
        assert not lg.sync().ok
    receiver.clear_faults()


def held(path: str) -> dict[str, int]:
    cache = Cache.open_readonly(path)
    try:
        return {name: r.held for name, r in cache.remotes().summary().items()}
    finally:
        cache.close()


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- sync


@pytest.mark.parametrize("default", [True, False], ids=["default+cloud", "gateway+cloud"])
def test_sync_builds_every_recorded_remote_and_delivers_to_each(
    cache_path: str, receiver: HTTPReceiver, default: bool
) -> None:
    log_offline(cache_path, receiver, default=default)
    code, out = run("sync", cache_path)
    assert code == 0, out
    gateway = "default" if default else "gateway"
    assert out.splitlines() == [
        "sent 8 datapoints",
        f"  {gateway}: sent 4",
        "  cloud: sent 4",
    ]
    assert arrived(receiver, "gateway") == arrived(receiver, "cloud") == [0, 1, 2, 3]
    assert set(held(cache_path).values()) == {0}


def test_a_remote_that_is_down_fails_the_command_not_the_other(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    log_offline(cache_path, receiver, default=True)
    down(receiver, "cloud")
    code, out = run("sync", cache_path)
    assert code == 1
    lines = out.splitlines()
    assert lines[:3] == ["sent 4 datapoints", "  default: sent 4", "  cloud: sent 0"]
    assert lines[3].startswith("error: cloud: ")
    assert arrived(receiver, "gateway") == [0, 1, 2, 3] and arrived(receiver, "cloud") == []
    assert held(cache_path) == {"default": 0, "cloud": 4}


def test_sync_remote_delivers_to_that_remote_only(cache_path: str, receiver: HTTPReceiver) -> None:
    log_offline(cache_path, receiver, default=True)
    assert run("sync", cache_path, "--remote", "cloud") == (0, "sent 4 datapoints\n")
    assert arrived(receiver, "cloud") == [0, 1, 2, 3] and arrived(receiver, "gateway") == []
    assert held(cache_path) == {"default": 4, "cloud": 0}
    assert run("sync", cache_path, "--remote", "default") == (0, "sent 4 datapoints\n")
    assert arrived(receiver, "gateway") == [0, 1, 2, 3]
    assert held(cache_path) == {"default": 0, "cloud": 0}


def test_sync_of_one_remote_keeps_the_default_s_record(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """Syncing only ``cloud`` opens a Logger whose first remote is ``cloud``: the settings
    still build the default remote (the gateway), not the cloud."""
    log_offline(cache_path, receiver, default=True)
    assert run("sync", cache_path, "--remote", "cloud")[0] == 0
    cache = Cache.open_readonly(cache_path)
    try:
        rebuilt = recorded_remote(cache.settings())
    finally:
        cache.close()
    assert rebuilt is not None and "/gateway/" in repr(rebuilt)
    assert run("sync", cache_path)[0] == 0
    assert arrived(receiver, "gateway") == [0, 1, 2, 3]


def test_sync_of_one_remote_leaves_the_other_as_it_was(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    """The default remote holds nothing: it stays recorded, and takes what comes after."""
    down(receiver, "cloud")
    with Logger(cache_path, remote=remote(receiver, "gateway")) as lg:
        lg.add_remote("cloud", remote(receiver, "cloud"))
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
        assert not lg.sync().ok  # the gateway took them; the cloud holds them
    receiver.clear_faults()
    assert held(cache_path) == {"default": 0, "cloud": 2}
    assert run("sync", cache_path, "--remote", "cloud") == (0, "sent 2 datapoints\n")
    assert held(cache_path) == {"default": 0, "cloud": 0}
    with Logger(cache_path, remote=remote(receiver, "gateway")) as lg:
        lg.add_remote("cloud", remote(receiver, "cloud"))
        lg.insert("s", 2)
        assert lg.sync().ok
    assert arrived(receiver, "gateway") == [0, 1, 2]  # once each
    assert arrived(receiver, "cloud") == [0, 1, 2]


def test_sync_names_an_unknown_remote(cache_path: str, receiver: HTTPReceiver, capsys) -> None:  # type: ignore[no-untyped-def]
    log_offline(cache_path, receiver, default=True)
    before = digest(cache_path)
    assert run("sync", cache_path, "--remote", "nowhere") == (2, "")
    assert "no remote named 'nowhere'; remotes: default, cloud" in capsys.readouterr().err
    assert digest(cache_path) == before


def test_a_remote_that_cannot_be_built_is_named_and_skipped(
    cache_path: str, receiver: HTTPReceiver, capsys: Any
) -> None:
    with Logger(cache_path, remote=remote(receiver, "gateway")) as lg:
        lg.add_remote("mine", MyRemote(receiver.url + "/mine/{stream}", timeout=5))
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1, 2])
    code, out = run("sync", cache_path)
    assert (code, out) == (2, "sent 3 datapoints\n")
    err = capsys.readouterr().err
    assert "skipped remote 'mine'" in err and "MyRemote" in err
    assert arrived(receiver, "gateway") == [0, 1, 2] and arrived(receiver, "mine") == []
    assert held(cache_path) == {"default": 0, "mine": 3}
    assert run("sync", cache_path, "--remote", "mine")[0] == 2


def test_a_default_that_cannot_be_built_and_holds_nothing_is_not_left_out(
    cache_path: str, receiver: HTTPReceiver, capsys: Any
) -> None:
    """Left out, an empty ``default`` would be dropped from the cache (and what its program
    inserts next never routed to it): the command refuses, changing nothing."""
    down(receiver, "cloud")
    with Logger(cache_path, remote=MyRemote(receiver.url + "/gateway/{stream}", timeout=5)) as lg:
        lg.add_remote("cloud", remote(receiver, "cloud"))
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
        assert not lg.sync().ok  # the gateway took them
    receiver.clear_faults()
    before = digest(cache_path)
    assert run("sync", cache_path) == (2, "")
    err = capsys.readouterr().err
    assert "skipped remote 'default'" in err and "and holds nothing" in err
    assert digest(cache_path) == before and arrived(receiver, "cloud") == []


def test_a_registered_remote_of_your_own_is_built_again_with_its_module(
    cache_path: str, receiver: HTTPReceiver, tmp_path: Path
) -> None:
    """Recorded with its module in the cache's remotes table: the command (a real
    subprocess, which never imported it) imports it and delivers."""
    lab = str(tmp_path / "lab.jsonl")
    down(receiver, "gateway")
    with Logger(cache_path, remote=remote(receiver, "gateway")) as lg:
        lg.add_remote("lab", LabRemote(lab, label="bench"), backfill=True)
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", [0, 1])
    receiver.clear_faults()
    result = subprocess.run(
        [PYTHON, "-m", "connectorsync", "sync", cache_path],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [p["d"] for p in received(lab)] == [0, 1]
    assert arrived(receiver, "gateway") == [0, 1]


# ----------------------------------------------------------------------------- status, metrics


def test_status_shows_a_line_per_remote_and_writes_nothing(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    log_offline(cache_path, receiver, default=True)
    down(receiver, "cloud")
    assert run("sync", cache_path)[0] == 1
    before = digest(cache_path)
    code, out = run("status", cache_path)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["remote"][:3] == ["remote", "held", "dead"]
    assert rows["default"][1:6] == ["0", "0", "0", "0", "-"]
    assert rows["cloud"][1:5] == ["4", "0", "0", "0"] and rows["cloud"][5] != "-"
    assert "503" in out
    code, out = run("status", cache_path, "--json")
    remotes = json.loads(out)["remotes"]
    assert remotes["cloud"]["held"] == 4 and remotes["cloud"]["failing_since"] is not None
    assert remotes["default"]["held"] == 0 and remotes["default"]["failing_since"] is None
    assert remotes["cloud"]["last_error"] and remotes["default"]["last_error"] is None
    code, out = run("status", cache_path, "--check")
    assert code == 1 and "syncing to 'cloud' fails" in out
    assert digest(cache_path) == before


def test_status_of_one_default_remote_shows_no_remote_table(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        lg.addStream_force("s")
    code, out = run("status", cache_path)
    assert code == 0 and "held" not in out
    assert set(json.loads(run("status", cache_path, "--json")[1])["remotes"]) == {"default"}


def samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("remote", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if family.name.startswith("connectorsync_remote_")
    }


def test_metrics_label_each_remote(cache_path: str, receiver: HTTPReceiver) -> None:
    log_offline(cache_path, receiver, default=False)
    down(receiver, "cloud")
    assert run("sync", cache_path)[0] == 1
    before = digest(cache_path)
    code, out = run("metrics", cache_path)
    assert code == 0
    got = samples(out)
    assert got[("connectorsync_remote_held_datapoints", "cloud")] == 4
    assert got[("connectorsync_remote_held_datapoints", "gateway")] == 0
    assert got[("connectorsync_remote_up", "cloud")] == 0
    assert got[("connectorsync_remote_up", "gateway")] == 1
    assert ("connectorsync_remote_failing_since_timestamp_seconds", "cloud") in got
    assert ("connectorsync_remote_failing_since_timestamp_seconds", "gateway") not in got
    assert got[("connectorsync_remote_released_datapoints_total", "cloud")] == 0
    assert got[("connectorsync_remote_dead_letters", "cloud")] == 0
    assert 'connectorsync_cached_datapoints{stream="s"} 4.0' in out  # as before
    assert digest(cache_path) == before


# ----------------------------------------------------------------------------- dead letters


def refuse_two_at_cloud(path: str, item: Any) -> bool:
    return path.startswith("/cloud/") and item.get("d") == 2


def test_deadletters_of_one_remote(cache_path: str, receiver: HTTPReceiver) -> None:
    log_offline(cache_path, receiver, default=True)
    receiver.reject(refuse_two_at_cloud)
    code, out = run("sync", cache_path)
    assert code == 1 and "1 refused (see: connectorsync deadletters" in out
    assert "--remote cloud" in out
    code, out = run("deadletters", cache_path, "list")
    header, row = out.splitlines()
    assert header.split()[:3] == ["id", "remote", "stream"] and row.split()[1:3] == ["cloud", "s"]
    (letter,) = json.loads(run("deadletters", cache_path, "list", "--json")[1])
    assert (letter["remote"], letter["d"]) == ("cloud", 2)
    assert run("deadletters", cache_path, "list", "--remote", "default") == (
        0,
        "no dead letters\n",
    )
    assert run("deadletters", cache_path, "purge", "--all", "--remote", "default") == (
        0,
        "no dead letters of remote 'default'\n",
    )
    assert run("deadletters", cache_path, "retry", str(letter["id"]), "--remote", "default")[0] == 2
    receiver.reject(None)
    code, out = run("deadletters", cache_path, "retry", "--all", "--remote", "cloud")
    assert (code, out) == (0, "sent 1 dead letters again, with their own timestamps\n")
    assert sorted(arrived(receiver, "cloud")) == [0, 1, 2, 3]
    assert arrived(receiver, "gateway") == [0, 1, 2, 3]  # nothing sent twice
    assert run("deadletters", cache_path, "list") == (0, "no dead letters\n")


# ----------------------------------------------------------------------------- a defect found


def test_a_second_logger_without_default_keeps_the_default_another_delivers_to(
    cache_path: str, receiver: HTTPReceiver
) -> None:
    with Logger(cache_path, remote=remote(receiver, "gateway")) as program:
        program.add_remote("cloud", remote(receiver, "cloud"))
        program.addStream_force("s", {"type": "integer"})
        program.insert("s", 0)
        assert program.sync().ok  # the default remote holds nothing now
        with Logger(cache_path, remotes={"cloud": remote(receiver, "cloud")}):
            pass  # a second script, on the same cache, that names only the cloud
        program.insert("s", 1)
        program.sync()
    assert arrived(receiver, "cloud") == [0, 1]
    assert arrived(receiver, "gateway") == [0, 1]
