"""Logger: the one class users need. A drop-in successor of ``connectordb.logger.Logger``.

It wires the parts together and holds no SQL and no HTTP: values are checked by the stream
registry (:mod:`~connectorsync.streams`), stamped by :mod:`~connectorsync.devicetime`, stored
by :mod:`~connectorsync.cache` (and :mod:`~connectorsync.archive`) and delivered by
:mod:`~connectorsync.syncer` through a :mod:`remote <connectorsync.remotes.base>`. Each
method is a short delegation; the Logger owns the lifecycle and the sync-failure policy
(``onsync``, ``onsyncfail``, ``syncraise``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .archive import Archive
from .cache import Cache, Limits, StreamStats
from .delivery import SyncReport
from .devicetime import DeviceTime
from .errors import ClosedError, ConfigurationError, ConnectorSyncError, UnknownStreamError
from .options import CONNECTORDB_SETTINGS, OPTIONS, Options, Settings, check_options
from .remotes.base import DeliveryKind, Remote
from .remotes.connectordb import ConnectorDBRemote
from .streams import StreamDef, StreamRegistry, Subscriber, Subscribers
from .syncer import PassHooks, Syncer
from .writer import Writer

log = logging.getLogger("connectorsync")

#: Where a new cache points until ``serverurl`` is set (ConnectorDB's default too).
DEFAULT_SERVERURL = CONNECTORDB_SETTINGS["serverurl"][0]


def _setting(name: str, doc: str) -> Any:
    """A read/write attribute for setting ``name`` (see :class:`~connectorsync.options.Settings`):
    stored in the cache file when set."""
    return property(
        lambda self: self._settings.get(name),
        lambda self, value: self._set(name, value),
        doc=doc,
    )


def _option(name: str) -> Any:
    """A read/write attribute for option ``name``, stored in the cache file when set."""
    default, _, meaning = OPTIONS[name]
    return _setting(
        name, f"{meaning[0].upper()}{meaning[1:]} (default {default!r}); stored in the cache file."
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
    :ivar dropped: datapoints dropped to make room (``on_full="drop_oldest"``), ever
    :ivar expired: datapoints expired by ``max_age``, ever
    :ivar clock_offset: what the system clock was off by at the last NTP answer of this boot
        (seconds), or None before one
    :ivar clock_measured: when that answer came (seconds since the epoch), or None
    :ivar untrusted: cached datapoints of this boot stamped before NTP answered
    :ivar syncer: who syncs this cache when it is another process (``"pid N on host"``), or
        None; ``last_error``, ``next_attempt`` and ``paused`` are then that process's
    :ivar remote: where this cache's datapoints go, as recorded in the cache by the last
        Logger given a remote or the last sync pass (the remote's repr, which shows no
        credentials), or None before either
    """

    streams: dict[str, StreamStats]
    last_sync: float | None
    last_error: str | None
    next_attempt: float | None
    paused: bool
    dropped: int = 0
    expired: int = 0
    clock_offset: float | None = None
    clock_measured: float | None = None
    untrusted: int = 0
    syncer: str | None = None
    remote: str | None = None

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
    :param options: any of the options in :mod:`connectorsync.options`, e.g.
        ``durability="normal"``, ``max_cached=100_000``, ``ntp_server="pool.ntp.org"``
    :raises ConfigurationError: an unknown or bad option, or a file that is not a cache
    :raises CacheError: the file cannot be opened
    """

    def __init__(  # noqa: PLR0913 - ConnectorDB's signature, kept for the drop-in
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
        check_options(options)
        _check_remote(remote)
        self.path = str(path)
        self.onsync, self.onsyncfail, self.syncraise = onsync, onsyncfail, syncraise
        self._state = _State.OPEN
        self._lock = threading.RLock()
        self._remote_given = remote
        self._remote_built: ConnectorDBRemote | None = None
        self._creating = self._start_when_created = False
        self._verdict = threading.local()  # .reraise: what the last pass in this thread says
        self._subscribers = Subscribers()
        self._cache, created = Cache.open(self.path, options.get("durability", "full"))
        try:
            self._setup(created, on_create, apikey, options)
        except BaseException:
            if hasattr(self, "_syncer"):
                self._syncer.close()
            if created:
                self._cache.abort_create()
            else:
                self._cache.close()
            self._state = _State.CLOSED
            raise
        if self._start_when_created:
            self._syncer.start()

    def _setup(
        self,
        created: bool,
        on_create: Callable[[Logger], Any] | None,
        apikey: str | None,
        options: dict[str, Any],
    ) -> None:
        """The constructor's work on the open cache; on any error the caller undoes it."""
        self._settings = Settings(self._cache, self._changed)
        self._settings.load(created)
        self._options = self._settings.options
        self._streams = StreamRegistry(self._cache)
        self._streams.load()
        self._time = DeviceTime(self._cache, self._options)
        self._writer = Writer(self._cache, self._streams, self._time, self._subscribers)
        hooks = PassHooks(before=self._time.before_pass, hold=self._time.hold)
        self._syncer = Syncer(self.path, self._options, self._remote(), hooks, self._after_pass)
        self._settings.set_from_constructor(options, self.path)
        self._apply_options()
        if apikey is not None:
            self.apikey = apikey
        if created and on_create is not None:
            self._creating = True
            try:
                if on_create(self) is False:
                    raise ConfigurationError("on_create returned False: the logger is not usable")
            finally:
                self._creating = False
        if self._remote_given is not None and self._cache.get_setting("remote") is None:
            self._cache.set_setting("remote", repr(self._remote_given))  # until a pass does
        if created:
            self._cache.finish_create(self._options.durability)
        else:
            self._cache.set_durability(self._options.durability)

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start syncing in a background thread: at once, then every ``syncperiod`` seconds,
        and as soon as ``sync_threshold`` datapoints wait. Returns at once (it never waits
        for the network). Failed passes are retried with backoff; see :meth:`status`. In
        ``on_create``, syncing starts once the file is created."""
        self._check_open()
        if self._creating:
            self._start_when_created = True  # the file is not there for others until then
            return
        self._syncer.start()

    def stop(self) -> None:
        """Stop the background syncer. Returns at once, even in the middle of a backoff
        (a request under way ends by itself within ``http_timeout``). Safe to call twice."""
        self._syncer.stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop syncing and close the cache file. Safe to call twice, and from a callback.

        Returns within ``timeout`` seconds, whatever the remote does. If the background
        syncer was running, one last pass delivers what it can in what is left of
        ``timeout``; a request still under way then is left to end by itself (within
        ``http_timeout``) and what it carried is resolved by the next pass. Everything
        inserted is already on disk: closing loses nothing.
        """
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        deadline = time.monotonic() + timeout
        was_running = self._syncer.running
        stopped = self._syncer.stop(timeout)
        if was_running and stopped and not self._syncer.in_callback:
            self._syncer.drain(max(0.0, deadline - time.monotonic()))
        self._syncer.close()
        if self._remote_built is not None:
            self._remote_built.close()
        if self._writer.archive is not None:
            self._writer.archive.close()
        self._cache.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError(f"Logger({self.path!r}) is closed")

    def __repr__(self) -> str:
        state = "closed" if self._state is _State.CLOSED else f"{len(self._streams)} streams"
        return f"<Logger {self.path!r} {state}>"

    # ----------------------------------------------------------------------- settings

    apikey = _setting("apikey", "The apikey the default remote uses; stored in the cache file.")
    serverurl = _setting("serverurl", "The ConnectorDB server the default remote talks to.")
    syncperiod = _setting("syncperiod", "Seconds between background sync attempts (600).")
    lastsynctime = _setting("lastsynctime", "When the last complete sync ended (0: never).")
    data = _setting("data", "Your own settings, anything JSON, kept in the cache file.")
    durability = _option("durability")
    batch_size = _option("batch_size")
    max_batch_bytes = _option("max_batch_bytes")
    sync_threshold = _option("sync_threshold")
    http_timeout = _option("http_timeout")
    max_cached = _option("max_cached")
    max_cache_bytes = _option("max_cache_bytes")
    min_free_disk = _option("min_free_disk")
    on_full = _option("on_full")
    max_age = _option("max_age")
    ntp_server = _option("ntp_server")
    hold_unsynced = _option("hold_unsynced")
    max_hold = _option("max_hold")
    archive_dir = _option("archive_dir")
    archive_format = _option("archive_format")

    def _set(self, name: str, value: Any) -> None:
        self._check_open()
        self._settings.set(name, value)

    def _changed(self, name: str) -> None:
        """Setting ``name`` changed: rebuild what depends on it."""
        if name in ("apikey", "serverurl", "http_timeout"):
            self._drop_remote()
        if name == "apikey":
            self._syncer.resume()
        elif name == "syncperiod":
            self._syncer.wake()  # start the new period now
        elif name == "durability":
            self._cache.set_durability(self._options.durability)
        if name in OPTIONS:
            self._apply_options()

    def _apply_options(self) -> None:
        """Build what the options describe: limits, archive, clock mode."""
        o = self._options
        limits = Limits(
            o.max_cached, o.max_cache_bytes, o.min_free_disk, drop_oldest=o.on_full == "drop_oldest"
        )
        self._writer.limits = limits if limits.active or limits.drop_oldest else None
        self._writer.archive = _archive_for(self._writer.archive, o)
        self._time.options_changed()

    # ----------------------------------------------------------------------- remote

    def _remote(self) -> Remote:
        if self._remote_given is not None:
            return self._remote_given
        with self._lock:
            if self._remote_built is None:
                self._remote_built = ConnectorDBRemote(
                    self._settings.get("serverurl"),
                    self._settings.get("apikey"),
                    timeout=self._options.http_timeout,
                )
            return self._remote_built

    @property
    def remote(self) -> Remote:
        """The remote this Logger syncs to: the one it was given, else a
        :class:`~connectorsync.ConnectorDBRemote` on ``serverurl`` with ``apikey``."""
        return self._remote()

    def _drop_remote(self) -> None:
        """The default remote's settings changed: build it anew, for the syncer too."""
        with self._lock:
            if self._remote_built is not None:
                self._remote_built.close()
                self._remote_built = None
        self._syncer.set_remote(self._remote())

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
        return self._streams.schemas()

    def __contains__(self, stream: object) -> bool:
        """``"temperature" in logger``: is the stream registered?"""
        return stream in self._streams

    def add_stream(
        self, name: str, schema: dict[str, Any] | None = None, *, out_of_order: str = "reject"
    ) -> None:
        """Register a stream.

        With a schema this works offline: the stream is created on the remote at the first
        sync. Without one, the remote is asked for the stream's schema.

        :param out_of_order: what an explicit timestamp older than the stream's newest does:
            ``"reject"`` raises :class:`TimestampError`; ``"restamp"`` stores the datapoint
            just after the newest (1 µs later)
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
        self._streams.register(name, schema, out_of_order)

    addStream = add_stream

    def addStream_force(
        self, name: str, schema: dict[str, Any] | None = None, *, out_of_order: str = "reject"
    ) -> None:
        """Register a stream without asking the remote (ConnectorDB name); no schema means any
        JSON value. The stream is created on the remote at the first sync if missing."""
        self._check_open()
        self._streams.register(name, schema, out_of_order)

    # ----------------------------------------------------------------------- inserting

    def insert(self, stream: str, value: Any, timestamp: float | None = None) -> None:
        """Store one datapoint; returns once it is committed to disk (and archived, with
        ``archive_dir``).

        :param timestamp: seconds since the epoch (or an aware datetime); default now. Per
            stream, timestamps strictly increase: a tie moves 1 µs later, and with no
            explicit timestamp a clock that went backwards moves the point to just after the
            newest.
        :raises UnknownStreamError: the stream is not registered
        :raises ValidationError: the value is not JSON or does not match the schema
        :raises TimestampError: the timestamp is not finite, or older than the stream's newest
            (unless the stream was added with ``out_of_order="restamp"``)
        :raises CacheFullError: a storage limit or the disk is full; nothing was stored
        """
        self._check_open()
        self._writer.insert(stream, value, timestamp)
        if self._options.max_age is not None:
            self._time.expire_now_and_then()
        self._syncer.inserted(1)

    def insert_many(self, stream: str | dict[str, Any], values: Iterable[Any] | None = None) -> int:
        """Store many datapoints in one transaction: all of them, or none.

        Each item is a value, or a datapoint ``{"t": timestamp, "d": value}`` (a dict with
        exactly the keys ``t`` and ``d``). ConnectorDB's form
        ``insert_many({"stream": [{"t": ..., "d": ...}, ...], ...})`` works too.
        Returns how many were stored.

        :raises UnknownStreamError, ValidationError, TimestampError, CacheFullError: as
            :meth:`insert`; nothing is stored
        :raises TypeError: ``values`` is not iterable, or is a str, bytes or dict
        """
        self._check_open()
        count = self._writer.insert_many(stream, values)
        self._syncer.inserted(count)
        return count

    def cleardata(self) -> int:
        """Delete every cached datapoint without syncing it (ConnectorDB name). Returns how
        many.

        Dead letters stay: one queued again by :meth:`retry_deadletters` is a dead letter
        again. A batch being sent is left alone: it is delivered, or stays cached
        (``test_inflight.py``).
        """
        self._check_open()
        cleared = self._cache.clear()
        log.warning("cleardata(): deleted %d cached datapoints without syncing them", cleared)
        return cleared

    def export(self, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """The cached datapoints (of one stream, or all, stream by stream), oldest first, as
        ``{"stream", "t", "d"}``; read in pages, so a large cache needs little memory."""
        self._check_open()
        for name in [stream] if stream is not None else self._streams.names():
            stream_id = self._streams.get(name).id
            after = 0
            while rows := self._cache.batch(stream_id, after, 1000):
                for _, t, data in rows:
                    yield {"stream": name, "t": t, "d": json.loads(data)}
                after = rows[-1][0]

    def __len__(self) -> int:
        """How many datapoints are cached, waiting to be synced."""
        self._check_open()
        return self._cache.count()

    # ----------------------------------------------------------------------- latest values

    def latest(self, stream: str) -> dict[str, Any] | None:
        """The newest datapoint inserted in ``stream``, ``{"t": ..., "d": ...}``, or None.

        From the cache, or once it was synced (or dropped) from what the cache remembers:
        it survives a sync and a restart.
        """
        self._check_open()
        found = self._cache.latest(self._streams.get(stream).id)
        return None if found is None else {"t": found[0], "d": json.loads(found[1])}

    def subscribe(self, stream: str, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback({"t": ..., "d": ...})`` after each committed insert into ``stream``
        by this Logger, outside every lock. An exception from the callback is logged, never
        raised into the inserting code. Returns a function that unsubscribes."""
        self._check_open()
        self._streams.get(stream)
        return self._subscribers.add(stream, callback)

    # ----------------------------------------------------------------------- time

    def sync_clock(
        self, server: str | None = None, port: int | None = None, timeout: float = 5.0
    ) -> float:
        """Ask an NTP server for the true time (default ``ntp_server``; ``"host"`` or
        ``"host:port"``). From now on, during this boot, timestamps are that time plus the
        boot clock elapsed, whatever the wall clock does. Returns what the system clock was
        off by, in seconds; the log says how many datapoints were re-timed.

        With ``ntp_server`` set, datapoints of this boot stamped before NTP answered are
        re-timed exactly now (those of a batch being sent once its outcome is known).
        Without it the system clock was trusted: datapoints already stamped keep their times,
        and only later timestamps use this answer.

        :raises TransientRemoteError: the server did not answer within ``timeout``
        :raises ConfigurationError: no server
        """
        self._check_open()
        synced = self._time.sync_clock(server, port, timeout)
        if synced.retimed:
            self._syncer.wake()  # held datapoints may go now
        return synced.offset

    # ----------------------------------------------------------------------- syncing

    def sync(self, progress: Callable[[str, int], object] | None = None) -> SyncReport:
        """One sync pass: deliver what is cached now, delete it once acknowledged.

        Creates missing streams on the remote with their registered schema. A failure in
        one stream does not stop the others; a datapoint the remote refuses becomes a dead
        letter. After a complete pass ``lastsynctime`` is set and ``onsync()`` called; after
        a failed one ``onsyncfail(error)`` is called, and the error raised if it returns true
        (or, without ``onsyncfail``, if ``syncraise``). No retries here: the background
        syncer (:meth:`start`) retries with backoff.

        :param progress: called with ``(stream, count)`` after each delivered batch
        :returns: a :class:`SyncReport` (``sent``, ``deadlettered``, ``errors``)
        :raises ConnectorSyncError: called from ``on_create``, ``onsync`` or ``onsyncfail``
        """
        self._check_open()
        if self._creating:
            raise ConnectorSyncError(
                "sync() cannot run inside on_create: the cache file is being created; "
                "call sync() once Logger(...) has returned"
            )
        self._verdict.reraise = False
        report = self._syncer.sync(progress=progress)
        if self._verdict.reraise and report.exception is not None:
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
        error = report.exception or ConnectorSyncError(report.message or "sync failed")
        self._verdict.reraise = bool(self.syncraise)
        if self.onsyncfail is not None:
            self._verdict.reraise = bool(self.onsyncfail(error))

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
        chosen = None if ids is None else list(ids)
        queued = self._cache.retry_deadletters(chosen, self._streams.ids())
        self._syncer.inserted(queued)
        return queued

    def purge_deadletters(self, ids: Iterable[int] | None = None) -> int:
        """Delete dead letters (all, or those with these ids) for good. Returns how many."""
        self._check_open()
        purged = self._cache.purge_deadletters(None if ids is None else list(ids))
        log.warning("purged %d dead letters", purged)
        return purged

    # ----------------------------------------------------------------------- status

    def status(self) -> Status:
        """What is cached per stream, and how syncing and the clock go."""
        self._check_open()
        sync = self._syncer.sync_state()
        counters = self._cache.statistics()
        anchor = self._time.clock.anchor
        return Status(
            streams=self._cache.stream_stats(),
            last_sync=self._cache.get_setting("lastsynctime", 0) or None,
            last_error=sync.last_error,
            next_attempt=sync.next_attempt,
            paused=sync.paused,
            dropped=counters["dropped"],
            expired=counters["expired"],
            clock_offset=None if anchor is None else anchor.offset,
            clock_measured=None if anchor is None else anchor.true_time,
            untrusted=self._time.untrusted_count(),
            syncer=sync.elsewhere,
            remote=self._cache.get_setting("remote"),
        )


def _check_remote(remote: Remote | None) -> None:
    if remote is not None and not isinstance(getattr(remote, "delivery_kind", None), DeliveryKind):
        raise ConfigurationError(
            f"remote {remote!r} declares no delivery_kind (a connectorsync.DeliveryKind): "
            "say how it stores a batch (see docs/remotes.rst)"
        )


def _archive_for(archive: Archive | None, options: Options) -> Archive | None:
    """The archive the options describe: ``archive`` as it is, or a new one (the old one
    closed), or None."""
    wanted = (options.archive_dir, options.archive_format)
    if archive is not None and (archive.directory, archive.fmt) == wanted:
        archive.fsync = options.durability == "full"
        return archive
    if archive is not None:
        archive.close()
    if options.archive_dir is None:
        return None
    return Archive(options.archive_dir, options.archive_format, fsync=options.durability == "full")
