"""The dead-letter table: datapoints the remote refused, kept with the reason, sent or queued
again or purged on request. Each function takes the apsw connection of an open transaction;
:class:`DeadLetters`, a base of :class:`~connectorsync.cache.Cache`, wraps them in one.

Guarantees (each proved by the test named):

- A refused datapoint leaves the datapoints and becomes a letter in one transaction
  (``test_remote_contract.py::test_a_refused_datapoint_is_isolated``); one that was a letter
  queued again keeps its letter, with one more attempt, and is counted once
  (``test_inflight.py::test_a_requeued_dead_letter_dropped_is_counted_once``).
- Letters are sent again with their own time (read at rest by :func:`at_rest`, then
  :func:`delivered` or :func:`kept` with the reason), or queued again with a new time, or
  purged, all or by id; only letters at rest (not queued again) are listed, sent, queued or
  purged (``test_deadletters.py``, ``test_faults.py::test_dead_letters_retry_and_purge``).
- A letter queued again (``restamp``) goes after its stream's newest timestamp, so the
  stream's order holds, and within the storage limits like an insert
  (``test_deadletters.py::test_restamped_letters_respect_max_cached``); letters of streams no
  longer registered stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

from ..batch import Datapoint
from ..errors import SealedRowError
from . import positions, seal
from .base import INSERT, NEWEST, place
from .connection import Connection
from .limits import Limits, make_room
from .records import DeadLetter


def move_in(  # noqa: PLR0913 - the letter's columns, inside the caller's transaction
    conn: apsw.Connection, name: str, point: Datapoint, reason: str, now: float, remote: str
) -> None:
    """Record the cached datapoint ``point`` of stream ``name`` as a dead letter of the remote
    ``remote``, inside the caller's transaction (``Outbox.deadletter`` then has that remote
    stop holding it)."""
    point_id, t, text = point
    # The pass had it opened: sealed again, in a sealed cache (a value that did not open
    # comes as the blob it was, and stays so).
    data = seal.store(conn, seal.READING, name, text) if type(text) is str else text
    conn.execute(
        "UPDATE deadletters SET attempts = attempts + 1, reason = ?, failed_at = ?, "
        "retry_id = NULL WHERE retry_id = ?",
        (reason, now, point_id),
    )
    if not conn.changes():
        conn.execute(
            "INSERT INTO deadletters (stream, t, d, reason, attempts, failed_at, remote) "
            "VALUES (?, ?, ?, ?, 1, ?, ?)",
            (name, t, data, reason, now, remote),
        )


LETTER = "SELECT id, stream, t, d, reason, attempts, failed_at FROM deadletters"
_UNOPENABLE = "its sealed value does not open"


def letter(conn: apsw.Connection, row: tuple[Any, ...], *, listed: bool) -> DeadLetter | None:
    """The letter of ``row`` (as :data:`LETTER` reads it), its value opened in a sealed
    cache. One whose value does not open (changed in the file, another key) is None, or,
    when ``listed``, a letter with ``d`` None and a reason that says so: never sent again,
    never lost (``test_seal.py::test_a_tampered_row_is_named_and_every_other_row_syncs``)."""
    sealer = seal.of(conn)
    if sealer is not None or type(row[3]) is bytes:
        name = f"deadletters row {row[0]} (stream {row[1]!r}, t={row[2]})"
        try:
            row = (*row[:3], seal.load(conn, seal.READING, row[1], row[3], name), *row[4:])
        except SealedRowError:
            if not listed:
                return None
            reason = row[4] if _UNOPENABLE in row[4] else f"{row[4]}; {_UNOPENABLE}"
            return DeadLetter(row[0], row[1], row[2], None, reason, row[5], row[6])
    return DeadLetter.from_row(row)


# SQLite's default limit of variables in one statement is far above this.
_CHUNK = 500


def at_rest(  # noqa: PLR0913 - one keyset page's bounds
    conn: apsw.Connection,
    stream: str,
    ids: Sequence[int] | None,
    after: tuple[float, int],
    limit: int,
    remote: str,
) -> list[tuple[Any, ...]]:
    """Up to ``limit`` letters at rest of ``stream`` that ``remote`` refused (of ``ids`` only,
    if given) after ``after`` = (t, id) in time order: keyset paging, O(limit) memory. Rows as
    :meth:`DeadLetter.from_row` takes them."""
    sql = f"{LETTER} WHERE stream = ? AND remote = ? AND retry_id IS NULL AND (t, id) > (?, ?)"
    if ids is None:
        return list(conn.execute(sql + " ORDER BY t, id LIMIT ?", (stream, remote, *after, limit)))
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"{sql} AND id IN ({marks})", (stream, remote, *after, *chunk))
    rows.sort(key=lambda row: (row[2], row[0]))
    return rows[:limit]


def streams_with_letters(conn: apsw.Connection, remote: str) -> list[str]:
    """The names of the streams with letters at rest."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT stream FROM deadletters WHERE retry_id IS NULL AND remote = ?",
            (remote,),
        )
    ]


def delivered(conn: apsw.Connection, ids: Sequence[int]) -> int:
    """The remote took these letters (sent again with their own time): they are done."""
    done = 0
    for letter_id in ids:
        conn.execute("DELETE FROM deadletters WHERE id = ? AND retry_id IS NULL", (letter_id,))
        done += conn.changes()
    return done


