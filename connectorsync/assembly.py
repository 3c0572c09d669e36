"""The parts of one :class:`~connectorsync.Logger`, wired together, and their life: opened on
the cache file, undone when the constructor fails, closed with one last bounded drain.

The Logger is the facade; what it is made of lives here. :class:`Assembly` opens the cache,
builds each part on it (settings, streams, device time, the writer, metrics, the syncer with
a courier per remote, and the roles the Logger hands its methods to: :mod:`.letters`,
:mod:`.reading`, :mod:`.remoteset`), applies the constructor's options, and tracks the state
(open, being created by ``on_create``, closed).

Guarantees (each proved by the test named):

- A constructor that fails (``on_create`` raising or returning False) leaves no file behind,
  and the next one starts afresh (``test_logger.py::test_failed_on_create_leaves_no_file``).
- ``close()`` returns within its ``timeout`` whatever the remote does
  (``test_lifecycle.py::test_close_returns_in_its_timeout_while_a_request_hangs``), a running
  syncer first making one last pass in what is left of it
  (``test_faults.py::test_close_makes_one_last_bounded_drain``); from a callback it makes no
  pass (``test_lifecycle.py::test_close_from_a_callback_closes_the_logger``); in a forked
  child it touches nothing of the parent's
  (``test_metrics.py::test_close_in_a_forked_child_returns_and_the_parent_serves``).
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import fanout
from .afterpass import AfterPass
from .cache import Cache, sealing
from .cache.identity import cache_identity
from .delivery import SyncReport
from .devicetime import DeviceTime
from .errors import CacheError, ClosedError, ConfigurationError, ConnectorSyncError
from .keysource import find_key
from .letters import DeadLetters
from .metrics import LoggerMetrics
from .options import Configurable, Settings
from .reading import Reader
from .remoteholder import RemoteHolder
from .remotes.base import MAX_SECONDS, Remote
from .remotes.config import record_remote
from .remoteset import RemoteSet
from .status import Status, collect_status
from .streams import StreamRegistry, Subscribers
from .syncer import PassHooks, Syncer
from .targets import Parts
from .writer import Writer

#: Seconds ``stop()`` waits for the background thread (an idle one ends at once; one in a
#: hung request ends by itself later, and ``start()`` carries on with it).
STOP_WAIT = 1.0


class State(enum.Enum):
    """Where a Logger is in its life (httpx's ``ClientState``)."""

    OPEN = 1
    CLOSED = 2


class Assembly:
    """The wired parts of one Logger, built on its cache file.

    :param path: the cache file (created if missing)
    :param remote: ``remote=``, the one remote (named ``default``), or None
    :param remotes: ``remotes=``, several by name, or None (neither: the default remote,
        built from the settings)
    :param options: the constructor's options, checked first, applied once the parts are built
    :param step: what follows each pass (:class:`~connectorsync.afterpass.AfterPass`);
        returns whether ``sync()`` raises
    :raises ConfigurationError, CacheError: a bad option or remote, or a file that cannot be
        opened; nothing is left open (a new file is removed)
    """

    def __init__(
        self,
        path: str,
        remote: Remote | None,
        remotes: Mapping[str, Remote] | None,
        options: dict[str, Any],
        step: Callable[[SyncReport], bool],
    ):
        Settings.check_keywords(options)
        self.given = fanout.named(remote, remotes)
        self.path = path
        self.state = State.OPEN
        self.creating = self.start_when_created = False
        self.one_remote = remote  # remote=: recorded once opened, to be built again
        self.primary = fanout.primary_name(self.given)
        self.remote = RemoteHolder(self.given.get(self.primary))
        self.after = AfterPass(step)  # the background passes' listener too
        durability = options.get("durability", Configurable.durability.default)
        # The key is read once, here (never stored, never an option's value afterwards).
        key = find_key(
            Configurable.key.checked(options.pop("key", None)),
            Configurable.key_file.checked(options.pop("key_file", None)),
        )
        sealing.refuse_before_migrating(path, key)
        self.cache, self.created = Cache.open(path, durability)
        try:
            sealing.bind(self.cache, key, created=self.created)
            self._wire(options)
        except BaseException:
            self.abandon()
            raise

    def _wire(self, options: dict[str, Any]) -> None:
        """Build the parts on the open cache, then apply the constructor's options."""
        cache = self.cache
        # A change acts on the parts built below; none is made before they are.
        self.settings = Settings(cache, lambda option: self.targets.changed(option))
        self.settings.load(self.created)
        self.options = self.settings.options
        self.streams = StreamRegistry(cache, self.primary)
        self.streams.load()
        self.time = DeviceTime(cache, self.options)
        self.subscribers = Subscribers()
        self.writer = Writer(cache, self.streams, self.time, self.subscribers)
        self.metrics = LoggerMetrics(cache, self.status)
        hooks = PassHooks(before=self.remote.before(self.time.before_pass), hold=self.time.hold)
        extra = {name: r for name, r in self.given.items() if name != self.primary}
        remotes = {self.primary: self.remote.get(self.settings), **extra}
        self.syncer = Syncer(
            self.path,
            self.options,
            remotes,
            hooks,
            self.after,
            cache_identity(cache),
            sealer=cache.sealer,
        )
        parts = (cache, self.writer, self.time, self.syncer, self.metrics, self.remote)
        self.targets = Parts(self.settings, *parts)
        self.letters = DeadLetters(cache, self.syncer, self.streams, self.writer, self.settings)
        self.reader = Reader(cache, self.streams)
        self.remotes = RemoteSet(cache, self.syncer, self.primary)
        self.settings.set_from_constructor(options, self.path)
        self.targets.build()

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """The remotes given recorded, the constructor's last steps (its ``apikey``,
        ``on_create``), then the file is done opening; if any of it raises, everything is
        undone."""
        try:
            # Before on_create: a stream it adds is created on the first remote, recorded.
            fanout.record(self.cache, self.given, created=self.created)
            yield
            self.targets.finish_opening(self.created)
        except BaseException:
            self.abandon()
            raise

    def create(self, on_create: Callable[[], Any]) -> None:
        """Run ``on_create`` on the new file (inside its creating transaction).

        :raises ConfigurationError: it returned False
        """
        self.creating = True
        try:
            if on_create() is False:
                raise ConfigurationError("on_create returned False: the logger is not usable")
        finally:
            self.creating = False

    def opened(self) -> None:
        """The constructor succeeded: record how to build ``remote=`` again
        (:mod:`~connectorsync.remotes.config`), and start if ``on_create`` asked to."""
        if self.one_remote is not None:
            record_remote(self.cache, self.one_remote)
        if self.start_when_created:
            self.syncer.start()

    def abandon(self) -> None:
        """The constructor failed: undo it (a new file is removed)."""
        self.state = State.CLOSED
        if hasattr(self, "metrics"):
            self.metrics.close()
        if hasattr(self, "syncer"):
            self.syncer.close()
        (self.cache.abort_create if self.created else self.cache.close)()

    @property
    def open(self) -> bool:
        return self.state is State.OPEN

    def check_open(self) -> None:
        """:raises ClosedError: closed; :raises CacheError: in a child forked since it opened"""
        if self.state is State.CLOSED:
            raise ClosedError(f"Logger({self.path!r}) is closed")
        self.cache.check_process()  # a forked child: raise before any lock (test_fork.py)

    def start(self) -> None:
        """Start the background syncer (inside ``on_create``: once the file is made)."""
        if self.creating:
            self.start_when_created = True  # the file is not there for others until then
            return
        self.syncer.start()

    def stop(self) -> None:
        self.syncer.stop(timeout=STOP_WAIT)

    def sync(self, progress: Callable[[str, int], object] | None) -> SyncReport:
        """One pass by hand, after the ``batched`` queue is committed; returns its report.

        :raises ConnectorSyncError: inside ``on_create``, or inside a sync callback
        """
        if self.creating:
            raise ConnectorSyncError(
                "sync() cannot run inside on_create: the cache file is being created; "
                "call sync() once Logger(...) has returned"
            )
        self.after.refuse_a_pass()  # inside onsync/onsyncfail: CallbackError
        self.cache.flush()
        return self.syncer.sync(progress=progress)

    def status(self) -> Status:
        self.check_open()
        return collect_status(self.cache, self.syncer.sync_state(), self.time)

    def close(self, timeout: float) -> None:
        """``Logger.close``: stop, one last pass within ``timeout`` if the syncer ran, close."""
        if math.isnan(timeout):
            raise ConfigurationError(f"close(): timeout must be a number of seconds; got {timeout}")
        # Infinity (or 1e300): as long as it takes; no thread can wait longer than this.
        timeout = min(timeout, MAX_SECONDS)
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self.cache.inherited:  # a forked child: touch nothing (tests/test_fork.py)
            self.cache.close()
            return
        deadline = time.monotonic() + timeout
        self.metrics.close()
        with contextlib.suppress(CacheError):
            self.cache.flush()  # for the last pass; failing, the cache's close() says so
        was_running = self.syncer.running
        if self.syncer.stop(timeout) and was_running and not self.after.running_here:
            self.syncer.drain(max(0.0, deadline - time.monotonic()))
        self.syncer.close()
        self.remote.close()
        if self.writer.archive is not None:
            self.writer.archive.close()
        self.cache.close()
