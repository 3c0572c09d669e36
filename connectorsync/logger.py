"""Logger: the one class users need. A drop-in successor of ``connectordb.logger.Logger``.

It holds no SQL and no HTTP, and wires nothing itself: values are checked by the stream
registry (:mod:`~connectorsync.streams`), stamped by :mod:`~connectorsync.devicetime`, stored
by :mod:`~connectorsync.cache` (and :mod:`~connectorsync.archive`) and delivered by
:mod:`~connectorsync.syncer` through a :mod:`remote <connectorsync.remotes.base>`. Each
method is a short delegation to a part, all wired by :mod:`~connectorsync.assembly` (which
also opens, undoes and closes them); the dead letters are :mod:`~connectorsync.letters`',
the reads :mod:`~connectorsync.reading`'s, the remotes :mod:`~connectorsync.remoteset`'s.
The Logger keeps ConnectorDB's names and the sync-failure policy (``onsync``,
``onsyncfail``, ``syncraise``), applied by the caller of a pass to the report that pass
returned (:mod:`~connectorsync.afterpass`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import _checks as check
from .afterpass import run_sync_callbacks
from .assembly import Assembly
from .cache import DeadLetter
from .delivery import SyncReport
from .errors import ClosedError
from .options import Configurable, Option
from .remotes.base import Remote
from .status import Status
from .streams import Subscriber

log = logging.getLogger(__name__)


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
        self.path = str(path)
        self.onsync, self.onsyncfail, self.syncraise = onsync, onsyncfail, syncraise
        self._parts = parts = Assembly(self.path, remote, remotes, options, self._after_pass)
        self._cache, self._syncer = parts.cache, parts.syncer  # testing.internals only
        with parts.opening():  # if this raises, all is undone (a new file removed)
            if apikey is not None:
                self.apikey = apikey
            if parts.created and on_create is not None:
                parts.create(lambda: on_create(self))
        parts.opened()

    def start(self) -> None:
        """Sync in a background thread (soon, after a random wait of up to ``sync_jitter``; then
        every ``syncperiod`` s plus up to ``sync_jitter``, and at ``sync_threshold`` datapoints;
        retrying with backoff). Returns at once."""
        self._check_open()
        self._parts.start()

    def flush(self) -> None:
        """Commit now what ``durability="batched"`` queued (nothing to do otherwise)."""
        self._check_open()
        self._parts.cache.flush()

    def stop(self) -> None:
        """Stop the background syncer at once, even in a backoff or a hung request."""
        self._parts.stop()

    @check.checked(timeout=check.NUMBER)
    def close(self, timeout: float = 10.0) -> None:
        """Stop syncing and close the file, within ``timeout`` seconds whatever the remote
        does; a running syncer first makes one last pass in that time. Everything inserted
        is already on disk (``batched``: committed here first): closing loses nothing. Safe
        to call twice, and from a callback. In a child forked after the Logger was opened,
        it only marks it closed: the file, the syncer and its lock are the parent's."""
        self._parts.close(timeout)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        self._parts.check_open()

    def __repr__(self) -> str:
        state = f"{len(self._parts.streams)} streams" if self._parts.open else "closed"
        return f"<Logger {self.path!r} {state}>"

    def _option_value(self, option: Option[Any]) -> Any:
        """An option's value, for its attribute (:class:`~connectorsync.options.Option`)."""
        return self._parts.settings.get(option.name)

    def _set_option(self, option: Option[Any], value: Any) -> None:
        """Set an option by its attribute: checked, stored in the cache file, applied."""
        self._check_open()
        self._parts.settings.set(option.name, value)

    @property
    def remote(self) -> Remote:
        """The remote this Logger syncs to (its first, with several): the one given, else
        ConnectorDB at ``serverurl``."""
        return self._parts.remote.get(self._parts.settings)

    @property
    def remotes(self) -> dict[str, Remote]:
        """Every remote this Logger delivers to, by name (``default`` for ``remote=``)."""
        return self._parts.remotes.all()

    @property
    def identity(self) -> str:
        """This cache file's identity (32 hex digits, never changing; see
        :mod:`connectorsync.cache.identity`): the remotes that name datapoints use it."""
        return self._parts.syncer.identity

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
        self._parts.remotes.add(
            name, remote, streams, backfill=backfill, give_up_after=give_up_after, fallback=fallback
        )

    @check.checked(name=check.TEXT)
    def remove_remote(self, name: str) -> int:
        """Stop delivering to the remote ``name`` and forget it: what only it held leaves the
        cache (a stream no other remote takes keeps its datapoints). Returns how many left.

        :raises ConfigurationError: no such remote, this Logger's first remote, or another
            remote's fallback
        """
        self._check_open()
        return self._parts.remotes.remove(name)

    def ping(self) -> str:
        """Check the remote and the apikey; returns ``user/device`` or raises a RemoteError."""
        self._check_open()
        return self.remote.ping()

    @property
    def connectordb(self) -> Any:
        """A ``connectordb.ConnectorDB`` client on ``serverurl`` with ``apikey``, built on first
        use (needs the extra ``connectorsync[connectordb]``), as connectordb 0.3.5 has it."""
        return self._parts.remote.client(self._parts.settings)

    @property
    def name(self) -> str:
        """The remote's name for this device (``user/device``); asks the remote."""
        return self.ping()

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """The registered streams: name -> JSON schema (a copy)."""
        return self._parts.streams.schemas()

    def __contains__(self, stream: object) -> bool:
        """``"temperature" in logger``: is the stream registered?"""
        return stream in self._parts.streams

    @check.checked(name=check.STREAM, out_of_order=check.TEXT)
    def add_stream(
        self, name: str, schema: Any = None, *, out_of_order: str = "reject", **properties: Any
    ) -> None:
        """Register a stream, as connectordb 0.3.5's ``addStream`` (see :ref:`add-stream`):
        with a schema, it is created on the remote now, or at the first sync when offline;
        without one, the remote's is used. ``properties``: ConnectorDB's ``nickname``,
        ``description``, ``icon``, ``datatype``, ``ephemeral``, ``downlink``; and the cache's
        own ``priority`` and ``thin``, never sent (:mod:`connectorsync.streamprops`).

        :param out_of_order: an explicit timestamp older than the stream's newest is refused
            (``"reject"``) or stored 1 µs after the newest (``"restamp"``)
        :raises StreamError, SchemaError: bad name, schema or property; nothing changed
        :raises UnknownStreamError, RemoteError: no schema, and the remote has none or failed
        """
        self._check_open()
        asked = schema is None or bool(self._parts.given) or self.apikey  # else: none yet
        remote = self.remote if asked else None
        self._parts.streams.add(name, schema, remote, out_of_order, **properties)

    addStream = add_stream

    @check.checked(name=check.STREAM, out_of_order=check.TEXT)
    def addStream_force(
        self, name: str, schema: Any = None, *, out_of_order: str = "reject", **properties: Any
    ) -> None:
        """Register a stream without asking the remote (ConnectorDB name); no schema means any
        JSON value. The stream is created on the remote at the first sync if missing."""
        self._check_open()
        self._parts.streams.register(name, schema, out_of_order, properties)

    def insert(self, stream: str, value: Any, timestamp: float | None = None) -> None:
        """Store one datapoint; returns once it is committed to disk (and archived).

        :param timestamp: seconds since the epoch (or an aware datetime); default now. Per
            stream, timestamps strictly increase: a tie or a clock step back moves 1 µs later.
        :raises UnknownStreamError, ValidationError, TimestampError, CacheFullError: nothing
            was stored (an unknown stream, a value or timestamp refused, a limit reached)
        """
        self._check_open()
        check.insert_arguments(stream, timestamp)
        self._parts.writer.insert(stream, value, timestamp)
        if self._parts.options.max_age is not None:
            self._parts.time.expire_now_and_then()
        self._parts.syncer.inserted(1)

    def insert_many(self, stream: str | dict[str, Any], values: Iterable[Any] | None = None) -> int:
        """Store many datapoints in one transaction, all or none (errors as :meth:`insert`);
        returns how many. An item is a value or ``{"t": timestamp, "d": value}``;
        ConnectorDB's ``insert_many({stream: [datapoints], ...})`` works too. A ``values``
        that is not a collection of items is a TypeError."""
        self._check_open()
        check.insert_many_arguments(stream, values)
        count = self._parts.writer.insert_many(stream, values)
        self._parts.syncer.inserted(count)
        return count

    def cleardata(self) -> int:
        """Delete every cached datapoint without syncing it (ConnectorDB name); returns how
        many. Dead letters stay, and a batch being sent is left alone."""
        self._check_open()
        cleared = self._parts.cache.clear()
        log.warning("cleardata(): deleted %d cached datapoints without syncing them", cleared)
        return cleared

    @check.checked(stream=check.OPTIONAL_STREAM)
    def export(self, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """The cached datapoints (of one stream, or all), oldest first, as ``{"stream", "t",
        "d"}``; read in pages, so a large cache needs little memory."""
        self._check_open()
        return self._parts.reader.export(stream)

    def __len__(self) -> int:
        """How many datapoints are cached, waiting to be synced."""
        self._check_open()
        return self._parts.reader.count()

    @check.checked(stream=check.STREAM)
    def latest(self, stream: str) -> dict[str, Any] | None:
        """The newest datapoint inserted in ``stream``, ``{"t": ..., "d": ...}``, or None;
        also once it left the cache, and after a restart."""
        self._check_open()
        return self._parts.reader.latest(stream)

    @check.checked(stream=check.STREAM, callback=check.CALLABLE)
    def subscribe(self, stream: str, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback({"t": ..., "d": ...})`` after each insert into ``stream`` by this
        Logger, outside every lock (errors are logged). Returns the unsubscribe function."""
        self._check_open()
        self._parts.streams.get(stream)
        return self._parts.subscribers.add(stream, callback)

    @check.checked(server=check.OPTIONAL_TEXT, port=check.OPTIONAL_PORT, timeout=check.NUMBER)
    def sync_clock(
        self, server: str | None = None, port: int | None = None, timeout: float = 5.0
    ) -> float:
        """Ask an NTP server (default ``ntp_server``) for the true time: this boot's later
        timestamps follow it, and with ``ntp_server`` set what it stamped before is re-timed
        exactly (see :doc:`time`). Returns what the system clock was off by, in seconds.
        Raises TransientRemoteError without an answer, ConfigurationError without a server."""
        self._check_open()
        synced = self._parts.time.sync_clock(server, port, timeout)
        if synced.retimed:
            self._parts.syncer.wake()  # held datapoints may go now
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
        report = self._parts.sync(progress)  # closed meanwhile: no callbacks, no raise
        if self._parts.open and self._parts.after(report) and report.exception is not None:
            raise report.exception
        return report

    def _after_pass(self, report: SyncReport) -> bool:
        """After each pass (the background syncer's, or sync()'s), outside every lock: metrics,
        lastsynctime, then ConnectorDB's callbacks. Returns whether sync() raises."""
        self._parts.metrics.passed(report)
        if report.ok:
            with contextlib.suppress(ClosedError):
                self.lastsynctime = time.time()
        return run_sync_callbacks(report, self.onsync, self.onsyncfail, syncraise=self.syncraise)

    @check.checked(stream=check.OPTIONAL_STREAM)
    def deadletters(self, stream: str | None = None) -> list[DeadLetter]:
        """The datapoints the remote refused (all streams, or one), oldest first."""
        self._check_open()
        return self._parts.letters.list(stream)

    @check.checked(restamp=check.BOOL)
    def retry_deadletters(self, ids: Iterable[int] | None = None, *, restamp: bool = False) -> int:
        """Send dead letters (all, or these ids) again with their own time, now, each to the
        remote that refused it, each stream's in time order as batches of their own
        (:mod:`~connectorsync.resend`). Those the remote cannot take (ConnectorDB refuses
        times older than its newest) or refuses again stay, saying why. ``restamp=True``
        queues them instead with new times, after the stream's newest, within the storage
        limits: they are delivered, at the risk of a second copy where one had arrived.
        Returns how many were sent (queued, with ``restamp``).

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        :raises CacheFullError: ``restamp``, and a limit is reached; nothing changed
        :raises RemoteError: the remote could not be asked; the letters not sent stay
        """
        self._check_open()
        return self._parts.letters.retry(ids, restamp=restamp)

    def purge_deadletters(self, ids: Iterable[int] | None = None) -> int:
        """Delete dead letters (all, or these ids) for good. Returns how many.

        :raises ArgumentTypeError: ``ids`` is not a list of ids; nothing changed
        """
        self._check_open()
        purged = self._parts.letters.purge(ids)
        log.warning("purged %d dead letters", purged)
        return purged

    def status(self) -> Status:
        """What is cached per stream, and how syncing and the clock go."""
        return self._parts.status()

    def metrics(self) -> str:
        """The metrics now, as OpenMetrics text (every metric: :doc:`metrics`)."""
        self._check_open()
        return self._parts.metrics.text()

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while ``metrics_port`` is set, else None."""
        return self._parts.metrics.url
