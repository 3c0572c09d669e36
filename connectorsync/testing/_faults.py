"""Fault injection shared by the test servers (ConnectorDBServer and HTTPReceiver)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any


class Faults:
    """Pending injected faults of a test server; every method is thread-safe.

    Failures answer the next requests (matching a method and a path substring, if given)
    with a status; drops close the connection before or after a write is recorded; a delay
    holds requests back; ``reject`` is the server's own predicate for refusing a body.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            # [remaining, status, retry_after, methods, path substring]
            self._failures: list[list[Any]] = []
            self._delay = 0.0
            self._delay_left: int | None = None
            self._drop_before = 0
            self._drop_after = 0
            self.reject: Callable[[str, Any], bool] | None = None

    def fail_next(
        self,
        n: int,
        status: int,
        retry_after: Any,
        methods: Collection[str] | None,
        path: str | None = None,
    ) -> None:
        allowed = None if methods is None else {m.upper() for m in methods}
        with self._lock:
            self._failures.append([n, status, retry_after, allowed, path])

    def set_delay(self, seconds: float, n: int | None) -> None:
        with self._lock:
            self._delay, self._delay_left = seconds, n

    def add_drops(self, before: int = 0, after: int = 0) -> None:
        with self._lock:
            self._drop_before += before
            self._drop_after += after

    def take_delay(self) -> float:
        with self._lock:
            if self._delay <= 0:
                return 0.0
            seconds = self._delay
            if self._delay_left is not None:
                self._delay_left -= 1
                if self._delay_left <= 0:
                    self._delay, self._delay_left = 0.0, None
            return seconds

    def take_failure(self, method: str, path: str) -> tuple[int, Any] | None:
        with self._lock:
            for rule in self._failures:
                if (rule[3] is None or method in rule[3]) and (rule[4] is None or rule[4] in path):
                    rule[0] -= 1
                    if rule[0] <= 0:
                        self._failures.remove(rule)
                    return rule[1], rule[2]
        return None

    def take_drop(self, after: bool) -> bool:
        with self._lock:
            if after and self._drop_after > 0:
                self._drop_after -= 1
                return True
            if not after and self._drop_before > 0:
                self._drop_before -= 1
                return True
        return False
