"""Reading a rollback-journal SQLite file (a connectordb 0.3.5 cache) without a lock.

The connectordb 0.3.5 program sets no busy timeout: any lock a reader holds while it
commits fails its insert at once with "database is locked". The commands that only look
at such a file (``status``, and the refusals of ``export``, ``deadletters``) read its bytes
without a lock and keep them only if the file did not change meanwhile: the same change
counter (which every commit of a rollback-journal file increments) before and after, and
no journal (a write under way) at either moment; else read again. SQLite then reads that
copy, in memory (``test_migration.py::test_status_never_makes_the_old_program_fail_an_insert``).
"""

from __future__ import annotations

import os
import stat
import time

import apsw

from .base import wrapped

#: Reads tried before giving up (the caller then uses SQLite's locks), the pause between two.
ATTEMPTS, PAUSE = 100, 0.01
#: The largest file read into memory to be looked at without a lock.
MAX_IMAGE = 256 * 1024 * 1024


def image(path: str) -> bytes | None:
    """The bytes of the rollback-journal SQLite file ``path`` as of one commit, read without
    a lock; None for any other file (WAL, not SQLite, too large) or one that never stopped
    changing."""
    for _ in range(ATTEMPTS):
        before = header(path)
        if before is None or os.path.getsize(path) > MAX_IMAGE:
            return None
        found = _image(path, before)
        if found is not None:
            return found
        time.sleep(PAUSE)
    return None


def connect(data: bytes, path: str) -> apsw.Connection:
    """An in-memory database holding ``data`` (an :func:`image` of ``path``)."""
    conn = apsw.Connection(":memory:")
    try:
        with wrapped(f"read cache file {path!r}"):
            conn.deserialize("main", data)
    except BaseException:
        conn.close()
        raise
    return conn


def header(path: str) -> bytes | None:
    """The header of a rollback-journal SQLite file (bytes 24-27: the change counter, which
    every commit increments; 60-63: the user_version), or None for any other file (bytes
    18-19 are 1 for a rollback journal, 2 for WAL)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # reading a fifo would wait for a writer for ever
        with open(path, "rb") as f:
            found = f.read(100)
    except OSError:
        return None
    ok = len(found) == 100 and found.startswith(b"SQLite format 3\0") and found[18] == 1
    return found if ok else None


def _image(path: str, before: bytes) -> bytes | None:
    """The file's bytes, read without a lock, if no write was under way or done meanwhile:
    no journal before or after, and the same header (change counter) ``before`` and after;
    else None."""
    try:
        if os.path.exists(path + "-journal"):
            return None
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE + 1)
    except OSError:
        return None
    if not data.startswith(before) or os.path.exists(path + "-journal") or header(path) != before:
        return None
    return data
