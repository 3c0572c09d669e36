"""One sync pass: moves what was cached when it began to the remote, streams taking turns.

:func:`run_pass` is the whole of it; the syncer decides when it runs and who may run it.
A pass never calls back up into the Logger: it is handed the cache connection, the remote
and a :class:`PassPlan`, and returns a :class:`SyncReport`.

Guarantees (each proved by the test named, in ``tests/``):

- A datapoint leaves the cache only when the remote acknowledged it, or reconciliation proved
  it delivered; never on a timer or a retry limit (``test_sync.py``, ``test_crash.py``).
- Bounded: a pass delivers the datapoints cached when it began (once the remote answered its
  ping), one batch per stream in turn, higher priorities first (:mod:`.priority`), then
  returns; inserts that outpace the remote wait for the next pass
  (``test_delivery.py::test_a_pass_ends_while_inserts_outpace_the_remote``).
- Memory is bounded by ``batch_size`` and ``max_batch_bytes`` whatever the backlog (keyset
  paging; ``test_sync.py::test_sync_memory_does_not_grow_with_the_backlog``,
  ``test_delivery.py::test_large_values_go_in_batches_capped_by_bytes``,
  ``test_delivery.py::test_sync_memory_does_not_grow_with_value_size``); a datapoint larger
  than the remote takes goes alone and becomes a dead letter saying so
  (``test_delivery.py::test_a_value_larger_than_the_remote_takes_is_a_dead_letter``).
- Per stream, batches go out in insertion order; a failure in one stream does not stop the
  others (``test_sync.py::test_one_failing_stream_does_not_stop_the_others``).
- A rejected batch is bisected: the refused datapoints become dead letters with the remote's
  reason, the rest is delivered in order (``test_faults.py::test_poison_is_bisected``).
- A batch is recorded in flight in the transaction that reads it, so its rows are immutable
  until its outcome is resolved. An ambiguous outcome (sent, no answer; or a crash) is
  resolved by the remote's delivery kind and nothing else
  (``test_delivery.py::test_ambiguous_outcomes_by_delivery_kind``; idempotent, with InfluxDB:
  ``test_a_partly_refused_batch_whose_answer_is_lost_is_sent_again``,
  ``test_a_crash_during_bisection_loses_nothing``):

  ``ordered``: the remote's newest timestamp says what arrived; the rest is resent.
  ``idempotent`` and ``at_least_once``: the whole batch is resent; nothing is inferred.
- Once the Logger closes, no new batch starts; a batch the remote stored that the pass could
  not delete (closed, or the cache failed), in a bisection too, keeps its in-flight mark
  (``test_faults.py::test_close_during_a_bisection_keeps_the_stored_half_marked``,
  ``test_mqtt_hostile.py::test_a_pass_publishes_nothing_once_closed``).
- The bytes a :class:`~connectorsync.remotes.base.Metered` remote put on the wire for a
  stream are added to the stream's counter in the cache, in the transaction that deletes the
  acknowledged batch; those of requests never acknowledged (refused, or no answer) when the
  stream's turn ends (``test_compression.py::test_status_shows_bytes_sent_per_stream``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .batch import Batch
from .cache import BatchRequest, Outbox, StreamRow, Untrusted
from .cache.properties import stream_properties
from .errors import (
    AmbiguousRemoteError,
    ConnectorSyncError,
    RejectedError,
    RemoteError,
)
from .inthread import InThread
from .lanes import Lanes, Pacer, Rotation
from .remotes.base import DeliveryKind, Metered, Preparable, Remote, ensure_stream
from .report import SyncReport as SyncReport  # re-exported: it was defined here
from .report import add_count, stops_the_remote
from .rounds import Stops, take_turns
from .synclock import PassGate

T = TypeVar("T")
log = logging.getLogger(__name__)

Progress = Callable[[str, int], object]


@dataclass(frozen=True)
class PassPlan:
    """What a pass needs besides the cache and the remote, read once when it begins.

    :ivar batch_size: most datapoints per request
    :ivar max_batch_bytes: most bytes of values per request
    :ivar hold: datapoints to hold back until the clock is trusted (see :class:`BatchRequest`)
    :ivar deadline: a ``time.monotonic()`` after which no new batch starts (close's drain)
    :ivar progress: called with ``(stream, count)`` after each delivered batch
    :ivar live_after: the newest id when the previous pass began: newer ones are the live
        lane, sent first when the remote does not need order (None: no lane)
    :ivar pacer: ``max_rate``, the Logger's pace for the backlog (None: as fast as the
        remote takes)
    :ivar budget: seconds the backlog may take in this pass, when the remote does not need
        order (None: no limit)
    :ivar pause: ``pause(seconds)`` waits, returning False at once when syncing stops
    :ivar rotation: where the rounds over the streams begin, kept across passes (None: at
        the first stream)
    :ivar gate: every deletion runs through it, so that none happens once the Logger has
        closed (None: no such check)
    """

    batch_size: int
    max_batch_bytes: int
    hold: Untrusted | None = None
    deadline: float | None = None
    progress: Progress | None = None
    live_after: int | None = None
    pacer: Pacer | None = None
    budget: float | None = None
    pause: Callable[[float], bool] | None = None
    rotation: Rotation | None = None
    gate: PassGate | None = None


def run_pass(outbox: Outbox, remote: Remote, plan: PassPlan) -> SyncReport:
    """One bounded pass over every stream; see the module docstring for its guarantees."""
    report = SyncReport()
    failure: ConnectorSyncError | None = None
    try:
        remote.ping()
    except ConnectorSyncError as exc:
        failure = exc
    except Exception as exc:  # a remote's bug: reported like any failure, never raised
        log.exception("the remote's ping failed unexpectedly")
        failure = ConnectorSyncError(f"unexpected {type(exc).__name__}: {exc}")
    # What is cached once the remote has answered is this pass's: whatever was inserted
    # before the remote saw the pass begin goes in it (test_priority.py reads a pass's start
    # from the server). The next pass's live lane starts after it, also if the ping failed.
    report.upto = upto = outbox.max_id()
    if failure is not None:
        report.fail("*", failure)
        return report
    request = BatchRequest(upto, plan.batch_size, plan.max_batch_bytes, plan.hold)
    context = _Context(outbox, remote, request, report, plan.progress, plan.gate or PassGate())
    turns = []
    for row in outbox.streams().values():
        turn = _Turn(context, row)
        turns.append(turn)
        turn.guard(turn.open)
        if stops_the_remote(report.exception):
            return report  # the same credentials for every stream, or asked to wait: stop
    try:
        # NTP may have answered while batches were in flight: what they carried and was not
        # delivered gets its true time now, before anything of it is sent again.
        outbox.reanchor_leftovers()
    except ConnectorSyncError as exc:
        log.warning("re-timing datapoints left untrusted while in flight: %s", exc)
    lanes = Lanes(
        upto,
        ordered=remote.delivery_kind is DeliveryKind.ORDERED,
        live_after=plan.live_after,
        budget=plan.budget,
        pacer=plan.pacer,
        rotation=plan.rotation,
        pause=plan.pause,
        deadline=plan.deadline,
    )
    for phase in lanes.phases(turns):
        take_turns(phase, Stops(plan.deadline, plan.gate), report, lanes)
        if stops_the_remote(report.exception):
            assert report.exception is not None
            # The whole remote waits: the streams a later lane (or a lower priority) would
            # have sent say so; those done with the backlog are done.
            for turn in turns:
                if not turn.failed and not (phase.backlog and turn.done):
                    turn.fail(report.exception)
            break
    report.more = lanes.more
    for turn in turns:
        turn.report_refusals()
    return report


@dataclass(frozen=True)
class _Context:
    """What every stream's turn in one pass shares."""

    outbox: Outbox
    remote: Remote
    request: BatchRequest
    report: SyncReport
    progress: Progress | None
    gate: PassGate


