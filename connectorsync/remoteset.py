"""A Logger's set of remotes while it runs: the cache's record of them (:mod:`.fanout`) and
the syncer's couriers (:mod:`.syncer`), kept in step by ``add_remote``/``remove_remote``.

Guarantees (each proved by the test named, in ``tests/test_fanout.py``):

- A remote added takes the backlog of the streams it routes, or only what comes after
  (``test_a_remote_added_with_and_without_backfill``).
- A remote removed releases what only it held; the first remote and another's fallback
  cannot be removed (``test_removing_a_remote_releases_what_only_it_held``).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import fanout
from .cache import Cache
from .errors import ConfigurationError
from .remotes.base import Remote, bind_cache
from .syncer import Syncer


class RemoteSet:
    """The remotes of one Logger, by name (``primary``: its first, which stays)."""

    def __init__(self, cache: Cache, syncer: Syncer, primary: str):
        self.cache, self.syncer, self.primary = cache, syncer, primary

    def all(self) -> dict[str, Remote]:
        """Every remote delivered to, by name."""
        return {name: courier.remote for name, courier in self.syncer.couriers.items()}

    def add(  # noqa: PLR0913 - Logger.add_remote's arguments
        self,
        name: str,
        remote: Remote,
        streams: Sequence[str] | None,
        *,
        backfill: bool,
        give_up_after: float | None,
        fallback: str | None,
    ) -> None:
        """Record the remote in the cache (:func:`.fanout.add`), then start its courier.

        :raises ConfigurationError: a name in use, or a bad filter, fallback or seconds, or a
            remote bound to another cache
        """
        if name in self.syncer.couriers:
            raise ConfigurationError(f"add_remote(): this Logger delivers to {name!r} already")
        bind_cache(remote, self.syncer.identity)  # before it is recorded: it may refuse
        fanout.add(
            self.cache,
            name,
            remote,
            streams,
            backfill=backfill,
            give_up_after=give_up_after,
            fallback=fallback,
        )
        self.syncer.add(name, remote)

    def remove(self, name: str) -> int:
        """Stop the remote's courier and forget it; returns how many datapoints left.

        :raises ConfigurationError: no such remote, the first one, or another's fallback
        """
        if name == self.primary:
            raise ConfigurationError(
                f"remove_remote(): {name!r} is this Logger's first remote: open the cache "
                "with the remotes to keep, then remove it"
            )
        recorded = self.cache.remotes().all()
        leaning = [r.name for r in recorded.values() if r.fallback == name]
        if name in recorded and not leaning and name in self.syncer.couriers:
            self.syncer.remove(name)  # checked first: a refused removal keeps delivering
        return self.cache.remotes().remove(name)
