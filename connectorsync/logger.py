"""Logger: the one class users need. A drop-in successor of ``connectordb.logger.Logger``.

It wires the parts together and holds no SQL and no HTTP: values are checked by the stream
registry (:mod:`~connectorsync.streams`), stamped by :mod:`~connectorsync.devicetime`, stored
by :mod:`~connectorsync.cache` (and :mod:`~connectorsync.archive`) and delivered by
:mod:`~connectorsync.syncer` through a :mod:`remote <connectorsync.remotes.base>`. Each
method is a short delegation; the Logger owns the lifecycle and the sync-failure policy
(``onsync``, ``onsyncfail``, ``syncraise``), applied by the caller of a pass to the report that
pass returned (:mod:`~connectorsync.afterpass`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import _checks as check
from . import fanout
from .afterpass import AfterPass, run_sync_callbacks
from .cache import Cache, DeadLetter, Outbox
from .delivery import SyncReport
from .devicetime import DeviceTime
from .errors import (
    CacheError,
    ClosedError,
    ConfigurationError,
    ConnectorSyncError,
)
from .metrics import LoggerMetrics
from .options import Configurable, Option, Settings
from .remoteholder import RemoteHolder
from .remotes.base import MAX_SECONDS, Remote
from .remotes.config import record_remote
from .resend import ResendReport, letter_ids, resend
from .status import Status, collect_status
from .streams import StreamRegistry, Subscriber, Subscribers
from .syncer import PassHooks, Syncer
from .synclock import PassGate
from .targets import Parts
from .writer import Writer

log = logging.getLogger(__name__)

#: Seconds ``stop()`` waits for the background thread (an idle one ends at once; one in a
#: hung request ends by itself later, and ``start()`` carries on with it).
STOP_WAIT = 1.0


class _State(enum.Enum):
    OPEN = 1
    CLOSED = 2


class Logger(Configurable):
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
    :param remote: where to sync (default: a :class:`ConnectorDBRemote` from the settings),
        named ``default``
    :param remotes: instead of ``remote``, several remotes by name: each datapoint goes to
        every remote that routes its stream, and leaves the cache once all of them have it
        (:meth:`add_remote` adds one with a stream filter, ``give_up_after``, a fallback)
    :param options: options (:mod:`connectorsync.options`, e.g. ``durability="normal"``) and
        ConnectorDB's settings (``serverurl=``, ``syncperiod=``), stored in the cache file
    :raises ConfigurationError, CacheError: a bad option, a file that is not a cache or
        that cannot be opened
    """

    @check.logger_arguments
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
        remotes: Mapping[str, Remote] | None = None,
        **options: Any,
    ):
        Settings.check_keywords(options)
        given = fanout.named(remote, remotes)
        self.path = str(path)
        self.onsync, self.onsyncfail, self.syncraise = onsync, onsyncfail, syncraise
        self._state = _State.OPEN
        self._primary = fanout.primary_name(given)
        self._remote = RemoteHolder(given.get(self._primary))
        self._extra = {name: r for name, r in given.items() if name != self._primary}
        self._creating = self._start_when_created = False
        durability = options.get("durability", Configurable.durability.default)
        self._cache, created = Cache.open(self.path, durability)
        try:
            self._wire(created, options)
            if apikey is not None:
                self.apikey = apikey
            # Before on_create: a stream it adds is created on the first remote, recorded.
            fanout.record(self._cache, given, created=created)
            if created and on_create is not None:
                self._create(on_create)
            self._parts.finish_opening(created)
        except BaseException:
            self._abandon(created)
            raise
        if remote is not None:  # and how to build it again: remotes/config.py
            record_remote(self._cache, remote)
        if self._start_when_created:
            self._syncer.start()

    def _wire(self, created: bool, options: dict[str, Any]) -> None:
        """Build the parts on the open cache, then apply the constructor's options."""
        # A change acts on the parts built below; none is made before they are.
        self._settings = Settings(self._cache, lambda option: self._parts.changed(option))
        self._settings.load(created)
        self._options = self._settings.options
        self._streams = StreamRegistry(self._cache, self._primary)
        self._streams.load()
        self._time = DeviceTime(self._cache, self._options)
        self._subscribers = Subscribers()
        self._writer = Writer(self._cache, self._streams, self._time, self._subscribers)
        self._metrics = LoggerMetrics(self._cache, self.status)
        hooks = PassHooks(before=self._remote.before(self._time.before_pass), hold=self._time.hold)
        remote = self._remote.get(self._settings)
        self._after = AfterPass(self._after_pass)  # the background passes' listener too
        remotes = {self._primary: remote, **self._extra}
        self._syncer = Syncer(self.path, self._options, remotes, hooks, self._after)
        parts = (self._cache, self._writer, self._time, self._syncer, self._metrics, self._remote)
        self._parts = Parts(self._settings, *parts)
        self._settings.set_from_constructor(options, self.path)
        self._parts.build()

    def _create(self, on_create: Callable[[Logger], Any]) -> None:
        self._creating = True
        try:
            if on_create(self) is False:
                raise ConfigurationError("on_create returned False: the logger is not usable")
        finally:
            self._creating = False

    def _abandon(self, created: bool) -> None:
        """The constructor failed: undo it (a new file is removed)."""
        self._state = _State.CLOSED
        if hasattr(self, "_metrics"):
            self._metrics.close()
        if hasattr(self, "_syncer"):
            self._syncer.close()
        (self._cache.abort_create if created else self._cache.close)()

    def start(self) -> None:
        """Sync in a background thread (soon, after a random wait of up to ``sync_jitter``; then
        every ``syncperiod`` s plus up to ``sync_jitter``, and at ``sync_threshold`` datapoints;
        retrying with backoff). Returns at once."""
        self._check_open()
        if self._creating:
            self._start_when_created = True  # the file is not there for others until then
            return
        self._syncer.start()

    def flush(self) -> None:
        """Commit now what ``durability="batched"`` queued (nothing to do otherwise)."""
        self._check_open()
        self._cache.flush()

    def stop(self) -> None:
        """Stop the background syncer at once, even in a backoff or a hung request."""
        self._syncer.stop(timeout=STOP_WAIT)

    @check.checked(timeout=check.NUMBER)
    def close(self, timeout: float = 10.0) -> None:
        """Stop syncing and close the file, within ``timeout`` seconds whatever the remote
        does; a running syncer first makes one last pass in that time. Everything inserted
        is already on disk (``batched``: committed here first): closing loses nothing. Safe
        to call twice, and from a callback. In a child forked after the Logger was opened,
        it only marks it closed: the file, the syncer and its lock are the parent's."""
        if math.isnan(timeout):
            raise ConfigurationError(f"close(): timeout must be a number of seconds; got {timeout}")
        # Infinity (or 1e300): as long as it takes; no thread can wait longer than this.
        timeout = min(timeout, MAX_SECONDS)
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._cache.inherited:  # a forked child: touch nothing (tests/test_fork.py)
            self._cache.close()
            return
        deadline = time.monotonic() + timeout
        self._metrics.close()
        with contextlib.suppress(CacheError):
            self._cache.flush()  # for the last pass; failing, the cache's close() says so
        was_running = self._syncer.running
        if self._syncer.stop(timeout) and was_running and not self._after.running_here:
            self._syncer.drain(max(0.0, deadline - time.monotonic()))
        self._syncer.close()
        self._remote.close()
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
        self._cache.check_process()  # a forked child: raise before any lock (test_fork.py)

    def __repr__(self) -> str:
        state = "closed" if self._state is _State.CLOSED else f"{len(self._streams)} streams"
        return f"<Logger {self.path!r} {state}>"

    def _option_value(self, option: Option[Any]) -> Any:
        """An option's value, for its attribute (:class:`~connectorsync.options.Option`)."""
        return self._settings.get(option.name)

    def _set_option(self, option: Option[Any], value: Any) -> None:
        """Set an option by its attribute: checked, stored in the cache file, applied."""
        self._check_open()
        self._settings.set(option.name, value)

    @property
    def remote(self) -> Remote:
        """The remote this Logger syncs to (its first, with several): the one given, else
        ConnectorDB at ``serverurl``."""
        return self._remote.get(self._settings)

    @property
    def remotes(self) -> dict[str, Remote]:
        """Every remote this Logger delivers to, by name (``default`` for ``remote=``)."""
        return {name: courier.remote for name, courier in self._syncer.couriers.items()}

    @check.checked(name=check.TEXT, backfill=check.BOOL, fallback=check.OPTIONAL_TEXT)
    def add_remote(  # noqa: PLR0913 - the remote and how it takes part
        self,
        name: str,
        remote: Remote,
        streams: Sequence[str] | None = None,
        *,
        backfill: bool = True,
        give_up_after: float | None = None,
        fallback: str | None = None,
    ) -> None:
        """Deliver to ``remote`` too, as ``name``, from now on (and when reopened, given again).

        :param streams: the names or glob patterns of the streams it takes (None: every one)
        :param backfill: it takes what is cached now too (else only what comes after)
        :param give_up_after: seconds: once it has failed that long, it stops holding what
            it has not taken and is older than that (released, counted in ``status()``), so
            a dead remote cannot fill the disk (None: it holds everything until delivered)
        :param fallback: the name of a remote that takes, instead, what this one gives up
        :raises ConfigurationError: a name in use, or a bad filter, fallback or seconds
        """
        self._check_open()
        if name in self._syncer.couriers:
            raise ConfigurationError(f"add_remote(): this Logger delivers to {name!r} already")
        fanout.add(
            self._cache,
            name,
            remote,
            streams,
            backfill=backfill,
            give_up_after=give_up_after,
            fallback=fallback,
        )
        self._syncer.add(name, remote)

    @check.checked(name=check.TEXT)
    def remove_remote(self, name: str) -> int:
        """Stop delivering to the remote ``name`` and forget it: what only it held leaves the
        cache (a stream no other remote takes keeps its datapoints). Returns how many left.

        :raises ConfigurationError: no such remote, this Logger's first remote, or another
            remote's fallback
        """
        self._check_open()
        if name == self._primary:
            raise ConfigurationError(
                f"remove_remote(): {name!r} is this Logger's first remote: open the cache "
                "with the remotes to keep, then remove it"
            )
        if name in self._syncer.couriers:
            self._syncer.remove(name)
        return self._cache.remotes().remove(name)

    def ping(self) -> str:
        """Check the remote and the apikey; returns ``user/device`` or raises a RemoteError."""
        self._check_open()
        return self.remote.ping()

    @property
    def connectordb(self) -> Any:
        """A ``connectordb.ConnectorDB`` client on ``serverurl`` with ``apikey``, built on first
        use (needs the extra ``connectorsync[connectordb]``), as connectordb 0.3.5 has it."""
        return self._remote.client(self._settings)

    @property
    def name(self) -> str:
        """The remote's name for this device (``user/device``); asks the remote."""
        return self.ping()

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """The registered streams: name -> JSON schema (a copy)."""
        return self._streams.schemas()

    def __contains__(self, stream: object) -> bool:
        """``"temperature" in logger``: is the stream registered?"""
        return stream in self._streams

    @check.checked(name=check.STREAM, out_of_order=check.TEXT)
    def add_stream(
        self, name: str, schema: Any = None, *, out_of_order: str = "reject", **properties: Any
    ) -> None:
        """Register a stream, as connectordb 0.3.5's ``addStream`` (see :ref:`add-stream`):
        with a schema, it is created on the remote now, or at the first sync when offline;
        without one, the remote's is used. ``properties``: ConnectorDB's ``nickname``,
        ``description``, ``icon``, ``datatype``, ``ephemeral``, ``downlink``.

        :param out_of_order: an explicit timestamp older than the stream's newest is refused
            (``"reject"``) or stored 1 µs after the newest (``"restamp"``)
        :raises StreamError, SchemaError: bad name, schema or property; nothing changed
        :raises UnknownStreamError, RemoteError: no schema, and the remote has none or failed
        """
        self._check_open()
        asked = schema is None or self._remote._given is not None or self.apikey  # else: none yet
        remote = self.remote if asked else None
        self._streams.add(name, schema, remote, out_of_order, **properties)

    addStream = add_stream

    @check.checked(name=check.STREAM, out_of_order=check.TEXT)
    def addStream_force(
        self, name: str, schema: Any = None, *, out_of_order: str = "reject", **properties: Any
    ) -> None:
        """Register a stream without asking the remote (ConnectorDB name); no schema means any
        JSON value. The stream is created on the remote at the first sync if missing."""
        self._check_open()
        self._streams.register(name, schema, out_of_order, properties)

    def insert(self, stream: str, value: Any, timestamp: float | None = None) -> None:
        """Store one datapoint; returns once it is committed to disk (and archived).

        :param timestamp: seconds since the epoch (or an aware datetime); default now. Per
            stream, timestamps strictly increase: a tie or a clock step back moves 1 µs later.
        :raises UnknownStreamError, ValidationError, TimestampError, CacheFullError: nothing
            was stored (an unknown stream, a value or timestamp refused, a limit reached)
        """
        self._check_open()
        check.insert_arguments(stream, timestamp)
        self._writer.insert(stream, value, timestamp)
        if self._options.max_age is not None:
            self._time.expire_now_and_then()
        self._syncer.inserted(1)

    def insert_many(self, stream: str | dict[str, Any], values: Iterable[Any] | None = None) -> int:
        """Store many datapoints in one transaction, all or none (errors as :meth:`insert`);
        returns how many. An item is a value or ``{"t": timestamp, "d": value}``;
        ConnectorDB's ``insert_many({stream: [datapoints], ...})`` works too. A ``values``
        that is not a collection of items is a TypeError."""
        self._check_open()
        check.insert_many_arguments(stream, values)
        count = self._writer.insert_many(stream, values)
        self._syncer.inserted(count)
        return count

    def cleardata(self) -> int:
        """Delete every cached datapoint without syncing it (ConnectorDB name); returns how
        many. Dead letters stay, and a batch being sent is left alone."""
        self._check_open()
        cleared = self._cache.clear()
        log.warning("cleardata(): deleted %d cached datapoints without syncing them", cleared)
        return cleared

    @check.checked(stream=check.OPTIONAL_STREAM)
    def export(self, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """The cached datapoints (of one stream, or all), oldest first, as ``{"stream", "t",
        "d"}``; read in pages, so a large cache needs little memory."""
        self._check_open()
        return _export(self._cache, self._streams, stream)

    def __len__(self) -> int:
        """How many datapoints are cached, waiting to be synced."""
        self._check_open()
        return self._cache.count()

    @check.checked(stream=check.STREAM)
    def latest(self, stream: str) -> dict[str, Any] | None:
        """The newest datapoint inserted in ``stream``, ``{"t": ..., "d": ...}``, or None;
        also once it left the cache, and after a restart."""
        self._check_open()
        found = self._cache.latest(self._streams.get(stream).id)
        return None if found is None else {"t": found[0], "d": json.loads(found[1])}

    @check.checked(stream=check.STREAM, callback=check.CALLABLE)
    def subscribe(self, stream: str, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback({"t": ..., "d": ...})`` after each insert into ``stream`` by this
        Logger, outside every lock (errors are logged). Returns the unsubscribe function."""
        self._check_open()
        self._streams.get(stream)
        return self._subscribers.add(stream, callback)

    @check.checked(server=check.OPTIONAL_TEXT, port=check.OPTIONAL_PORT, timeout=check.NUMBER)
    def sync_clock(
        self, server: str | None = None, port: int | None = None, timeout: float = 5.0
    ) -> float:
        """Ask an NTP server (default ``ntp_server``) for the true time: this boot's later
        timestamps follow it, and with ``ntp_server`` set what it stamped before is re-timed
        exactly (see :doc:`time`). Returns what the system clock was off by, in seconds.
        Raises TransientRemoteError without an answer, ConfigurationError without a server."""
        self._check_open()
        synced = self._time.sync_clock(server, port, timeout)
        if synced.retimed:
            self._syncer.wake()  # held datapoints may go now
        return synced.offset

    @check.checked(progress=check.OPTIONAL_CALLABLE)
    def sync(self, progress: Callable[[str, int], object] | None = None) -> SyncReport:
        """One pass: deliver what is cached now, streams taking turns; a refused datapoint
        becomes a dead letter. Then ``lastsynctime`` and ``onsync()``, or ``onsyncfail(error)``
        (the error is raised if it returns true, or without it if ``syncraise``). No retries
        (the background syncer retries); raises ConnectorSyncError inside a callback.

        :param progress: called with ``(stream, count)`` after each delivered batch
        """
        self._check_open()
        if self._creating:
            raise ConnectorSyncError(
                "sync() cannot run inside on_create: the cache file is being created; "
                "call sync() once Logger(...) has returned"
            )
        self._after.refuse_a_pass()  # inside onsync/onsyncfail: CallbackError
        self._cache.flush()
        report = self._syncer.sync(progress=progress)  # closed meanwhile: no callbacks, no raise
        if self._state is _State.OPEN and self._after(report) and report.exception is not None:
            raise report.exception
        return report

    def _after_pass(self, report: SyncReport) -> bool:
        """After each pass (the background syncer's, or sync()'s), outside every lock: metrics,
        lastsynctime, then ConnectorDB's callbacks. Returns whether sync() raises."""
        self._metrics.passed(report)
        if report.ok:
            with contextlib.suppress(ClosedError):
                self.lastsynctime = time.time()
        return run_sync_callbacks(report, self.onsync, self.onsyncfail, syncraise=self.syncraise)

    @check.checked(stream=check.OPTIONAL_STREAM)
    def deadletters(self, stream: str | None = None) -> list[DeadLetter]:
        """The datapoints the remote refused (all streams, or one), oldest first."""
        self._check_open()
        return self._cache.deadletters(stream)

    @check.checked(restamp=check.BOOL)
    def retry_deadletters(self, ids: Iterable[int] | None = None, *, restamp: bool = False) -> int:
        """Send dead letters (all, or these ids) again with their own time, now, each to the
        remote that refused it, each stream's in time order as batches of their own
        (:mod:`~connectorsync.resend`). Those the remote
        cannot take (ConnectorDB refuses times older than its newest) or refuses again stay,
        saying why. ``restamp=True`` queues them instead with new times, after the stream's
        newest, within the storage limits: they are delivered, at the risk of a second copy
        where one had arrived. Returns how many were sent (queued, with ``restamp``).

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        :raises CacheFullError: ``restamp``, and a limit is reached; nothing changed
        :raises RemoteError: the remote could not be asked; the letters not sent stay
        """
        self._check_open()
        chosen = letter_ids(ids, "retry_deadletters()")
        if restamp:
            queued = self._cache.retry_deadletters(chosen, self._streams.ids(), self._writer.limits)
            self._syncer.inserted(queued)
            return queued
        batch_size, sent = self.batch_size, 0
        for name in self._syncer.couriers:  # each remote's letters, to that remote
            outbox = self._cache.outbox(name)

            def job(remote: Remote, gate: PassGate, box: Outbox = outbox) -> ResendReport:
                return resend(box, remote, chosen, batch_size, gate)

            sent += self._syncer.exclusive(job, name).sent
        return sent

    def purge_deadletters(self, ids: Iterable[int] | None = None) -> int:
        """Delete dead letters (all, or these ids) for good. Returns how many.

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        """
        self._check_open()
        purged = self._cache.purge_deadletters(letter_ids(ids, "purge_deadletters()"))
        log.warning("purged %d dead letters", purged)
        return purged

    def status(self) -> Status:
        """What is cached per stream, and how syncing and the clock go."""
        self._check_open()
        return collect_status(self._cache, self._syncer.sync_state(), self._time)

    def metrics(self) -> str:
        """The metrics now, as OpenMetrics text (every metric: :doc:`metrics`)."""
        self._check_open()
        return self._metrics.text()

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while ``metrics_port`` is set, else None."""
        return self._metrics.url


def _export(cache: Cache, streams: StreamRegistry, stream: str | None) -> Iterator[dict[str, Any]]:
    for name in [stream] if stream is not None else streams.names():
        stream_id = streams.get(name).id
        after = 0
        while rows := cache.batch(stream_id, after, 1000):
            for _, t, data in rows:
                yield {"stream": name, "t": t, "d": json.loads(data)}
            after = rows[-1][0]
