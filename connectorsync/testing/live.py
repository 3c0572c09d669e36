"""Hooks on a running :class:`~connectorsync.Logger`, for tests.

What a test can see in the file, it reads there (:mod:`.probe`). These hooks are for what
exists only in the running Logger: a pragma of the very connection its inserts commit on,
a full disk for that connection, the latency of its ``batched`` commits, whether its
background syncer has taken a wake in hand. Each is named for what it does, and none is
for production use. Tests use them instead of private names
(``tests/test_private_names.py``); ``tests/test_probe.py`` proves each.
"""

from __future__ import annotations

from typing import Any

from ..cache import testhooks
from ..logger import Logger
from .internals import cache_of, wake_pending

__all__ = ["commit_latency", "connection_pragma", "fill_disk_after", "wake_pending"]


def connection_pragma(logger: Logger, name: str) -> Any:
    """``PRAGMA name`` as the Logger's own connection answers it: for the pragmas that are
    per connection (``synchronous``), which a second connection to the file would answer
    for itself."""
    return testhooks.pragma(cache_of(logger), name)


def fill_disk_after(logger: Logger, pages: int) -> int:
    """From now on the Logger's connection may grow the cache file by ``pages`` pages at
    most: past that every write it makes fails as on a full disk (``SQLITE_FULL``). Call it
    again with a large ``pages`` to give room back. Returns the file's new cap, in pages."""
    return testhooks.cap_pages(cache_of(logger), pages)


def commit_latency(logger: Logger) -> float | None:
    """The longest of the recent ``durability="batched"`` commits of the Logger, in seconds
    (None: none yet); what ``status().commit_latency`` shows, without ``status()``'s
    reads (safe in a process about to lose its power)."""
    return cache_of(logger).commit_latency()
