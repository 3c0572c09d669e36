"""A probe into a Logger's group commit (``durability="full"``), for tests.

Tests see group commit through this module only, never through private names:
:class:`GroupCommitProbe` counts the inserts waiting and the groups committed, and can raise
an exception (``KeyboardInterrupt`` by default) in the thread leading the next group, at one
of its moments (:data:`~connectorsync.cache.commit.FAULT_POINTS`): ``"gather"`` (before it
takes the queue), ``"before_commit"`` (its rows stored, the ``COMMIT`` not yet run) or
``"after_commit"`` (the ``COMMIT`` done, the waiters not yet told), as a Ctrl-C landing
there would.
"""

from __future__ import annotations

import threading

from ..cache.commit import FAULT_POINTS, GroupCommit
from ..errors import ConfigurationError
from ..logger import Logger

__all__ = ["FAULT_POINTS", "GroupCommitProbe"]


class GroupCommitProbe:
    """The group commit of ``logger``, which must use ``durability="full"``."""

    def __init__(self, logger: Logger):
        group = logger._cache._group
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
        inserts, at ``at`` (one of :data:`FAULT_POINTS`)."""
        if at not in FAULT_POINTS:
            raise ConfigurationError(f"at: expected one of {FAULT_POINTS}; got {at!r}")

        def fault(point: str, size: int) -> None:
            if point == at and size >= min_size and self._group.fault is fault:
                self._group.fault = None
                self.interrupted_thread = threading.get_ident()
                self.interrupted.set()
                raise exc(f"interrupted by the test at {at!r}, in a group of {size}")

        self._group.fault = fault