class _Turn:
    """One stream's part in a pass: its position, its read-ahead batch, its outcome."""

    def __init__(self, context: _Context, row: StreamRow):
        self.outbox, self.remote, self.row = context.outbox, context.remote, row
        self.request, self.report, self.progress, self.gate = (
            context.request,
            context.report,
            context.progress,
            context.gate,
        )
        self.after = 0  # the last id read: everything up to it is in flight or resolved
        self.done = self.failed = False
        #: this stream's empty batch: the turn has nothing (more) to send
        self.nothing = Batch(row.name, row.id, ())
        self._ahead: InThread[Batch] | None = None
        # Batches sent whose outcome is not settled yet (pushed and not yet deleted, or no
        # answer): while any is, the in-flight mark stays for the next pass to resolve.
        self._unsettled = 0
        # Idempotent and at-least-once remotes: datapoints up to this id went out with no
        # answer (0: none). They are sent again from the first, and stay immutable (marked)
        # until a send of them is acknowledged: whether they arrived cannot be known before.
        self._unknown_upto = 0
        # Bytes the pushes of this turn put on the wire and not yet counted in the cache.
        # Only the pass's thread touches it (an acknowledged batch's delete gets its share).
        self._uncounted = 0
        # The rows of a batch whose answer was lost, to send again first (idempotent and
        # at-least-once remotes): the mark found in the cache at the start of the pass.
        self._resend: tuple[int, int] | None = None
        self._resending = False
        # A bisection's delete or dead letter failed: the batch is not settled.
        self._undeleted = False
        # Refusals of this pass: one warning per stream per pass, each datapoint at DEBUG.
        self._refused = 0
        self._first_reason = ""
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def priority(self) -> int:
        return self.row.priority

    # -------------------------------------------------------------- opening

    def open(self) -> None:
        """Create the stream remotely if needed, and resolve a batch left in flight."""
        row = self.row
        if not row.remote_created:
            properties = stream_properties(self.outbox.cache, row.name)
            ensure_stream(self.remote, row.name, json.loads(row.schema), properties)
            self.outbox.set_remote_created(row.name)
        if not row.inflight:
            return
        if self.remote.delivery_kind is DeliveryKind.ORDERED:
            self._unsettled = 1  # until reconciled: a failure here keeps the mark
            self._reconcile()
        else:
            # An idempotent remote may have stored any part of it, an at-least-once one
            # cannot say: send it all again, first. Never infer delivery from timestamps.
            self._unknown_upto = row.inflight
            self._resend = (row.inflight_lo, row.inflight)

    def _reconcile(self) -> None:
        """An ordered remote's newest timestamp says what of the batch in flight arrived."""
        newest = self.remote.reconcile(self.row.name)
        with self.gate.deleting(f"stream {self.row.name!r}'s batch without answer"):
            delivered = self.outbox.ack_reconciled(self.row.id, newest)
        if delivered:
            log.info(
                "stream %r: %d datapoints had arrived despite a lost answer",
                self.row.name,
                delivered,
            )
        self._count_sent(delivered)
        self._settled(reset=True)

    def can_go_live(self) -> bool:
        """Whether this stream may send its live lane first: nothing of it is unsettled (a
        batch without answer is sent again from the oldest first)."""
        return not self.failed and self._unsettled == 0 and self._unknown_upto == 0

    def begin(self, after: int, request: BatchRequest) -> None:
        """Start a lane: the batches after id ``after``, as ``request`` bounds them."""
        self.after, self.request = after, request
        self.done = self.failed
        self._resending = False

    def begin_resend(self) -> bool:
        """Start the lane that sends again exactly the rows of a batch whose answer was lost
        (the mark found at the start of the pass); False when there is none."""
        if self._resend is None or self.failed:
            return False
        first, last = self._resend
        self.begin(first - 1, replace(self.request, upto_id=last))
        self._resending = True
        return True

    # -------------------------------------------------------------- batches

    def read_ahead(self) -> InThread[Batch] | None:
        """A reader of this stream's next batch, not started yet (None: one is under way).

        Only ids after what this turn has read are taken, so it is valid whatever becomes of
        the batch on the wire."""
        if self._ahead is not None:
            return None
        self._ahead = InThread(self._read, self.after)
        return self._ahead

    def _read(self, after: int) -> Batch:
        """The batch after id ``after``, recorded in flight; its body made if the remote
        can make it ahead."""
        batch = self.outbox.take_batch(self.row, after, self.request)
        if batch and isinstance(self.remote, Preparable):
            self.remote.prepare(self.row.name, batch)
        return batch

    def next_batch(self) -> Batch:
        """This stream's next batch (read ahead, or read now), recorded in flight."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            batch = ahead.result()
        else:
            batch = self._read(self.after)
        if batch:
            self.after = batch.last_id
        elif self._resending and self.request.hold is None:
            # Everything of the batch without answer was sent again and acknowledged (or
            # is gone): the stream may take its other lanes now.
            with self._lock:
                self._unknown_upto = 0
        return batch

    def deliver(
        self, batch: Batch, ahead: InThread[Batch] | None, behind: InThread[None] | None
    ) -> InThread[None] | None:
        """Send ``batch``; bisect it if refused.

        ``ahead`` (the next turn's batch) is read and ``behind`` (the last delivered batch's
        delete) runs while this batch is on the wire; both are finished before its outcome
        is handled. Returns the delete of this batch, not yet started, for the next turn (or
        the end of the pass) to run.
        """
        for job in (behind, ahead):
            if job is not None:
                job.start()
        self._unsettled += 1
        try:
            self._push(batch)
        except RejectedError as exc:
            _finish(ahead, behind)
            self._bisect_settled(batch, exc)
            return None
        except AmbiguousRemoteError:
            _finish(ahead, behind)
            self._after_no_answer(batch)
            raise
        except ConnectorSyncError:
            self._settled()  # an answer came: nothing of the batch was stored
            _finish(ahead, behind)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                _finish(ahead, behind)
            raise
        # Stored. Should the previous delete fail now, this batch stays unsettled: its mark
        # stays, and the next pass resolves it before sending anything of the stream.
        _finish(ahead, behind)
        return InThread(self._acknowledged, batch, self._take_uncounted())

    def _bisect_settled(self, batch: Batch, exc: RejectedError) -> None:
        self._undeleted = False
        try:
            self._bisect(batch, exc)
        except AmbiguousRemoteError:
            self._after_no_answer(batch)
            raise
        except ConnectorSyncError:
            # A push's answer: nothing of that half was stored. A failed delete or dead
            # letter (closed, or the cache): what the remote stored is still cached, so the
            # mark stays and the next pass resolves it by the remote's delivery kind.
            if not self._undeleted:
                self._settled()
            raise
        self._settled()
        self._covered(batch.last_id)

    def _after_no_answer(self, batch: Batch) -> None:
        """Sent, no answer. An ordered remote is asked at once what arrived (if that fails
        too, the mark stays and the next pass asks first); for the other kinds the batch
        stays unsettled, marked, and the next pass sends it again. The rows after it that
        were read ahead were never sent: their mark goes, so that it holds this batch only,
        whatever the kind (an ordered remote's reconcile may fail too, and the mark then
        stays into the next pass: ``test_inflight.py::
        test_an_ordered_batch_without_answer_unreconciled_holds_only_its_own_rows``)."""
        with contextlib.suppress(ConnectorSyncError):  # a wider mark only waits longer
            self.outbox.narrow_inflight(self.row.id, batch.last_id)
        if self.remote.delivery_kind is not DeliveryKind.ORDERED:
            return
        try:
            self._reconcile()
        except ConnectorSyncError as exc:
            log.warning(
                "stream %r: could not settle a batch without answer: %s", self.row.name, exc
            )

    def _bisect(self, batch: Batch, exc: RejectedError) -> None:
        """Deliver ``batch`` in halves until the refused datapoints stand alone, then
        dead-letter each of them with the remote's reason."""
        if len(batch) == 1:
            reason, refused = exc.body or str(exc), batch[0]
            with self._removing(f"stream {self.row.name!r}'s refused datapoint"):
                self.outbox.deadletter(self.row.id, self.row.name, refused, reason, time.time())
            log.debug("stream %r: datapoint at t=%r refused: %s", self.row.name, refused.t, reason)
            self._refused += 1
            self._first_reason = self._first_reason or reason
            add_count(self.report.deadlettered, self.row.name, 1)
            return
        for half in batch.halves():
            try:
                self._push(half)
            except RejectedError as refused:
                self._bisect(half, refused)
            else:
                sent = self._take_uncounted()
                with self._removing(f"stream {self.row.name!r}'s delivered batch"):
                    self.outbox.ack(half, sent=sent)
                self._count_sent(len(half), half)

    @contextlib.contextmanager
    def _removing(self, what: str) -> Iterator[None]:
        """A deletion of the bisection, through the gate; if it fails, notes that the batch
        is not settled (:meth:`_bisect_settled`)."""
        try:
            with self.gate.deleting(what):
                yield
        except ConnectorSyncError:
            self._undeleted = True
            raise

    def _push(self, batch: Batch) -> None:
        """``remote.push``, keeping what it put on the wire (a :class:`Metered` remote)."""
        if not isinstance(self.remote, Metered):
            self.remote.push(self.row.name, batch)
            return
        before = self.remote.bytes_sent()
        try:
            self.remote.push(self.row.name, batch)
        finally:
            self._uncounted += max(0, self.remote.bytes_sent() - before)

    def _take_uncounted(self) -> int:
        sent, self._uncounted = self._uncounted, 0
        return sent

    def _acknowledged(self, batch: Batch, sent: int) -> None:
        """The remote stored ``batch``, putting ``sent`` bytes on the wire: delete it from the
        cache and count it sent. If the delete fails, the batch stays unsettled (the next pass
        resolves it) and its bytes go uncounted."""
        with self.gate.deleting(f"stream {self.row.name!r}'s delivered batch"):
            self.outbox.ack(batch, sent=sent)
        self._count_sent(len(batch), batch)
        self._settled()
        self._covered(batch.last_id)

    def _settled(self, *, reset: bool = False) -> None:
        with self._lock:
            self._unsettled = 0 if reset else max(0, self._unsettled - 1)

    def _covered(self, last_id: int) -> None:
        """Everything up to ``last_id`` is settled: sent again and acknowledged, or dead."""
        with self._lock:
            if last_id >= self._unknown_upto:
                self._unknown_upto = 0

    def _count_sent(self, count: int, batch: Batch | None = None) -> None:
        """``count`` datapoints were delivered (``batch``: those, whose bytes count too; a
        reconciliation knows the count only)."""
        add_count(self.report.sent, self.row.name, count)
        add_count(self.report.sent_bytes, self.row.name, 0 if batch is None else batch.nbytes)
        if count and self.progress is not None:
            self.progress(self.row.name, count)

    # -------------------------------------------------------------- outcome

    def guard(self, step: Callable[..., T], *args: Any) -> T | None:
        """Run one step of this stream; a failure fails this stream only."""
        try:
            return step(*args)
        except ConnectorSyncError as exc:
            if type(exc) is RemoteError:
                # Neither transient, nor the data, nor the key: perhaps the stream was
                # deleted remotely. Check (and create) it again on the next pass.
                with contextlib.suppress(ConnectorSyncError):
                    self.outbox.set_remote_created(self.row.name, False)
            log.warning("sync of stream %r failed: %s", self.row.name, exc)
            self.fail(exc)
        except Exception as exc:
            # A bug (ours or a remote's) must not stop the other streams, nor leave the pass
            # unreported: the traceback goes to the log, the message to the report.
            log.exception("sync of stream %r failed unexpectedly", self.row.name)
            self.fail(ConnectorSyncError(f"unexpected {type(exc).__name__}: {exc}"))
        return None

    def report_refusals(self) -> None:
        """One warning for the datapoints the remote refused in this pass (each one is at
        DEBUG, and in the dead letters with its reason)."""
        if self._refused:
            log.warning(
                "stream %r: %d datapoint(s) refused by the remote, now dead letters "
                "(deadletters() lists each); the first because: %s",
                self.row.name,
                self._refused,
                self._first_reason,
            )
            self._refused = 0

    def fail(self, exc: ConnectorSyncError) -> None:
        self.report.fail(self.row.name, exc)
        self.done = self.failed = True

    def close(self) -> None:
        """At the end of the pass: finish reading ahead, and clear the in-flight mark unless
        a batch's outcome is still unknown (then the next pass resolves it first)."""
        if self._ahead is not None:
            self._ahead.wait()
            self._ahead = None
        with contextlib.suppress(ConnectorSyncError):
            self.outbox.count_bytes_sent(self.row.name, self._take_uncounted())
        if self._unsettled == 0 and self._unknown_upto == 0:
            with contextlib.suppress(ConnectorSyncError):
                self.outbox.release_inflight(self.row.id)


def _finish(ahead: InThread[Batch] | None, behind: InThread[None] | None) -> None:
    """Wait for the reader ahead and run (or wait for) the delete behind; raises the
    delete's error."""
    if ahead is not None:
        ahead.wait()
    if behind is not None:
        behind.result()
