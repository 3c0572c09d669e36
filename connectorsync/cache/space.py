"""Giving disk space back once datapoints have left the cache.

After a backlog drains, the pages its datapoints used are free inside the file, and the WAL
may have grown while it was being written; without this module both stay at their peak size
for ever. SQLite gives them back only when asked:

- New cache files use ``auto_vacuum=INCREMENTAL`` (set before the first table is made, see
  :func:`start_incremental`), so free pages can be returned to the file system in bounded
  steps of ``PRAGMA incremental_vacuum(N)`` (:func:`vacuum_step`), each its own short write
  transaction, so that the inserts of other threads and processes go in between.
- The WAL is then checkpointed with ``TRUNCATE`` (:func:`checkpoint`), under a short busy
  timeout: a checkpoint that finds a reader or a writer busy gives up at once and the next
  pass tries again, so inserts never wait on it for long. ``journal_size_limit``
  (:data:`JOURNAL_SIZE_LIMIT`, set on every connection by ``schema.configure``) makes a WAL
  that grew beyond it shrink back whenever it is reset.
- An older cache (``auto_vacuum=NONE``) is converted once, when it is opened
  (:func:`convert`): that takes a ``VACUUM``, which rewrites the whole file once.

Guarantees (each proved by the test named, in ``test_space.py``):

- A new cache is INCREMENTAL (``test_a_new_cache_is_incremental``); an older one is converted
  when opened (``test_an_older_cache_is_converted_when_opened``); a conversion that cannot run
  now (another process has the file open, another connection writes, the disk is too full
  for the copy) is a warning, the open works and the next open tries again
  (``test_a_conversion_that_cannot_run_is_a_warning_and_the_open_works``,
  ``test_a_conversion_on_a_full_disk_is_a_warning_and_the_open_works``).
- Each vacuum step takes at most its ``N`` free pages (``test_each_vacuum_step_is_bounded``).
- After a drain, the file and its WAL are at most 5% of their peak size
  (``test_draining_a_backlog_gives_the_space_back``), and inserts of another process during
  the steps all go in (``test_inserts_of_another_process_go_on_while_space_is_given_back``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import apsw

from .backup import holders

log = logging.getLogger(__name__)

#: Pages one vacuum step frees at most: 256 pages of 4 KiB, 1 MiB, a few ms of writing.
STEP_PAGES = 256
#: Vacuum steps a give-back takes at most (256 MiB): the rest waits for the next pass.
MAX_STEPS = 256
#: Bytes a WAL is cut back to when it is reset: about one auto-checkpoint's worth (1000
#: pages), so that a WAL of the usual size is not cut and grown again each time.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
#: How long a checkpoint waits for readers and writers before it gives up (till next pass):
#: while it waits, new writers wait too.
CHECKPOINT_BUSY_MS = 200
#: How long the conversion waits for another connection's write before it gives up.
CONVERT_BUSY_MS = 2000

_INCREMENTAL = 2  # PRAGMA auto_vacuum: 0 NONE, 1 FULL, 2 INCREMENTAL


@dataclass(frozen=True)
class SpaceReport:
    """What giving space back did.

    :ivar pages_freed: pages returned to the file system (the file is that much smaller)
    :ivar steps: vacuum steps taken (each its own transaction)
    :ivar free_pages: free pages still inside the file (the next give-back takes them)
    :ivar wal_truncated: the WAL was checkpointed and cut to 0 bytes; False when a reader or
        writer was busy (the next pass tries again)
    """

    pages_freed: int
    steps: int
    free_pages: int
    wal_truncated: bool


def _pragma(conn: apsw.Connection, name: str) -> int:
    return int(next(conn.execute(f"PRAGMA {name}"))[0])


def start_incremental(conn: apsw.Connection) -> None:
    """Ask for ``auto_vacuum=INCREMENTAL`` on a connection to an empty file: it takes effect
    when the first table is created (later it would need a ``VACUUM``; inside the creation
    transaction SQLite ignores it), so call it before that transaction begins."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL").fetchall()


