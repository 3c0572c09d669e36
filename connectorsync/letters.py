"""A Logger's dead letters across its remotes: listed, sent again, purged.

Each remote keeps the letters it refused (:meth:`Cache.outbox(name)
<connectorsync.cache.Cache.outbox>`): :meth:`DeadLetters.retry` sends each to the remote that
refused it, with its own time (:mod:`.resend`), or queues them again with new times
(``restamp``), within the storage limits.

Guarantees (each proved by the test named):

- A letter goes back only to the remote that refused it, with its own time or queued again
  for that remote alone (``restamp``); the others get no second copy
  (``test_letters.py::test_a_letter_is_retried_only_to_the_remote_that_refused_it``).
- A letter whose remote this Logger was not given (left out of ``remotes=``, or removed
  with ``remove_remote``) stays, and ``retry_deadletters`` says so and what to do
  (``test_reconfigure.py::test_a_named_remote_left_out_keeps_what_it_holds_and_says_so``).
- ``ids`` that are not a list of ids change nothing
  (``test_deadletters.py::test_wrong_typed_ids_raise_a_connectorsync_type_error``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

from .cache import Cache, DeadLetter, Outbox
from .options import Settings
from .remotes.base import Remote
from .resend import ResendReport, letter_ids, resend
from .streams import StreamRegistry
from .syncer import Syncer
from .synclock import PassGate
from .writer import Writer

log = logging.getLogger(__name__)


class DeadLetters:
    """The dead letters of one Logger: ``deadletters``, ``retry_deadletters`` and
    ``purge_deadletters`` (their docstrings say what each does)."""

    def __init__(
        self,
        cache: Cache,
        syncer: Syncer,
        streams: StreamRegistry,
        writer: Writer,
        settings: Settings,
    ):
        self.cache, self.syncer, self.streams = cache, syncer, streams
        self.writer, self.settings = writer, settings

    def list(self, stream: str | None) -> list[DeadLetter]:
        return self.cache.deadletters(stream)

    def retry(self, ids: Iterable[int] | None, *, restamp: bool) -> int:
        """Send the letters again, each to its remote (or queue them, ``restamp``); returns
        how many were sent (queued).

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        """
        chosen = letter_ids(ids, "retry_deadletters()")
        if restamp:
            queued = self.cache.retry_deadletters(chosen, self.streams.ids(), self.writer.limits)
            self.syncer.inserted(queued)
            self._say_what_stays(chosen, restamp=True)
            return queued
        batch_size, sent = self.settings.get("batch_size"), 0
        for name in self.syncer.couriers:  # each remote's letters, to that remote
            outbox = self.cache.outbox(name)

            def job(remote: Remote, gate: PassGate, box: Outbox = outbox) -> ResendReport:
                return resend(box, remote, chosen, batch_size, gate)

            sent += self.syncer.exclusive(job, name).sent
        self._say_what_stays(chosen, restamp=False)
        return sent

    def _say_what_stays(self, chosen: Collection[int] | None, *, restamp: bool) -> None:
        """Warn of the chosen letters left at rest because this Logger does not deliver to
        their remote (left out of ``remotes=``, or removed): nothing else would say why
        ``retry_deadletters`` left them, nor what to do."""
        recorded = self.cache.remotes().all()
        stranded: dict[str, int] = {}
        for letter, name in self.cache.letter_remotes().items():
            if chosen is not None and letter not in chosen:
                continue
            if (name not in recorded) if restamp else (name not in self.syncer.couriers):
                stranded[name] = stranded.get(name, 0) + 1
        for name, count in stranded.items():
            gone = "was removed" if name not in recorded else "is not given to this Logger"
            log.warning(
                "%d dead letters of remote %r stay at rest: that remote %s. Give it again "
                "(remotes=, add_remote) and retry_deadletters() sends them to it; "
                "retry_deadletters(ids, restamp=True) with their ids queues them for every "
                "remote their stream has now (one that had them gets a second copy); "
                "purge_deadletters(ids) deletes them",
                count,
                name,
                gone,
            )

    def purge(self, ids: Iterable[int] | None) -> int:
        """Delete the letters for good; returns how many.

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        """
        return self.cache.purge_deadletters(letter_ids(ids, "purge_deadletters()"))
