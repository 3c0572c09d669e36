"""A cache file's identity (connectorsync/cache/identity.py) and its binding to the remotes
that name datapoints by it (``CacheBound`` in connectorsync/remotes/base.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import apsw
import pytest

from connectorsync import ConfigurationError, Logger
from connectorsync.remotes import Datapoint

from .helpers.lab_remote import LabRemote

HEX32 = set("0123456789abcdef")


class BoundLab(LabRemote):
    """A LabRemote that writes the cache identity it was bound to on each line."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.identity: str | None = None
        self.binds = 0

    def bind_cache(self, identity: str) -> None:
        self.binds += 1
        if self.identity not in (None, identity):
            raise ConfigurationError(f"{self!r} delivers another cache's datapoints already")
        self.identity = identity

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        assert self.identity is not None, "pushed before it was bound"
        with open(self.path, "a", encoding="utf-8") as out:
            for i, _, _ in batch:
                out.write(json.dumps({"identity": self.identity, "id": i}) + "\n")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def identity_in_another_process(path: Path) -> str:
    code = "import sys; from connectorsync import Logger; print(Logger(sys.argv[1]).identity)"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with Logger(str(path)) as lg:
        first = lg.identity
    assert len(first) == 32 and set(first) <= HEX32
    with Logger(str(path)) as lg:
        assert lg.identity == first
    assert identity_in_another_process(path) == first


def test_two_caches_have_two_identities(tmp_path: Path) -> None:
    seen = set()
    for n in range(20):
        with Logger(str(tmp_path / f"c{n}.db")) as lg:
            seen.add(lg.identity)
    assert len(seen) == 20


def forget_identity(path: Path) -> None:
    """As a cache written before identities: the setting is not there."""
    conn = apsw.Connection(str(path))
    conn.execute("DELETE FROM settings WHERE key = 'cache.identity'")
    conn.close()


def test_processes_racing_to_make_it_agree(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    Logger(str(path)).close()
    for _ in range(3):
        forget_identity(path)
        code = (
            "import sys; from connectorsync import Logger; "
            "lg = Logger(sys.argv[1]); print(lg.identity); lg.close()"
        )
        racers = [
            subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
            for _ in range(4)
        ]
        said = {racer.communicate(timeout=60)[0].decode().strip() for racer in racers}
        assert len(said) == 1 and all(len(each) == 32 for each in said)
        with Logger(str(path)) as lg:
            assert {lg.identity} == said


def test_a_bound_remote_gets_the_identity_before_its_first_push(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    one, two = BoundLab(str(out)), BoundLab(str(out))
    with Logger(str(tmp_path / "cache.db"), remote=one) as lg:
        lg.add_stream("s", {"type": "number"})
        lg.add_remote("two", two)
        lg.insert("s", 1.0)
        lg.sync()
        identity = lg.identity
    assert one.identity == two.identity == identity
    assert [line["identity"] for line in lines(out)] == [identity, identity]


def test_a_remote_bound_to_another_cache_is_refused_and_nothing_recorded(
    tmp_path: Path,
) -> None:
    remote = BoundLab(str(tmp_path / "out.jsonl"))
    with Logger(str(tmp_path / "a.db"), remote=remote):
        pass
    with pytest.raises(ConfigurationError, match="another cache"):
        Logger(str(tmp_path / "b.db"), remote=remote)
    with Logger(str(tmp_path / "c.db")) as lg:
        with pytest.raises(ConfigurationError, match="another cache"):
            lg.add_remote("lab", remote)
        assert "lab" not in lg.remotes
        assert "lab" not in lg.status().remotes
