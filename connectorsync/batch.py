"""What crosses a module border when datapoints leave the cache: :class:`Datapoint` and
:class:`Batch`.

The cache hands a sync pass a :class:`Batch` (``Cache.take_batch``), the pass hands it to the
remote (``Remote.push(stream, batch)``), and the cache takes it back to delete it once the
remote acknowledged it (``Cache.ack``). Dead letters sent again go out as batches too
(:mod:`connectorsync.resend`). Nothing on that way is a bare tuple indexed by position.

This module imports nothing of connectorsync, so that every layer may use it: ``cache/`` and
``remotes/`` (the lower layers) as well as the pass above them
(``tests/test_layers.py::test_lower_layers_never_import_upper_ones``).

Guarantees (``tests/test_batch.py``):

- A :class:`Datapoint` is a tuple ``(id, t, d)``: a remote written for the contract before
  it had names (``for id, t, d in batch``, ``point[1]``) keeps working, and a plain tuple
  pushed to a remote by hand still does
  (``test_a_datapoint_is_the_tuple_remotes_always_had``).
- A :class:`Batch` is a read-only ``Sequence[Datapoint]``; its halves are batches of the same
  stream that hold every datapoint once, in order
  (``test_halves_keep_the_stream_and_every_datapoint_once``). The remote is handed the very
  batch the cache gave out (``test_the_remote_is_handed_named_batches_of_its_stream``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import NamedTuple, overload


class Datapoint(NamedTuple):
    """One datapoint on its way out of the cache: what a remote receives.

    A named tuple, so it unpacks as ``id, t, d`` and indexes as before it had names.

    :ivar id: the cache's id of the datapoint: unique in the cache file, increasing in
        insertion order, never reused. A dead letter sent again goes out under minus its letter
        id, never the id of another datapoint.
    :ivar t: its timestamp, in seconds since the epoch
    :ivar d: its value as JSON text, exactly as cached (``json.loads`` gives the value):
        remotes that speak JSON put it in their body as it is, without decoding it
    """

    id: int
    t: float
    d: str


#: ``Datapoint`` from a row ``(id, t, d)`` of the cache, at C speed: the sync pass makes one
#: per datapoint it sends (``NamedTuple._make`` is a Python function, and slower).
as_datapoint = partial(tuple.__new__, Datapoint)


class Batch(Sequence[Datapoint]):
    """Datapoints of one stream that travel together: read by one statement, sent by one
    request, deleted by one transaction.

    A read-only ``Sequence[Datapoint]`` (indexing, ``len``, iteration, slicing), so a remote
    written for ``push(stream, batch: Sequence[Datapoint])`` takes it as it is. From the
    cache its datapoints come in id order; dead letters sent again, in time order. Equal
    only to itself: a remote that prepares a body ahead (``Preparable``) recognises the very
    batch it prepared. Treat its attributes as read-only.

    It keeps its datapoints as the cache read them, plain ``(id, t, d)`` tuples
    (:attr:`rows`), and hands each out as a :class:`Datapoint` when it is asked for. Why:
    CPython's garbage collector stops tracking a plain tuple of numbers and strings, never
    a tuple subclass, so batches of 5,000 named tuples held through a pass made every
    collection scan them: 15% more CPU for a sync (``tests/benchmarks/bench_sync.py``).
    Named tuples made one at a time, for a loop that unpacks them, cost a fraction of that.

    :ivar stream: the stream's name, as given to ``Remote.push``
    :ivar stream_id: the cache's id of the stream (0 when the batch is not of the cache's
        datapoints table)
    :ivar rows: the datapoints as plain ``(id, t, d)`` tuples, in the order they go (a
        remote's hot loop may read them: the same values, without the names)
    """

    __slots__ = ("_nbytes", "rows", "stream", "stream_id")

    def __init__(
        self,
        stream: str,
        stream_id: int,
        rows: Iterable[tuple[int, float, str]] = (),
        *,
        nbytes: int | None = None,
    ):
        """``nbytes``: the bytes of the values, when the caller knows them already (else they
        are counted when first asked for)."""
        self.stream, self.stream_id = stream, stream_id
        self.rows: tuple[tuple[int, float, str], ...] = tuple(rows)
        self._nbytes = nbytes

    @property
    def points(self) -> tuple[Datapoint, ...]:
        """The datapoints, in the order they go, made now."""
        return tuple(map(as_datapoint, self.rows))

    @property
    def first_id(self) -> int:
        """The id of the first datapoint (IndexError when the batch is empty)."""
        return self.rows[0][0]

    @property
    def last_id(self) -> int:
        """The id of the last datapoint (IndexError when the batch is empty)."""
        return self.rows[-1][0]

    @property
    def nbytes(self) -> int:
        """Bytes of the values as UTF-8 JSON text (what ``max_batch_bytes`` counts)."""
        if self._nbytes is None:
            self._nbytes = sum(len(row[2].encode()) for row in self.rows)
        return self._nbytes

    def halves(self) -> tuple[Batch, Batch]:
        """The first half and the rest (the larger half when the count is odd), each a batch of
        the same stream; together they hold every datapoint once, in order."""
        middle = len(self.rows) // 2
        return self[:middle], self[middle:]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Datapoint]:
        return map(as_datapoint, self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows)

    @overload
    def __getitem__(self, index: int) -> Datapoint: ...

    @overload
    def __getitem__(self, index: slice) -> Batch: ...

    def __getitem__(self, index: int | slice) -> Datapoint | Batch:
        if isinstance(index, slice):
            return Batch(self.stream, self.stream_id, self.rows[index])
        return as_datapoint(self.rows[index])

    def __repr__(self) -> str:
        # Never the values: a batch may be large, and a log line should stay one line.
        if not self.rows:
            return f"Batch({self.stream!r}, empty)"
        return (
            f"Batch({self.stream!r}, {len(self.rows)} datapoints,"
            f" ids {self.first_id}..{self.last_id})"
        )
