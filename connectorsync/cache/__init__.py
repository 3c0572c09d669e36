"""The SQLite cache: every SQL statement of connectorsync lives in this package.

:class:`Cache` is one connection to a cache file: transactions, settings, streams, datapoints,
delivery (batches in flight, acks, reconciliation) and dead letters; it holds the lock and the
transaction, and hands the SQL of each specialised job to its module:

- :mod:`.connection`: the connection, its lock and transactions (the base of :class:`Cache`);
- :mod:`.appending`: the insert path (:meth:`Cache.append`, :meth:`Cache.append_many`): in
  time order, within the limits, committed as the durability asks;
- :mod:`.outbox`: one remote's side (:meth:`Cache.outbox`): batches in flight, acknowledgements,
  reconciliation, dead-lettering;
- :mod:`.positions`: what each remote holds of each stream; :mod:`.routing`: the remotes;
- :mod:`.commit`: group commit, so that inserts of several threads share one fsync;
- :mod:`.schema`: the file's tables, migrations and opening (and the connectordb 0.3.5 import);
- :mod:`.limits`: storage limits, drop-oldest and expiry, inside the caller's write;
- :mod:`.space`: giving disk space back once datapoints have left (vacuum steps, WAL);
- :mod:`.retime`: re-timing datapoints stamped before NTP answered;
- :mod:`.deadletters`: the dead-letter table;
- :mod:`.records`: the records it hands out; :mod:`.base`: errors and the rules every row keeps;
- :mod:`.testhooks`: what :mod:`connectorsync.testing` may reach on a live connection (only it).

Guarantees (each proved by the test named):

- A write method returns only after its transaction committed (``test_durability.py``).
- A failed call changes nothing: each write is one transaction
  (``test_limits.py::test_a_full_disk_raises_keeps_everything_and_recovers``).
- A batch in flight (a stream's datapoints with ids ``streams.inflight_lo`` to ``inflight``)
  is immutable: ``drop_oldest``, expiry, :meth:`Cache.clear` and re-anchoring leave it alone
  until its outcome is resolved, so each datapoint is counted in exactly one place:
  delivered, cached, dead-lettered, dropped, expired or cleared (``test_inflight.py``).
- Clearing the cache puts a dead letter queued again back at rest
  (``test_inflight.py::test_cleardata_puts_a_requeued_dead_letter_back``).
- In a child forked after it was opened, every method raises a :class:`CacheError` saying
  to open a new Logger there, and :meth:`Cache.close` changes nothing on disk
  (``test_fork.py``; :mod:`.connection` says why).

Each thread that needs the database opens its own :class:`Cache` (apsw gives no concurrency
from a shared connection); within one :class:`Cache`, a lock keeps transactions whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import apsw

from ..batch import Batch, Datapoint, as_datapoint
from ..errors import CacheError, ConfigurationError
from . import positions, registration, retime, routing, schema, seal, space
from .appending import Appending
from .base import AT_REST, NEWEST, NO_TIME, TooOldError, delete, wrapped
from .batched import CommitQueue
from .commit import GroupCommit
from .deadletters import DeadLetters
from .limits import Limits, drop_expired
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .outbox import Outbox
from .records import (
    DEFAULT_POLICY,
    BatchRequest,
    DeadLetter,
    Policy,
    StreamRow,
    StreamStats,
    Untrusted,
)
from .space import SpaceReport

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Batch",
    "BatchRequest",
    "Cache",
    "Datapoint",
    "DeadLetter",
    "Limits",
    "Outbox",
    "SpaceReport",
    "StreamRow",
    "StreamStats",
    "TooOldError",
    "Untrusted",
]

log = logging.getLogger(__name__)


class Cache(Appending, DeadLetters):
    """One connection to a cache file.

    Use :meth:`open` to open (creating or migrating) a cache, and :meth:`connect` for a
    further connection to a cache that exists (the syncer thread's, say).
    """

    # ----------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str, durability: str = "full") -> tuple[Cache, bool]:
        """Open ``path``, creating, migrating or checking it. Returns ``(cache, created)``.

        When ``created`` is true the file is new and a transaction is still open, so that the
        caller can fill it (``on_create``) before :meth:`finish_create` commits it, or
        :meth:`abort_create` rolls back and removes the file. Another process opening the same
        path meanwhile waits, then sees the finished file.

        :raises ConfigurationError: not a connectorsync cache, or written by a newer version
        :raises CacheError: the file cannot be opened
        """
        path = os.fspath(path)
        conn, created = schema.open_file(path, durability)
        return cls(conn, path), created

    @classmethod
    def open_readonly(cls, path: str) -> Cache:
        """Open an existing, current cache to look only: the file is never written (no
        migration, no setting), whoever else uses it meanwhile (``test_cli.py``).

        :raises ConfigurationError: not a current connectorsync cache: an older schema or a
            connectordb 0.3.5 cache (the message says how to migrate it), or not a cache
        :raises CacheError: the file cannot be opened
        """
        path = os.fspath(path)
        return cls(schema.open_readonly(path), path)

    @classmethod
    def connect(cls, path: str, durability: str = "full") -> Cache:
        """A further connection to an existing, current cache file (for another thread)."""
        path = os.fspath(path)
        return cls(schema.connect(path, durability), path)

    def set_durability(self, durability: str) -> None:
        """Apply ``durability`` to this connection (at once, or when creation commits)."""
        self.check_process()
        if not self._conn.in_transaction:
            schema.configure(self._conn, self.path, durability, wal=True)
            self._group_commits(durability)

    def _group_commits(self, durability: str) -> None:
        """Each durability's way to commit: grouped (full), queued (batched), or alone."""
        full, batched = durability == "full", durability == "batched"
        if full != (self._group is not None):
            self._group = GroupCommit(self, self._append_alone) if full else None
        if batched != (self._batched is not None):
            if self._batched is not None:
                queue, self._batched = self._batched, None
                queue.close()
            elif self._commit_interval is None:  # no default here: the option has it
                raise ConfigurationError(
                    "durability 'batched' needs set_commit_interval() first (the option "
                    "commit_interval)"
                )
            else:
                self._batched = CommitQueue(self, self._append_many, self._commit_interval)

    def close(self) -> None:
        """Commit what ``batched`` queued, and close the connection. Safe to call twice.

        :raises CacheError: the queued datapoints could not be committed (they are lost)
        """
        queue, self._batched = self._batched, None
        if self.inherited:  # a forked child: the queue and the file are the parent's
            if queue is not None:
                queue.abandon()
            super().close()
            return
        try:
            if queue is not None:
                queue.close()
        finally:
            super().close()

    def finish_opening(self, created: bool, durability: str) -> None:
        """Done opening: commit a new file's creation, or set an existing one's durability."""
        if created:
            self.finish_create(durability)
        else:
            self.set_durability(durability)

    def finish_create(self, durability: str) -> None:
        """Commit the creation transaction opened by :meth:`open`."""
        with wrapped("create the cache"):
            self._conn.execute("COMMIT")
        schema.configure(self._conn, self.path, durability, wal=True)
        self._group_commits(durability)

    def abort_create(self) -> None:
        """Roll back the creation transaction, close, and remove the half-made file."""
        with contextlib.suppress(apsw.Error):
            self._conn.execute("ROLLBACK")
        self.close()
        schema.remove_files(self.path)

    # ----------------------------------------------------------------------- settings

    def get_setting(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(seal.setting_out(self._conn, key, rows[0][0])) if rows else default

    def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON) under ``key``; committed on return."""
        text = seal.setting_in(self._conn, key, json.dumps(value, allow_nan=False))
        with self.transaction(f"save setting {key!r}") as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, text))

    def settings(self) -> dict[str, Any]:
        """Every setting, decoded."""
        return seal.all_settings(self._conn, self._read("SELECT key, value FROM settings"))

    # ----------------------------------------------------------------------- streams

    def streams(self) -> dict[str, StreamRow]:
        """Every registered stream by name, with the ``default`` remote's state of it."""
        return registration.stream_rows(self._read(registration.STREAMS, (positions.DEFAULT,)))

    def put_stream(
        self,
        name: str,
        schema_text: str,
        out_of_order: str = "reject",
        policy: Policy = DEFAULT_POLICY,
    ) -> StreamRow:
        """Register ``name`` with ``schema_text`` and ``policy``, or replace them. Cached data
        stays. Every remote whose filter matches it routes it; a changed schema is created on
        the remotes again."""
        with self.transaction(f"register stream {name!r}") as conn:
            registration.store_stream(conn, name, schema_text, out_of_order, policy)
        return self.streams()[name]

    # ----------------------------------------------------------------------- remotes

    def outbox(self, name: str = "default") -> Outbox:
        """The remote ``name``'s side of this connection (what its passes read and settle).

        :raises ConfigurationError: the cache has no remote of that name
        """
        found = self.read("SELECT id FROM remotes WHERE name = ?", (name,))
        if not found:
            raise ConfigurationError(f"the cache {self.path!r} has no remote named {name!r}")
        return Outbox(self, int(found[0][0]), name)

    def remotes(self) -> routing.Remotes:
        """The remotes of the cache: to add, remove and look at them."""
        return routing.Remotes(self)

    def max_id(self) -> int:
        """The id of the newest cached datapoint (0: none): a pass delivers up to here."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM datapoints")[0][0])

    # ----------------------------------------------------------------------- datapoints

    def _flush_to_look(self) -> None:
        """:meth:`flush` for what must work while commits fail (``status()``): then what
        is committed is shown, and :meth:`commit_error` and :meth:`uncommitted` say the rest."""
        try:
            self.flush()
        except CacheError:
            if self._batched is None or self._batched.failure is None:
                raise

    def commit_error(self) -> str | None:
        """Why ``batched`` commits fail, while they do (inserts are refused); else None."""
        failure = None if self._batched is None else self._batched.failure
        return None if failure is None else str(failure)

    def uncommitted(self) -> int:
        """Accepted datapoints waiting in memory for a ``batched`` commit (else 0)."""
        return 0 if self._batched is None else self._batched.queued

    def set_commit_interval(self, seconds: float) -> None:
        """``commit_interval``: how long ``batched`` inserts may wait in memory."""
        self._commit_interval = seconds
        if self._batched is not None:
            self._batched.interval = seconds

    def commit_latency(self) -> float | None:
        """The longest of the recent batched commits, in seconds (None: none yet)."""
        queue = self._batched
        return max(queue.latencies) if queue is not None and queue.latencies else None

    def give_back_space(self, max_steps: int = space.MAX_STEPS) -> SpaceReport:
        """Return free pages to the file system in at most ``max_steps`` steps of
        :data:`~.space.STEP_PAGES` pages, each its own short write transaction (other
        connections' inserts go in between), then checkpoint the WAL and cut it to 0 bytes if
        no reader or writer is busy (else the next call does). Call it after deleting many
        datapoints; cheap when nothing is free (``test_space.py``).

        :raises CacheError: a step failed (what the earlier steps gave back stays given)
        """
        freed = steps = 0
        while steps < max_steps:
            with self.transaction("give free pages back") as conn:
                pages = space.vacuum_step(conn)
            if not pages:
                break
            freed, steps = freed + pages, steps + 1
        with self._lock, wrapped("checkpoint the cache's WAL"):
            left = space.free_pages(self._conn)
            truncated = space.checkpoint(self._conn, schema.BUSY_TIMEOUT_MS)
        report = SpaceReport(freed, steps, left, truncated)
        space.log.debug("cache %s: gave space back: %s", self.path, report)
        return report

    def expire(self, before: float) -> int:
        """Delete datapoints with ``t`` < ``before`` (``max_age``), counted as expired.
        Datapoints of a batch in flight are left alone (``test_inflight.py``)."""
        self.flush()
        with self.transaction("expire old datapoints") as conn:
            expired = drop_expired(conn, before)
        if expired:
            log.warning("expired %d datapoints older than max_age", expired)
        return expired

    def newest(self, stream_id: int) -> float | None:
        """The newest timestamp the stream ever cached, or None."""
        self.flush()
        t = self._read(NEWEST, (stream_id,))[0][0]
        return None if t is None or t <= NO_TIME else t

    def latest(self, stream_id: int) -> tuple[float, str] | None:
        """The newest datapoint of the stream as ``(t, d as JSON text)``: the newest cached
        one, else the newest that left the cache (delivered, dead-lettered, dropped)."""
        self.flush()
        rows = self._read(
            "SELECT t, d FROM datapoints WHERE stream = ? ORDER BY id DESC LIMIT 1", (stream_id,)
        ) or self._read(
            "SELECT last_t, last_d FROM streams WHERE id = ? AND last_d IS NOT NULL", (stream_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def count(self) -> int:
        """How many datapoints are cached, all streams together."""
        self.flush()
        return int(self._read("SELECT count(*) FROM datapoints")[0][0])

    def statistics(self) -> dict[str, int]:
        """Counters kept in the cache: ``dropped``, ``expired`` and ``thinned`` datapoints."""
        return {
            name: int(self.get_setting("stats." + name, 0) or 0)
            for name in ("dropped", "expired", "thinned")
        }

    def batch(self, stream_id: int, after_id: int, limit: int) -> list[Datapoint]:
        """Up to ``limit`` cached datapoints of the stream with id > ``after_id``, oldest first.
        Keyset paging: memory is O(limit) whatever the backlog. Marks nothing in flight: for
        looking (export, ``Logger.datapoints``), not for delivery (``Outbox.take_batch``)."""
        self.flush()
        rows = self._read(
            "SELECT id, t, d FROM datapoints WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
            (stream_id, after_id, limit),
        )
        return list(map(as_datapoint, rows))

    # ----------------------------------------------------------------------- device time

    def find_boot(self, boot_id: str) -> int | None:
        """The key of ``boot_id`` (see :meth:`boot_key`) if recorded, else None; writes nothing."""
        rows = self._read("SELECT id FROM boots WHERE boot_id = ?", (boot_id,))
        return int(rows[0][0]) if rows else None

    def boot_key(self, boot_id: str) -> int:
        """The small integer that stands for ``boot_id`` in datapoint rows."""
        with self.transaction("record the boot") as conn:
            conn.execute("INSERT OR IGNORE INTO boots (boot_id) VALUES (?)", (boot_id,))
            return int(next(conn.execute("SELECT id FROM boots WHERE boot_id = ?", (boot_id,)))[0])

    def reanchor(self, boot: int, true_now: float, boot_clock_now: float) -> int:
        """Fix the times of the datapoints of ``boot`` stamped by an untrusted clock: each
        becomes ``true_now - (boot_clock_now - its boot clock)``, exact whatever the wall clock
        said. Per stream, strictly increasing order is kept (ties nudged by 1 µs). Returns how
        many datapoints were fixed.

        A batch in flight is left as it was sent (still untrusted): re-timing it before its
        outcome is known would make a reconcile miss what the remote holds, and send it twice.
        The anchor is recorded in the cache, and the batch's datapoints that turn out not
        delivered are re-timed when it is resolved (:meth:`ack_reconciled`), or by
        :meth:`reanchor_leftovers`. Safe to call again (``test_inflight.py``).
        """
        self.flush()
        with self.transaction("fix timestamps stamped before the clock was trusted") as conn:
            fixed = retime.reanchor(conn, boot, true_now, boot_clock_now)
        self._newest.clear()
        if self._batched is not None:
            self._batched.forget_newest()
        return fixed

    def reanchor_leftovers(self) -> int:
        """Fix, with the anchors :meth:`reanchor` recorded, the times of datapoints it left
        untrusted because they were in flight then and are not now. Cheap when there are
        none; safe to call any time no batch of this connection is being read or sent.
        Returns how many were fixed."""
        with self.transaction("fix timestamps left untrusted while in flight") as conn:
            fixed = retime.retime_leftovers(conn)
        if fixed:
            self._newest.clear()
        return fixed

    def untrusted_count(self, boot: int) -> int:
        """How many cached datapoints of ``boot`` wait for a trusted clock."""
        self._flush_to_look()
        return int(self._read("SELECT count(*) FROM datapoints WHERE boot = ?", (boot,))[0][0])

    def clear(self) -> int:
        """Delete every cached datapoint (connectordb's ``cleardata``) but those of a batch in
        flight, which are delivered or stay cached. A dead letter queued again goes back to
        the dead letters (at rest). Returns how many datapoints were cleared: neither of those.
        """
        self.flush()
        with self.transaction("clear the cache") as conn:
            conn.execute(
                "UPDATE deadletters SET retry_id = NULL WHERE retry_id IN ("
                f"  SELECT id FROM datapoints WHERE {AT_REST})"
            )
            letters = conn.changes()
            return delete(conn, AT_REST, ()) - letters

    def stream_stats(self) -> dict[str, StreamStats]:
        """Cached count, oldest and newest cached t, dead letters, priority and thinned count
        per registered stream.
        While ``batched`` commits fail, the committed ones (:meth:`uncommitted` counts the
        rest)."""
        self._flush_to_look()
        cached = {
            r[0]: r[1:]
            for r in self._read(
                "SELECT s.name, count(d.id), min(d.t), max(d.t) FROM streams s "
                "JOIN datapoints d ON d.stream = s.id GROUP BY s.id"
            )
        }
        dead = dict(
            self._read(
                "SELECT stream, count(*) FROM deadletters WHERE retry_id IS NULL GROUP BY stream"
            )
        )
        stats = {}
        for name, row in self.streams().items():
            count, oldest, newest = cached.get(name, (0, None, None))
            stats[name] = StreamStats(count, oldest, newest, dead.get(name, 0), *row.policy_stats)
        return stats
