"""The contract every remote keeps. The syncer talks to remotes through this and nothing else.

A remote stores datapoints somewhere else. The syncer calls it from one thread at a time,
except ``prepare`` (below). Every method either returns as documented or raises
one of these, and nothing else:

- :class:`~connectorsync.errors.TransientRemoteError`: network trouble, a timeout before the
  request was sent, 408/429/5xx (but 501). Nothing was stored; the syncer retries later.
- :class:`~connectorsync.errors.AmbiguousRemoteError`: the request was sent but no answer came
  back (connection dropped, read timeout). The data may or may not be stored: the syncer asks
  :meth:`Remote.reconcile` before sending it again.
- :class:`~connectorsync.errors.RejectedError`: the remote refused the datapoints themselves.
  Only :meth:`Remote.push` raises it; resending the same batch will fail the same way.
- :class:`~connectorsync.errors.AuthError`: the credentials were refused. Nothing was stored.
- :class:`~connectorsync.errors.RemoteError`: anything else the remote answered with.

Every network call carries a timeout: no method blocks forever. A remote's ``repr`` names
where it delivers and never shows a credential: the Logger records it in the cache file.

Optionally, a remote has ``prepare(stream, batch)``: the syncer calls it, in a second thread,
with the next batch while the current one is on the wire, so that building a request body
overlaps waiting for the remote (:class:`Preparable`). The built-in remotes speak HTTP
through :mod:`connectorsync.remotes._http`, which keeps such bodies for ``push``.

Optionally, a remote has ``bytes_sent()`` (:class:`Metered`): what its requests put on the
wire so far. The sync pass reads it around each ``push`` and keeps the difference per stream
in the cache (``Logger.status().bytes_sent``). A remote without it is simply not counted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

# What a remote receives, re-exported here as part of its contract: a batch (the sync pass
# hands it a Batch) is a Sequence of Datapoint, each the named tuple (id, t in seconds, d:
# the value as JSON text). Remotes that speak JSON can put the text in their body as it is,
# without decoding it. A plain (id, t, d) tuple is a datapoint too: remotes unpack or index,
# they do not require the names. Both live in connectorsync.batch, which the cache shares.
from ..batch import Batch as Batch
from ..batch import Datapoint as Datapoint

#: The longest span of seconds any timeout or period may give (about 31 years): longer ones
#: are not waits a thread or a socket can make (``threading.TIMEOUT_MAX`` is about 9.2e9 s,
#: and a socket's timeout overflows past it), so every pass would fail with an
#: OverflowError. Options (``options.py``) and remotes' ``timeout=`` refuse them
#: (``test_validation.py::test_seconds_no_wait_can_last_are_refused``).
MAX_SECONDS = 1e9


class DeliveryKind(enum.Enum):
    """How a remote stores a batch; the sync pass settles a batch sent without an answer
    (or cut short by a crash) by this and nothing else.

    - ``ORDERED``: all or nothing, in order, refusing older timestamps (ConnectorDB). The
      remote's newest timestamp says what arrived; the rest is sent again. Exactly once.
    - ``IDEMPOTENT``: may store part of a batch, and storing a datapoint twice changes nothing
      (InfluxDB: same measurement, tags and time overwrite). The whole batch is sent again;
      delivery is never inferred. Exactly once, as stored.
    - ``AT_LEAST_ONCE``: cannot say what it stored (a plain HTTP endpoint). The whole batch is
      sent again: duplicates are possible after a lost answer, never a loss.
    """

    ORDERED = "ordered"
    IDEMPOTENT = "idempotent"
    AT_LEAST_ONCE = "at_least_once"


@runtime_checkable
class Remote(Protocol):
    """What the syncer needs of a remote database."""

    #: How the remote stores a batch (see :class:`DeliveryKind`).
    delivery_kind: DeliveryKind

    def ping(self) -> str:
        """Check the connection and credentials; return who we are there (``user/device``).

        Safe to call any number of times.
        """
        ...

    def ensure_stream(
        self,
        stream: str,
        schema: dict[str, Any],
        properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Make sure ``stream`` exists remotely, creating it with ``schema`` and
        ``properties`` (ConnectorDB's ``nickname``, ``description``, ``icon``, ``datatype``,
        ``ephemeral``, ``downlink``; a remote without such properties ignores them) if it is
        missing.

        Returns the schema the stream already had on the remote (which may differ from
        ``schema``), or None when this call created it or the remote keeps no schemas.
        Calling it twice is safe: an existing stream is left as it is, properties included.
        The syncer calls it before a stream's first batch, ``add_stream`` when given a schema.
        """
        ...

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """The schema of ``stream`` on the remote, or None when the remote has no such stream."""
        ...

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Store ``batch`` (in order, timestamps increasing) in ``stream``, all or nothing.

        The sync pass gives a :class:`~connectorsync.batch.Batch` of ``stream``; called by
        hand, any sequence of ``(id, t, d)`` tuples does, so a remote unpacks or indexes its
        datapoints rather than relying on their field names.

        Returns only when the remote acknowledged every datapoint of the batch; only then may
        the cache delete them. An empty batch returns at once.

        :raises RejectedError: the remote refused at least one datapoint; nothing was stored
            (or, for remotes that store the valid part, resending the batch is harmless)
        """
        ...

    def reconcile(self, stream: str) -> float | None:
        """The timestamp of the newest datapoint the remote holds for ``stream``, or None.

        Asked only of ``ORDERED`` remotes, after an :class:`AmbiguousRemoteError`: cached
        datapoints at or below this timestamp were delivered. Read-only, safe to call any
        number of times.
        """
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """A remote that can make a batch's request body ahead of :meth:`Remote.push`."""

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` now, in the caller's (a second) thread. Never raises:
        whatever went wrong, ``push`` meets again when it makes the body itself."""
        ...


@runtime_checkable
class Metered(Protocol):
    """A remote that counts the bytes its requests put on the wire."""

    def bytes_sent(self) -> int:
        """Bytes of request bodies sent so far by this remote object, all streams and calls
        together, as they went on the wire (after compression). Request headers, TCP/TLS
        framing and answers are not counted. A request counts once it may have reached the
        remote (an error answer, or none, too; a failure to connect not). Never decreases;
        thread-safe. The pass calls it right before and after ``push``, in the thread that
        pushes, so the difference is that push's bytes (its retries inside ``push``
        included)."""
        ...


def ensure_stream(
    remote: Remote, stream: str, schema: dict[str, Any], properties: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``remote.ensure_stream(stream, schema, properties)``, with ``properties`` left out
    when there are none: a remote written for the contract before properties (``ensure_stream
    (stream, schema)``) keeps working for every stream registered without them."""
    if properties:
        return remote.ensure_stream(stream, schema, properties)
    return remote.ensure_stream(stream, schema)