def kept(
    conn: apsw.Connection, ids: Sequence[int], reason: str, now: float, *, refused: bool
) -> None:
    """These letters stay at rest, saying ``reason``; one more attempt each if the remote
    ``refused`` them (not if they were kept without asking it)."""
    for letter_id in ids:
        conn.execute(
            "UPDATE deadletters SET reason = ?, failed_at = ?, attempts = attempts + ? "
            "WHERE id = ? AND retry_id IS NULL",
            (reason, now, int(refused), letter_id),
        )


def requeue(
    conn: apsw.Connection, ids: Sequence[int] | None, streams: dict[str, int]
) -> list[tuple[int, float]]:
    """Queue letters at rest (all, or those of ``ids``) again as datapoints of their streams
    (``streams``: id by name), each after its stream's newest timestamp (a new time).
    Returns the ``(stream id, t)`` of each datapoint queued, in order. Of all of them, a
    letter whose remote is no longer recorded (``remove_remote``) stays: the stream's other
    remotes may have it already. Named in ``ids``, it goes to every remote the stream has
    now (``test_reconfigure.py::test_a_named_remote_left_out_keeps_what_it_holds_and_says_so``)."""
    letters = list(
        conn.execute(
            "SELECT id, stream, t, d, remote FROM deadletters WHERE retry_id IS NULL ORDER BY id"
        )
    )
    remotes = dict(conn.execute("SELECT name, id FROM remotes"))
    wanted = None if ids is None else set(ids)
    queued: list[tuple[int, float]] = []
    for letter_id, name, t, data, refused_by in letters:
        if (wanted is not None and letter_id not in wanted) or name not in streams:
            continue
        if wanted is None and refused_by not in remotes:
            continue  # its remote is gone: only the user can tell who lacks it
        stream_id = streams[name]
        newest = next(conn.execute(NEWEST, (stream_id,)))[0]
        t = place(t, newest, restamp=True)
        conn.execute(INSERT, (stream_id, t, data, None, None))
        point = conn.last_insert_rowid()
        conn.execute("UPDATE deadletters SET retry_id = ? WHERE id = ?", (point, letter_id))
        if refused_by in remotes:  # the others have it already: only that remote holds it
            # First that it holds it (a fallback holds only what it is given), then the others
            # let go: else nobody would hold it, and it would leave unsent with its letter.
            positions.hold(conn, remotes[refused_by], stream_id, point)
            others = conn.execute(
                "SELECT remote FROM positions WHERE stream = ? AND remote != ?",
                (stream_id, remotes[refused_by]),
            )
            for (other,) in list(others):
                positions.take(conn, other, stream_id, point, point)
        queued.append((stream_id, t))
    return queued


def count_requeueable(
    conn: apsw.Connection, ids: Sequence[int] | None, streams: dict[str, int]
) -> int:
    """How many letters :func:`requeue` would queue (for the storage limits, checked first)."""
    wanted = None if ids is None else set(ids)
    remotes = {name for (name,) in conn.execute("SELECT name FROM remotes")}
    return sum(
        1
        for letter_id, name, refused_by in conn.execute(
            "SELECT id, stream, remote FROM deadletters WHERE retry_id IS NULL"
        )
        if (letter_id in wanted if wanted is not None else refused_by in remotes)
        and name in streams
    )


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


class DeadLetters(Connection):
    """The dead-letter methods of :class:`~connectorsync.cache.Cache`, each one transaction."""

    def deadletters(self, stream: str | None = None) -> list[DeadLetter]:
        """Dead letters at rest (not queued again), of all streams or one, oldest first."""
        sql = (
            "SELECT id, stream, t, d, reason, attempts, failed_at FROM deadletters "
            "WHERE retry_id IS NULL"
        )
        if stream is None:
            rows = self._read(sql + " ORDER BY id")
        else:
            rows = self._read(sql + " AND stream = ? ORDER BY id", (stream,))
        return [letter(self._conn, row, listed=True) for row in rows]  # type: ignore[misc]

    def letter_remotes(self) -> dict[int, str]:
        """The remote that refused each dead letter at rest, by id ({} when none); reads
        only (a read-only cache too)."""
        return dict(self._read("SELECT id, remote FROM deadletters WHERE retry_id IS NULL"))

    def retry_deadletters(
        self, ids: Sequence[int] | None, streams: dict[str, int], limits: Limits | None = None
    ) -> int:
        """Queue dead letters (all, or those of ``ids``) again as new datapoints with a new
        time (``restamp``), in one transaction: each goes at its stream's newest timestamp + 1
        µs (the stream's order must hold). Within ``limits`` as an insert of that many: a
        limit reached refuses all and changes nothing, or drops the oldest (counted); more
        letters than ``max_cached`` are refused in either mode. Letters of unregistered
        streams stay. Returns how many were queued.

        :raises CacheFullError: a limit is reached (and ``limits.drop_oldest`` is off), or more
            letters than ``max_cached``
        """
        if self._batched is not None:
            self._batched.flush()
        with self.transaction("queue dead letters again") as conn:
            if limits is not None and limits.active:
                incoming = count_requeueable(conn, ids, streams)
                if incoming:
                    make_room(conn, self.path, incoming, limits)
            queued = requeue(conn, ids, streams)
        self._newest.update(queued)
        if self._batched is not None:
            self._batched.forget_newest()
        return len(queued)

    def purge_deadletters(self, ids: Sequence[int] | None) -> int:
        """Delete dead letters at rest (all, or those of ``ids``). Returns how many."""
        with self.transaction("purge dead letters") as conn:
            return purge(conn, ids)
