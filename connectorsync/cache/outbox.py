"""One remote's side of the cache: what a sync pass to that remote reads, marks and settles.

:meth:`Cache.outbox(name) <connectorsync.cache.Cache.outbox>` hands out an :class:`Outbox`
for a remote of the cache (``default`` for the Logger's one remote). Through it a pass sees
the streams that remote routes, with its own state of each (created there, its batch in
flight), takes batches of what it holds, and settles them: acknowledged, reconciled,
dead-lettered or released. A datapoint leaves the cache once no remote routing its stream
holds it (:mod:`.positions`).

Guarantees (each proved by the test named):

- A batch is recorded as in flight in the same transaction that reads it, and stays
  immutable until :meth:`Outbox.ack`, :meth:`~Outbox.ack_reconciled` or
  :meth:`~Outbox.release_inflight` resolves it (``test_inflight.py``).
- An acknowledged batch leaves the remote's holding in one transaction, which deletes what no
  other remote holds, through :func:`.base.delete`, so the stream's newest timestamp never
  goes down (``test_delivery.py``, ``test_positions.py``).
- A batch holds only datapoints its remote holds: ranges it took out of order (the live lane
  went first) are skipped (``test_positions.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import apsw

from ..batch import Batch, Datapoint
from . import deadletters, positions, retime, seal
from .base import BATCH, BATCH_END, BATCH_SIZE, bump
from .deadletters import move_in
from .records import BatchRequest, DeadLetter, StreamRow

#: Values opened between two chances for another thread to take the GIL (:func:`_open_all`).
_OPEN_CHUNK = 256


def _open_all(
    sealer: seal.Sealer, stream: str, rows: list[tuple[int, float, Any]]
) -> list[tuple[int, float, str]] | None:
    """Every row of a batch with its value opened, or None when one does not open.

    A pass reads its next batch in a thread of its own while a batch is on the wire
    (``delivery.py``), and opening holds the GIL throughout (``cryptography`` does not
    release it). Every :data:`_OPEN_CHUNK` values it lets another thread take the GIL: the
    pass's thread, back from its socket, would otherwise wait out the interpreter's switch
    interval (5 ms) at each of a push's socket calls (``tests/benchmarks/_full_seal.py``)."""
    opened: list[tuple[int, float, str]] = []
    for start in range(0, len(rows), _OPEN_CHUNK):
        part = sealer.open_rows(seal.READING, stream, rows[start : start + _OPEN_CHUNK])
        if part is None:
            return None
        opened += part
        time.sleep(0)  # releases the GIL: a thread waiting for it takes it now
    return opened


class CacheConnection(Protocol):
    """What an outbox uses of the cache connection it belongs to (``Cache``, which builds
    outboxes: named by what it does, so that neither module imports the other)."""

    path: str

    def transaction(self, action: str) -> AbstractContextManager[apsw.Connection]: ...

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def max_id(self) -> int: ...

    def reanchor_leftovers(self) -> int: ...

    def forget_newest(self) -> None: ...

    def flush(self) -> None: ...


log = logging.getLogger(__name__)

#: The counter setting of a stream's bytes sent to the ``default`` remote is this and the
#: stream's name (another remote's: this, its name, ``@`` and the stream's name).
BYTES_SENT = "stats.bytes_sent."


