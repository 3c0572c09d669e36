"""One connection to a cache file: its lock, its transactions, its reads.

:class:`Connection` is the core every part of :class:`~connectorsync.cache.Cache` builds on.
Guarantees: a write transaction takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so
the busy timeout applies and a write never fails half way with "database is locked"; a
transaction that raises is rolled back, so a failed call changes nothing.

Commits are timed here, in :meth:`Connection.commit`, for the metrics: ``on_commit(whole,
statement)`` gets the seconds of the whole write transaction (from ``BEGIN IMMEDIATE``, so
waiting for the write lock counts) and of the ``COMMIT`` statement alone, which is where
SQLite writes the WAL and, with ``synchronous=FULL``, fsyncs it.

Before SQLite opens a file, :func:`check_openable` says in plain words what would only come
out of it as ``unable to open database file`` or ``disk I/O error``: a directory given as the
cache path, a file or a directory this user may not write (SQLite creates the ``-wal`` and
``-shm`` files beside the cache file), a file system mounted read-only, a fifo or a
device, a symbolic link that leads nowhere, a NUL in the path (``test_open_errors.py``).

Fork: a connection belongs to the process that opened it. SQLite forbids using a connection
in a child forked after it was opened (its locks are not the child's), and a ``batched``
queue copied into the child holds datapoints the parent commits. So in a forked child every
use of an inherited connection raises :class:`~connectorsync.CacheError` at once, before any
lock is taken (a lock held by another thread at the fork stays held in the child for ever),
saying to open a new Logger there; closing it in the child changes nothing on disk
(``tests/test_fork.py``). And ``os.fork()`` waits (up to :data:`FORK_WAIT`) for the
transactions other threads have under way to end, and lets none begin until it is done: SQLite
keeps its locks in the process's memory, so one under way at the fork would hold the file's
write lock for ever in the child's copy, and a new Logger there would wait for it
(``test_fork.py::test_a_fork_while_another_thread_writes_leaves_the_child_free_to_write``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import apsw

from ..errors import CacheError
from . import seal
from .base import wrapped


class Queue(Protocol):
    """What the statements on a connection ask of the ``batched`` commit queue
    (``batched.CommitQueue``, which builds on this module: so it is named by what it does)."""

    def flush(self) -> None: ...

    def forget_newest(self) -> None: ...


def _check_what_it_is(path: str, *, write: bool) -> str:
    """The part of :func:`check_openable` about what ``path`` names; returns its directory."""
    if "\0" in path:
        raise CacheError(f"cache path {path!r} holds a NUL character: no file can be named so")
    if os.path.islink(path) and not os.path.exists(path):
        try:
            target = repr(os.readlink(path))
        except OSError:  # changed meanwhile
            target = "a path"
        raise CacheError(
            f"cache path {path!r} is a symbolic link to {target}, which cannot be reached "
            "(missing, or a loop of links): fix the link, or give the real path"
        )
    if os.path.isdir(path):
        raise CacheError(
            f"cache path {path!r} is a directory, not a file: give a file path such as "
            f"{os.path.join(path, 'cache.db')!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CacheError(
            f"cannot open cache file {path!r}: its directory {directory!r} does not exist; "
            "create it first"
        )
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        # Reading a fifo waits for a writer for ever; a device or a socket is no database.
        raise CacheError(
            f"cache path {path!r} is not a regular file (a fifo, a device or a socket): give "
            "the path of a cache file, or of one to create"
        )
    if write and read_only_file_system(directory):
        raise CacheError(
            f"cannot open cache file {path!r} to write: the file system holding {directory!r} "
            "is mounted read-only (an SD card remounts itself so after I/O errors: check it); "
            "remount it read-write, or put the cache on one that is"
        )
    return directory


def check_openable(path: str, *, write: bool = True) -> None:
    """Raise a :class:`~connectorsync.CacheError` that says what to do when ``path`` cannot
    be a cache file this process opens (``write``: for reading and writing; else to read):
    it is a directory, its directory is missing, or this user may not read or write it, or
    create the ``-wal``/``-shm`` files beside it. Says nothing when the file can be opened
    (SQLite's own errors are still wrapped when it then fails for another reason).
    """
    directory = _check_what_it_is(path, write=write)
    user = f"this user (uid {os.getuid()})"
    if os.path.exists(path):
        wanted = os.R_OK | os.W_OK if write else os.R_OK
        if not os.access(path, wanted):
            st = os.stat(path)
            how = "read and write" if write else "read"
            raise CacheError(
                f"permission denied: {user} may not {how} cache file {path!r} (owner uid "
                f"{st.st_uid}, mode {st.st_mode & 0o777:o}): run as its owner, or give this "
                "user access to it"
            )
    elif write and not os.access(directory, os.W_OK | os.X_OK):
        raise CacheError(
            f"permission denied: {user} may not create cache file {path!r}: directory "
            f"{directory!r} is not writable; make it writable for this user, or put the cache "
            "in a directory that is"
        )
    if not write:
        return
    for suffix in ("-wal", "-shm"):
        beside = path + suffix
        if os.path.exists(beside):
            if not os.access(beside, os.R_OK | os.W_OK):
                raise CacheError(
                    f"permission denied: {user} may not read and write {beside!r}, which "
                    f"SQLite keeps beside the cache file {path!r}: give this user access to it"
                )
        elif not os.access(directory, os.W_OK | os.X_OK):
            raise CacheError(
                f"directory {directory!r} is not writable for {user}: SQLite creates "
                f"{os.path.basename(beside)!r} there beside the cache file {path!r}; make the "
                "directory writable for this user, or move the cache to one that is"
            )


class _Process:
    """The pid of this process, kept current by an at-fork hook: checking it on every call
    is then a comparison, not a system call."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def forked(self) -> None:
        self.pid = os.getpid()


log = logging.getLogger(__name__)
_T = TypeVar("_T")

_PROCESS = _Process()
os.register_at_fork(after_in_child=_PROCESS.forked)

# Connections a forked child inherited and closed: kept referenced, never closed by SQLite in
# the child (closing may take locks and checkpoint a WAL the parent still writes).
_INHERITED: list[apsw.Connection] = []

# Every connection of this process, for the fork hooks below.
_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()
# What the fork hook holds across a fork, released on both sides after it: by the forking
# thread (two threads may fork at once; each releases only its own).
_HELD_AT_FORK: dict[int, list[Callable[[], None]]] = {}
#: How long ``os.fork()`` waits for the transactions under way in other threads to end
#: (``_quiesce_before_fork``); past it, it forks all the same (a transaction still under way
#: then makes the child's own new connection wait on the busy timeout, as without the wait).
FORK_WAIT = 10.0


def _quiesce_before_fork() -> None:
    """Before ``os.fork()``: wait until no other thread is inside a transaction of this
    process's connections, and hold them so none begins until the fork is done.

    SQLite keeps the locks its connections hold on a file in the process's memory (one
    record per file, shared by all the process's connections to it: POSIX locks belong to
    the process), and a child inherits that memory. A connection of the parent inside a
    transaction at the fork (a courier publishing the lease) so stays "inside" in the
    child's copy for ever: a new connection the child opens on the same file sees the write
    lock held by a sibling, and its ``BEGIN IMMEDIATE`` waits the whole busy timeout (60 s)
    for a thread that does not exist there (``test_fork.py::
    test_a_fork_while_another_thread_writes_leaves_the_child_free_to_write``). Every
    transaction holds its connection's lock from ``BEGIN`` to its end, so holding them all
    here means none is under way at the fork."""
    deadline = time.monotonic() + FORK_WAIT
    seen: set[Connection] = set()
    held = _HELD_AT_FORK.setdefault(threading.get_ident(), [])
    while True:
        # The registry's lock is not held while waiting (a thread inside a transaction may
        # open a connection before it ends); connections opened meanwhile: another round.
        if not _OPEN_LOCK.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return
        waiting = [c for c in _OPEN if c not in seen and not c.inherited and not c._closed]
        if not waiting or time.monotonic() >= deadline:
            held.append(_OPEN_LOCK.release)  # none opens until after the fork
            return
        _OPEN_LOCK.release()
        for conn in waiting:
            seen.add(conn)
            if conn._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                held.append(conn._lock.release)
            else:
                log.warning("fork: a transaction on %s is still under way", conn.path)


def _resume_after_fork() -> None:
    """After ``os.fork()``, in the parent and in the child: let the transactions go on (in
    the child the connections are inherited: they refuse every use anyway)."""
    held = _HELD_AT_FORK.pop(threading.get_ident(), [])
    while held:
        held.pop()()


os.register_at_fork(
    before=_quiesce_before_fork,
    after_in_parent=_resume_after_fork,
    after_in_child=_resume_after_fork,
)


class CommitOutcome:
    """Whether a :meth:`Connection.transaction` that raised had committed all the same.

    The caller names a row the transaction stored (``witness``: id, stream id, t) before it
    ends: "no transaction open after the COMMIT" is not proof, for an exception raised from
    inside the COMMIT (by Python code SQLite calls, a VFS say) makes SQLite roll it back
    too. The row read back is (in WAL mode, the fsynced WAL). Without a witness nothing is
    taken as done: the caller then stores again (never lost; a count at worst twice).
    """

    __slots__ = ("done", "witness")

    def __init__(self) -> None:
        self.done = False
        self.witness: tuple[int, int, float] | None = None

    def settle(self, conn: apsw.Connection) -> None:
        """Set :attr:`done` from the file (idempotent)."""
        if self.witness is None:
            return
        try:
            found = conn.execute(
                "SELECT 1 FROM datapoints WHERE id = ? AND stream = ? AND t = ?", self.witness
            ).fetchall()
        except apsw.Error:
            return  # cannot tell: stored again, never lost
        self.done = bool(found)


def read_only_file_system(directory: str) -> bool:
    """Whether the file system holding ``directory`` is mounted read-only (where nobody, not
    even root, may write: not a matter of permissions). False when it cannot be told."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Connection:
    """An apsw connection to the cache file ``path``, used by one thread at a time (the
    lock keeps each transaction whole)."""

    def __init__(self, conn: apsw.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._closed = False
        self._pid = _PROCESS.pid  # the process that opened it: the only one that may use it
        # Each stream's newest timestamp as this connection last saw it: a hint that saves a
        # query per insert. The trigger catches it when another connection wrote since.
        self._newest: dict[int, float] = {}
        # The sealer attached (also kept by the apsw connection, for the modules that hold
        # only that): read on every insert, so held here too, without a weak-key lookup.
        self._sealer: seal.Sealer | None = None
        # With durability "batched", inserts are queued and committed every commit_interval
        # (the option, declared in connectorsync.options: given by set_commit_interval; Cache
        # makes the queue, the statements here only flush it or make it look again).
        self._batched: Queue | None = None
        self._commit_interval: float | None = None
        #: ``f(transaction seconds, COMMIT seconds)`` after each timed commit, or None
        self.on_commit: Callable[[float, float], object] | None = None
        with _OPEN_LOCK:
            _OPEN.add(self)  # for the fork hooks: forking waits for its transactions

    def check_process(self) -> None:
        """Raise if this process is a child forked after the connection was opened.

        :raises CacheError: a forked child: the message says to open a new Logger there
        """
        if self._pid != _PROCESS.pid:
            raise CacheError(
                f"the cache {self.path!r} was opened by process {self._pid}; this is process "
                f"{_PROCESS.pid}, forked from it: a SQLite connection must not be used across "
                "fork(), and what that process queued is its to commit. Nothing was done: "
                f"open a new Logger({self.path!r}) in this process"
            )

    @property
    def inherited(self) -> bool:
        """True in a child forked after this connection was opened (it may not be used)."""
        return self._pid != _PROCESS.pid

    def close(self) -> None:
        """Close the connection. Safe to call twice. In a forked child, only forget it: the
        file is the parent's to close (nothing is written, no lock is taken)."""
        if self.inherited:
            if not self._closed:
                self._closed = True
                _INHERITED.append(self._conn)
            return
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._conn.close()
                except apsw.Error as exc:
                    # Closing checkpoints the WAL; on a failing disk that fails, and what was
                    # committed stays in the WAL for the next open. Closed all the same.
                    log.warning("closing the cache %s: %s (committed data kept)", self.path, exc)
                    self._conn.close(force=True)

    @contextlib.contextmanager
    def transaction(
        self, action: str, outcome: CommitOutcome | None = None
    ) -> Iterator[apsw.Connection]:
        """A write transaction: BEGIN IMMEDIATE (so the write lock is taken up front and the
        busy timeout applies, never "database is locked" half way), COMMIT or ROLLBACK.
        Inside an open transaction (the creation one), a SAVEPOINT instead.

        An exception that ends it never leaves it open. When one (a ``KeyboardInterrupt``)
        arrives once the COMMIT is done, ``outcome.done`` says so: the caller must then not
        store the same rows again (``test_batched.py::test_an_interrupt_after_the_commit``).

        :raises CacheError: it failed (nothing of it is kept), or a forked child
        """
        self.check_process()
        with self._lock, wrapped(action):
            conn = self._conn
            if conn.in_transaction:
                with conn:
                    yield conn
                return
            began = time.perf_counter()
            committing = False
            try:
                # In the try: an interrupt that lands as BEGIN returns must not leave the
                # transaction open (later statements would go into it and be lost).
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                committing = True
                self.commit(began)
            except BaseException as exc:
                # A COMMIT that failed (an I/O error, a read-only or full disk) may leave the
                # transaction open: the next one would then fail at BEGIN for ever.
                if conn.in_transaction:
                    roll_back(conn)
                elif committing and outcome is not None and not isinstance(exc, apsw.Error):
                    # Not the COMMIT's own error, and no transaction open: done, if its
                    # witness row is in the file (an interrupt raised from inside the
                    # COMMIT rolled it back).
                    shielded(lambda: outcome.settle(conn))
                raise

    @contextlib.contextmanager
    def snapshot(self, action: str) -> Iterator[apsw.Connection]:
        """A read transaction: the statements inside see one state of the file, and nothing
        is written (it works on a read-only connection too); ``action`` names it in errors."""
        self.check_process()
        with self._lock, wrapped(action):
            conn = self._conn
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                roll_back(conn)  # a read transaction: ending it changes nothing

    def commit(self, began: float) -> None:
        """COMMIT the open write transaction begun at ``began`` (``time.perf_counter()``),
        and tell ``on_commit`` how long it took (the one place commits are timed)."""
        committing = time.perf_counter()
        self._conn.execute("COMMIT")
        self.timed(began, committing)

    def timed(self, began: float, committing: float) -> None:
        """A commit ended now: the transaction began at ``began``, its commit at
        ``committing`` (both ``time.perf_counter()``)."""
        if self.on_commit is not None:
            done = time.perf_counter()
            self.on_commit(done - began, done - committing)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (for the cache's own modules)."""
        self.check_process()
        with self._lock, wrapped("read the cache"):
            return list(self._conn.execute(sql, params))

    _read = read

    def attach_sealer(self, sealer: seal.Sealer | None) -> None:
        """Seal and open stored values with ``sealer`` from now on (None: a plain cache)."""
        seal.attach(self._conn, sealer)
        self._sealer = sealer

    def opened_points(
        self, stream: str, rows: list[Any]
    ) -> tuple[list[tuple[int, float, str]], list[str]]:
        """``stream``'s datapoint rows ``(id, t, d)`` with their values opened, and what
        names each row that does not open (left out): see :func:`.seal.open_points`."""
        return seal.open_points(self._conn, stream, rows)

    @property
    def sealer(self) -> seal.Sealer | None:
        """The sealer of this connection (None: a plain cache)."""
        return self._sealer

    def forget_newest(self) -> None:
        """Forget each stream's newest timestamp as this connection last saw it: a statement
        changed timestamps (re-timing), so the next insert looks again."""
        self._newest.clear()
        if self._batched is not None:
            self._batched.forget_newest()


def shielded(step: Callable[[], _T]) -> _T:
    """Run ``step`` (idempotent) to its end, again whenever an exception that is not an
    ``Exception`` (a ``KeyboardInterrupt``) lands in it; the first such is raised once it has
    run to its end. An ``Exception`` of its own is raised at once."""
    pending: BaseException | None = None
    while True:
        try:
            result = step()
        except Exception:
            raise
        except BaseException as exc:
            pending = pending or exc
            continue
        if pending is not None:
            raise pending
        return result


def roll_back(conn: apsw.Connection) -> None:
    """End the open transaction, if one is, changing nothing; to its end even if interrupts
    land meanwhile (see :func:`shielded`): a transaction left open would take in the
    statements after it, which would seem done and be lost."""

    def once() -> None:
        if conn.in_transaction:
            with contextlib.suppress(apsw.Error):
                conn.execute("ROLLBACK")

    shielded(once)