def is_incremental(conn: apsw.Connection) -> bool:
    """True when the file returns free pages on request (``auto_vacuum=INCREMENTAL``)."""
    return _pragma(conn, "auto_vacuum") == _INCREMENTAL


def convert(conn: apsw.Connection, path: str, busy_ms: int) -> bool:
    """Convert an opened cache to ``auto_vacuum=INCREMENTAL`` unless it is already; returns
    whether it converted it now. Call it outside any transaction.

    What it costs: a ``VACUUM``, which rewrites the whole file once: it writes the file's
    size twice (a temporary copy, then the WAL), needs that much free disk meanwhile, and
    holds the write lock throughout (other writers wait). So it runs only while no other
    process has the file open; when it cannot run now (another process has the file open,
    another connection is writing, the disk is too full for the copy) it logs a warning and
    returns False: the next open tries again. It never raises.

    :param busy_ms: the connection's busy timeout, put back afterwards
    """
    if is_incremental(conn):
        return False
    others = holders(path)
    if others:
        pids = ", ".join(str(pid) for pid in others)
        log.warning(
            "cache %s cannot be converted to give free space back yet: another process has "
            "it open (pid %s); the next open tries again",
            path,
            pids,
        )
        return False
    began = time.monotonic()
    size = _pragma(conn, "page_count") * _pragma(conn, "page_size")
    conn.setbusytimeout(CONVERT_BUSY_MS)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL").fetchall()
        conn.execute("VACUUM").fetchall()
    except apsw.Error as exc:
        log.warning(
            "cache %s cannot be converted to give free space back yet (VACUUM failed: %s); "
            "it works as before, and the next open tries again",
            path,
            exc,
        )
        return False
    finally:
        conn.setbusytimeout(busy_ms)
        # VACUUM wrote the whole file into the WAL (a failed one may have grown it too).
        try:
            checkpoint(conn, busy_ms)
        except apsw.Error as exc:  # the next checkpoint (after a sync pass) cuts it
            log.warning("cache %s: cannot checkpoint the WAL after VACUUM: %s", path, exc)
    log.info(
        "cache %s converted to give free space back (auto_vacuum=INCREMENTAL): VACUUM "
        "rewrote it once, %d bytes before, %d after, in %.1f s",
        path,
        size,
        _pragma(conn, "page_count") * _pragma(conn, "page_size"),
        time.monotonic() - began,
    )
    return True


def vacuum_step(conn: apsw.Connection, pages: int = STEP_PAGES) -> int:
    """Inside the caller's write transaction: return at most ``pages`` free pages to the file
    system (and the pointer-map pages, one per ~800 pages, that they no longer need). Returns
    how many pages the file lost (0: none free, or the file is not INCREMENTAL)."""
    free = _pragma(conn, "freelist_count")
    if free <= 0 or pages <= 0:  # incremental_vacuum(0) would free them all: never
        return 0
    before = _pragma(conn, "page_count")
    conn.execute(f"PRAGMA incremental_vacuum({min(pages, free)})").fetchall()
    return before - _pragma(conn, "page_count")


def free_pages(conn: apsw.Connection) -> int:
    """Free pages inside the file."""
    return _pragma(conn, "freelist_count")


def checkpoint(conn: apsw.Connection, busy_ms: int) -> bool:
    """Checkpoint the WAL and cut it to 0 bytes (and the file to its size), outside any
    transaction. Waits at most :data:`CHECKPOINT_BUSY_MS` for readers and writers (new writers
    wait meanwhile), then gives up. Returns whether it completed.

    :param busy_ms: the connection's busy timeout, put back afterwards
    """
    conn.setbusytimeout(CHECKPOINT_BUSY_MS)
    try:
        busy = next(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))[0]
    except (apsw.BusyError, apsw.LockedError):
        return False
    finally:
        conn.setbusytimeout(busy_ms)
    return not busy
