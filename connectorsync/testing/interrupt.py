"""Interrupts where a Ctrl-C could land, for tests.

:func:`interrupt_after_next_commit` raises an exception (``KeyboardInterrupt`` by default)
once, in the thread that commits next to a Logger's cache, just after its ``COMMIT``
returned: the moment where a caller that stores its rows again would store them twice.
Tests reach the cache through this module only, never through private names.
"""

from __future__ import annotations

import threading

from ..logger import Logger

__all__ = ["interrupt_after_next_commit"]


def interrupt_after_next_commit(
    logger: Logger, exc: type[BaseException] = KeyboardInterrupt
) -> threading.Event:
    """Raise ``exc`` once, just after the next COMMIT of ``logger``'s own connection (the
    thread that commits gets it); returns an event set when it was raised."""
    cache = logger._cache
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
