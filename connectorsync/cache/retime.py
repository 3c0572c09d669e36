"""Re-timing datapoints stamped before the clock was trusted, once NTP answers.

Each function takes the apsw connection of a write transaction that is already open.

Guarantees (each proved by the test named):

- A re-timed datapoint gets ``true_now - (boot_clock_now - its boot clock)``, exact whatever the
  wall clock said (``test_clock.py::test_reanchoring_is_exact_to_the_millisecond``).
- Per stream, strictly increasing order is kept, ties nudged by 1 µs
  (``test_inflight.py::test_retimed_leftovers_keep_the_stream_in_order``).
- A batch in flight is left as it was sent; its datapoints that turn out not delivered are
  re-timed once it is resolved, with the anchor recorded in the cache, also one of an earlier
  boot
  (``test_inflight.py::test_reanchor_leaves_rows_in_flight_alone_and_retimes_them_once_resolved``,
  ``test_inflight.py::test_the_anchor_survives_for_leftovers_of_an_earlier_boot``,
  ``test_inflight.py::test_ntp_answering_while_a_batch_is_unresolved_sends_nothing_twice``).
"""

from __future__ import annotations

import json

import apsw

from .base import AT_REST, NUDGE

# The anchors (boots row -> [true time, boot clock]) of reanchor, for datapoints that were in
# flight then: {"3": [1700000000.0, 12.5], ...}; the last one is the newest.
_ANCHORS = "clock.reanchor"


def reanchor(conn: apsw.Connection, boot: int, true_now: float, boot_clock_now: float) -> int:
    """Record the anchor of ``boot`` as the newest, and re-time with every recorded anchor
    (see ``Cache.reanchor``). Returns how many datapoints were re-timed."""
    anchors = _recorded_anchors(conn)
    anchors.pop(str(boot), None)  # the newest anchor goes last: it is kept
    anchors[str(boot)] = [true_now, boot_clock_now]
    return _retime_recorded(conn, anchors)


def retime_leftovers(conn: apsw.Connection) -> int:
    """Re-time, with the recorded anchors, the datapoints left untrusted because they were in
    flight when their anchor came and are not now. Returns how many."""
    return _retime_recorded(conn, _recorded_anchors(conn))


def _recorded_anchors(conn: apsw.Connection) -> dict[str, list[float]]:
    row = next(conn.execute("SELECT value FROM settings WHERE key = ?", (_ANCHORS,)), None)
    return {} if row is None else dict(json.loads(row[0]))


def _retime_recorded(conn: apsw.Connection, anchors: dict[str, list[float]]) -> int:
    """Re-time the untrusted datapoints not in flight of every boot in ``anchors``, and
    record the anchors still needed: the newest, and those of boots with untrusted
    datapoints left. Returns how many were re-timed."""
    fixed = 0
    for boot, (true_now, boot_clock_now) in anchors.items():
        fixed += _retime(conn, int(boot), true_now, boot_clock_now)
    newest = list(anchors)[-1:]
    needed = {
        boot: anchor
        for boot, anchor in anchors.items()
        if boot in newest
        or next(conn.execute("SELECT 1 FROM datapoints WHERE boot = ? LIMIT 1", (int(boot),)), 0)
    }
    conn.execute("DELETE FROM settings WHERE key = ?", (_ANCHORS,))
    if needed:
        conn.execute("INSERT INTO settings VALUES (?, ?)", (_ANCHORS, json.dumps(needed)))
    return fixed


def _retime(conn: apsw.Connection, boot: int, true_now: float, boot_clock_now: float) -> int:
    """Re-time ``boot``'s untrusted datapoints not in flight."""
    # Per stream, walking on from the first re-timed datapoint, nudging forward any time not
    # after the one before, keeps the order. The walk steps over a batch in flight (its ids
    # may lie between re-timed ones when new data went first): it is never touched, and
    # its own leftovers are re-timed, and walked, once it is resolved.
    firsts = list(
        conn.execute(
            f"SELECT stream, min(id) FROM datapoints WHERE boot = ? AND {AT_REST} GROUP BY stream",
            (boot,),
        )
    )
    conn.execute(
        "UPDATE datapoints SET t = ? - (? - mono), boot = NULL, mono = NULL "
        f"WHERE boot = ? AND {AT_REST}",
        (true_now, boot_clock_now, boot),
    )
    fixed = conn.changes()
    for stream_id, first_id in firsts:
        before = next(
            conn.execute(
                "SELECT t FROM datapoints WHERE stream = ? AND id < ? ORDER BY id DESC LIMIT 1",
                (stream_id, first_id),
            ),
            None,
        ) or next(conn.execute("SELECT last_t FROM streams WHERE id = ?", (stream_id,)))
        prev = before[0]
        rows = conn.execute(
            f"SELECT id, t FROM datapoints WHERE stream = ? AND id >= ? AND {AT_REST} ORDER BY id",
            (stream_id, first_id),
        )
        for point_id, t in list(rows):
            if t <= prev:
                t = prev + NUDGE
                conn.execute("UPDATE datapoints SET t = ? WHERE id = ?", (t, point_id))
            prev = t
    return fixed
