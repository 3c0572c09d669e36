"""A defect found while reshaping the Logger (issue 17, L1), kept as a failing test.

SQLite keeps, per process, which of its connections hold a lock on a file (the unix VFS's
inode table), and ``fork()`` copies that table into the child. When the parent's syncer (its
own connection) is inside a write transaction at the moment of the fork, the child believes
a connection of its own still holds the write lock: a new Logger opened there waits the whole
busy timeout (60 s) in ``BEGIN IMMEDIATE`` and fails, although the parent let go at once.
``test_fork.py::test_a_child_forked_from_a_syncing_logger_leaves_the_sync_lock_to_the_parent``
hangs this way now and then (1 run in 5 on this machine); here the parent's transaction is
held on purpose, so it fails every time.
"""

from __future__ import annotations

import os

import apsw
import pytest

from connectorsync import Logger

from .test_fork import in_child


@pytest.mark.xfail(reason="SQLite's lock table is copied by fork(): the child waits 60 s")
def test_a_new_logger_in_a_child_forked_during_a_write_of_the_parent_opens(
    cache_path: str,
) -> None:
    with Logger(cache_path) as lg:
        lg.addStream_force("n", {"type": "integer"})
        lg.insert("n", 1)
        writer = apsw.Connection(cache_path)  # stands for the syncer's connection, mid-write
        writer.execute("BEGIN IMMEDIATE")
        armed, parent = [True], os.getpid()

        def let_go() -> None:  # the parent lets go the moment the child exists (once)
            if armed and os.getpid() == parent:
                armed.clear()
                writer.execute("ROLLBACK")

        os.register_at_fork(after_in_parent=let_go)

        def child() -> str:
            with Logger(cache_path) as mine:
                mine.insert("n", 2)
                return "inserted"

        try:
            assert in_child(child, timeout=10.0) == "inserted"
        finally:
            writer.close()
