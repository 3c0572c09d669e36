"""Batches cross module borders as named types (``connectorsync/batch.py``): the cache hands
out a :class:`Batch` of :class:`Datapoint`, the pass hands that very batch to the remote,
bisection hands it halves of the same stream, and dead letters sent again go out the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from connectorsync import Logger, RejectedError
from connectorsync.batch import Batch, Datapoint
from connectorsync.remotes.base import DeliveryKind, Remote

T0 = 1_600_000_000.0


class RecordingRemote:
    """In memory: keeps each batch it was handed; refuses every datapoint whose value is
    ``refused`` (while :attr:`refusing`), as a remote that checks values does."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE

    def __init__(self, refused: object = None):
        self.refused, self.refusing = refused, True
        self.batches: list[tuple[str, Sequence[Datapoint]]] = []
        self.stored: list[tuple[str, float, Any]] = []

    def ping(self) -> str:
        return "memory"

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> None:
        return None

    def stream_schema(self, stream: str) -> None:
        return None

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        self.batches.append((stream, batch))
        values = [(t, json.loads(d)) for _, t, d in batch]
        if self.refusing and any(value == self.refused for _, value in values):
            raise RejectedError("a refused value", status=400)
        self.stored.extend((stream, t, value) for t, value in values)

    def reconcile(self, stream: str) -> None:
        return None

    def close(self) -> None:
        pass


_: type[Remote] = RecordingRemote


def test_a_datapoint_is_the_tuple_remotes_always_had() -> None:
    point = Datapoint(7, T0, '{"a": 1}')
    assert point == (7, T0, '{"a": 1}')
    point_id, t, d = point
    assert (point_id, t, d) == (point.id, point.t, point.d) == (point[0], point[1], point[2])
    assert json.loads(point.d) == {"a": 1}


def test_halves_keep_the_stream_and_every_datapoint_once() -> None:
    points = tuple(Datapoint(i, T0 + i, str(i)) for i in range(1, 6))
    batch = Batch("temperature", 3, points)
    first, rest = batch.halves()
    assert (len(first), len(rest)) == (2, 3)
    for half in (first, rest):
        assert isinstance(half, Batch)
        assert (half.stream, half.stream_id) == ("temperature", 3)
    assert (*first, *rest) == points
    assert (first.first_id, first.last_id, rest.first_id, rest.last_id) == (1, 2, 3, 5)
    assert isinstance(batch[1:], Batch) and batch[-1] == points[-1]
    assert isinstance(batch[0], Datapoint) and batch.points == points
    assert list(batch) == list(points) and len(batch) == 5 and batch
    assert not Batch("temperature", 3, ())


def test_nbytes_counts_the_values_as_utf8_and_repr_shows_none_of_them() -> None:
    batch = Batch("s", 1, [(1, T0, '"é"'), (2, T0 + 1, "12")])
    assert batch.nbytes == len('"é"'.encode()) + 2 == 6
    assert batch.first_id == 1 and all(isinstance(point, Datapoint) for point in batch)
    assert repr(batch) == "Batch('s', 2 datapoints, ids 1..2)"
    assert repr(Batch("s", 1, ())) == "Batch('s', empty)"


def test_a_batch_equals_only_itself() -> None:
    """A remote that prepared a body for a batch finds it again by identity, never for
    another batch with the same datapoints."""
    points = (Datapoint(1, T0, "1"),)
    batch = Batch("s", 1, points)
    assert batch == batch and batch != Batch("s", 1, points)
    assert len({batch, Batch("s", 1, points)}) == 2


def test_the_remote_is_handed_named_batches_of_its_stream(cache_path: str) -> None:
    """What the cache hands out is what the remote gets: a Batch of the stream it is pushed
    to, in id order, whose datapoints carry the cached JSON text; after a refusal, the
    halves of a bisection are batches of that stream too."""
    remote = RecordingRemote(refused=-1)
    with Logger(cache_path, remote=remote, batch_size=4) as logger:
        logger.add_stream("a", {"type": "number"})
        logger.add_stream("b", {"type": "object"})
        for i in range(6):
            logger.insert("a", float(i) if i != 3 else -1.0, timestamp=T0 + i)
        logger.insert("b", {"x": "é"}, timestamp=T0)
        report = logger.sync()
    assert report.sent == {"a": 5, "b": 1} and report.deadlettered == {"a": 1}
    for stream, batch in remote.batches:
        assert isinstance(batch, Batch) and batch.stream == stream
        ids = [point.id for point in batch]
        assert ids == sorted(ids) and (batch.first_id, batch.last_id) == (ids[0], ids[-1])
        assert all(isinstance(point, Datapoint) for point in batch)
        assert batch.nbytes == sum(len(point.d.encode()) for point in batch)  # as the cache said
    sizes = [len(batch) for stream, batch in remote.batches if stream == "a"]
    assert sizes == [4, 2, 2, 1, 1, 2]  # refused: halves, then the refused one alone
    (b_batch,) = [batch for stream, batch in remote.batches if stream == "b"]
    assert b_batch[0].d == json.dumps({"x": "é"}, separators=(",", ":"), ensure_ascii=False)


def test_dead_letters_go_again_as_a_batch_under_minus_their_letter_id(cache_path: str) -> None:
    remote = RecordingRemote(refused=-1)
    with Logger(cache_path, remote=remote) as logger:
        logger.add_stream("a", {"type": "number"})
        logger.insert("a", -1.0, timestamp=T0)
        logger.sync()
        (letter,) = logger.deadletters()
        remote.refusing, remote.batches = False, []
        assert logger.retry_deadletters() == 1
    ((stream, batch),) = remote.batches
    assert isinstance(batch, Batch) and (stream, batch.stream) == ("a", "a")
    assert list(batch) == [Datapoint(-letter.id, T0, "-1.0")]
    assert batch.stream_id == 0  # not of the cache's datapoints: acknowledging deletes none
