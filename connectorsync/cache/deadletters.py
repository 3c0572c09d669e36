"""The dead-letter table: datapoints the remote refused, kept with the reason, queued again or
purged on request. Each function takes the apsw connection of an open write transaction.

Guarantees (each proved by the test named):

- A refused datapoint leaves the datapoints and becomes a letter in one transaction
  (``test_remote_contract.py::test_a_refused_datapoint_is_isolated``); one that was a letter
  queued again keeps its letter, with one more attempt, and is counted once
  (``test_inflight.py::test_a_requeued_dead_letter_dropped_is_counted_once``).
- Letters are queued again, or purged, all or by id; only letters at rest (not queued
  again) are listed or purged (``test_faults.py::test_dead_letters_retry_and_purge``).
- A letter queued again goes after its stream's newest timestamp, so the stream's order
  holds; letters of streams no longer registered stay.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from .base import INSERT, NEWEST, delete, place
from .records import Row


def move_in(conn: apsw.Connection, name: str, row: Row, reason: str, now: float) -> None:
    """Move the datapoint ``row`` of stream ``name`` to the dead letters (see
    ``Cache.deadletter``)."""
    point_id, t, data = row
    conn.execute(
        "UPDATE deadletters SET attempts = attempts + 1, reason = ?, failed_at = ?, "
        "retry_id = NULL WHERE retry_id = ?",
        (reason, now, point_id),
    )
    if not conn.changes():
        conn.execute(
            "INSERT INTO deadletters (stream, t, d, reason, attempts, failed_at) "
            "VALUES (?, ?, ?, ?, 1, ?)",
            (name, t, data, reason, now),
        )
    delete(conn, "id = ?", (point_id,))


def requeue(
    conn: apsw.Connection, ids: Sequence[int] | None, streams: dict[str, int]
) -> list[tuple[int, float]]:
    """Queue letters at rest (all, or those of ``ids``) again as datapoints of their streams
    (``streams``: id by name), each after its stream's newest timestamp. Returns the
    ``(stream id, t)`` of each datapoint queued, in order."""
    letters = list(
        conn.execute("SELECT id, stream, t, d FROM deadletters WHERE retry_id IS NULL ORDER BY id")
    )
    wanted = None if ids is None else set(ids)
    queued: list[tuple[int, float]] = []
    for letter_id, name, t, data in letters:
        if (wanted is not None and letter_id not in wanted) or name not in streams:
            continue
        stream_id = streams[name]
        newest = next(conn.execute(NEWEST, (stream_id,)))[0]
        t = place(t, newest, restamp=True)
        conn.execute(INSERT, (stream_id, t, data, None, None))
        conn.execute(
            "UPDATE deadletters SET retry_id = ? WHERE id = ?",
            (conn.last_insert_rowid(), letter_id),
        )
        queued.append((stream_id, t))
    return queued


def purge(conn: apsw.Connection, ids: Sequence[int] | None) -> int:
    """Delete letters at rest (all, or those of ``ids``). Returns how many."""
    if ids is None:
        conn.execute("DELETE FROM deadletters WHERE retry_id IS NULL")
        return conn.changes()
    purged = 0
    for letter_id in ids:
        conn.execute("DELETE FROM deadletters WHERE id = ? AND retry_id IS NULL", (letter_id,))
        purged += conn.changes()
    return purged
