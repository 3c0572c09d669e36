"""The records the cache hands out and takes in: frozen dataclasses and named tuples, so that
what crosses the border of the cache is named, not positional. Batches of datapoints are
:class:`~connectorsync.batch.Batch` (in :mod:`connectorsync.batch`, which the remotes share)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamRow:
    """A stream as stored: its id in the datapoints table, schema text and remote state."""

    id: int
    name: str
    schema: str
    remote_created: bool
    inflight: int = 0
    out_of_order: str = "reject"
    #: the first id of the rows in flight, whose last is :attr:`inflight` (0: none)
    inflight_lo: int = 0
    #: sent first, and made room for last, when higher (``add_stream(priority=)``)
    priority: int = 0
    #: whether it may be thinned when the cache is full (None: as ``on_full`` decides)
    thin: bool | None = None
    #: its datapoints removed by thinning, ever
    thinned: int = 0

    @property
    def policy_stats(self) -> tuple[int, int]:
        """What :class:`StreamStats` shows of its policy: ``(priority, thinned)``."""
        return self.priority, self.thinned


@dataclass(frozen=True)
class Policy:
    """What the cache does for a stream: ``add_stream(priority=, thin=)``.

    :ivar priority: higher is sent first, and made room for last, when the cache is full
    :ivar thin: whether the stream may be thinned when full (None: as ``on_full`` decides)
    """

    priority: int = 0
    thin: bool | None = None


#: A stream registered without ``priority`` or ``thin``.
DEFAULT_POLICY = Policy()


#: Where a datapoint's time came from when it was not trusted yet: (boots row, boot clock).
Untrusted = tuple[int, float]


@dataclass(frozen=True)
class StreamStats:
    """Per-stream counts for ``Logger.status()``."""

    cached: int
    oldest: float | None
    newest: float | None
    deadletters: int
    #: sent first, and made room for last, when higher (``add_stream(priority=)``)
    priority: int = 0
    #: datapoints removed by thinning (``on_full="thin"``), ever
    thinned: int = 0


@dataclass(frozen=True)
class BatchRequest:
    """What a pass asks of ``Outbox.take_batch``: its bounds, and what to hold back.

    :ivar upto_id: the newest id the pass delivers (what was cached when it began)
    :ivar limit: most datapoints in a batch (``batch_size``)
    :ivar max_bytes: most bytes of values in a batch (``max_batch_bytes``)
    :ivar hold: ``(boot, since)``: datapoints of that boot stamped by an untrusted clock at
        boot-clock ``since`` or later wait (``hold_unsynced``); None: nothing waits
    """

    upto_id: int
    limit: int
    max_bytes: int
    hold: Untrusted | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A datapoint the remote refused, kept aside with the remote's reason.

    :ivar id: the dead letter's id (for ``retry_deadletters`` and ``purge_deadletters``)
    :ivar stream: the stream name
    :ivar t: its timestamp
    :ivar d: its value
    :ivar reason: what the remote said
    :ivar attempts: how many times it was refused on its own
    :ivar failed_at: when it was last refused
    """

    id: int
    stream: str
    t: float
    d: Any
    reason: str
    attempts: int
    failed_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> DeadLetter:
        """From the cache's row ``(id, stream, t, d as JSON text, reason, attempts,
        failed_at)``."""
        return cls(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])


def as_flag(stored: int | None) -> bool | None:
    """A nullable boolean column as Python: None stays None."""
    return None if stored is None else bool(stored)
