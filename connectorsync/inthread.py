"""A function run once, in a thread of its own or in the caller's (the sync pass's
read-ahead and delete-behind, :mod:`connectorsync.delivery`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class InThread(Generic[T]):
    """``fn(*args)`` run once: in a thread of its own when :meth:`start` is called, else by
    the first :meth:`result`, in the caller's thread. :meth:`result` returns what it returned
    or raises what it raised, as often as it is called."""

    def __init__(self, fn: Callable[..., T], *args: Any):
        self._fn, self._args = fn, args
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._done = False

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="connectorsync-sync", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: result() runs it in the caller's thread
            return
        self._thread = thread

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        self._done = True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        elif not self._done:
            self._run()

    def result(self) -> T:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