class Outbox:
    """The remote ``name``'s side of the cache connection ``cache`` (used by one thread)."""

    def __init__(self, cache: CacheConnection, remote: int, name: str):
        self.cache, self.remote, self.name = cache, remote, name
        self._counter = BYTES_SENT if remote == positions.DEFAULT else f"{BYTES_SENT}{name}@"

    def __repr__(self) -> str:
        return f"<Outbox of remote {self.name!r} in {self.cache.path!r}>"

    # ----------------------------------------------------------------------- what a pass sees

    def max_id(self) -> int:
        """The id of the newest cached datapoint (0: none): a pass delivers up to here."""
        return self.cache.max_id()

    def reanchor_leftovers(self) -> int:
        """Re-time what NTP re-timing had to leave alone (see ``Cache.reanchor_leftovers``)."""
        return self.cache.reanchor_leftovers()

    def streams(self) -> dict[str, StreamRow]:
        """The streams this remote routes by name, each with its state on this remote and
        its priority (read at each pass: a new one takes effect at the next)."""
        rows = self.cache.read(
            "SELECT s.id, s.name, s.schema, p.remote_created, p.inflight, s.out_of_order, "
            "p.inflight_lo, s.priority FROM streams AS s JOIN positions AS p "
            "ON p.stream = s.id WHERE p.remote = ?",
            (self.remote,),
        )
        return {
            r[1]: StreamRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], priority=r[7])
            for r in rows
        }

    def set_remote_created(self, name: str, created: bool = True) -> None:
        """Remember whether the stream ``name`` is known to exist on this remote."""
        with self.cache.transaction(f"update stream {name!r}") as conn:
            conn.execute(
                "UPDATE positions SET remote_created = ? WHERE remote = ? AND stream = "
                "(SELECT id FROM streams WHERE name = ?)",
                (created, self.remote, name),
            )

    # ----------------------------------------------------------------------- taking batches

    def take_batch(self, stream: StreamRow, after_id: int, request: BatchRequest) -> Batch:
        """The stream's next batch for this remote, recorded as in flight in the same
        transaction (empty: it holds nothing more within ``request``; nothing is recorded).

        Up to ``request.limit`` datapoints it holds with ``after_id`` < id <=
        ``request.upto_id``, oldest first, together at most ``request.max_bytes`` bytes of
        values (the first one always comes, whatever its size). Keyset paging: memory is
        bounded by both caps, whatever the backlog. ``request.hold=(boot, since)``: stop before
        the first datapoint of that boot stamped by an untrusted clock at boot-clock time
        ``since`` or later (it waits for NTP; the stream's order forbids skipping it).

        The in-flight mark is widened to the batch's ids before the rows are handed out, so
        from the moment they are read they are immutable: not dropped, expired, re-timed or
        cleared until :meth:`ack`, :meth:`ack_reconciled` or :meth:`release_inflight` resolves
        them (and a crash leaves the mark for the next pass to resolve). The mark is one
        range, ``inflight_lo`` to ``inflight``: a pass takes a stream's batches one after the
        other within a lane, and takes a new lane only once the mark is cleared, so the range
        holds the batches in flight and nothing else
        (``test_inflight.py::test_a_live_batch_without_answer_holds_only_its_own_rows``).
        """
        with self.cache.transaction("read the next batch") as conn:
            pos = positions.position(conn, self.remote, stream.id)
            span = None if pos is None else pos.span_after(after_id)
            # The remote holds the stream's ids in runs (what it took out of order, the live
            # lane's batches, lies between): a batch is cut from the first run with rows.
            while span is not None and span[0] < request.upto_id:
                batch = self._take(conn, stream, span, request)
                if batch:
                    return batch
                assert pos is not None
                span = pos.span_after(span[1])
        return Batch(stream.name, stream.id, ())

    def _take(
        self,
        conn: apsw.Connection,
        stream: StreamRow,
        span: tuple[int, int],
        request: BatchRequest,
    ) -> Batch:
        after_id, upto_id = span[0], min(span[1], request.upto_id)
        bounds = (stream.id, after_id, upto_id, request.limit)
        nothing = Batch(stream.name, stream.id, ())
        # The sizes first, without loading the values: a batch of large values is cut
        # where its bytes run out before any of it is read.
        size, last = next(conn.execute(BATCH_SIZE, bounds))
        if last is None:
            return nothing
        if size > request.max_bytes or request.hold is not None:
            hold = request.hold or (None, None)
            last = next(conn.execute(BATCH_END, (*bounds, *hold, request.max_bytes)))[0]
            if last is None:
                return nothing
            size = None  # cut short: its values' bytes are counted when asked for
        rows: Any = conn.execute(BATCH, (stream.id, after_id, last))
        sealer = seal.of(conn)
        if sealer is not None:  # opened here; a row that does not open is set aside
            rows = list(rows)
            opened = _open_all(sealer, stream.name, rows)
            if opened is not None:  # all of them: their texts' bytes are known
                rows, size = opened, None if size is None else size - seal.OVERHEAD * len(rows)
            else:
                rows, size = self._opened(conn, sealer, stream, rows), None
            if not rows:  # every row of it was set aside: the next rows, if any
                return self._take(conn, stream, (last, span[1]), request)
        batch = Batch(stream.name, stream.id, rows, nbytes=size)
        conn.execute(
            "UPDATE positions SET inflight_lo = CASE WHEN inflight = 0 THEN ?1 "
            "ELSE min(inflight_lo, ?1) END, inflight = max(inflight, ?2) "
            "WHERE remote = ?3 AND stream = ?4",
            (batch.first_id, batch.last_id, self.remote, stream.id),
        )
        return batch

    def _opened(
        self, conn: apsw.Connection, sealer: seal.Sealer, stream: StreamRow, rows: Any
    ) -> list[tuple[int, float, str]]:
        """The rows of a sealed cache, opened. A row that does not open (changed in the
        file, or sealed under another key) goes to this remote's dead letters with the reason,
        in the same transaction: counted there and listed, never sent, never lost
        (``test_seal.py::test_a_tampered_row_is_named_and_every_other_row_syncs``)."""
        opened = []
        open_one = sealer.opener(seal.READING, stream.name)
        for point_id, t, data in rows:
            text = open_one(data) if type(data) is bytes else None
            if text is not None:
                opened.append((point_id, t, text))
                continue
            reason = (
                f"datapoints row {point_id} (stream {stream.name!r}, t={t}): its sealed value "
                "does not open: it was changed in the file, or sealed under another key"
            )
            log.error("cache %s: %s; moved to the dead letters", self.cache.path, reason)
            move_in(conn, stream.name, Datapoint(point_id, t, data), reason, time.time(), self.name)
            positions.take(conn, self.remote, stream.id, point_id, point_id)
        return opened

    # ----------------------------------------------------------------------- settling

    def ack(self, batch: Batch, *, sent: int = 0) -> int:
        """The remote stored ``batch`` (its stream's ids from its first to its last): in one
        transaction it holds them no more (what no other remote holds is deleted), the batch
        in flight is cleared, and ``sent`` is added to the bytes sent of its stream. Returns
        how many it held (0 for an empty batch)."""
        if not batch:
            return 0
        with self.cache.transaction("delete delivered datapoints") as conn:
            bump(conn, self._counter + batch.stream, sent)
            return self._delivered(conn, batch.stream_id, batch.first_id, batch.last_id)

    def _delivered(self, conn: apsw.Connection, stream_id: int, first_id: int, last_id: int) -> int:
        delivered = positions.take(conn, self.remote, stream_id, first_id, last_id)
        # Clear the record of the batch in flight, unless it also holds the next batch's rows
        # (a pass records that one before this ack is done, see delivery._Turn.deliver);
        # batches of one lane follow each other, so the mark stays one range.
        conn.execute(
            "UPDATE positions SET inflight = 0, inflight_lo = 0 "
            "WHERE remote = ? AND stream = ? AND inflight <= ?",
            (self.remote, stream_id, last_id),
        )
        return delivered

    def count_bytes_sent(self, stream: str, sent: int) -> None:
        """Add ``sent`` to the bytes sent of ``stream`` (sent, but not acknowledged)."""
        if sent:
            with self.cache.transaction("count bytes sent") as conn:
                bump(conn, self._counter + stream, sent)

    def bytes_sent(self) -> dict[str, int]:
        """Bytes of request bodies sent to this remote per stream name, as counted by its
        passes; ever."""
        prefix = self._counter
        rows = self.cache.read(
            "SELECT substr(key, ?), value FROM settings WHERE substr(key, 1, ?) = ?",
            (len(prefix) + 1, len(prefix), prefix),
        )
        # Another remote's counters are named <remote>@<stream>; a stream name has no "@".
        return {name: int(value) for name, value in rows if "@" not in name}

    def narrow_inflight(self, stream_id: int, last_id: int) -> None:
        """The batch ending at ``last_id`` went out without answer: the rows after it that a
        read-ahead marked were never sent, so they go back to rest."""
        with self.cache.transaction("narrow the batch in flight") as conn:
            conn.execute(
                "UPDATE positions SET inflight = ?1 WHERE remote = ?3 AND stream = ?2 "
                "AND inflight > ?1 AND inflight_lo <= ?1",
                (last_id, stream_id, self.remote),
            )

    def release_inflight(self, stream_id: int) -> None:
        """Clear the stream's in-flight mark: nothing of it is on the wire, and whatever was
        is resolved (stored and acked, or known not stored, or to be sent again)."""
        with self.cache.transaction("clear the batch in flight") as conn:
            self._clear_inflight(conn, stream_id)

    def _clear_inflight(self, conn: apsw.Connection, stream_id: int) -> None:
        conn.execute(
            "UPDATE positions SET inflight = 0, inflight_lo = 0 WHERE remote = ? AND stream = ?",
            (self.remote, stream_id),
        )

    def ack_reconciled(self, stream_id: int, remote_newest: float | None) -> int:
        """Resolve the batch in flight: its datapoints at or below ``remote_newest`` (the
        newest timestamp the remote holds) were delivered and leave its holding; the rest stay
        to be sent again. Only datapoints that were in flight are considered. Returns how
        many were delivered."""
        with self.cache.transaction("reconcile the batch in flight") as conn:
            lo, upto = next(
                conn.execute(
                    "SELECT inflight_lo, inflight FROM positions WHERE remote = ? AND stream = ?",
                    (self.remote, stream_id),
                ),
                (0, 0),
            )
            delivered = 0
            if upto and remote_newest is not None:
                first, last = next(
                    conn.execute(
                        "SELECT min(id), max(id) FROM datapoints "
                        "WHERE stream = ? AND id BETWEEN ? AND ? AND t <= ?",
                        (stream_id, lo, upto, remote_newest),
                    )
                )
                if first is not None:
                    delivered = self._delivered(conn, stream_id, first, last)
            self._clear_inflight(conn, stream_id)
            # What was left untrusted while in flight (NTP answered meanwhile) and was not
            # delivered gets its true time now, before it is sent again.
            if retime.retime_leftovers(conn):
                self.cache.forget_newest()
            return delivered

    def deadletter(
        self, stream_id: int, name: str, point: Datapoint, reason: str, now: float
    ) -> None:
        """Move one datapoint this remote refused to its dead letters, in one transaction: it
        holds it no more (it leaves the cache once no other remote does). A datapoint that was
        a dead letter queued again keeps its letter, with one more attempt."""
        with self.cache.transaction("move a datapoint to the dead letters") as conn:
            move_in(conn, name, point, reason, now, self.name)
            positions.take(conn, self.remote, stream_id, point.id, point.id)

    # ----------------------------------------------------------------------- its dead letters

    def streams_with_letters(self) -> list[str]:
        """The names of the streams that have dead letters at rest this remote refused."""
        with self.cache.transaction("read the dead letters") as conn:
            return deadletters.streams_with_letters(conn, self.name)

    def letters_at_rest(
        self, stream: str, ids: Sequence[int] | None, after: tuple[float, int], limit: int
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters at rest of ``stream`` this remote refused (of ``ids``
        only, if given), after ``after`` = (t, id), in time order (keyset paging: O(limit)
        memory)."""
        with self.cache.transaction("read the dead letters") as conn:
            rows = deadletters.at_rest(conn, stream, ids, after, limit, self.name)
            letters = [deadletters.letter(conn, row, listed=False) for row in rows]
        # One that does not open stays at rest, listed with why (never sent as it is).
        return [one for one in letters if one is not None]

    def letters_delivered(self, ids: Sequence[int]) -> int:
        """The remote took these dead letters (sent again): they are done. Returns how many."""
        with self.cache.transaction("settle dead letters sent again") as conn:
            return deadletters.delivered(conn, ids)

    def letters_kept(self, ids: Sequence[int], reason: str, now: float, *, refused: bool) -> None:
        """These dead letters stay, with ``reason`` (and one more attempt if ``refused``)."""
        with self.cache.transaction("keep dead letters") as conn:
            deadletters.kept(conn, ids, reason, now, refused=refused)

    def oldest_held(self, stream_id: int) -> float | None:
        """The time of the oldest datapoint of the stream this remote holds (the next it is
        sent), or None."""
        self.cache.flush()
        with self.cache.transaction("read the oldest datapoint held") as conn:
            pos = positions.position(conn, self.remote, stream_id)
            span = None if pos is None else pos.span_after(0)
            while span is not None:
                row = next(conn.execute(_FIRST_IN, (stream_id, *span)), None)
                if row is not None:
                    return float(row[0])
                assert pos is not None
                span = pos.span_after(span[1])
        return None


_FIRST_IN = "SELECT t FROM datapoints WHERE stream = ? AND id > ? AND id <= ? ORDER BY id LIMIT 1"
