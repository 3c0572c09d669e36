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
- A backup is whole or not there: it is started only when the file system has room for it
  and for the migration after it (:func:`check_room`); it is written to the end (a short
  write goes on, a full disk fails), fsynced with its folder, then checked (its size, and
  SQLite's ``quick_check``) before it is called a copy of the file as it was; any failure
  removes it and raises :class:`~connectorsync.CacheError`, the file unchanged
  (``test_migrate_on_a_nearly_full_disk_changes_nothing_and_says_so``). It is made under
  a ``.partial`` name and given its backup name only once checked, never over an existing
  file: a kill at any moment leaves no partial copy named like a backup
  (``test_a_kill_during_the_backup_leaves_no_partial_copy_under_a_backup_name``); a
  ``.partial`` left by a killed migration is removed by the next one.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterator

import apsw

from ..errors import CacheError, CacheFullError
from .base import wrapped

log = logging.getLogger(__name__)

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


def _create_partial(base: str) -> tuple[str, int]:
    """Create ``base.partial``, owner-only, where the copy is made. One left there is a
    killed migration's (the caller holds the file's write lock, and nobody else has the
    file open): removed first."""
    name = base + ".partial"
    remove_backup(name)
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise CacheError(f"cannot create the backup {name!r}: {exc}") from exc
    os.fchmod(fd, 0o600)  # whatever the umask: it holds the apikey
    return name, fd


def _publish(partial: str, base: str) -> str:
    """Give the checked copy ``partial`` the first free one of ``base``, ``base-TIMESTAMP``,
    ``base-TIMESTAMP-2``...: an existing file is never overwritten. Returns that name."""
    for name in _names(base):
        try:
            os.link(partial, name)  # fails if the name is taken: never replaces a file
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links (FAT): checked, then renamed
            if os.path.lexists(name):
                continue
            try:
                os.rename(partial, name)
            except OSError as exc:
                raise CacheError(f"cannot name the backup {name!r}: {exc}") from exc
            return name
        os.remove(partial)
        return name
    raise AssertionError("unreachable: the names never end")


def make_backup(conn: apsw.Connection, path: str, label: str) -> str:
    """Copy the cache file ``path`` to ``path.LABEL-backup`` (or, if that exists, a
    timestamped name), mode 0600, and return where the copy is.

    ``conn`` is inside a write transaction that has changed nothing yet: nobody else can
    write meanwhile, so the copy is the file as the migration finds it.

    :raises CacheError: the copy cannot be made (then no partial copy is left)
    """
    wal = str(next(conn.execute("PRAGMA journal_mode"))[0]).lower() == "wal"
    check_room(path)
    base = f"{path}.{label}-backup"
    partial, fd = _create_partial(base)
    try:
        if wal:
            os.close(fd)
            _copy_through_sqlite(path, partial)
        else:
            with os.fdopen(fd, "wb") as target:
                _copy_bytes(path, target.fileno())
        _check_copy(path, partial)
        name = _publish(partial, base)
    except BaseException:
        remove_backup(partial)
        raise
    _sync_folder(name)
    return name


def remove_backup(name: str) -> None:
    """Remove a backup (and any file SQLite made beside it): it is not a whole copy, or the
    migration it was made for changed nothing."""
    for suffix in _HELD_SUFFIXES:
        try:
            os.remove(name + suffix)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", name + suffix, exc)
    _sync_folder(name)


#: Room kept free beyond what a migration is reckoned to need: SQLite's own files, the log.
MARGIN = 1 << 20


def check_room(path: str) -> None:
    """Refuse to start when the file system of ``path`` has no room for its backup copy and
    the migration after it. A migration rewrites every datapoint into new tables inside one
    transaction (the file grows by about its size) and the rollback journal keeps the pages it
    changes (up to its size again): with the copy, about three times the file, plus a margin.

    :raises CacheFullError: not that much free space; nothing was written
    """
    try:
        size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError as exc:
        raise CacheError(f"cannot back up {path!r}: {exc}; nothing was changed") from exc
    needed = 3 * size + MARGIN
    if free < needed:
        raise CacheFullError(
            f"cannot migrate {path!r}: it needs about {needed:,} bytes free for a backup copy "
            f"and the migration ({size:,} bytes now), and its file system has {free:,}; free "
            "some space and try again; nothing was changed"
        )


def _copy_bytes(path: str, fd: int) -> None:
    """The file as it is: without a WAL, the file alone is the whole database. Every byte is
    written (``os.write`` may write less than it is given) and fsynced."""
    try:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise CacheError(f"cannot back up {path!r}: {exc}; nothing was changed") from exc


def _check_copy(path: str, name: str) -> None:
    """Before the copy is called the file as it was: as long as the database (for a copy of
    the bytes: as long as the file), and whole by SQLite's ``quick_check``.

    :raises CacheError: it is not
    """
    with wrapped(f"check the backup {name!r} of {path!r}"):
        copy = apsw.Connection(name, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            pages, page_size = (
                int(next(copy.execute(f"PRAGMA {pragma}"))[0])
                for pragma in ("page_count", "page_size")
            )
            verdict = [str(row[0]) for row in copy.execute("PRAGMA quick_check")]
        finally:
            copy.close()
    size = os.path.getsize(name)
    if verdict != ["ok"] or size < pages * page_size:
        raise CacheError(
            f"the backup {name!r} of {path!r} is not a whole copy ({size:,} bytes, "
            f"{pages * page_size:,} expected; check: {'; '.join(verdict)[:200]}); it was "
            "removed and nothing was changed"
        )


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
