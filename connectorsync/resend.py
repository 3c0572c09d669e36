"""Dead letters sent again with their own time: ``Logger.retry_deadletters()``.

A dead letter's time is when its reading was taken; sending it again under a new one would
make it a different reading (and, where it had arrived after all, a second copy). But the
cache cannot queue it again with its own time: per stream, cached timestamps strictly
increase (invariant 4), and a letter is older than what its stream cached or sent since. So
:func:`resend` sends letters of each stream, in time order, as batches of their own, straight
to the remote, ahead of whatever the stream has cached, and settles each by the remote's
answer. The caller asks for the other way explicitly (``restamp=True``:
:meth:`~connectorsync.cache.Cache.retry_deadletters` queues them with new times).

Guarantees (each proved by the test named, in ``tests/test_deadletters.py``):

- A letter the remote takes is sent with its own ``t`` and value, then leaves the dead
  letters (``test_a_retried_letter_keeps_its_time_on_influxdb``,
  ``test_a_retried_letter_keeps_its_time_on_connectordb``).
- An ``ordered`` remote (ConnectorDB) is asked first for the stream's newest timestamp: a
  letter older than it stays a dead letter saying so and what to do (restamp), and is not
  sent; one at exactly that time is taken as delivered already (exactly once, as
  reconciliation does); a letter newer than a datapoint the stream still has cached stays
  too, for sending it first would get that datapoint refused. Nothing loops: a letter kept
  is at rest (``test_connectordb_keeps_an_older_letter_with_the_reason``).
- A letter the remote refuses stays, with the remote's reason and one more attempt; a
  refused batch is bisected so that the others go (``test_a_refused_letter_stays_with_the_reason``).
- An ordered remote's lost answer is settled by its newest timestamp: the letter's own means
  delivered (``test_a_lost_answer_is_settled_by_connectordb_newest``); a transient,
  ambiguous or credentials failure otherwise stops the retry and is raised, and what was not
  settled stays as it was
  (``test_an_unreachable_remote_fails_the_retry_and_changes_nothing``), but for letters sent
  without an answer: they stay with the reason :data:`UNANSWERED` (the remote may hold them),
  until a later retry settles them
  (``test_postgres.py::test_a_letter_sent_again_without_an_answer_says_it_may_be_stored``).
- Memory is O(``batch_size``): letters are read by keyset pages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from .batch import Batch, Datapoint
from .cache import DeadLetter, Outbox, StreamRow
from .cache.properties import stream_properties
from .errors import AmbiguousRemoteError, ArgumentTypeError, RejectedError
from .remotes.base import DeliveryKind, Remote, ensure_stream
from .synclock import PassGate

log = logging.getLogger(__name__)

#: The start of the reason of a letter sent again without an answer: the remote may hold it.
UNANSWERED = (
    "sent again, no answer came (the remote may hold it already; retry_deadletters() settles "
    "it, and a remote that is not at_least_once stores it once): at"
)


@dataclass(frozen=True)
class ResendReport:
    """What :func:`resend` did.

    :ivar sent: letters the remote took (or, ordered, held already): they left the dead letters
    :ivar kept: letters that stay dead letters (refused, or not sendable in order)
    """

    sent: int
    kept: int


def letter_ids(ids: object, method: str) -> list[int] | None:
    """``ids`` of ``retry_deadletters``/``purge_deadletters`` as a list, or None for all.

    :raises ArgumentTypeError: not None nor an iterable of integer ids (nothing is changed)
    """
    if ids is None:
        return None
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise ArgumentTypeError(
            f"{method}: ids must be dead letter ids (a list of int, see deadletters()) or None"
            f" for all; got {ids!r} ({type(ids).__name__})"
        )
    chosen = list(ids)
    for one in chosen:
        if isinstance(one, bool) or not isinstance(one, int):
            raise ArgumentTypeError(
                f"{method}: ids must be dead letter ids (int, see deadletters()); got"
                f" {one!r} ({type(one).__name__}) among them"
            )
    # No dead letter has an id SQLite cannot hold (it raised a bare OverflowError): none.
    return [one for one in chosen if -(2**63) <= one < 2**63]


def resend(
    outbox: Outbox,
    remote: Remote,
    ids: Sequence[int] | None,
    batch_size: int,
    gate: PassGate | None = None,
) -> ResendReport:
    """Send the dead letters at rest (all, or those of ``ids``) that the remote of ``outbox``
    (``remote``) refused again, each with its own time (see the module's docstring);
    deletions go through ``gate``.

    :raises TransientRemoteError, AmbiguousRemoteError, AuthError: the remote could not be
        asked; the letters not settled yet stay as they were
    """
    sent = kept = 0
    streams = outbox.streams()
    for name in outbox.streams_with_letters():
        row = streams.get(name)
        if row is None:
            continue
        stream = _Stream(outbox, remote, row, gate)
        after = (float("-inf"), 0)
        while letters := outbox.letters_at_rest(name, ids, after, batch_size):
            after = (letters[-1].t, letters[-1].id)
            stream.send(letters)
        sent, kept = sent + stream.sent, kept + stream.kept
    return ResendReport(sent, kept)


class _Stream:
    """The letters of one stream, sent page by page in time order."""

    def __init__(self, outbox: Outbox, remote: Remote, row: StreamRow, gate: PassGate | None):
        self.outbox, self.remote, self.row = outbox, remote, row
        self.gate = gate
        self.ordered = remote.delivery_kind is DeliveryKind.ORDERED
        self.sent = self.kept = 0
        self._ready = False
        self._newest: float | None = None  # ordered: the remote's newest timestamp

    def send(self, letters: list[DeadLetter]) -> None:
        if not self._ready:
            self._prepare()
        if self.ordered:
            letters = self._in_order(letters)
        if letters:
            self._push(letters)

    def _prepare(self) -> None:
        row = self.row
        if not row.remote_created:
            properties = stream_properties(self.outbox.cache, row.name)
            ensure_stream(self.remote, row.name, json.loads(row.schema), properties)
            self.outbox.set_remote_created(row.name)
        if self.ordered:
            self._newest = self.remote.reconcile(row.name)
        self._ready = True

    def _in_order(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Of ``letters`` (in time order), those an ordered remote can take now; the others
        are settled here: held already (delivered), or kept saying why."""
        name, newest = self.row.name, self._newest
        oldest_cached = self.outbox.oldest_held(self.row.id)
        there = [d.id for d in letters if newest is not None and d.t == newest]
        older = [d for d in letters if newest is not None and d.t < newest]
        behind = [d for d in letters if oldest_cached is not None and d.t > oldest_cached]
        if there:
            # Strictly increasing per stream: a datapoint at its very time is this one,
            # delivered before (its answer lost): exactly once, as reconciliation decides.
            self._delivered(there)
        if older:
            assert newest is not None
            self._keep(
                older,
                f"not sent again: the remote already holds newer datapoints of {name!r} (newest"
                f" t={newest!r}) and refuses older ones; to send it anyway, retry it with"
                " restamp=True (a new time; a second copy if it had arrived)",
            )
        if behind:
            assert oldest_cached is not None
            self._keep(
                behind,
                f"not sent again yet: {name!r} has cached datapoints older than it (from"
                f" t={oldest_cached!r}) to send first, and the remote takes a stream in time"
                " order; retry once they are delivered, or with restamp=True (a new time)",
            )
        settled = set(there) | {d.id for d in older} | {d.id for d in behind}
        return [d for d in letters if d.id not in settled]

    def _delivered(self, ids: list[int]) -> None:
        """The remote has these letters: they leave the dead letters, unless the Logger
        closed meanwhile (nothing is deleted after close() returned; a later retry settles
        them again, as after a lost answer)."""
        with self.gate.deleting("dead letters sent again") if self.gate else nullcontext():
            self.sent += self.outbox.letters_delivered(ids)

    def _keep(self, letters: Sequence[DeadLetter], reason: str, *, refused: bool = False) -> None:
        self.outbox.letters_kept([d.id for d in letters], reason, time.time(), refused=refused)
        self.kept += len(letters)

    def _push(self, letters: list[DeadLetter]) -> None:
        """Send ``letters`` as one batch; a refused batch is bisected, a refused letter kept."""
        batch = self._outgoing(letters)
        try:
            self.remote.push(self.row.name, batch)
        except RejectedError as exc:
            if len(letters) == 1:
                self._keep(letters, str(exc), refused=True)
                return
            half = len(letters) // 2
            self._push(letters[:half])
            self._push(letters[half:])
            return
        except AmbiguousRemoteError:
            if self.ordered and self.remote.reconcile(self.row.name) == letters[-1].t:
                pass  # all or nothing, and its last one is the remote's newest: delivered
            else:
                # Sent, and no answer: the remote may hold them now. They stay dead letters
                # saying so (the next retry settles them: a letter goes out under the same
                # id each time, which an idempotent remote stores once).
                self._keep(letters, f"{UNANSWERED} {time.strftime('%Y-%m-%d %H:%M:%S')}")
                raise
        self._delivered([d.id for d in letters])
        if self.ordered:
            self._newest = letters[-1].t
        log.info("stream %r: %d dead letters sent again", self.row.name, len(letters))

    def _outgoing(self, letters: list[DeadLetter]) -> Batch:
        """``letters`` as the remote receives them: a batch of their stream, not of the cache's
        datapoints (its ``stream_id`` is 0: acknowledging it deletes nothing there)."""
        # A letter goes out under minus its letter id: never the id of another datapoint
        # (a consumer that drops repeated ids, as MQTT's may, keeps it), the same each retry.
        points = (Datapoint(-d.id, d.t, json.dumps(d.d, allow_nan=False)) for d in letters)
        return Batch(self.row.name, 0, tuple(points))
