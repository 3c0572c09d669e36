"""``connectorsync rekey`` (``connectorsync/cache/rekey.py``): a new key, plain to sealed,
sealed to plain, in bounded steps that survive a cut, refused while the cache is in use.

Real files; a real child process holding the cache open; the power-cut rekey phase is in
``tests/test_powercut.py::test_power_cut_torture_rekey``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from connectorsync import ConfigurationError, Logger
from connectorsync.cache.rekey import rekey
from connectorsync.cli import main
from connectorsync.keysource import read_key_file
from connectorsync.testing import ConnectorDBServer

from .test_seal import SECRET_VALUES, T0, assert_nowhere, flip_a_byte, key_file, snapshot

STREAM = "alice/sensor/temperature"


def fill(path: str, server: ConnectorDBServer, key: str | None, count: int = 2500) -> None:
    """A cache with ``count`` datapoints, two dead letters, a latest value and a remote
    with a credential."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    server.reject(lambda stream, point: point["d"] < 0)
    with Logger(path, on_create=init, key_file=key) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": d} for i, d in enumerate([1.0, -1, -2])])
        lg.sync()
        lg.insert_many(
            "temperature", [{"t": T0 + 10 + i, "d": SECRET_VALUES[0] + i} for i in range(count)]
        )
    server.reject(None)


def contents(path: str, key: str | None) -> tuple[list[tuple[float, float]], list[object]]:
    with Logger(path, key_file=key) as lg:
        points = [(p["t"], p["d"]) for p in lg.export()]
        letters = [(d.id, d.t, d.d) for d in lg.deadletters()]
        assert lg.latest("temperature") is not None
    return points, letters


def test_rekey_then_reopen_with_the_new_key(tmp_path: Path, server: ConnectorDBServer) -> None:
    """Every datapoint and dead letter is kept; the new key opens the cache, the old one is
    refused; the credentials moved with them (the cache still syncs)."""
    path, old, new = str(tmp_path / "c.db"), key_file(tmp_path, "old"), key_file(tmp_path, "new")
    fill(path, server, old)
    before = contents(path, old)
    out = io.StringIO()
    assert main(["rekey", path, "--key-file", old, "--new-key-file", new], out) == 0
    assert "re-sealed" in out.getvalue() and read_key_file(new).key_id in out.getvalue()
    assert contents(path, new) == before
    with pytest.raises(ConfigurationError, match="sealed under another key"):
        Logger(path, key_file=old)
    with Logger(path, key_file=new) as lg:
        lg.sync()
        assert len(lg) == 0
    assert len(server.datapoints(STREAM)) == 1 + 2500


def test_plain_to_sealed_leaves_no_value_in_the_file(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """A plain cache sealed by rekey: no value or credential is left in the file or the WAL
    (secure_delete, then a truncating checkpoint), and it opens only with the key; --plain
    brings it back."""
    path, key = str(tmp_path / "c.db"), key_file(tmp_path)
    fill(path, server, None, count=300)
    before = contents(path, None)
    assert main(["rekey", path, "--new-key-file", key], io.StringIO()) == 0
    secrets = [repr(SECRET_VALUES[0] + i) for i in range(0, 300, 7)]
    secrets += [server.apikey]  # type: ignore[attr-defined]
    assert_nowhere(snapshot(path), secrets)
    with pytest.raises(ConfigurationError, match="is sealed"):
        Logger(path)
    assert contents(path, key) == before
    assert main(["rekey", path, "--key-file", key, "--plain"], io.StringIO()) == 0
    assert contents(path, None) == before
    with pytest.raises(ConfigurationError, match="not sealed"):
        Logger(path, key_file=key)


def test_wrong_keys_are_refused_and_change_nothing(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path, old, new = str(tmp_path / "c.db"), key_file(tmp_path, "old"), key_file(tmp_path, "new")
    fill(path, server, old, count=10)
    before = snapshot(path)
    err = io.StringIO()
    for args in (
        ["--key-file", new, "--new-key-file", old],  # not its key
        ["--new-key-file", new],  # no old key
        ["--key-file", old, "--new-key-file", old],  # the same key
    ):
        assert main(["rekey", path, *args], err) == 2, args
    assert snapshot(path) == before


def test_rekey_refuses_while_another_process_has_the_cache_open(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path, old, new = str(tmp_path / "c.db"), key_file(tmp_path, "old"), key_file(tmp_path, "new")
    fill(path, server, old, count=10)
    before = snapshot(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import apsw, sys; c = apsw.Connection(sys.argv[1]); c.execute('SELECT 1');"
            " print('open', flush=True); sys.stdin.read()",
            path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        held = rf"open in another process \(pid {holder.pid}"
        with pytest.raises(ConfigurationError, match=held):
            rekey(path, read_key_file(old), read_key_file(new))
        assert snapshot(path)[""] == before[""]  # (the holder made a -wal and -shm)
    finally:
        holder.communicate("", timeout=30)
    rekey(path, read_key_file(old), read_key_file(new))
    assert len(contents(path, new)[0]) == 10


class Cut(BaseException):
    """Stands for the process ending mid-rekey (the power-cut torture does it for real)."""


def test_a_cut_rekey_refuses_opening_until_resumed(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """Stopped after its second step: both keys are refused, saying a rekey is under way
    and how to finish it; running it again resumes (it does not redo what was done) and
    every datapoint and dead letter is there once."""
    path, old, new = str(tmp_path / "c.db"), key_file(tmp_path, "old"), key_file(tmp_path, "new")
    fill(path, server, old)
    before = contents(path, old)
    steps: list[int] = []

    def cut_after_two(done: int) -> None:
        steps.append(done)
        if len(steps) == 2:
            raise Cut

    with pytest.raises(Cut):
        rekey(path, read_key_file(old), read_key_file(new), step=1000, progress=cut_after_two)
    assert steps == [1000, 2000]
    for key in (old, new, None):
        with pytest.raises(ConfigurationError, match=r"rekey is under way.*connectorsync rekey"):
            Logger(path, key_file=key)
    assert main(["status", path, "--key-file", new], io.StringIO()) == 2
    with pytest.raises(ConfigurationError, match="rekey under way"):  # other keys: refused
        rekey(path, read_key_file(old), read_key_file(key_file(tmp_path, "third")))
    report = rekey(path, read_key_file(old), read_key_file(new))
    assert report.resealed == 2500 + 2 + 1 + 3 - 2000 + 1  # the rest, settings, last_d
    assert contents(path, new) == before


def test_a_tampered_row_is_named_by_rekey_and_left(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    path, old, new = str(tmp_path / "c.db"), key_file(tmp_path, "old"), key_file(tmp_path, "new")
    fill(path, server, old, count=20)
    conn = apsw.Connection(path)
    (first,) = next(conn.execute("SELECT min(id) FROM datapoints"))
    conn.close()
    flip_a_byte(path, "datapoints", first + 4)
    err = io.StringIO()
    code = main(["rekey", path, "--key-file", old, "--new-key-file", new], err)
    assert code == 1
    with Logger(path, key_file=new) as lg:
        lg.sync()  # the others delivered; that one a dead letter naming it
        letters = [d for d in lg.deadletters() if d.d is None]
        assert len(letters) == 1 and f"datapoints row {first + 4}" in letters[0].reason
    assert len(server.datapoints(STREAM)) == 1 + 19
    assert os.path.exists(path)
