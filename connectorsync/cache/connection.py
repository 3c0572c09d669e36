"""One connection to a cache file: its lock, its transactions, its reads.

:class:`Connection` is the core every part of :class:`~connectorsync.cache.Cache` builds on.
Guarantees: a write transaction takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so
the busy timeout applies and a write never fails half way with "database is locked"; a
transaction that raises is rolled back, so a failed call changes nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apsw

from .base import wrapped

if TYPE_CHECKING:
    from .batched import CommitQueue
    from .commit import GroupCommit


class Connection:
    """An apsw connection to the cache file ``path``, used by one thread at a time (the
    lock keeps each transaction whole)."""

    def __init__(self, conn: apsw.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._closed = False
        # Each stream's newest timestamp as this connection last saw it: a hint that saves a
        # query per insert. The trigger catches it when another connection wrote since.
        self._newest: dict[int, float] = {}
        # With durability "full", inserts of several threads share commits (fsyncs).
        self._group: GroupCommit | None = None
        # With durability "batched", inserts are queued and committed every commit_interval.
        self._batched: CommitQueue | None = None
        self._commit_interval = 0.2

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[apsw.Connection]:
        """A write transaction: BEGIN IMMEDIATE (so the write lock is taken up front and the
        busy timeout applies, never "database is locked" half way), COMMIT or ROLLBACK.
        Inside an open transaction (the creation one), a SAVEPOINT instead."""
        with self._lock, wrapped(action):
            conn = self._conn
            if conn.in_transaction:
                with conn:
                    yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, wrapped("read the cache"):
            return list(self._conn.execute(sql, params))
