"""Before a migration: who else has the cache file open, and a backup copy of it.

Guarantees (each proved by the test named, in ``test_migration.py``):

- :func:`holders` names the other processes that have the file (or its journal files) open;
  a migration refuses while there is one
  (``test_migrate_refuses_while_the_connectordb_program_runs_then_backs_up_and_migrates``).
  It reads ``/proc``: on a system without it, or for another user's processes (unless we
  are root), it finds nobody.
- :func:`make_backup` copies the file before it is migrated, owner-only (0600), next to it,
  never over an existing file (``test_migrate_never_overwrites_an_existing_backup``): the
  bytes as they were for a rollback-journal file (connectordb 0.3.5's), a consistent copy
  through SQLite for a WAL file (an older connectorsync's).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import apsw

from ..errors import CacheError
from .base import wrapped

# The journal files a program with the cache open may hold open too.
_HELD_SUFFIXES = ("", "-journal", "-wal", "-shm")


def holders(path: str) -> list[int]:
    """The ids of the other processes that have ``path`` (or its journal files) open now.

    Linux only (``/proc/*/fd``); elsewhere, and for processes we may not look into, none.
    """
    real = os.path.realpath(path)
    wanted = {real + suffix for suffix in _HELD_SUFFIXES}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    ours = os.getpid()
    return sorted(pid for pid in pids if pid != ours and _has_open(pid, wanted))


def _has_open(pid: int, wanted: set[str]) -> bool:
    folder = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(folder)
    except OSError:  # gone meanwhile, or not ours to look into
        return False
    for fd in fds:
        try:
            if os.readlink(f"{folder}/{fd}") in wanted:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def _names(base: str) -> Iterator[str]:
    yield base
    stamp = time.strftime("%Y%m%d-%H%M%S")
    yield f"{base}-{stamp}"
    for n in itertools.count(2):
        yield f"{base}-{stamp}-{n}"


def _create_new(base: str) -> tuple[str, int]:
    """Create the first free one of ``base``, ``base-TIMESTAMP``, ``base-TIMESTAMP-2``...,
    owner-only: an existing file is never opened, let alone overwritten."""
    for name in _names(base):
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CacheError(f"cannot create the backup {name!r}: {exc}") from exc
        os.fchmod(fd, 0o600)  # whatever the umask: it holds the apikey
        return name, fd
    raise AssertionError("unreachable: the names never end")


def make_backup(conn: apsw.Connection, path: str, label: str) -> str:
    """Copy the cache file ``path`` to ``path.LABEL-backup`` (or, if that exists, a
    timestamped name), mode 0600, and return where the copy is.

    ``conn`` is inside a write transaction that has changed nothing yet: nobody else can
    write meanwhile, so the copy is the file as the migration finds it.

    :raises CacheError: the copy cannot be made (then no partial copy is left)
    """
    wal = str(next(conn.execute("PRAGMA journal_mode"))[0]).lower() == "wal"
    name, fd = _create_new(f"{path}.{label}-backup")
    try:
        if wal:
            os.close(fd)
            _copy_through_sqlite(path, name)
        else:
            with os.fdopen(fd, "wb") as target:
                _copy_bytes(path, target.fileno())
    except BaseException:
        for suffix in _HELD_SUFFIXES:
            try:
                os.remove(name + suffix)
            except FileNotFoundError:
                pass
        raise
    _sync_folder(name)
    return name


def _copy_bytes(path: str, fd: int) -> None:
    """The file as it is: without a WAL, the file alone is the whole database."""
    try:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                os.write(fd, chunk)
        os.fsync(fd)
    except OSError as exc:
        raise CacheError(f"cannot back up {path!r}: {exc}") from exc


def _copy_through_sqlite(path: str, name: str) -> None:
    """With a WAL, part of the database may still be in the -wal file: copy through SQLite
    (its backup API), from a second connection since ours holds a write transaction."""
    with wrapped(f"back up {path!r} to {name!r}"):
        source = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            target = apsw.Connection(name)
            try:
                with target.backup("main", source, "main") as copy:
                    copy.step()  # all pages at once
                target.execute("PRAGMA journal_mode=DELETE").fetchall()  # a single file
            finally:
                target.close()
        finally:
            source.close()


def _sync_folder(name: str) -> None:
    """Make the new backup's name durable too."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(name)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
