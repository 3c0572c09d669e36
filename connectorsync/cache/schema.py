"""The cache file: its tables, their versioned migrations, and opening it.

Guarantees (each proved by the test named):

- The schema is versioned with ``PRAGMA user_version``; opening an older file, or a cache
  written by ``connectordb`` 0.3.5's Logger, migrates it in place in one transaction
  (``test_migration.py``). A file of a newer version, or an SQLite file that is not a cache, is
  refused (``test_logger.py::test_newer_schema_version_is_refused``) and left unchanged
  (``test_logger.py::test_foreign_sqlite_file_is_refused_unchanged``).
- Datapoint ids are AUTOINCREMENT: they follow commit order and are never reused, so an
  acknowledged id range can never cover a datapoint that was not sent.
- Per stream, cached timestamps strictly increase, also with several processes inserting:
  a trigger checks the order inside the write
  (``test_durability.py::test_processes_inserting_together_never_see_locked``).
- New cache files are readable by their owner only: they hold the apikey
  (``test_logger.py::test_cache_file_is_owner_only_and_apikey_never_shown``); so is a migrated
  connectordb cache (``test_migration.py::test_migrated_connectordb_cache_is_owner_only``).
- Every connection uses WAL and the durability asked for
  (``test_durability.py::test_durability_pragmas_are_applied``,
  ``test_migration.py::test_migrated_cache_uses_wal``).
- A new file is created without a word in the log; before migrating an existing one, a
  backup copy is made next to the file (owner-only, never over an existing file), its path
  logged at WARNING and kept in the file for ``status().migration_backup``
  (``test_migration_log.py``);
  while another process has the file open, the migration is
  refused and the file left unchanged
  (``test_migration.py::test_migrate_refuses_while_the_connectordb_program_runs_then_backs_up_and_migrates``,
  ``test_migration.py::test_logger_backs_up_a_connectordb_cache_before_migrating_and_logs_where``).
- New files return free pages on request (``auto_vacuum=INCREMENTAL``); an older cache is
  converted once when opened read-write, or left as it is with a warning when that cannot
  run now (:mod:`.space`, ``test_space.py``).
- A read-only open never writes the file: no migration, no setting; an older or connectordb
  cache is refused with how to migrate it
  (``test_cli.py::test_status_of_an_older_schema_says_how_to_migrate_and_changes_nothing``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.parse

import apsw

from ..errors import CacheError, ConfigurationError
from . import lockfree, space
from .backup import holders, make_backup, remove_backup
from .base import wrapped
from .connection import check_openable, read_only_file_system, roll_back
from .migrations import CONNECTORDB_TABLES, MIGRATIONS, import_connectordb
from .migrations import SCHEMA_VERSION as SCHEMA_VERSION

log = logging.getLogger(__name__)

DURABILITY = {"full": "FULL", "batched": "FULL", "normal": "NORMAL"}
BUSY_TIMEOUT_MS = 60_000
# The cache file and the files SQLite keeps beside it.
FILE_SUFFIXES = ("", "-journal", "-wal", "-shm")

#: The setting that keeps where the backup copy made before the last migration is
#: (``Status.migration_backup``).
BACKUP_SETTING = "migration.backup"


def _owner_only(path: str) -> None:
    """Make a migrated connectordb cache (and its journal files) readable by its owner only:
    it holds the apikey, and connectordb left it as the umask made it (often 0644).
    (``test_migration.py::test_migrated_connectordb_cache_is_owner_only``)"""
    for suffix in FILE_SUFFIXES:
        try:
            os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:  # not ours to change: say so, the file still works
            log.warning("cache %s holds the apikey but cannot be made owner-only: %s", path, exc)


# --------------------------------------------------------------------------- opening


def _user_version(conn: apsw.Connection) -> int:
    return int(next(conn.execute("PRAGMA user_version"))[0])


def _table_names(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _newer_than_us(path: str, version: int) -> ConfigurationError:
    return ConfigurationError(
        f"cache file {path!r} has schema version {version}, newer than this "
        f"connectorsync ({SCHEMA_VERSION}): upgrade connectorsync"
    )


def open_file(path: str, durability: str) -> tuple[apsw.Connection, bool]:
    """Open ``path``, creating, migrating or checking it. Returns ``(connection, created)``.

    When ``created`` is true the file is new and its creation transaction is still open (see
    ``Cache.open``). Another process opening the same path meanwhile waits, then sees the
    finished file; if that one's creation is rolled back and the file removed, it starts over.
    A file that needs migrating is backed up first (see :func:`migrate`).

    :raises ConfigurationError: not a connectorsync cache, written by a newer version, or
        needing a migration while another process has it open
    :raises CacheError: the file cannot be opened, or not backed up
    """
    conn, created, _ = _open(path, durability)
    return conn, created


def migrate(path: str) -> str | None:
    """Migrate the existing cache file ``path`` (an older schema, or a connectordb 0.3.5
    cache) to this version, after a backup copy. Returns where the backup is, or None when
    the file needed no migration: then it was not written at all.

    :raises ConfigurationError: not a cache, a newer one, or another process has it open
        (stop the old program first)
    :raises CacheError: the file cannot be opened, or not backed up
    """
    _refuse_if_held_before_locking(path)
    conn = open_readonly(path, refuse_older=False)
    try:
        current = _user_version(conn) == SCHEMA_VERSION
    finally:
        conn.close()
    if current:
        return None
    conn, created, backup = _open(path, "full")
    if created:  # removed and created anew between the two opens: not ours to keep
        conn.execute("ROLLBACK")
        conn.close()
        remove_files(path)
        raise ConfigurationError(f"{path!r} was removed while being migrated")
    conn.close()
    return backup


def _open(path: str, durability: str) -> tuple[apsw.Connection, bool, str | None]:
    """:func:`open_file`, also returning where the backup made before migrating is."""
    check_openable(path)
    _refuse_if_held_before_locking(path)
    for _ in range(5):
        try:
            # Owner-only from the first byte: the file will hold the apikey. SQLite gives
            # the -wal and -shm files the same permissions.
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise CacheError(f"cannot create cache file {path!r}: {exc}") from exc
        before = os.stat(path)
        with wrapped(f"open cache file {path!r}"):
            conn = apsw.Connection(path)
        try:
            configure(conn, path, durability, wal=False)
            if before.st_size == 0:  # new: free pages can be given back (see space.py)
                with wrapped(f"open cache file {path!r}"):
                    space.start_incremental(conn)
            with wrapped(f"open cache file {path!r}"):
                conn.execute("BEGIN IMMEDIATE")
            try:
                after = os.stat(path)
            except FileNotFoundError:
                after = None
            if after is None or (after.st_ino, after.st_dev) != (before.st_ino, before.st_dev):
                # Another process removed the file while we waited (its on_create failed).
                conn.execute("ROLLBACK")
                conn.close()
                continue
            created, backup = _prepare(conn, path)
            if not created:
                try:
                    with wrapped(f"migrate cache file {path!r} (nothing was changed)"):
                        conn.execute("COMMIT")
                except BaseException:
                    # Rolled back: the backup goes (not if an interrupt came after COMMIT).
                    if backup is not None and not _migrated(conn):
                        remove_backup(backup)
                    raise
                configure(conn, path, durability, wal=True)
                # Once, for a cache made before free pages were given back: never fails.
                space.convert(conn, path, BUSY_TIMEOUT_MS)
            return conn, created, backup
        except BaseException:
            conn.close()
            raise
    raise CacheError(f"cannot open cache file {path!r}: it keeps being replaced")


# What a file is, found by its user_version and tables (see _kind).
NEW, CURRENT, OLDER, CONNECTORDB = "new", "current", "older", "connectordb"


def _kind(path: str, version: int, tables: set[str]) -> str:
    """:data:`NEW` (empty), :data:`CURRENT`, :data:`OLDER` or :data:`CONNECTORDB`.

    :raises ConfigurationError: newer than this connectorsync, or not a cache
    """
    if version > SCHEMA_VERSION:
        raise _newer_than_us(path, version)
    if version == SCHEMA_VERSION:
        return CURRENT
    if version > 0:
        return OLDER
    if tables >= CONNECTORDB_TABLES:
        return CONNECTORDB
    if tables:
        raise ConfigurationError(
            f"{path!r} is an SQLite database but not a connectorsync cache "
            f"(tables: {', '.join(sorted(tables))}); refusing to change it"
        )
    return NEW


def _prepare(conn: apsw.Connection, path: str) -> tuple[bool, str | None]:
    """Inside the opening transaction: create, migrate or check. Returns ``(created,
    backup)``: whether the file is new, and where the backup made before migrating is."""
    version = _user_version(conn)
    kind = _kind(path, version, _table_names(conn))
    if kind == CURRENT:
        return False, None
    backup = None
    if kind != NEW:
        backup = _before_migrating(conn, path, kind, version)
    try:
        # One transaction: a failure (a full disk) rolls it all back, and the backup of a
        # file left unchanged goes too; the error is ours, never apsw's.
        with wrapped(f"migrate cache file {path!r} (nothing was changed)"):
            if kind == CONNECTORDB:
                import_connectordb(conn)  # leaves a v1 schema; later steps follow below
                version = 1
            for number in range(version, SCHEMA_VERSION):
                name, step = MIGRATIONS[number]
                if kind != NEW:  # a new file is created, not migrated: nothing to tell
                    log.info("cache %s: migration %s", path, name)
                step(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}").fetchall()
            if backup is not None:  # for status(), in the migration's own transaction
                conn.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?)",
                    (BACKUP_SETTING, json.dumps(backup)),
                )
    except BaseException:
        if backup is not None:
            remove_backup(backup)
        raise
    if kind != NEW:
        _owner_only(path)
    return kind == NEW, backup


def _refuse_if_held_before_locking(path: str) -> None:
    """Before any lock is taken: refuse a file that needs migrating (its header says so) while
    another process has it open. The connectordb 0.3.5 program sets no busy timeout: each of
    its inserts while we held the write lock (looking through /proc for holders) failed with
    "database is locked" (``test_migration.py::
    test_a_refused_migration_never_makes_the_old_program_fail_an_insert``). Checked again
    under the lock (:func:`_before_migrating`)."""
    check_openable(path, write=False)  # a fifo would hold up the read below for ever
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return  # SQLite says why when it opens it
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return  # new or empty: nothing to migrate
    version = int.from_bytes(header[60:64], "big")  # the user_version
    if version < SCHEMA_VERSION:
        _refuse_if_held(
            path, "a connectordb 0.3.5 cache" if version == 0 else f"schema version {version}"
        )


def _refuse_if_held(path: str, what: str) -> None:
    others = holders(path)
    if others:
        pids = ", ".join(f"pid {pid}" for pid in others)
        raise ConfigurationError(
            f"cache file {path!r} ({what}) needs migrating, but another process has it open "
            f"({pids}): stop the old program first, then try again; nothing was changed"
        )


def _migrated(conn: apsw.Connection) -> bool:
    """Whether the file is at :data:`SCHEMA_VERSION` (its migration committed)."""
    roll_back(conn)
    with contextlib.suppress(apsw.Error):
        return bool(conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION)
    return False


def _before_migrating(conn: apsw.Connection, path: str, kind: str, version: int) -> str:
    """Refuse while another process has the file open (it would go on writing the old
    tables), else back the file up; returns where the backup is."""
    what = "a connectordb 0.3.5 cache" if kind == CONNECTORDB else f"schema version {version}"
    _refuse_if_held(path, what)
    backup = make_backup(conn, path, "connectordb" if kind == CONNECTORDB else f"v{version}")
    log.warning(
        "cache %s (%s) is being migrated to schema version %d; a backup copy of it as it "
        "was is at %s",
        path,
        what,
        SCHEMA_VERSION,
        backup,
    )
    return backup


def open_readonly(path: str, *, refuse_older: bool = True) -> apsw.Connection:
    """A read-only connection to an existing, current cache: the file is never written.

    :param refuse_older: False: also open an older or a connectordb 0.3.5 cache
    :raises ConfigurationError: not a current connectorsync cache: an older schema or a
        connectordb 0.3.5 cache (the message says how to migrate it), or not a cache
    :raises CacheError: the file cannot be opened
    """
    check_openable(path, write=False)
    flags, name = apsw.SQLITE_OPEN_READONLY, path
    if read_only_file_system(os.path.dirname(os.path.abspath(path))) and not any(
        os.path.exists(path + suffix) for suffix in ("-wal", "-journal")
    ):
        # SQLite could not create the -shm file a WAL reader needs: the file cannot change
        # on a read-only file system, and without a -wal (or a hot -journal to roll back)
        # it is the whole database.
        flags |= apsw.SQLITE_OPEN_URI
        name = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
    # A rollback-journal file is never a current cache: told without a lock, which would
    # fail an insert of a connectordb 0.3.5 program still writing it (see lockfree.py).
    image = lockfree.image(path) if refuse_older else None
    if image is not None:
        conn = lockfree.connect(image, path)
    else:
        with wrapped(f"open cache file {path!r}"):
            conn = apsw.Connection(name, flags=flags)
    try:
        with wrapped(f"open cache file {path!r}"):
            conn.setbusytimeout(BUSY_TIMEOUT_MS)
            version = _user_version(conn)
            kind = _kind(path, version, _table_names(conn))
        how = (
            f"stop the old program first, then migrate it with `connectorsync migrate {path}` "
            "(or by opening it with connectorsync.Logger); a backup copy is kept"
        )
        if kind == CONNECTORDB and refuse_older:
            raise ConfigurationError(
                f"{path!r} is a connectordb 0.3.5 cache, not migrated yet: {how}"
            )
        if kind == OLDER and refuse_older:
            raise ConfigurationError(
                f"{path!r} has schema version {version}, older than this connectorsync's "
                f"({SCHEMA_VERSION}): {how}"
            )
        if kind == NEW:
            raise ConfigurationError(f"{path!r} is not a connectorsync cache")
    except BaseException:
        conn.close()
        raise
    if image is not None:  # current after all (just created, not yet WAL): the file itself
        conn.close()
        return open_readonly(path, refuse_older=False)
    return conn


def connect(path: str, durability: str) -> apsw.Connection:
    """A further read-write connection to an existing, current cache file."""
    check_openable(path)
    with wrapped(f"open cache file {path!r}"):
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    configure(conn, path, durability, wal=True)
    return conn


def configure(conn: apsw.Connection, path: str, durability: str, *, wal: bool) -> None:
    """Set the busy timeout, ``synchronous`` for ``durability``, ``journal_size_limit`` (so
    that a WAL that grew during a backlog shrinks back, see :mod:`.space`) and (``wal``) WAL
    mode on ``conn``, reading each back: a setting SQLite did not take is an error.

    :raises ConfigurationError: ``durability`` is not one of :data:`DURABILITY`
    :raises CacheError: SQLite did not take a setting
    """
    if durability not in DURABILITY:
        raise ConfigurationError(
            f"durability must be one of {sorted(DURABILITY)}; got {durability!r}"
        )
    # apsw runs a multi-statement string lazily: one PRAGMA per execute, read back.
    with wrapped(f"configure cache file {path!r}"):
        conn.setbusytimeout(BUSY_TIMEOUT_MS)
        if wal:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            mode = next(conn.execute("PRAGMA journal_mode"))[0]
            if str(mode).lower() != "wal":
                raise CacheError(f"cache file {path!r}: cannot use WAL (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={DURABILITY[durability]}").fetchall()
        synchronous = int(next(conn.execute("PRAGMA synchronous"))[0])
        level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[synchronous]
        if level != DURABILITY[durability]:
            raise CacheError(f"cache file {path!r}: synchronous is {level}")
        limit = space.JOURNAL_SIZE_LIMIT
        if int(next(conn.execute(f"PRAGMA journal_size_limit={limit}"))[0]) != limit:
            raise CacheError(f"cache file {path!r}: journal_size_limit not taken")


def remove_files(path: str) -> None:
    """Remove the cache file and the files SQLite keeps beside it, those that exist."""
    for suffix in FILE_SUFFIXES:
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
