"""Delivery's side of the cache: batches in flight, acknowledgements and reconciliation.

Guarantees (each proved by the test named):

- A batch is recorded as in flight in the same transaction that reads it, and stays
  immutable until :meth:`Delivering.ack`, :meth:`~Delivering.ack_reconciled` or
  :meth:`~Delivering.release_inflight` resolves it (``test_inflight.py``).
- An acknowledged batch is deleted in one transaction, through :func:`.base.delete`, so the
  stream's newest timestamp never goes down (``test_delivery.py``).
"""

from __future__ import annotations

import apsw

from ..batch import Batch
from . import retime
from .base import BATCH, BATCH_END, BATCH_SIZE, bump, delete
from .connection import Connection
from .records import BatchRequest, StreamRow

#: The counter setting of a stream's bytes sent is this and the stream's name.
BYTES_SENT = "stats.bytes_sent."


class Delivering(Connection):
    """The statements a sync pass runs on the cache."""

    def ack(self, batch: Batch, *, sent: int = 0) -> int:
        """Delete the datapoints of ``batch`` (the remote stored them: its stream's ids from
        its first to its last) in one transaction, and clear the batch in flight; in the same
        transaction add ``sent`` to the bytes sent of its stream. Returns how many were
        deleted (0 for an empty batch)."""
        if not batch:
            return 0
        with self.transaction("delete delivered datapoints") as conn:
            bump(conn, BYTES_SENT + batch.stream, sent)
            return self._delete_delivered(conn, batch.stream_id, batch.first_id, batch.last_id)

    def count_bytes_sent(self, stream: str, sent: int) -> None:
        """Add ``sent`` to the bytes sent of ``stream`` (sent, but not acknowledged)."""
        if sent:
            with self.transaction("count bytes sent") as conn:
                bump(conn, BYTES_SENT + stream, sent)

    def bytes_sent(self) -> dict[str, int]:
        """Bytes of request bodies sent per stream name, as counted by sync passes; ever."""
        rows = self._read(
            "SELECT substr(key, ?), value FROM settings WHERE substr(key, 1, ?) = ?",
            (len(BYTES_SENT) + 1, len(BYTES_SENT), BYTES_SENT),
        )
        return {name: int(value) for name, value in rows}

    @staticmethod
    def _delete_delivered(
        conn: apsw.Connection, stream_id: int, first_id: int, last_id: int
    ) -> int:
        delivered = delete(
            conn, "stream = ? AND id BETWEEN ? AND ?", (stream_id, first_id, last_id)
        )
        # Clear the record of the batch in flight, unless it also holds the next batch's rows
        # (a pass records that one before this ack is done, see delivery._Turn.deliver);
        # batches of one lane follow each other, so the mark stays one range.
        conn.execute(
            "UPDATE streams SET inflight = 0, inflight_lo = 0 WHERE id = ? AND inflight <= ?",
            (stream_id, last_id),
        )
        return delivered

    def take_batch(self, stream: StreamRow, after_id: int, request: BatchRequest) -> Batch:
        """The stream's next batch, recorded as in flight in the same transaction (empty: the
        stream has nothing more within ``request``; nothing is recorded then).

        Up to ``request.limit`` cached datapoints with ``after_id`` < id <= ``request.upto_id``,
        oldest first, together at most ``request.max_bytes`` bytes of values (the first one
        always comes, whatever its size). Keyset paging: memory is bounded by both caps,
        whatever the backlog. ``request.hold=(boot, since)``: stop before the first datapoint
        of that boot stamped by an untrusted clock at boot-clock time ``since`` or later (it
        waits for NTP; the stream's order forbids skipping it).

        The stream's in-flight mark is widened to the batch's ids before the rows are handed
        out, so from the moment they are read they are immutable: not dropped, expired,
        re-timed or cleared until :meth:`ack`, :meth:`ack_reconciled` or
        :meth:`release_inflight` resolves them (and a crash leaves the mark for the next
        pass to resolve). The mark is one range, ``inflight_lo`` to ``inflight``: a pass
        takes a stream's batches one after the other within a lane, and takes a new lane only
        once the mark is cleared, so the range holds the batches in flight and nothing else
        (``test_inflight.py::test_a_live_batch_without_answer_holds_only_its_own_rows``).
        """
        bounds = (stream.id, after_id, request.upto_id, request.limit)
        nothing = Batch(stream.name, stream.id, ())
        with self.transaction("read the next batch") as conn:
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
            rows = conn.execute(BATCH, (stream.id, after_id, last))
            batch = Batch(stream.name, stream.id, rows, nbytes=size)
            conn.execute(
                "UPDATE streams SET inflight_lo = CASE WHEN inflight = 0 THEN ?1 "
                "ELSE min(inflight_lo, ?1) END, inflight = max(inflight, ?2) WHERE id = ?3",
                (batch.first_id, batch.last_id, stream.id),
            )
        return batch

    def narrow_inflight(self, stream_id: int, last_id: int) -> None:
        """The batch ending at ``last_id`` went out without answer: the rows after it that a
        read-ahead marked were never sent, so they go back to rest."""
        with self.transaction("narrow the batch in flight") as conn:
            conn.execute(
                "UPDATE streams SET inflight = ?1 WHERE id = ?2 AND inflight > ?1 "
                "AND inflight_lo <= ?1",
                (last_id, stream_id),
            )

    def release_inflight(self, stream_id: int) -> None:
        """Clear the stream's in-flight mark: nothing of it is on the wire, and whatever was
        is resolved (stored and acked, or known not stored, or to be sent again)."""
        with self.transaction("clear the batch in flight") as conn:
            conn.execute(
                "UPDATE streams SET inflight = 0, inflight_lo = 0 WHERE id = ?", (stream_id,)
            )

    def max_id(self) -> int:
        """The id of the newest cached datapoint (0: none): a pass delivers up to here."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM datapoints")[0][0])

    def ack_reconciled(self, stream_id: int, remote_newest: float | None) -> int:
        """Resolve the batch in flight: its datapoints at or below ``remote_newest`` (the
        newest timestamp the remote holds) were delivered and are deleted; the rest stay to be
        sent again. Only datapoints that were in flight are considered. Returns how many."""
        with self.transaction("reconcile the batch in flight") as conn:
            lo, upto = next(
                conn.execute("SELECT inflight_lo, inflight FROM streams WHERE id = ?", (stream_id,))
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
                    delivered = self._delete_delivered(conn, stream_id, first, last)
            conn.execute(
                "UPDATE streams SET inflight = 0, inflight_lo = 0 WHERE id = ?", (stream_id,)
            )
            # What was left untrusted while in flight (NTP answered meanwhile) and was not
            # delivered gets its true time now, before it is sent again.
            if retime.retime_leftovers(conn):
                self._newest.clear()
            return delivered
