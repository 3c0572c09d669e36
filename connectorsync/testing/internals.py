"""The one door from :mod:`connectorsync.testing` into a live :class:`~connectorsync.Logger`.

The hooks that drive an internal step of a running Logger (:mod:`.live`,
:mod:`.groupcommit`, :mod:`.interrupt`) need the parts it wires: its cache connection and
its syncer. They get them here, and only here, so that the private names of the Logger are
reached in one place that ``tests/test_private_names.py`` allows, and a reshaped Logger is
followed by changing this file alone. Tests never import this module: they use the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cache import Cache
    from ..logger import Logger
    from ..syncer import Syncer

__all__ = ["cache_of", "syncer_of", "wake_pending"]


def cache_of(logger: Logger) -> Cache:
    """The Logger's own cache connection (the one its inserts commit on)."""
    return logger._cache


def syncer_of(logger: Logger) -> Syncer:
    """The Logger's syncer (its background thread and its passes)."""
    return logger._syncer


def wake_pending(logger: Logger) -> bool:
    """True while the Logger's background syncer was woken (``sync_threshold``, a new
    ``syncperiod``, new credentials) and has not yet taken the wake in hand (its default
    remote's courier)."""
    return logger._syncer.default.woken
