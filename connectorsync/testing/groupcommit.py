"""A probe into a Logger's group commit (``durability="full"``), for tests.

Tests see group commit through this module only, never through private names:
:class:`GroupCommitProbe` counts the inserts waiting and the groups committed, and can raise
an exception (``KeyboardInterrupt`` by default) in the thread leading the next group, at one
of its moments (:data:`~connectorsync.cache.commit.FAULT_POINTS`): ``"gather"`` (before it
takes the queue), ``"begun"`` (its ``BEGIN`` just returned), ``"before_commit"`` (its rows
stored, the ``COMMIT`` not yet run) or ``"after_commit"`` (the ``COMMIT`` done, the waiters
not yet told), as a Ctrl-C landing there would; or ``"during_commit"``: raised from inside
the ``COMMIT`` itself (a commit hook), which SQLite then rolls back, as a Ctrl-C landing in
Python code that SQLite calls while it commits (an apsw VFS in Python, a hook) does: the
``COMMIT`` raises and no transaction is open any more, yet nothing was committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..cache import testhooks
from ..cache.commit import FAULT_POINTS, GroupCommit
from ..errors import ConfigurationError
from ..logger import Logger
from .internals import cache_of

__all__ = ["FAULT_POINTS", "PROBE_POINTS", "GroupCommitProbe"]

#: Where :meth:`GroupCommitProbe.interrupt_next_group` can raise: the leader's
#: :data:`FAULT_POINTS`, and inside its ``COMMIT``.
PROBE_POINTS = (*FAULT_POINTS, "during_commit")


class GroupCommitProbe:
    """The group commit of ``logger``, which must use ``durability="full"``."""

    def __init__(self, logger: Logger):
        self._cache = cache_of(logger)
        group = testhooks.group_commit(self._cache)
        if group is None:
            raise ConfigurationError(
                f"group commit needs durability='full'; this Logger has {logger.durability!r}"
            )
        self._group: GroupCommit = group
        #: set once an interrupt asked for by :meth:`interrupt_next_group` was raised
        self.interrupted = threading.Event()
        #: the thread (``threading.get_ident()``) it was raised in
        self.interrupted_thread: int | None = None

    def waiting(self) -> int:
        """How many inserts wait for the next commit."""
        return self._group.waiting()

    @property
    def groups(self) -> int:
        """How many groups of more than one insert were committed."""
        return self._group.groups

    def interrupt_next_group(
        self, at: str, exc: type[BaseException] = KeyboardInterrupt, *, min_size: int = 2
    ) -> None:
        """Raise ``exc`` once, in the leader of the next group of at least ``min_size``
        inserts, at ``at`` (one of :data:`PROBE_POINTS`)."""
        if at not in PROBE_POINTS:
            raise ConfigurationError(f"at: expected one of {PROBE_POINTS}; got {at!r}")

        def interrupt(size: int) -> None:
            self.interrupted_thread = threading.get_ident()
            self.interrupted.set()
            raise exc(f"interrupted by the test at {at!r}, in a group of {size}")

        def fault(point: str, size: int) -> None:
            if size < min_size or self._group.fault is not fault:
                return
            if at == "during_commit" and point == "before_commit":
                self._group.fault = None
                self._fail_next_commit(lambda: interrupt(size))
            elif point == at:
                self._group.fault = None
                interrupt(size)

        self._group.fault = fault

    def wake_followers(self) -> None:
        """Wake every insert waiting for its group's outcome (as a leader's ``notify_all``
        does): each must look again, and wait again while its outcome is not decided."""
        testhooks.wake_followers(self._group)

    def followers_waiting(self) -> int:
        """How many inserts sleep until their group's outcome is announced."""
        return testhooks.followers_waiting(self._group)

    def _fail_next_commit(self, raise_it: Callable[[], None]) -> None:
        """The next COMMIT of the cache's connection calls ``raise_it`` from SQLite's commit
        hook: what it raises turns the COMMIT into a ROLLBACK and is raised by the COMMIT."""
        testhooks.fail_next_commit(self._cache, raise_it)
