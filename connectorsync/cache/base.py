"""What every module of the cache builds on: apsw's errors turned into ours, and the rules each
statement on the datapoints keeps.

Guarantees (each proved by the test named):

- An apsw error leaves the cache as a :class:`~connectorsync.CacheError` (a full disk as
  :class:`~connectorsync.CacheFullError`, a closed cache as :class:`~connectorsync.ClosedError`)
  naming what was being done
  (``test_limits.py::test_a_full_disk_raises_keeps_everything_and_recovers``).
- A datapoint goes strictly after its stream's newest timestamp: a tie, or with ``restamp`` an
  older time, is moved to newest + 1 µs; an older time without it is refused with
  :class:`TooOldError` (``test_clock.py::test_out_of_order_policy``).
- A stream's newest timestamp never goes down: every deletion goes through :func:`delete`,
  which records the newest datapoint that leaves in ``streams.last_t``/``last_d``.
- A batch in flight (a stream's datapoints with ids from ``inflight_lo`` to ``inflight`` of a
  remote's position, and no others) is left alone by every statement that selects with
  :data:`AT_REST` (``test_inflight.py``,
  ``test_inflight.py::test_a_live_batch_without_answer_holds_only_its_own_rows``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from ..errors import CacheError, CacheFullError, ClosedError

# Below every real timestamp: the "previous t" of a stream that never had a datapoint.
NO_TIME = -1e308
# A tie (or, where allowed, an older time) is moved to just after the stream's newest.
NUDGE = 1e-6

INSERT = "INSERT INTO datapoints (stream, t, d, boot, mono) VALUES (?, ?, ?, ?, ?)"

# The stream's newest timestamp: its newest cached datapoint's, or the newest that left.
NEWEST = """
SELECT max(
    coalesce((SELECT t FROM datapoints WHERE stream = ?1 ORDER BY id DESC LIMIT 1), -1e308),
    (SELECT last_t FROM streams WHERE id = ?1))
"""

# The rows not in a batch in flight: a stream's rows with ids in [inflight_lo, inflight] of a
# remote's position (see positions.py) are on the wire to it (or their outcome is unknown) and
# stay as they are until it is resolved; those below (an unsent backlog, when new data went
# first) and above are at rest. 0..0 marks nothing (ids start at 1).
AT_REST = (
    "NOT EXISTS (SELECT 1 FROM positions AS p WHERE p.stream = datapoints.stream"
    " AND datapoints.id BETWEEN p.inflight_lo AND p.inflight)"
)


class TooOldError(Exception):
    """Internal: an explicit timestamp is older than the stream's newest (``newest`` says it)."""

    def __init__(self, newest: float):
        super().__init__(newest)
        self.newest = newest


def place(t: float, newest: float, restamp: bool) -> float:
    """Where ``t`` goes in a stream whose newest timestamp is ``newest``: ``t`` if after it;
    newest + 1 µs for a tie, or for an older ``t`` when ``restamp``; else TooOldError."""
    if t > newest:
        return t
    if t < newest and not restamp:
        raise TooOldError(newest)
    return newest + NUDGE


def delete(conn: apsw.Connection, where: str, params: Sequence[Any]) -> int:
    """Delete the datapoints matching ``where``; returns how many.

    Every deletion goes through here: per stream, the newest datapoint that leaves is
    remembered (``streams.last_t``/``last_d``), so a stream's timestamps keep increasing after
    its cache empties, and ``latest()`` still has an answer. A dead letter queued again whose
    datapoint leaves is done with (delivered, dropped or expired: counted there); a caller
    that wants it back at rest sets its ``retry_id`` to NULL first (``Cache.clear``).
    """
    conn.execute(
        "UPDATE streams SET last_t = gone.t, last_d = gone.d FROM ("
        "  SELECT stream, t, d FROM datapoints WHERE id IN ("
        f"    SELECT max(id) FROM datapoints WHERE {where} GROUP BY stream)"
        ") AS gone WHERE streams.id = gone.stream AND gone.t >= streams.last_t",
        params,
    )
    if next(conn.execute("SELECT 1 FROM deadletters WHERE retry_id IS NOT NULL LIMIT 1"), 0):
        conn.execute(
            f"DELETE FROM deadletters WHERE retry_id IN (SELECT id FROM datapoints WHERE {where})",
            params,
        )
    conn.execute(f"DELETE FROM datapoints WHERE {where}", params)
    return conn.changes()


def bump(conn: apsw.Connection, key: str, count: int) -> None:
    """Add ``count`` to the counter setting ``key``, inside the caller's transaction."""
    if count:
        conn.execute(
            "INSERT INTO settings VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (key, str(count)),
        )


def translate(exc: apsw.Error, action: str) -> CacheError | ClosedError:
    """Our error for an apsw error, naming what we were doing."""
    if isinstance(exc, apsw.ConnectionClosedError):
        return ClosedError(f"cannot {action}: the cache is closed")
    if isinstance(exc, apsw.FullError):
        return CacheFullError(f"cannot {action}: the disk or the cache is full ({exc})")
    return CacheError(f"cannot {action}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def wrapped(action: str) -> Iterator[None]:
    """Turn apsw errors into ours (see :func:`translate`)."""
    try:
        yield
    except apsw.Error as exc:
        raise translate(exc, action) from exc


# The last id of a stream's next batch: at most ?4 datapoints after id ?2 and up to id ?3,
# together at most ?7 bytes of values (the first always comes), stopping before the first
# datapoint of boot ?5 stamped by an untrusted clock at boot clock ?6 or later (hold).
BATCH_END = """
SELECT max(id) FROM (
    SELECT id,
           sum(n) OVER w AS upto,
           row_number() OVER w AS k,
           max(?5 IS NOT NULL AND boot IS ?5 AND mono >= ?6) OVER w AS held
    FROM (SELECT id, octet_length(d) AS n, boot, mono FROM datapoints
          WHERE stream = ?1 AND id > ?2 AND id <= ?3 ORDER BY id LIMIT ?4)
    WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
) WHERE (upto <= ?7 OR k = 1) AND NOT held
"""
BATCH = "SELECT id, t, d FROM datapoints WHERE stream = ? AND id > ? AND id <= ? ORDER BY id"
# The bytes of values and the last id of at most ?4 datapoints after id ?2, up to id ?3.
BATCH_SIZE = """
SELECT coalesce(sum(octet_length(d)), 0), max(id) FROM (
    SELECT id, d FROM datapoints WHERE stream = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?)
"""
