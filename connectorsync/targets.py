"""Where a changed option acts: each :class:`~connectorsync.options.Target` and what it does
to the parts of one Logger.

An option names its targets (:attr:`Option.acts <connectorsync.options.Option.acts>`); when
it changes, :meth:`Parts.apply` does what each says, after the value was checked and stored
(:class:`~connectorsync.options.Settings`). Each action works from the current
:class:`~connectorsync.options.Options`, not from the change: whichever of a part's options
changed, the part is brought in line with all of them. Options that name no target are read
by the part that uses them, when it uses them. ``tests/test_options.py`` checks that every
target has an action here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .archive import reconfigured
from .cache import Cache, Limits
from .devicetime import DeviceTime
from .metrics import LoggerMetrics
from .options import Option, Options, Settings, Target
from .remoteholder import RemoteHolder
from .syncer import Syncer
from .writer import Writer


@dataclass(frozen=True)
class Parts:
    """The parts of one Logger that options act on."""

    settings: Settings
    cache: Cache
    writer: Writer
    time: DeviceTime
    syncer: Syncer
    metrics: LoggerMetrics
    remote: RemoteHolder

    @property
    def options(self) -> Options:
        return self.settings.options

    def changed(self, option: Option[Any]) -> None:
        """``option`` changed: apply it where it acts."""
        self.apply(*option.acts)

    def apply(self, *targets: Target) -> None:
        """Bring each target in line with the options, in the order given."""
        for target in targets:
            ACTIONS[target](self)

    def build(self) -> None:
        """Once the Logger is wired: build the writer's limits and archive, and the clock's
        mode, from the options as the file and the constructor gave them (the cache's
        durability follows when it has finished opening)."""
        self.apply(Target.LIMITS, Target.ARCHIVE, Target.CLOCK)

    def finish_opening(self, created: bool) -> None:
        """The Logger is built (and a new file filled by ``on_create``): the cache commits
        with the options' durability and ``commit_interval`` from now on."""
        self.cache.set_commit_interval(self.options.commit_interval)
        self.cache.finish_opening(created, self.options.durability)


def _durability(parts: Parts) -> None:
    # The interval first: "batched" builds its queue with it.
    parts.cache.set_commit_interval(parts.options.commit_interval)
    parts.cache.set_durability(parts.options.durability)


def _limits(parts: Parts) -> None:
    options = parts.options
    limits = Limits.from_on_full(
        options.on_full, options.max_cached, options.max_cache_bytes, options.min_free_disk
    )
    parts.writer.limits = limits if limits.engaged else None


def _archive(parts: Parts) -> None:
    options = parts.options
    parts.writer.archive = reconfigured(
        parts.writer.archive,
        options.archive_dir,
        options.archive_format,
        fsync=options.durability == "full",
    )


#: What each target does to the parts.
ACTIONS: dict[Target, Callable[[Parts], object]] = {
    Target.REMOTE: lambda parts: parts.syncer.set_remote(parts.remote.rebuilt(parts.settings)),
    Target.CREDENTIALS: lambda parts: parts.syncer.resume(),
    Target.PERIOD: lambda parts: parts.syncer.wake(),
    Target.COMMIT_INTERVAL: lambda parts: parts.cache.set_commit_interval(
        parts.options.commit_interval
    ),
    Target.DURABILITY: _durability,
    Target.LIMITS: _limits,
    Target.ARCHIVE: _archive,
    Target.CLOCK: lambda parts: parts.time.options_changed(),
    Target.METRICS: lambda parts: parts.metrics.serve(parts.options.metrics_port),
}
