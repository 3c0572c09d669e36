"""Logger: the one class users need. A drop-in successor of ``connectordb.logger.Logger``.

It wires the parts together and holds no SQL and no HTTP: values are checked by
:mod:`~connectorsync.streams`, stamped by :mod:`~connectorsync.clock`, stored by
:mod:`~connectorsync.cache` (and :mod:`~connectorsync.archive`) and delivered by
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .archive import Archive
from .cache import Cache, Limits, StreamStats, TooOldError, Untrusted
from .clock import Anchor, Clock, boot_clock
from .delivery import SyncReport
from .errors import (
    ClosedError,
    ConfigurationError,
    ConnectorSyncError,
    StreamError,
    TimestampError,
    TransientRemoteError,
    UnknownStreamError,
)
from .options import OPTIONS, Options, check_options
from .remotes.base import DeliveryKind, Remote
from .remotes.connectordb import ConnectorDBRemote
from .streams import StreamDef
from .syncer import PassHooks, Syncer

log = logging.getLogger("connectorsync")

#: Where a new cache points until ``serverurl`` is set (ConnectorDB's default too).
DEFAULT_SERVERURL = "http://localhost:3124"
DEFAULT_SYNCPERIOD = 600.0
# Later than 5138-11-16 in seconds: surely milliseconds or microseconds given by mistake.
MAX_PLAUSIBLE_TIMESTAMP = 1e11
#: With ntp_server, the syncer asks again once the last answer is this old (seconds).
NTP_REFRESH = 3600.0
#: stop() waits this long (seconds) for a pass under way; a hung request is not waited for.
STOP_WAIT = 1.0
# How often (seconds) an untrusted clock looks for an NTP answer another process got, and how
# often inserts expire datapoints older than max_age.
_CLOCK_RELOAD = 10.0
_EXPIRY_EVERY = 60.0
OUT_OF_ORDER = ("reject", "restamp")


def _option(name: str) -> Any:
    """A read/write attribute for option ``name``, stored in the cache file when set."""
    default, _, meaning = OPTIONS[name]
    return property(
        lambda self: self._options.get(name),
        lambda self, value: self._set_option(name, value),
        doc=f"{meaning[0].upper()}{meaning[1:]} (default {default!r}); stored in the cache file.",
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


class _Registered(NamedTuple):
    definition: StreamDef
    id: int
    restamp: bool  # out_of_order="restamp": explicit older timestamps move after the newest


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
        check_options(options)
        if remote is not None and not isinstance(
            getattr(remote, "delivery_kind", None), DeliveryKind
        ):
            raise ConfigurationError(
                f"remote {remote!r} declares no delivery_kind (a connectorsync.DeliveryKind): "
                "say how it stores a batch (see docs/remotes.rst)"
            )
        self.path = str(path)
        self.onsync = onsync
        self.onsyncfail = onsyncfail
        self.syncraise = syncraise
        self._state = _State.OPEN
        self._lock = threading.RLock()
        self._remote_given = remote
        self._remote_built: ConnectorDBRemote | None = None
        self._defs: dict[str, _Registered] = {}
        self._options = Options()
        self._creating = False
        self._start_when_created = False
        self._verdict = threading.local()  # .reraise: what the last pass in this thread says
        self._subscribers: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}
        self._limits: Limits | None = None
        self._archive: Archive | None = None
        self._boot: int | None = None
        self._next_expiry = 0.0
        self._next_clock_reload = 0.0

        self._cache, created = Cache.open(self.path, options.get("durability", "full"))
        try:
            if created:
                self._cache.set_setting("apikey", "")
                self._cache.set_setting("serverurl", DEFAULT_SERVERURL)
                self._cache.set_setting("syncperiod", DEFAULT_SYNCPERIOD)
                self._cache.set_setting("lastsynctime", 0)
                self._cache.set_setting("data", {})
            self._load_settings()
            self._clock = Clock(
                Anchor.from_json(self._cache.get_setting("clock.anchor")),
                ntp=self._options.ntp_server is not None,
            )
            self._syncer = Syncer(
                self.path,
                self._options,
                self._remote(),
                PassHooks(before=self._before_pass, hold=self._hold),
                on_pass=self._after_pass,
            )
            for name, value in options.items():
                setattr(self, name, value)
            self._apply_options()
            if apikey is not None:
                self.apikey = apikey
            if created and on_create is not None:
                self._creating = True
                try:
                    if on_create(self) is False:
                        raise ConfigurationError(
                            "on_create returned False: the logger is not usable"
                        )
                finally:
                    self._creating = False
            if remote is not None and self._cache.get_setting("remote") is None:
                self._record_remote(remote)  # until a sync pass records where data went
            if created:
                self._cache.finish_create(self._options.durability)
            else:
                self._cache.set_durability(self._options.durability)
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

    def _load_settings(self) -> None:
        settings = self._cache.settings()
        self._apikey = settings.get("apikey", "")
        self._serverurl = settings.get("serverurl", DEFAULT_SERVERURL)
        self._options.set("syncperiod", settings.get("syncperiod", DEFAULT_SYNCPERIOD))
        self._lastsync = settings.get("lastsynctime", 0)
        for name in OPTIONS:
            if "option." + name in settings:
                self._options.set(name, settings["option." + name])
        self._load_streams()

    def _load_streams(self) -> None:
        defs = {}
        for row in self._cache.streams().values():
            current = self._defs.get(row.name)
            restamp = row.out_of_order == "restamp"
            if current is not None and current.definition.schema_text == row.schema:
                defs[row.name] = current._replace(restamp=restamp)
            else:
                definition = StreamDef(row.name, json.loads(row.schema))
                defs[row.name] = _Registered(definition, row.id, restamp)
        self._defs = defs

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start syncing in a background thread: at once, then every ``syncperiod`` seconds,
        and as soon as ``sync_threshold`` datapoints wait. Returns at once (it never waits
        for the network). Failed passes are retried with backoff; see :meth:`status`."""
        self._check_open()
        if self._creating:
            self._start_when_created = True  # the file is not there for others until then
            return
        self._syncer.start()

    def stop(self) -> None:
        """Stop the background syncer. Safe to call twice.

        Returns at once when the syncer waits (a period, a backoff), and within a second
        whatever the remote does: a request still under way then ends by itself (within
        ``http_timeout``) and its thread with it; ``start()`` meanwhile goes on with that
        thread, never a second one."""
        self._syncer.stop(STOP_WAIT)

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
        if self._archive is not None:
            self._archive.close()
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
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:  # the message never shows the key (invariant 14)
            raise ConfigurationError(
                "apikey has a character outside latin-1, which HTTP Basic auth cannot send"
            ) from None
        self._check_open()
        self._cache.set_setting("apikey", value)
        self._apikey = value
        self._drop_remote()
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
        return self._options.syncperiod

    @syncperiod.setter
    def syncperiod(self, value: float) -> None:
        value = Options.check("syncperiod", value)
        self._check_open()
        self._cache.set_setting("syncperiod", value)
        self._options.set("syncperiod", value)
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

    def _set_option(self, name: str, value: Any) -> None:
        value = Options.check(name, value)
        self._check_open()
        self._cache.set_setting("option." + name, value)
        self._options.set(name, value)
        if name == "durability":
            self._cache.set_durability(value)
        if name == "http_timeout":
            self._drop_remote()
        self._apply_options()

    def _apply_options(self) -> None:
        """Build what the options describe: limits, archive, clock mode."""
        o = self._options
        limits = Limits(
            o.max_cached,
            o.max_cache_bytes,
            o.min_free_disk,
            drop_oldest=o.on_full == "drop_oldest",
        )
        self._limits = limits if limits.active or limits.drop_oldest else None
        archive = self._archive
        if archive is None or (archive.directory, archive.fmt) != (
            o.archive_dir,
            o.archive_format,
        ):
            if archive is not None:
                archive.close()
            self._archive = None
            if o.archive_dir is not None:
                self._archive = Archive(
                    o.archive_dir, o.archive_format, fsync=o.durability == "full"
                )
        elif archive is not None:
            archive.fsync = o.durability == "full"
        self._clock.ntp = o.ntp_server is not None

    # ----------------------------------------------------------------------- remote

    def _remote(self) -> Remote:
        if self._remote_given is not None:
            return self._remote_given
        with self._lock:
            if self._remote_built is None:
                self._remote_built = ConnectorDBRemote(
                    self._serverurl, self._apikey, timeout=self._options.http_timeout
                )
            return self._remote_built

    @property
    def remote(self) -> Remote:
        """The remote this Logger syncs to: the one it was given, else a
        :class:`~connectorsync.ConnectorDBRemote` on ``serverurl`` with ``apikey``."""
        return self._remote()

    def _record_remote(self, remote: Remote) -> None:
        """Note in the cache where its datapoints go, for ``status()`` and the command line
        of another process. A remote's repr shows no credentials (the remote contract)."""
        description = repr(remote)
        if description != self._cache.get_setting("remote"):
            self._cache.set_setting("remote", description)

    def _drop_remote(self) -> None:
        """The default remote's settings changed: build it anew, for the syncer too."""
        with self._lock:
            if self._remote_built is not None:
                self._remote_built.close()
                self._remote_built = None
        if hasattr(self, "_syncer"):  # not while __init__ loads the settings
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
        return {name: dict(r.definition.schema) for name, r in self._defs.items()}

    def __contains__(self, stream: object) -> bool:
        """``"temperature" in logger``: is the stream registered?"""
        return stream in self._defs

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
        self._register(name, schema, out_of_order)

    addStream = add_stream

    def addStream_force(
        self, name: str, schema: dict[str, Any] | None = None, *, out_of_order: str = "reject"
    ) -> None:
        """Register a stream without asking the remote (ConnectorDB name); no schema means any
        JSON value. The stream is created on the remote at the first sync if missing."""
        self._check_open()
        self._register(name, schema, out_of_order)

    def _register(self, name: str, schema: dict[str, Any] | None, out_of_order: str) -> None:
        if out_of_order not in OUT_OF_ORDER:
            raise StreamError(
                f"stream {name!r}: out_of_order must be 'reject' or 'restamp'; got {out_of_order!r}"
            )
        definition = StreamDef(name, schema)
        row = self._cache.put_stream(name, definition.schema_text, out_of_order)
        self._defs[name] = _Registered(definition, row.id, out_of_order == "restamp")

    def _stream(self, name: str) -> _Registered:
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
        registered = self._stream(stream)
        data = registered.definition.encode(value)
        untrusted = None
        if timestamp is None:
            t, restamp = self._clock.now(), True
            if not self._clock.trusted:
                untrusted = self._untrusted()
        else:
            t, restamp = _check_timestamp(stream, timestamp), registered.restamp
        try:
            stored = self._cache.append(
                registered.id, t, data, restamp=restamp, untrusted=untrusted, limits=self._limits
            )
        except TooOldError as exc:
            raise _too_old(stream, t, exc.newest) from None
        if self._archive is not None:
            self._archive.write(((stream, stored, data),))
        if self._subscribers:
            self._notify(stream, ((stored, value),))
        if self._options["max_age"] is not None:
            self._expire_now_and_then()
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
        if values is None:
            if not isinstance(stream, dict):
                raise TypeError("insert_many(stream, values) or insert_many({stream: datapoints})")
            by_stream = stream
        else:
            if not isinstance(stream, str):
                raise StreamError(f"stream name must be a string; got {stream!r}")
            by_stream = {stream: values}
        now = self._clock.now()
        untrusted = None if self._clock.trusted else self._untrusted()
        points: list[tuple[int, float, bool, str, Untrusted | None]] = []
        given: list[tuple[str, Any]] = []
        for name, items in by_stream.items():
            _check_values(name, items)
            registered = self._stream(name)
            encode = registered.definition.encode
            for item in items:
                if type(item) is dict and item.keys() == {"t", "d"}:
                    t = _check_timestamp(name, item["t"])
                    points.append((registered.id, t, registered.restamp, encode(item["d"]), None))
                    given.append((name, item["d"]))
                else:
                    points.append((registered.id, now, True, encode(item), untrusted))
                    given.append((name, item))
        if not points:
            return 0
        try:
            stored = self._cache.append_many(points, limits=self._limits)
        except TooOldError as exc:
            raise TimestampError(
                f"insert_many: a timestamp is older than its stream's newest ({exc.newest}); "
                "nothing was stored"
            ) from None
        if self._archive is not None:
            self._archive.write(
                (name, t, point[3])
                for (name, _), (_, t), point in zip(given, stored, points, strict=True)
            )
        if self._subscribers:
            for (name, value), (_, t) in zip(given, stored, strict=True):
                self._notify(name, ((t, value),))
        self._syncer.inserted(len(points))
        return len(points)

    def cleardata(self) -> int:
        """Delete every cached datapoint without syncing it (ConnectorDB name). Returns how
        many. Dead letters stay."""
        self._check_open()
        cleared = self._cache.clear()
        log.warning("cleardata(): deleted %d cached datapoints without syncing them", cleared)
        return cleared

    def export(self, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """The cached datapoints (of one stream, or all, stream by stream), oldest first, as
        ``{"stream", "t", "d"}``; read in pages, so a large cache needs little memory."""
        self._check_open()
        names = [stream] if stream is not None else sorted(self._defs)
        for name in names:
            stream_id = self._stream(name).id
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
        registered = self._stream(stream)
        found = self._cache.latest(registered.id)
        return None if found is None else {"t": found[0], "d": json.loads(found[1])}

    def subscribe(
        self, stream: str, callback: Callable[[dict[str, Any]], Any]
    ) -> Callable[[], None]:
        """Call ``callback({"t": ..., "d": ...})`` after each committed insert into ``stream``
        by this Logger. An exception from the callback is logged, never raised into the
        inserting code. Returns a function that unsubscribes."""
        self._stream(stream)
        with self._lock:
            self._subscribers = {**self._subscribers}
            self._subscribers[stream] = [*self._subscribers.get(stream, []), callback]

        def unsubscribe() -> None:
            with self._lock:
                remaining = [f for f in self._subscribers.get(stream, []) if f is not callback]
                self._subscribers = {**self._subscribers, stream: remaining}
                if not remaining:
                    del self._subscribers[stream]

        return unsubscribe

    def _notify(self, stream: str, points: Iterable[tuple[float, Any]]) -> None:
        for callback in self._subscribers.get(stream, ()):
            for t, value in points:
                try:
                    callback({"t": t, "d": value})
                except Exception:
                    log.exception("subscriber %r of stream %r failed", callback, stream)

    # ----------------------------------------------------------------------- time

    def sync_clock(
        self, server: str | None = None, port: int | None = None, timeout: float = 5.0
    ) -> float:
        """Ask an NTP server for the true time (default ``ntp_server``; ``"host"`` or
        ``"host:port"``). From now on, during this boot, timestamps are that time plus the
        boot clock elapsed, whatever the wall clock does. Datapoints of this boot stamped
        before are re-timed exactly. Returns what the system clock was off by, in seconds.

        :raises TransientRemoteError: the server did not answer within ``timeout``
        :raises ConfigurationError: no server
        """
        self._check_open()
        host, default_port = _ntp_address(server or self._options["ntp_server"] or "")
        anchor = self._clock.measure(host, port or default_port, timeout)
        self._cache.set_setting("clock.anchor", anchor.to_json())
        self._clock.set_anchor(anchor)
        fixed = self._cache.reanchor(self._boot_key(), anchor.true_time, anchor.boot_clock)
        if fixed:
            log.info("re-timed %d datapoints stamped before NTP answered", fixed)
            self._syncer.wake()  # held datapoints may go now
        return anchor.offset

    def _boot_key(self) -> int:
        if self._boot is None:
            self._boot = self._cache.boot_key(self._clock.boot_id)
        return self._boot

    def _untrusted(self) -> Untrusted | None:
        """For a clock-stamped insert before NTP answered: (boot, boot clock), to fix later.
        Picks up, now and then, an answer another process got."""
        now = boot_clock()
        if now >= self._next_clock_reload:
            self._next_clock_reload = now + _CLOCK_RELOAD
            self._clock.set_anchor(Anchor.from_json(self._cache.get_setting("clock.anchor")))
            if self._clock.trusted:
                return None
        return (self._boot_key(), now)

    def _hold(self) -> Untrusted | None:
        """For the syncer: hold datapoints of this boot stamped in the last ``max_hold``
        seconds before NTP answered (with ``hold_unsynced``)."""
        if not self._options["hold_unsynced"] or self._clock.trusted:
            return None
        return (self._boot_key(), boot_clock() - self._options["max_hold"])

    def _expire_now_and_then(self) -> None:
        now = boot_clock()
        if now >= self._next_expiry:
            self._next_expiry = now + _EXPIRY_EVERY
            self._expire()

    def _expire(self) -> None:
        max_age = self._options["max_age"]
        if max_age is not None:
            self._cache.expire(self._clock.now() - max_age)

    # ----------------------------------------------------------------------- syncing

    def sync(self, progress: Callable[[str, int], object] | None = None) -> SyncReport:
        """One sync pass: deliver every cached datapoint, delete it once acknowledged.

        Creates missing streams on the remote with their registered schema. A failure in
        one stream does not stop the others; a datapoint the remote refuses becomes a dead
        letter. After a complete pass ``lastsynctime`` is set and ``onsync()`` called; after
        a failed one ``onsyncfail(error)`` is called, and the error raised if it returns true
        (or, without ``onsyncfail``, if ``syncraise``). No retries here: the background
        syncer (:meth:`start`) retries with backoff.

        :param progress: called with ``(stream, count)`` after each delivered batch
        :returns: a :class:`SyncReport` (``sent``, ``deadlettered``, ``errors``)
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

    def _before_pass(self, cache: Cache) -> None:
        """Before every pass: expire old datapoints, ask NTP again when it is time, and note
        in the cache where this pass sends (only the process that syncs records it there)."""
        self._expire()
        anchor = self._clock.anchor
        ntp_due = anchor is None or boot_clock() - anchor.boot_clock > NTP_REFRESH
        if self._options["ntp_server"] is not None and ntp_due:
            try:
                # Bounded like any request: a silent NTP server must not stall the sync.
                self.sync_clock(timeout=min(5.0, self._options["http_timeout"]))
            except TransientRemoteError as exc:
                log.warning("NTP: %s (timestamps stay as they are; trying again next pass)", exc)

    def _after_pass(self, report: SyncReport) -> None:
        """After every pass, manual or background: ConnectorDB's callbacks and lastsynctime."""
        if report.ok:
            with contextlib.suppress(ClosedError):
                self.lastsynctime = time.time()
            if self.onsync is not None:
                self.onsync()
            return
        error = report.exception or ConnectorSyncError("; ".join(report.errors.values()))
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
        streams = {name: registered.id for name, registered in self._defs.items()}
        queued = self._cache.retry_deadletters(None if ids is None else list(ids), streams)
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
        syncer = self._syncer
        counters = self._cache.statistics()
        anchor = self._clock.anchor
        untrusted = 0 if self._clock.trusted else self._cache.untrusted_count(self._boot_key())
        last_error, next_attempt = syncer.paused or syncer.last_error, syncer.next_attempt
        paused, elsewhere = syncer.paused is not None, None
        if not syncer.running:
            next_attempt = None
            if syncer.syncing_elsewhere():
                # Another process syncs: what it recorded in the cache is what we know.
                state = syncer.state()
                elsewhere = f"pid {state.get('pid')} on {state.get('host')}"
                last_error = state.get("paused") or state.get("last_error")
                next_attempt, paused = state.get("next_attempt"), bool(state.get("paused"))
        return Status(
            streams=self._cache.stream_stats(),
            last_sync=self._cache.get_setting("lastsynctime", 0) or None,
            last_error=last_error,
            next_attempt=next_attempt,
            paused=paused,
            dropped=counters["dropped"],
            expired=counters["expired"],
            clock_offset=None if anchor is None else anchor.offset,
            clock_measured=None if anchor is None else anchor.true_time,
            untrusted=untrusted,
            syncer=elsewhere,
            remote=self._cache.get_setting("remote"),
        )


def _check_values(stream: str, values: Any) -> None:
    """``insert_many``'s values must be a collection: a str, bytes or a dict is iterable
    too, but would be stored letter by letter, byte by byte or key by key."""
    try:
        iter(values)
        usable = not isinstance(values, str | bytes | bytearray | memoryview | Mapping)
    except TypeError:
        usable = False
    if not usable:
        raise TypeError(
            f"insert_many: values for stream {stream!r} must be an iterable (a list, say) of "
            f"values or {{'t': ..., 'd': ...}} datapoints; got a {type(values).__name__}"
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
    try:
        t = float(timestamp)
    except OverflowError:  # an int beyond any float: far too large, and too long to show
        raise TimestampError(
            f"stream {stream!r}: timestamp (an int of {int(timestamp).bit_length()} bits) is too "
            "large for seconds since the epoch"
        ) from None
    if not math.isfinite(t):
        raise TimestampError(f"stream {stream!r}: timestamp must be finite; got {timestamp!r}")
    if abs(t) > MAX_PLAUSIBLE_TIMESTAMP:
        raise TimestampError(
            f"stream {stream!r}: timestamp {timestamp!r} is too large for seconds since the "
            "epoch (milliseconds? divide by 1000)"
        )
    return t


def _ntp_address(target: str) -> tuple[str, int]:
    """``"host"`` or ``"host:port"`` (an IPv6 address has more colons: no port then)."""
    host, colon, port = target.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return target, 123


def _too_old(stream: str, t: float, newest: float) -> TimestampError:
    return TimestampError(
        f"stream {stream!r}: timestamp {t!r} is older than the stream's newest ({newest!r}); "
        "timestamps must increase per stream, or add the stream with out_of_order='restamp'"
    )
