"""Group commit: inserts from several threads share one transaction and its one fsync.

With ``durability="full"`` every commit costs an fsync, which on an SD card is the price of the
whole insert. Inserts that arrive while a commit is in progress wait for it, then the first of
them (the leader) commits all of them together: one transaction, one fsync.

Guarantees (``tests/test_group_commit.py``):

- Each call returns only after its own datapoint is committed (and, with ``full``, fsynced).
- Errors stay per call: a datapoint refused (an explicit timestamp older than its stream's
  newest, a storage limit) fails alone; the others of its group are stored. Each datapoint of
  a group runs in a savepoint; anything but a refused timestamp, and a failed commit, sends the
  datapoint back to its own thread to be stored alone, which gives it its own outcome.
- A lone insert costs what it did before: a group of one is stored by the plain path.
- An exception of any kind in the leader (``KeyboardInterrupt`` included) leaves no
  transaction open and hands every waiter its true outcome: before the ``COMMIT`` the group
  is rolled back and each waiter stores its datapoint alone; once the ``COMMIT`` is done each
  waiter gets its stored ``t``. Whether the ``COMMIT`` was done is read from the file (a row
  of the group there or not), never inferred from the call: an exception raised from inside
  the ``COMMIT`` (Python code SQLite calls while it commits: an apsw VFS, a hook) makes SQLite
  roll the group back, which leaves no transaction open either
  (``test_an_interrupt_that_fails_the_commit_acknowledges_nothing_rolled_back``). The
  interrupted call raises; its own datapoint is stored once if the ``COMMIT`` was done, else
  not at all; a caller interrupted while its datapoint was still queued is taken out of the
  queue (never stored). Nothing acknowledged is lost, nothing is stored twice
  (``test_group_commit.py::test_an_interrupt_in_the_leader_loses_and_doubles_nothing``).

Without more, two groups would alternate, each about half the threads: the threads of the
group just committed are on their way back with their next insert while the others already
commit. So a leader first waits a moment (at most a fifth of the last commit's time, and
:data:`MAX_GATHER`) for the threads that inserted in the last two groups, as PostgreSQL's
``commit_delay`` does; a lone thread never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import apsw

from .base import INSERT, NEWEST, TooOldError, place
from .connection import Connection, roll_back, shielded
from .limits import Limits, make_room
from .records import Untrusted

log = logging.getLogger(__name__)

#: What :meth:`Cache.append` stores: (stream id, t, data, boot, mono).
AppendRow = tuple[int, float, str, int | None, float | None]
#: What :meth:`Cache.append_many` stores: (stream id, t, restamp, data, untrusted).
Point = tuple[int, float, bool, str, Untrusted | None]

#: The longest a leader waits for the others before it commits (seconds).
MAX_GATHER = 0.002
#: ... and at most this share of the last commit's time.
GATHER_SHARE = 0.2

_PENDING = object()
_ALONE = object()  # store it alone, in its own thread: the group could not decide for it


class _Request:
    __slots__ = ("limits", "outcome", "restamp", "row", "thread")

    def __init__(self, row: AppendRow, restamp: bool, limits: Limits | None):
        self.row, self.restamp, self.limits = row, restamp, limits
        self.thread = threading.get_ident()
        self.outcome: object = _PENDING  # a stored t, a TooOldError, or _ALONE


#: The places where :attr:`GroupCommit.fault` is called, in the leader of a group.
FAULT_POINTS = ("gather", "begun", "before_commit", "after_commit")


class GroupCommit:
    """Leader/follower group commit over one :class:`Cache`.

    ``alone`` stores one row by the cache's plain path: ``alone(row, restamp, limits) -> t``.
    """

    #: For tests (``connectorsync.testing.groupcommit``): ``fault(point, size)`` is called by
    #: the leader of a group of ``size`` inserts at each of :data:`FAULT_POINTS`; whatever it
    #: raises is raised there, as a Ctrl-C landing at that moment would be.
    fault: Callable[[str, int], object] | None = None

    def __init__(self, cache: Connection, alone: Callable[[AppendRow, bool, Limits | None], float]):
        self._cache, self._alone = cache, alone
        lock = threading.Lock()
        self._done = threading.Condition(lock)  # followers wait here for their outcome
        self._arrived = threading.Condition(lock)  # a gathering leader waits here
        self._queue: list[_Request] = []
        self._leading = self._gathering = False
        self._last_commit = 0.0  # seconds the last group took
        self._previous: set[int] = set()  # the threads of the last group
        self._active: set[int] = set()  # ... of the last two groups
        #: how many groups of more than one were committed (for tests and metrics)
        self.groups = 0

    def append(self, row: AppendRow, restamp: bool, limits: Limits | None) -> float:
        """Store ``row`` durably, sharing a commit with the inserts waiting at the same time."""
        request = _Request(row, restamp, limits)
        with self._done:
            try:
                self._queue.append(request)
                if self._gathering:
                    self._arrived.notify()
                while request.outcome is _PENDING:
                    if self._leading:
                        self._done.wait()
                    else:
                        self._lead()
            except BaseException:
                # Interrupted (the lock is held again here): a datapoint no leader took yet
                # must not be stored after its call raised. One a leader took gets the
                # group's outcome: stored once if its COMMIT is done, else not at all.
                if request in self._queue:
                    self._queue.remove(request)
                raise
        outcome = request.outcome
        if outcome is _ALONE:
            return self._alone(row, restamp, limits)
        if isinstance(outcome, TooOldError):
            raise outcome
        assert isinstance(outcome, float)
        return outcome

    def waiting(self) -> int:
        """How many inserts wait for the next commit (for tests)."""
        with self._done:
            return len(self._queue)

    def _lead(self) -> None:
        """Commit everything queued; called and returns with the lock held."""
        self._leading = True
        batch: list[_Request] = []
        released = False
        started = time.monotonic()
        try:
            self._fault("gather", len(self._queue))
            self._gather()
            batch, self._queue = self._queue, []
            # In this order: an interrupt lands only after a call returns, so ``released``
            # says whether the lock is still held whenever one lands.
            released = True
            self._done.release()
            try:
                if len(batch) == 1:
                    self._store_one(batch[0])
                elif batch:
                    self._store_group(batch)
            except Exception:
                # Not an interrupt: the group is rolled back or committed as it says, and
                # those it did not store store theirs alone, the leader too, each hearing
                # its own error (a raw apsw error must not reach the leader's caller).
                log.warning("group commit failed; its inserts are stored one by one", exc_info=True)
        finally:
            # Whatever was raised, no one is left waiting: a datapoint the group did not
            # store (rolled back, or never reached) is stored alone by its own thread; if
            # the queue was not taken, the others choose a new leader.
            for request in batch:
                if request.outcome is _PENDING:
                    request.outcome = _ALONE
            if released:
                self._done.acquire()
            self._last_commit = time.monotonic() - started
            if batch:
                threads = {request.thread for request in batch}
                self._active, self._previous = threads | self._previous, threads
            self._leading = False
            self._done.notify_all()

    def _fault(self, point: str, size: int) -> None:
        if self.fault is not None:
            self.fault(point, size)

    def _gather(self) -> None:
        """Wait a moment for the threads of the last two groups not queued yet (see above)."""
        expected = len(self._active)
        if len(self._queue) >= expected:
            return
        deadline = time.monotonic() + min(MAX_GATHER, self._last_commit * GATHER_SHARE)
        self._gathering = True
        while len(self._queue) < expected and (left := deadline - time.monotonic()) > 0:
            self._arrived.wait(left)
        self._gathering = False

    def _store_one(self, request: _Request) -> None:
        began = time.perf_counter()
        try:
            request.outcome = self._alone(request.row, request.restamp, request.limits)
        except TooOldError as exc:
            request.outcome = exc
        except Exception:
            request.outcome = _ALONE  # raised again, in its own thread
        else:
            limits = request.limits
            if limits is None or not limits.engaged:
                # Stored by one statement in an implicit transaction (the plain path of
                # Cache.append): the statement is the transaction and its commit (and fsync).
                # Under limits it went through Cache.transaction, which timed it already.
                self._cache.timed(began, began)

    def _store_group(self, batch: list[_Request]) -> None:
        cache = self._cache
        with cache._lock:
            conn = cache._conn
            began = time.perf_counter()
            group = _Group(batch)
            committing: float | None = None
            try:
                # In the try: an interrupt that lands as BEGIN returns must not leave the
                # transaction open (later inserts would go into it, return, and be lost).
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except apsw.Error:
                    return  # each is stored alone, and gets its own error
                self._fault("begun", len(batch))
                # Outcomes are handed out only after the COMMIT: a waiter that wakes
                # meanwhile must not return before its datapoint is durable.
                for request in batch:
                    group.outcomes.append(_store_in_savepoint(conn, cache.path, request, group))
                self._fault("before_commit", len(batch))
                committing = time.perf_counter()
                conn.execute("COMMIT")
                self._fault("after_commit", len(batch))
            except BaseException as exc:
                # Of any kind, KeyboardInterrupt included, and wherever it landed: in the
                # COMMIT too, from Python code SQLite calls while it commits (an apsw VFS, a
                # hook), which makes SQLite roll the group back. So whether the COMMIT was
                # done is read from the file (see _settle), never guessed from the call;
                # settled to its end even if more interrupts land meanwhile.
                done = shielded(lambda: self._settle(conn, group, committing))
                if committing is not None and isinstance(exc, apsw.Error):
                    # The COMMIT's own error (an I/O error, a full disk): not raised; those
                    # not handed their t store theirs alone (see _lead), with their own error.
                    if done:
                        cache.timed(began, committing)
                    return
                raise
            shielded(lambda: self._handed(group))
            cache.timed(began, committing)

    def _settle(self, conn: apsw.Connection, group: _Group, committing: float | None) -> bool:
        """The group's transaction ended by an exception: leave no transaction open and, if
        its COMMIT was done, hand each waiter its outcome. Returns whether it was done.

        Idempotent (run again if an interrupt lands in it). The COMMIT was done exactly when
        it was begun, no transaction is open, and a row the group stored is in the file:
        a COMMIT that failed (an I/O error, an exception raised from inside it) is rolled
        back by SQLite, which leaves no transaction open either. In WAL mode with
        ``synchronous=FULL`` a row another statement can read is in the fsynced WAL."""
        if committing is None or conn.in_transaction or len(group.outcomes) != len(group.batch):
            roll_back(conn)
            return False
        if group.witness:
            rowid, stream_id, t = group.witness[-1]
            try:
                found = conn.execute(
                    "SELECT 1 FROM datapoints WHERE id = ? AND stream = ? AND t = ?",
                    (rowid, stream_id, t),
                ).fetchall()
            except apsw.Error:
                # Cannot tell: each stores its own alone (at worst twice, never lost).
                log.warning("cannot tell whether a group's COMMIT was done", exc_info=True)
                return False
            if not found:
                return False
        self._handed(group)
        return True

    def _handed(self, group: _Group) -> None:
        """The group is committed: give each waiter its outcome (idempotent)."""
        for request, outcome in zip(group.batch, group.outcomes, strict=True):
            request.outcome = outcome
        self._cache._newest.update(group.hints)
        self.groups += 1


class _Group:
    """A group being stored: its requests, their outcomes so far, the streams' newest t."""

    __slots__ = ("batch", "hints", "outcomes", "witness")

    def __init__(self, batch: list[_Request]):
        self.batch = batch
        self.outcomes: list[object] = []
        self.hints: dict[int, float] = {}
        #: (rowid, stream, t) of each row stored: whether one is in the file tells whether
        #: the COMMIT was done
        self.witness: list[tuple[int, int, float]] = []


