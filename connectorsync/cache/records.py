"""The records the cache hands out and takes in: frozen dataclasses and row tuples, so that
what crosses the border of the cache is named, not positional where it matters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamRow:
    """A stream as stored: its id in the datapoints table, schema text and remote state."""

    id: int
    name: str
    schema: str
    remote_created: bool
    inflight: int = 0
    out_of_order: str = "reject"


#: Where a datapoint's time came from when it was not trusted yet: (boots row, boot clock).
Untrusted = tuple[int, float]


@dataclass(frozen=True)
class StreamStats:
    """Per-stream counts for ``Logger.status()``."""

    cached: int
    oldest: float | None
    newest: float | None
    deadletters: int


Row = tuple[int, float, str]  # (id, t, d as JSON text)


@dataclass(frozen=True)
class BatchRequest:
    """What a pass asks of :meth:`Cache.take_batch`: its bounds, and what to hold back.

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
