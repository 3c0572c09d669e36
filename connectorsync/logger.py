"""Logger: the one class users need. A drop-in successor of ``connectordb.logger.Logger``.

It wires the parts together and holds no SQL and no HTTP: values are checked by
:mod:`~connectorsync.streams`, stored by :mod:`~connectorsync.cache` and delivered by
:mod:`~connectorsync.syncer` through a :mod:`remote <connectorsync.remotes.base>`.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .cache import Cache, StreamStats, TooOldError
from .errors import (
    ClosedError,
    ConfigurationError,
    ConnectorSyncError,
    StreamError,
    TimestampError,
    UnknownStreamError,
)
from .remotes.base import Remote
from .remotes.connectordb import ConnectorDBRemote
from .streams import StreamDef
from .syncer import Syncer, SyncReport

log = logging.getLogger("connectorsync")

#: Where a new cache points until ``serverurl`` is set (ConnectorDB's default too).
DEFAULT_SERVERURL = "http://localhost:3124"
DEFAULT_SYNCPERIOD = 600.0
# Later than 5138-11-16 in seconds: surely milliseconds or microseconds given by mistake.
MAX_PLAUSIBLE_TIMESTAMP = 1e11


def _positive_int(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1; got {value!r}")
    return value


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a number > 0; got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite; got {value!r}")
    return float(value)


def _optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else _positive_int(name, value)


def _durability(name: str, value: Any) -> str:
    if value not in ("full", "normal"):
        raise ConfigurationError(f"{name} must be 'full' or 'normal'; got {value!r}")
    return str(value)


# Every option: its default and its check. Each is a keyword argument of Logger and an
# attribute of the same name; setting one (either way) stores it in the cache file.
OPTIONS: dict[str, tuple[Any, Callable[[str, Any], Any]]] = {
    "durability": ("full", _durability),
    "batch_size": (5000, _positive_int),
    "sync_threshold": (None, _optional_positive_int),
    "http_timeout": (30.0, _positive_number),
}


def _option(name: str, meaning: str) -> Any:
    """A read/write attribute for option ``name``, stored in the cache file when set."""
    return property(
        lambda self: self._options[name],
        lambda self, value: self._set_option(name, value),
        doc=f"{meaning} (default {OPTIONS[name][0]!r}); stored in the cache file.",
    )


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


@dataclass(frozen=True)
class Status:
    """A snapshot of the Logger's state (``Logger.status()``).

    :ivar streams: per stream: ``cached``, ``oldest`` and ``newest`` cached timestamp,
        ``deadletters``
    :ivar last_sync: when the last complete sync finished (``lastsynctime``), or None
    :ivar last_error: the message of the last failed sync, or None after a good one
    :ivar next_attempt: when the background syncer tries next, or None when it is not running
    :ivar paused: True while syncing is paused (refused credentials: ``last_error`` says so);
        it resumes when ``apikey`` changes, or at the next period
    """

    streams: dict[str, StreamStats]
    last_sync: float | None
    last_error: str | None
    next_attempt: float | None
    paused: bool

    @property
    def cached(self) -> int:
        """Datapoints cached, all streams together."""
        return sum(s.cached for s in self.streams.values())


class _State(enum.Enum):
    OPEN = 1
    CLOSED = 2


class Logger:
    """An offline-first logger: every datapoint is on disk before ``insert`` returns, and the
    syncer delivers it to the remote later, deleting it only once the remote acknowledged it.

    :param path: the cache file (created if missing)
    :param on_create: ``f(logger)``, run once when the cache file is created, inside the
        creating transaction: if it raises (or returns False) no file is left behind
    :param apikey: sets ``apikey`` (stored in the cache)
    :param onsync: ``f()`` called after each complete sync
    :param onsyncfail: ``f(exception)`` called after a failed sync; its return value says
        whether ``sync()`` raises the exception
    :param syncraise: whether a failed ``sync()`` raises, when there is no ``onsyncfail``
    :param remote: where to sync; default a :class:`ConnectorDBRemote` on ``serverurl`` with
        ``apikey``
    :param options: any of :data:`OPTIONS` (``durability``, ``batch_size``,
        ``sync_threshold``, ``http_timeout``)
    :raises ConfigurationError: an unknown or bad option, or a file that is not a cache
    :raises CacheError: the file cannot be opened
    """

    def __init__(
        self,
        path: str,
        on_create: Callable[[Logger], Any] | None = None,
        apikey: str | None = None,
        onsync: Callable[[], Any] | None = None,
        onsyncfail: Callable[[Exception], Any] | None = None,
        syncraise: bool = False,
        *,
        remote: Remote | None = None,
        **options: Any,
    ):
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))}; "
                f"options are {', '.join(sorted(OPTIONS))}"
            )
        for name, value in options.items():
            OPTIONS[name][1](name, value)
        self.path = str(path)
        self.onsync = onsync
        self.onsyncfail = onsyncfail
        self.syncraise = syncraise
        self._state = _State.OPEN
        self._lock = threading.RLock()
        self._remote_given = remote
        self._remote_built: ConnectorDBRemote | None = None
        self._defs: dict[str, tuple[StreamDef, int]] = {}
        self._options: dict[str, Any] = {name: default for name, (default, _) in OPTIONS.items()}

        durability = options.get("durability", "full")
        self._cache, created = Cache.open(self.path, durability)
        try:
            if created:
                self._cache.set_setting("apikey", "")
                self._cache.set_setting("serverurl", DEFAULT_SERVERURL)
                self._cache.set_setting("syncperiod", DEFAULT_SYNCPERIOD)
                self._cache.set_setting("lastsynctime", 0)
                self._cache.set_setting("data", {})
            self._load_settings()
            for name, value in options.items():
                setattr(self, name, value)
            if apikey is not None:
                self.apikey = apikey
            if created and on_create is not None and on_create(self) is False:
                raise ConfigurationError("on_create returned False: the logger is not usable")
            if created:
                self._cache.finish_create(self._options["durability"])
            else:
                self._cache.set_durability(self._options["durability"])
        except BaseException:
            if created:
                self._cache.abort_create()
            else:
                self._cache.close()
            self._state = _State.CLOSED
            raise
        self._syncer = Syncer(
            self.path, remote=self._remote, option=self._setting, after_pass=self._after_pass
        )

    def _setting(self, name: str) -> Any:
        """An option or setting by name, for the syncer (which reads them when it needs them)."""
        if name == "syncperiod":
            return self._syncperiod
        if name == "apikey":
            return self._apikey
        return self._options[name]

    def _load_settings(self) -> None:
        settings = self._cache.settings()
        self._apikey = settings.get("apikey", "")
        self._serverurl = settings.get("serverurl", DEFAULT_SERVERURL)
        self._syncperiod = settings.get("syncperiod", DEFAULT_SYNCPERIOD)
        self._lastsync = settings.get("lastsynctime", 0)
        for name in OPTIONS:
            if "option." + name in settings:
                self._options[name] = settings["option." + name]
        self._load_streams()

    def _load_streams(self) -> None:
        defs = {}
        for row in self._cache.streams().values():
            current = self._defs.get(row.name)
            if current is not None and current[0].schema_text == row.schema:
                defs[row.name] = current
            else:
                defs[row.name] = (StreamDef(row.name, json.loads(row.schema)), row.id)
        self._defs = defs

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start syncing in a background thread: at once, then every ``syncperiod`` seconds,
        and as soon as ``sync_threshold`` datapoints wait. Returns at once (it never waits
        for the network). Failed passes are retried with backoff; see :meth:`status`."""
        self._check_open()
        self._syncer.start()

    def stop(self) -> None:
        """Stop the background syncer. Returns at once, even in the middle of a backoff
        (a request under way ends within ``http_timeout``). Safe to call twice."""
        self._syncer.stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop syncing and close the cache file. Safe to call twice.

        If the background syncer was running, one last pass delivers what it can, starting no
        new batch after ``timeout`` seconds. Everything inserted is already on disk: closing
        loses nothing.
        """
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        was_running = self._syncer.running
        self._syncer.stop()
        if was_running:
            try:
                self._syncer.deadline_drain(timeout)
            except ConnectorSyncError as exc:
                log.warning("last sync before closing failed (nothing lost): %s", exc)
        self._syncer.close()
        if self._remote_built is not None:
            self._remote_built.close()
        self._cache.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError(f"Logger({self.path!r}) is closed")

    def __repr__(self) -> str:
        state = "closed" if self._state is _State.CLOSED else f"{len(self._defs)} streams"
        return f"<Logger {self.path!r} {state}>"

    # ----------------------------------------------------------------------- settings

    @property
    def apikey(self) -> str:
        """The apikey the default remote uses; stored in the cache file (owner-only)."""
        return self._apikey

    @apikey.setter
    def apikey(self, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationError("apikey must be a string")
        self._check_open()
        self._cache.set_setting("apikey", value)
        self._apikey = value
        self._drop_remote()
        if hasattr(self, "_syncer"):
            self._syncer.resume()

    @property
    def serverurl(self) -> str:
        """The ConnectorDB server the default remote talks to; stored in the cache file."""
        return self._serverurl

    @serverurl.setter
    def serverurl(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"serverurl must be a non-empty string; got {value!r}")
        self._check_open()
        self._cache.set_setting("serverurl", value)
        self._serverurl = value
        self._drop_remote()

    @property
    def syncperiod(self) -> float:
        """Seconds between background sync attempts (default 600); stored in the cache file."""
        return self._syncperiod

    @syncperiod.setter
    def syncperiod(self, value: float) -> None:
        value = _positive_number("syncperiod", value)
        self._check_open()
        self._cache.set_setting("syncperiod", value)
        self._syncperiod = value
        if hasattr(self, "_syncer"):
            self._syncer.wake()  # start the new period now

    @property
    def lastsynctime(self) -> float:
        """When the last complete sync finished (0: never); stored in the cache file."""
        return self._lastsync

    @lastsynctime.setter
    def lastsynctime(self, value: float) -> None:
        self._check_open()
        self._cache.set_setting("lastsynctime", value)
        self._lastsync = value

    @property
    def data(self) -> Any:
        """Your own settings, anything JSON, stored in the cache file.

        For example ``l.data = {"location": "greenhouse"}``; read it back as ``l.data``.
        """
        self._check_open()
        return self._cache.get_setting("data", {})

    @data.setter
    def data(self, value: Any) -> None:
        self._check_open()
        try:
            self._cache.set_setting("data", value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"data must be JSON (dicts, lists, numbers...): {exc}"
            ) from exc

    durability = _option("durability", "``'full'`` survives a power cut, ``'normal'`` a crash")
    batch_size = _option("batch_size", "datapoints per request to the remote")
    sync_threshold = _option(
        "sync_threshold", "sync as soon as this many datapoints wait (None: only by period)"
    )
    http_timeout = _option("http_timeout", "seconds to connect, and to wait for each answer")

    def _set_option(self, name: str, value: Any) -> None:
        value = OPTIONS[name][1](name, value)
        self._check_open()
        self._cache.set_setting("option." + name, value)
        self._options[name] = value
        if name == "durability":
            self._cache.set_durability(value)
        if name == "http_timeout":
            self._drop_remote()

    # ----------------------------------------------------------------------- remote

    def _remote(self) -> Remote:
        if self._remote_given is not None:
            return self._remote_given
        with self._lock:
            if self._remote_built is None:
                self._remote_built = ConnectorDBRemote(
                    self._serverurl, self._apikey, timeout=self._options["http_timeout"]
                )
            return self._remote_built

    def _drop_remote(self) -> None:
        with self._lock:
            if self._remote_built is not None:
                self._remote_built.close()
                self._remote_built = None

    def ping(self) -> str:
        """Check the remote is reachable and the apikey accepted. Returns ``user/device``.

        :raises RemoteError: (a subclass of it) when not
        """
        self._check_open()
        return self._remote().ping()

    @property
    def name(self) -> str:
        """The remote's name for this device (``user/device``); asks the remote."""
        return self.ping()

    # ----------------------------------------------------------------------- streams

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """The registered streams: name -> JSON schema (a copy)."""
        return {name: dict(d.schema) for name, (d, _) in self._defs.items()}

    def __contains__(self, stream: object) -> bool:
        """``"temperature" in logger``: is the stream registered?"""
        return stream in self._defs

    def add_stream(self, name: str, schema: dict[str, Any] | None = None) -> None:
        """Register a stream.

        With a schema this works offline: the stream is created on the remote at the first
        sync. Without one, the remote is asked for the stream's schema.

        :raises StreamError: bad name; :raises SchemaError: bad schema
        :raises UnknownStreamError: no schema given and the remote has no such stream
        :raises RemoteError: no schema given and the remote could not be asked
        """
        self._check_open()
        if schema is None:
            StreamDef(name)  # check the name before asking the remote
            schema = self._remote().stream_schema(name)
            if schema is None:
                raise UnknownStreamError(
                    f"stream {name!r} was not found on the remote; "
                    "give a schema to create it: add_stream(name, schema)"
                )
        self._register(name, schema)

    addStream = add_stream

    def addStream_force(self, name: str, schema: dict[str, Any] | None = None) -> None:
        """Register a stream without asking the remote (ConnectorDB name); no schema means any
        JSON value. The stream is created on the remote at the first sync if missing."""
        self._check_open()
        self._register(name, schema)

    def _register(self, name: str, schema: dict[str, Any] | None) -> None:
        definition = StreamDef(name, schema)
        row = self._cache.put_stream(name, definition.schema_text)
        self._defs[name] = (definition, row.id)

    def _stream(self, name: str) -> tuple[StreamDef, int]:
        found = self._defs.get(name)
        if found is None:
            self._check_open()
            self._load_streams()  # another process may have added it
            found = self._defs.get(name)
            if found is None:
                known = ", ".join(sorted(self._defs)) or "none"
                raise UnknownStreamError(
                    f"stream {name!r} is not registered (registered: {known}); "
                    "add it first with add_stream(name, schema)"
                )
        return found

    # ----------------------------------------------------------------------- inserting

    def insert(self, stream: str, value: Any, timestamp: float | None = None) -> None:
        """Store one datapoint; returns once it is committed to disk.

        :param timestamp: seconds since the epoch; default now. Per stream, timestamps
            strictly increase: a tie moves 1 µs later, and with no explicit timestamp a clock
            that went backwards moves the point to just after the newest.
        :raises UnknownStreamError: the stream is not registered
        :raises ValidationError: the value is not JSON or does not match the schema
        :raises TimestampError: the timestamp is not finite, or older than the stream's newest
        :raises CacheFullError: the disk is full; nothing was stored
        """
        definition, stream_id = self._stream(stream)
        data = definition.encode(value)
        if timestamp is None:
            t, restamp = time.time(), True
        else:
            t, restamp = _check_timestamp(stream, timestamp), False
        try:
            self._cache.append(stream_id, t, data, restamp=restamp)
        except TooOldError as exc:
            raise _too_old(stream, t, exc.newest) from None
        self._syncer.inserted(1)

    def insert_many(self, stream: str | dict[str, Any], values: Iterable[Any] | None = None) -> int:
        """Store many datapoints of a stream in one transaction: all of them, or none.

        Each item is a value, or a datapoint ``{"t": timestamp, "d": value}`` (a dict with
        exactly the keys ``t`` and ``d``). ConnectorDB's form
        ``insert_many({"stream": [{"t": ..., "d": ...}, ...], ...})`` works too.
        Returns how many were stored.

        :raises UnknownStreamError, ValidationError, TimestampError: as :meth:`insert`;
            nothing is stored
        """
        if values is None:
            if not isinstance(stream, dict):
                raise TypeError("insert_many(stream, values) or insert_many({stream: datapoints})")
            by_stream = stream
        else:
            if not isinstance(stream, str):
                raise StreamError(f"stream name must be a string; got {stream!r}")
            by_stream = {stream: values}
        now = time.time()
        points = []
        for name, items in by_stream.items():
            definition, stream_id = self._stream(name)
            for item in items:
                if type(item) is dict and item.keys() == {"t", "d"}:
                    t = _check_timestamp(name, item["t"])
                    points.append((stream_id, t, False, definition.encode(item["d"])))
                else:
                    points.append((stream_id, now, True, definition.encode(item)))
        if not points:
            return 0
        try:
            self._cache.append_many(points)
        except TooOldError as exc:
            raise TimestampError(
                f"insert_many: a timestamp is older than its stream's newest ({exc.newest}); "
                "nothing was stored"
            ) from None
        self._syncer.inserted(len(points))
        return len(points)

    def cleardata(self) -> int:
        """Delete every cached datapoint without syncing it (ConnectorDB name). Returns how
        many. Dead letters stay."""
        self._check_open()
        cleared = self._cache.clear()
        log.warning("cleardata(): deleted %d cached datapoints without syncing them", cleared)
        return cleared

    def __len__(self) -> int:
        """How many datapoints are cached, waiting to be synced."""
        self._check_open()
        return self._cache.count()

    # ----------------------------------------------------------------------- syncing

    def sync(self) -> SyncReport:
        """One sync pass: deliver every cached datapoint, delete it once acknowledged.

        Creates missing streams on the remote with their registered schema. A failure in
        one stream does not stop the others; a datapoint the remote refuses becomes a dead
        letter. After a complete pass ``lastsynctime`` is set and ``onsync()`` called; after
        a failed one ``onsyncfail(error)`` is called, and the error raised if it returns true
        (or, without ``onsyncfail``, if ``syncraise``). No retries here: the background
        syncer (:meth:`start`) retries with backoff.

        :returns: a :class:`SyncReport` (``sent``, ``deadlettered``, ``errors``)
        """
        self._check_open()
        report = self._syncer.sync()
        if report._reraise and report.exception is not None:
            raise report.exception
        return report

    def _after_pass(self, report: SyncReport) -> None:
        """After every pass, manual or background: ConnectorDB's callbacks and lastsynctime."""
        if report.ok:
            with contextlib.suppress(ClosedError):
                self.lastsynctime = time.time()
            if self.onsync is not None:
                self.onsync()
            return
        error = report.exception or ConnectorSyncError("; ".join(report.errors.values()))
        report._reraise = bool(self.syncraise)
        if self.onsyncfail is not None:
            report._reraise = bool(self.onsyncfail(error))

    # ----------------------------------------------------------------------- dead letters

    def deadletters(self, stream: str | None = None) -> list[DeadLetter]:
        """The datapoints the remote refused (all streams, or one), oldest first."""
        self._check_open()
        return [
            DeadLetter(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])
            for r in self._cache.deadletters(stream)
        ]

    def retry_deadletters(self, ids: Iterable[int] | None = None) -> int:
        """Queue dead letters (all, or those with these ids) to be sent again at the next
        sync, e.g. after fixing the remote's schema. A letter older than its stream's newest
        timestamp is queued at newest + 1 µs, as the stream's order requires. If refused
        again it returns to the dead letters with one more attempt. Returns how many."""
        self._check_open()
        streams = {name: stream_id for name, (_, stream_id) in self._defs.items()}
        queued = self._cache.retry_deadletters(None if ids is None else list(ids), streams)
        self._syncer.inserted(queued)
        return queued

    def purge_deadletters(self, ids: Iterable[int] | None = None) -> int:
        """Delete dead letters (all, or those with these ids) for good. Returns how many."""
        self._check_open()
        purged = self._cache.purge_deadletters(None if ids is None else list(ids))
        log.warning("purged %d dead letters", purged)
        return purged

    def status(self) -> Status:
        """What is cached per stream, and how syncing goes."""
        self._check_open()
        syncer = self._syncer
        return Status(
            streams=self._cache.stream_stats(),
            last_sync=self._lastsync or None,
            last_error=syncer.paused or syncer.last_error,
            next_attempt=syncer.next_attempt if syncer.running else None,
            paused=syncer.paused is not None,
        )


def _check_timestamp(stream: str, timestamp: Any) -> float:
    if isinstance(timestamp, datetime.datetime):
        if timestamp.tzinfo is None:
            raise TimestampError(
                f"stream {stream!r}: a datetime timestamp needs a timezone; got {timestamp!r}"
            )
        timestamp = timestamp.timestamp()
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise TimestampError(
            f"stream {stream!r} expects a timestamp in seconds since the epoch; "
            f"got {timestamp!r} ({type(timestamp).__name__})"
        )
    t = float(timestamp)
    if not math.isfinite(t):
        raise TimestampError(f"stream {stream!r}: timestamp must be finite; got {timestamp!r}")
    if abs(t) > MAX_PLAUSIBLE_TIMESTAMP:
        raise TimestampError(
            f"stream {stream!r}: timestamp {timestamp!r} is too large for seconds since the "
            "epoch (milliseconds? divide by 1000)"
        )
    return t


def _too_old(stream: str, t: float, newest: float) -> TimestampError:
    return TimestampError(
        f"stream {stream!r}: timestamp {t!r} is older than the stream's newest ({newest!r}); "
        "timestamps must increase per stream"
    )