def _store_in_savepoint(
    conn: apsw.Connection, path: str, request: _Request, group: _Group
) -> object:
    """Store one datapoint of a group inside the open transaction, in a savepoint of its own.
    Returns its outcome once the group is committed: the stored t, a TooOldError or _ALONE;
    notes a row stored in ``group.witness``."""
    stream_id, t, data, boot, mono = request.row
    if not conn.in_transaction:
        # SQLite rolled the group back (an error of an earlier statement): a SAVEPOINT now
        # would begin, and its RELEASE commit, a transaction of its own.
        raise RuntimeError("the group's transaction ended before its COMMIT")
    conn.execute("SAVEPOINT one")
    try:
        if request.limits is not None and request.limits.active:
            make_room(conn, path, 1, request.limits)
        newest = group.hints.get(stream_id)
        if newest is None or t <= newest:
            newest = next(conn.execute(NEWEST, (stream_id,)))[0]
        stored = place(t, newest, request.restamp)
        conn.execute(INSERT, (stream_id, stored, data, boot, mono))
        if not conn.changes():
            raise RuntimeError("the order trigger refused the row")  # stored alone instead
    except Exception as exc:
        conn.execute("ROLLBACK TO one")
        conn.execute("RELEASE one")
        return exc if isinstance(exc, TooOldError) else _ALONE
    conn.execute("RELEASE one")
    group.hints[stream_id] = stored
    group.witness.append((conn.last_insert_rowid(), stream_id, stored))
    return stored
