"""What follows a sync pass: one step, run by whoever ran the pass, outside every lock.

A pass returns its :class:`~connectorsync.report.SyncReport`, and nothing more happens inside
it. The step that follows (the Logger's: metrics, ``lastsynctime``, ``onsync`` or
``onsyncfail``) takes that report and returns what its caller needs: the background syncer
runs it after each of its passes and ignores the answer; ``Logger.sync()`` runs it after its
own pass and raises or not by the answer. Each caller applies the step to the report it holds,
so a ``sync()`` running while the background thread passes gets the verdict of its own pass,
never the thread's (``test_sync_policy.py::test_sync_applies_its_policy_to_its_own_pass``).
:func:`run_sync_callbacks` is ConnectorDB's part of the step: the callbacks, and the answer.

Guarantees:

- A pass asked for from inside the step (``sync()`` in ``onsync`` or ``onsyncfail``) is
  refused with :class:`CallbackError`, never a deadlock or an endless recursion, in the
  background thread as in a ``sync()``
  (``test_lifecycle.py::test_sync_from_a_callback_raises_a_clear_error``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import ConnectorSyncError
from .report import SyncReport

T = TypeVar("T")


class CallbackError(ConnectorSyncError):
    """A method that starts a pass was called from inside a sync callback."""


class AfterPass(Generic[T]):
    """The step that follows a pass, and the guard that knows which threads are inside it.

    :param step: ``step(report)``, run outside every lock; what it returns is handed back
        to whoever ran the pass (``Logger.sync()``: whether to raise the pass's error)
    """

    def __init__(self, step: Callable[[SyncReport], T]):
        self._step = step
        # Per thread, by nature: the background thread may be inside the step while another
        # thread's sync() starts a pass of its own, which is allowed.
        self._inside = threading.local()

    def __call__(self, report: SyncReport) -> T:
        """Run the step on ``report`` in this thread, and return what it returned."""
        self._inside.active = True
        try:
            return self._step(report)
        finally:
            self._inside.active = False

    @property
    def running_here(self) -> bool:
        """True in a thread that runs the step right now."""
        return bool(getattr(self._inside, "active", False))

    def refuse_a_pass(self) -> None:
        """Raise :class:`CallbackError` in a thread that runs the step: the pass that called it
        has just ended, and a pass from here would run the step again inside itself.

        :raises CallbackError: called from inside the step
        """
        if self.running_here:
            raise CallbackError(
                "sync() cannot run inside onsync/onsyncfail (the pass that called them has "
                "just ended); return from the callback, the next pass follows"
            )


def run_sync_callbacks(
    report: SyncReport,
    onsync: Callable[[], Any] | None,
    onsyncfail: Callable[[Exception], Any] | None,
    *,
    syncraise: bool,
) -> bool:
    """ConnectorDB's callbacks for one pass, and ``sync()``'s failure policy, as connectordb
    0.3.5 has them: after a complete pass ``onsync()``; after a failed one
    ``onsyncfail(error)``. Returns whether ``sync()`` raises the pass's error: ``onsyncfail``'s
    answer, or ``syncraise`` without one; never after a complete pass."""
    if report.ok:
        if onsync is not None:
            onsync()
        return False
    if onsyncfail is None:
        return bool(syncraise)
    error = report.exception or ConnectorSyncError(report.message or "sync failed")
    return bool(onsyncfail(error))
