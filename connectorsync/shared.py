"""What a Logger's couriers are handed by the :class:`~connectorsync.syncer.Syncer`: the
cache file, the options, device time's part in each pass, the file's sync lock, the
listeners and the sealer (:class:`Shared`, with its :class:`PassHooks`). A courier reads
these and never calls up into the Logger (DESIGN.md, "Layout").

Guarantees (each proved by the test named, in ``tests/``):

- ``on_pass`` hears each background pass (and close's drain), after the pass and outside
  every lock, never a :meth:`~connectorsync.courier.Courier.sync` asked for by hand
  (``test_sync_policy.py::test_the_listener_hears_the_background_passes_only``,
  ``test_lifecycle.py::test_close_from_a_callback_closes_the_logger``).
- ``on_state`` writes the lease: how each remote goes, whichever process looks
  (``test_courier.py::test_the_lease_says_how_each_remote_goes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .cache import Cache, Untrusted
from .cache.seal import Sealer
from .options import Options
from .report import SyncReport
from .synclock import SharedSyncLock


@dataclass(frozen=True)
class PassHooks:
    """What device time adds to a pass, handed down by the Logger.

    :ivar before: run with the courier's cache connection before each pass (expiry, an NTP
        refresh when due); an error is logged, the pass goes on
    :ivar hold: what to hold back until the clock is trusted, asked once per pass
    """

    before: Callable[[Cache], object] = lambda cache: None
    hold: Callable[[], Untrusted | None] = lambda: None


@dataclass(frozen=True)
class Shared:
    """What a Logger's couriers share, handed to each by the Syncer.

    :ivar path: the cache file
    :ivar options: the Logger's options (read when needed)
    :ivar hooks: device time's part in each pass (its ``before`` run by one courier at a
        time)
    :ivar lock: the file's sync lock, held by every courier that runs
    :ivar on_pass: called with the report of each background pass (and of close's drain),
        after the pass, outside every lock; never by :meth:`Courier.sync`
    :ivar on_state: called with the courier's connection when its state (running,
        last_error, next_attempt, paused) may have changed: the lease is written through it
    :ivar sealer: the cache's sealer (None: a plain cache), for the couriers' connections
    """

    path: str
    options: Options
    hooks: PassHooks
    lock: SharedSyncLock
    on_pass: Callable[[SyncReport], object]
    on_state: Callable[[Cache], object]
    sealer: Sealer | None = None
