"""Issue 16: a cache path that cannot be opened says why in plain words, with the path, as a
CacheError raised before SQLite is asked (whose own words are "unable to open database file"
or "disk I/O error").

Permissions are tested in a child process that may not bypass them: as root, one started
under ``setpriv`` without the capabilities that override file permissions."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectorsync import CacheError, Logger

from .conftest import child_env

#: The child: open a Logger on argv[1] (then insert and close), print what happened as JSON.
OPEN = """
import json, sys
from connectorsync import Logger
try:
    with Logger(sys.argv[1]) as lg:
        lg.addStream_force("s")
        lg.insert("s", 1)
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"type": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}))
"""


def unprivileged() -> list[str]:
    """The command prefix that runs a child under file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root, and no setpriv to drop the capability to override permissions")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def open_in_child(path: Path) -> dict[str, object]:
    result = subprocess.run(
        [*unprivileged(), sys.executable, "-c", OPEN, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def directory() -> Iterator[Path]:
    """A directory whose permissions the test changes (restored, then removed)."""
    made = Path(tempfile.mkdtemp(prefix="h6-open-"))
    try:
        yield made
    finally:
        for place in [made, *made.iterdir()]:
            place.chmod(0o700 if place.is_dir() else 0o600)
        shutil.rmtree(made)


def refused(answer: dict[str, object], *words: str) -> str:
    assert answer.get("ok") is not True, "the open should have been refused"
    assert "CacheError" in answer["type"], answer  # type: ignore[operator]
    message = str(answer["message"])
    for word in words:
        assert word in message, message
    for sqlite_words in ("unable to open database file", "disk I/O error", "CantOpenError"):
        assert sqlite_words not in message, message
    return message


def test_a_directory_as_the_cache_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(CacheError) as raised:
        Logger(str(tmp_path))
    message = str(raised.value)
    assert "is a directory" in message and repr(str(tmp_path)) in message, message
    assert "cache.db" in message  # what to give instead
    assert "unable to open" not in message, message


def test_a_missing_directory_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "cache.db"
    with pytest.raises(CacheError, match="does not exist") as raised:
        Logger(str(path))
    assert str(path.parent) in str(raised.value)
    assert not path.parent.exists()


def test_a_cache_file_this_user_may_not_write_says_permission_denied(directory: Path) -> None:
    path = directory / "cache.db"
    with Logger(str(path)):
        pass
    directory.chmod(0o755)
    path.chmod(0o400)
    message = refused(open_in_child(path), "permission denied", repr(str(path)), "mode 400")
    assert "read and write" in message


def test_a_cache_file_this_user_may_not_read_says_permission_denied(directory: Path) -> None:
    path = directory / "cache.db"
    with Logger(str(path)):
        pass
    directory.chmod(0o755)
    path.chmod(0o000)
    refused(open_in_child(path), "permission denied", repr(str(path)))


def test_a_new_cache_in_a_read_only_directory_says_permission_denied(directory: Path) -> None:
    path = directory / "cache.db"
    directory.chmod(0o555)
    refused(open_in_child(path), "permission denied", repr(str(path)), "not writable")
    assert not path.exists()


def test_a_directory_that_cannot_hold_the_wal_says_so(directory: Path) -> None:
    """The file is writable but its directory is not: SQLite cannot create -wal and -shm
    (it said "disk I/O error" or "unable to open database file")."""
    path = directory / "cache.db"
    with Logger(str(path)):
        pass
    for beside in ("-wal", "-shm"):
        assert not Path(f"{path}{beside}").exists()  # removed at close
    path.chmod(0o666)
    directory.chmod(0o555)
    before = path.read_bytes()
    message = refused(open_in_child(path), "not writable", repr(str(directory)), "-wal")
    assert "move the cache" in message
    assert path.read_bytes() == before
    assert stat.S_IMODE(directory.stat().st_mode) == 0o555


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A real file system (tmpfs) that the test remounts read-only, as an SD card remounts
    itself after I/O errors."""
    folder = tmp_path / "card"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_read_only_file_system_says_so_and_the_looking_commands_still_look(
    read_only_mount: Path,
) -> None:
    """On a file system mounted read-only, not even root may write: the open said
    "permission denied ... run as its owner" (to the owner), and `status` and `export` of a
    cleanly closed cache failed with SQLite's "unable to open database file"."""
    import io

    from connectorsync.cli import main

    path = read_only_mount / "cache.db"
    with Logger(str(path)) as lg:
        lg.add_stream("s", {"type": "number"})
        lg.insert("s", 1.5)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    for where in (path, read_only_mount / "new.db"):
        with pytest.raises(CacheError) as raised:
            Logger(str(where))
        message = str(raised.value)
        assert "read-only" in message and repr(str(read_only_mount)) in message, message
        assert "permission denied" not in message and "owner" not in message, message
    for argv, shown in ((["status", str(path)], "1 datapoints"), (["export", str(path)], "1.5")):
        out = io.StringIO()
        assert main(argv, out=out) == 0, argv
        assert shown in out.getvalue(), out.getvalue()


def _open_with_a_bound(path: str) -> dict[str, object]:
    """OPEN in a child (as this user): a hang fails the test instead of holding it up."""
    result = subprocess.run(
        [sys.executable, "-c", OPEN, path],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("fifo", "not a regular file"),
        ("device", "not a regular file"),
        ("loop", "symbolic link"),
        ("dangling", "symbolic link"),
    ],
)
def test_a_path_that_is_no_file_says_so(tmp_path: Path, kind: str, words: str) -> None:
    """A fifo held Logger() for ever (reading it waits for a writer), /dev/null came out as
    an SQLite error; a symbolic link in a loop or to a missing file raised a bare OSError /
    FileNotFoundError, a NUL in the path a bare ValueError (not connectorsync errors)."""
    path = tmp_path / "cache.db"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(tmp_path / "other.db", path)
        os.symlink(path, tmp_path / "other.db")
    elif kind == "dangling":
        os.symlink(tmp_path / "missing" / "cache.db", path)
    where = "/dev/null" if kind == "device" else str(path)
    refused(_open_with_a_bound(where), words, repr(where))
    with pytest.raises(CacheError, match="NUL"):
        Logger(str(tmp_path / "a\0b.db"))
