"""The insert path: validate, stamp, store, archive, tell the subscribers.

:class:`Writer` is what ``Logger.insert`` and ``Logger.insert_many`` delegate to. A value is
checked by its stream's definition and encoded once; the cache commits it before anything
else happens (invariant 1); only then is it archived and are subscribers told, outside every
lock. In a sealed cache the value is sealed here, before the cache sees it (:mod:`.cache.seal`;
the archive, which the user chose to keep in plain, gets the text). Bad input raises a
``connectorsync`` error and changes nothing (invariant 9, ``tests/test_validation.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .archive import Archive
from .cache import Cache, Limits, TooOldError, Untrusted
from .cache.seal import READING
from .clock import check_timestamp, too_old
from .devicetime import DeviceTime
from .errors import StreamError, TimestampError
from .streams import StreamRegistry, Subscribers, check_values

#: A point as the cache appends it: (stream id, t, restamp, data as JSON text, untrusted).
Point = tuple[int, float, bool, str | bytes, Untrusted | None]


class Writer:
    """Inserts into one cache, for one Logger.

    :ivar limits: the storage limits in force (None: none), set by the Logger
    :ivar archive: the daily archive (None: none), set by the Logger
    """

    def __init__(
        self, cache: Cache, streams: StreamRegistry, time: DeviceTime, subscribers: Subscribers
    ):
        self._cache, self._streams, self._time = cache, streams, time
        self._subscribers = subscribers
        self.limits: Limits | None = None
        self.archive: Archive | None = None

    def insert(self, stream: str, value: Any, timestamp: Any = None) -> None:
        """Store one datapoint (see ``Logger.insert``); returns once it is committed."""
        registered = self._streams.get(stream)
        data = registered.definition.encode(value)
        if timestamp is None:
            (t, untrusted), restamp = self._time.stamp(), True
        else:
            t, untrusted, restamp = check_timestamp(stream, timestamp), None, registered.restamp
        sealer = self._cache.sealer
        kept = data if sealer is None else sealer.seal(READING, stream, data)
        try:
            stored = self._cache.append(
                registered.id, t, kept, restamp=restamp, untrusted=untrusted, limits=self.limits
            )
        except TooOldError as exc:
            raise too_old(stream, t, exc.newest) from None
        if self.archive is not None:
            self.archive.write(((stream, stored, data),))
        if self._subscribers:
            self._subscribers.notify(stream, stored, value)

    def insert_many(self, stream: str | dict[str, Any], values: Iterable[Any] | None) -> int:
        """Store many datapoints in one transaction (see ``Logger.insert_many``); returns how
        many."""
        points, given = self._points(_by_stream(stream, values))
        if not points:
            return 0
        try:
            stored = self._cache.append_many(points, limits=self.limits)
        except TooOldError as exc:
            raise TimestampError(
                f"insert_many: a timestamp is older than its stream's newest ({exc.newest}); "
                "nothing was stored"
            ) from None
        if self.archive is not None:
            self.archive.write(
                (name, t, text) for (name, _, text), (_, t) in zip(given, stored, strict=True)
            )
        if self._subscribers:
            for (name, value, _), (_, t) in zip(given, stored, strict=True):
                self._subscribers.notify(name, t, value)
        return len(points)

    def _points(self, by_stream: dict[str, Any]) -> tuple[list[Point], list[tuple[str, Any, str]]]:
        """The cache's points for ``insert_many``, and (stream, value, its JSON text) of
        each, in order."""
        now, untrusted = self._time.stamp()
        sealer = self._cache.sealer
        points: list[Point] = []
        given: list[tuple[str, Any, str]] = []
        for name, items in by_stream.items():
            check_values(name, items)
            registered = self._streams.get(name)
            encode = registered.definition.encode
            for item in items:
                timed = type(item) is dict and item.keys() == {"t", "d"}
                value = item["d"] if timed else item
                t = check_timestamp(name, item["t"]) if timed else now
                text = encode(value)
                kept = text if sealer is None else sealer.seal(READING, name, text)
                if timed:
                    points.append((registered.id, t, registered.restamp, kept, None))
                else:
                    points.append((registered.id, now, True, kept, untrusted))
                given.append((name, value, text))
        return points, given


def _by_stream(stream: str | dict[str, Any], values: Iterable[Any] | None) -> dict[str, Any]:
    """``insert_many``'s two call forms as one: stream name -> values."""
    if values is None:
        if not isinstance(stream, dict):
            raise TypeError("insert_many(stream, values) or insert_many({stream: datapoints})")
        return stream
    if not isinstance(stream, str):
        raise StreamError(f"stream name must be a string; got {stream!r}")
    return {stream: values}
