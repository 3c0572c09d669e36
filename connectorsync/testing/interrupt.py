"""Interrupts where a Ctrl-C could land, for tests.

:func:`interrupt_after_next_commit` raises an exception (``KeyboardInterrupt`` by default)
once, in the thread that commits next to a Logger's cache, just after its ``COMMIT``
returned: the moment where a caller that stores its rows again would store them twice.
:func:`interrupt_inside_next_commit` raises it from inside the next ``COMMIT`` (SQLite's
commit hook), which SQLite then rolls back: no transaction is open afterwards, yet nothing
was committed, and a caller that took that for done would lose its rows.
Tests reach the cache through this module only, never through private names (it takes
the Logger's connection from :mod:`.internals`).
"""

from __future__ import annotations

import threading

from ..cache import testhooks
from ..logger import Logger
from .internals import cache_of

__all__ = ["interrupt_after_next_commit", "interrupt_inside_next_commit"]


def interrupt_after_next_commit(
    logger: Logger, exc: type[BaseException] = KeyboardInterrupt
) -> threading.Event:
    """Raise ``exc`` once, just after the next COMMIT of ``logger``'s own connection (the
    thread that commits gets it); returns an event set when it was raised."""
    cache = cache_of(logger)
    before = cache.on_commit
    fired = threading.Event()

    def on_commit(whole: float, commit: float) -> None:
        if before is not None:
            before(whole, commit)
        if not fired.is_set():
            fired.set()
            cache.on_commit = before
            raise exc("interrupted by the test just after a COMMIT")

    cache.on_commit = on_commit
    return fired


def interrupt_inside_next_commit(
    logger: Logger, exc: type[BaseException] = KeyboardInterrupt
) -> threading.Event:
    """Raise ``exc`` once, from inside the next COMMIT of ``logger``'s own connection (its
    commit hook: SQLite rolls that COMMIT back); returns an event set when it was raised."""
    fired = threading.Event()

    def raise_it() -> None:
        fired.set()
        raise exc("interrupted by the test inside a COMMIT")

    testhooks.fail_next_commit(cache_of(logger), raise_it)
    return fired
