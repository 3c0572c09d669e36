"""A function run once, in a thread of its own or in the caller's (the sync pass's
read-ahead and delete-behind, :mod:`connectorsync.delivery`); or begun in a thread of its own
and waited for until a deadline at most (close's last pass, :func:`begin`)."""

from __future__ import annotations

import threading
import time
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


def begin(
    job: Callable[[], T], name: str, on_error: Callable[[Exception], object]
) -> Callable[[float], T | None]:
    """``job()`` begun at once in a daemon thread named ``name``; returns the wait for it:
    ``wait(deadline)`` waits until ``deadline`` (a ``time.monotonic()``) at most, and returns
    what ``job`` returned (None: not ended by then, or it raised). An exception of ``job``
    goes to ``on_error``, in its thread; a job that outlasts the wait ends by itself."""
    result: list[T] = []

    def run() -> None:
        try:
            result.append(job())
        except Exception as exc:  # the caller goes on: it only hears of it
            on_error(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait(deadline: float) -> T | None:
        thread.join(max(0.0, deadline - time.monotonic()) + 0.05)
        return result[0] if result else None

    return wait
