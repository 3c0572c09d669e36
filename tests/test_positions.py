"""Each remote's position in the cache (``connectorsync/cache/positions.py``), checked against a
model of plain sets: which remote holds which datapoint, and which datapoints are left.

Runs on a real SQLite file with the real schema, driven by hypothesis's state machine.
"""

from __future__ import annotations

import os

import apsw
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from connectorsync.cache import positions, routing
from connectorsync.cache.base import delete
from connectorsync.cache.migrations import MIGRATIONS

STREAMS = ["a", "b", "c"]
PATTERNS = [None, ["a"], ["b", "c"], ["[ab]"], []]
SOAK = bool(os.environ.get("CONNECTORSYNC_SOAK"))


def _new_cache(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    with conn:
        for _, step in MIGRATIONS:
            step(conn)
    return conn


class Positions(RuleBasedStateMachine):
    """Inserts, acknowledgements, hand-overs, drops, remotes added and removed; after each
    step the file's holdings and datapoints match the model's."""

    @initialize()
    def start(self) -> None:
        self.conn = _new_cache(":memory:")
        self.next_id = 0
        self.present: dict[int, str] = {}  # id -> stream
        self.remotes: dict[int, str] = {1: "default"}  # id -> name
        self.filters: dict[int, list[str] | None] = {1: None}
        self.routed: dict[int, set[str]] = {1: set()}
        self.held: dict[int, set[int]] = {1: set()}
        self.sid: dict[str, int] = {}
        for name in STREAMS:
            with self.conn:
                self.conn.execute("INSERT INTO streams (name, schema) VALUES (?, '{}')", (name,))
                sid = self.conn.last_insert_rowid()
                routing.route_stream(self.conn, sid, name)
            self.sid[name] = sid
            for r, patterns in self.filters.items():
                if routing.routes(patterns, name):
                    self.routed[r].add(name)

    # ------------------------------------------------------------------- the model's rules

    def _settle(self, stream: str, lo: int, hi: int) -> None:
        if not any(stream in routed for routed in self.routed.values()):
            return
        for i, s in list(self.present.items()):
            if s == stream and lo <= i <= hi and not any(i in h for h in self.held.values()):
                del self.present[i]

    @rule(stream=st.sampled_from(STREAMS), n=st.integers(1, 4))
    def insert(self, stream: str, n: int) -> None:
        for _ in range(n):
            with self.conn:
                self.conn.execute(
                    "INSERT INTO datapoints (stream, t, d) VALUES (?, ?, '0')",
                    (self.sid[stream], float(self.next_id + 1)),
                )
                i = self.conn.last_insert_rowid()
            self.next_id = i
            self.present[i] = stream
            for r, patterns in self.filters.items():
                if routing.routes(patterns, stream):
                    self.held[r].add(i)

    @precondition(lambda self: self.remotes and self.next_id)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from(sorted(self.remotes)))
        stream = data.draw(st.sampled_from(STREAMS))
        lo = data.draw(st.integers(1, self.next_id))
        hi = data.draw(st.integers(lo, self.next_id))
        with self.conn:
            count = positions.take(self.conn, r, self.sid[stream], lo, hi)
        if stream not in self.routed[r]:
            assert count == 0
        else:
            taken = {i for i in range(lo, hi + 1) if self.present.get(i) == stream}
            assert count == len(taken & self.held[r])
            self.held[r] -= taken
            self._settle(stream, lo, hi)
            self._compact(r, stream)

    @precondition(lambda self: len(self.remotes) >= 1 and self.next_id)
    @rule(data=st.data())
    def hand_over(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from(sorted(self.remotes)))
        others = sorted(set(self.remotes) - {r})
        fallback = data.draw(st.sampled_from([None, *others]))
        stream = data.draw(st.sampled_from(STREAMS))
        upto = data.draw(st.integers(1, self.next_id))
        with self.conn:
            released, handed = positions.hand_over(self.conn, r, self.sid[stream], upto, fallback)
        if stream not in self.routed[r]:
            assert (released, handed) == (0, 0)
            return
        given = {i for i in self.held[r] if i <= upto and self.present.get(i) == stream}
        assert released + handed == len(given)
        self.held[r] -= given
        # A fallback that routes the stream by its own filter has its own copy of each
        # (held, or delivered): nothing is handed to it, the remote just lets them go.
        own = fallback is not None and routing.routes(self.filters[fallback], stream)
        assert handed == (len(given) if fallback is not None and not own else 0)
        if fallback is not None and not own and given:
            self.held[fallback] |= given
            self.routed[fallback].add(stream)
        self._settle(stream, 0, upto)
        self._compact(r, stream)
        if handed:  # else its position was not written
            self._compact(fallback, stream)

    @precondition(lambda self: self.present)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(sorted(self.present)))
        with self.conn:
            delete(self.conn, "id = ?", (i,))
        del self.present[i]

    @precondition(lambda self: len(self.remotes) < 4)
    @rule(patterns=st.sampled_from(PATTERNS), backfill=st.booleans())
    def add_remote(self, patterns: list[str] | None, backfill: bool) -> None:
        name = f"r{len(self.remotes)}-{self.next_id}-{len(self.present)}"
        if name in self.remotes.values():
            return
        with self.conn:
            r = routing.add(
                self.conn, routing.RemoteRow(0, name, streams=patterns), backfill=backfill
            ).id
        self.remotes[r], self.filters[r] = name, patterns
        self.routed[r] = {s for s in STREAMS if routing.routes(patterns, s)}
        self.held[r] = {i for i, s in self.present.items() if backfill and s in self.routed[r]}

    @precondition(lambda self: self.remotes)
    @rule(data=st.data())
    def remove_remote(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from(sorted(self.remotes)))
        with self.conn:
            routing.remove(self.conn, self.remotes[r])
        routed = self.routed.pop(r)
        del self.remotes[r], self.filters[r], self.held[r]
        for stream in routed:
            self._settle(stream, 0, positions.END)

    # ------------------------------------------------------------------- the checks

    @invariant()
    def same_datapoints(self) -> None:
        left = dict(
            self.conn.execute(
                "SELECT d.id, s.name FROM datapoints AS d JOIN streams AS s ON s.id = d.stream"
            ).fetchall()
        )
        assert left == self.present

    @invariant()
    def same_holdings(self) -> None:
        for r in self.remotes:
            for stream in STREAMS:
                pos = positions.position(self.conn, r, self.sid[stream])
                assert (pos is not None) == (stream in self.routed[r]), (r, stream)
                if pos is None:
                    continue
                ids = {i for i, s in self.present.items() if s == stream}
                taken = pos.taken_ranges()
                held = {i for i in ids if not any(lo <= i <= hi for lo, hi in taken)}
                assert held == self.held[r] & ids, (r, stream, pos)
                assert positions.held_count(self.conn, r, self.sid[stream]) == len(held)
                spans: set[int] = set()
                after = 0
                while (span := pos.span_after(after)) is not None:
                    start, last = span
                    assert start >= after
                    spans |= {i for i in ids if start < i <= last}
                    after = last
                assert spans == held

    def _compact(self, r: int, stream: str) -> None:
        """After a take or a hand-over, ranges taken out of order merge into ``done`` once
        nothing held lies below them, and into each other once nothing of the stream lies
        between them (drops may leave a gap until the next one): positions stay short."""
        pos = positions.position(self.conn, r, self.sid[stream])
        if pos is not None and pos.taken:
            ids = {i for i, s in self.present.items() if s == stream}
            first = pos.taken[0][0]
            below = {i for i in self.held[r] if pos.done < i < first}
            assert below & ids, pos
            for (_, end), (start, _) in zip(pos.taken, pos.taken[1:], strict=False):
                assert any(end < i < start for i in ids), pos


Positions.TestCase.settings = settings(
    max_examples=2000 if SOAK else 60, stateful_step_count=40, deadline=None
)
TestPositions = Positions.TestCase
