"""What the test servers share: a service on 127.0.0.1 that starts and stops, knows its port,
and works as a context manager (start on enter, stop on exit)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

_S = TypeVar("_S", bound="LoopbackService")


class LoopbackService(ABC):
    """A server on 127.0.0.1:``port``. A subclass sets ``_port`` (0: a free port, which its
    first start replaces by the one it listens on, kept afterwards) and writes start and stop.
    """

    _port: int
    #: What the service is called in :attr:`url`'s error before the first start.
    _noun = "server"

    @abstractmethod
    def start(self: _S) -> _S:
        """Listen and serve; a no-op if already serving. Returns self."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving. Idempotent."""

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port; after the first start, the one actually listened on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; RuntimeError while port 0 awaits the first start."""
        if self._port == 0:
            raise RuntimeError(f"the {self._noun} has not been started yet")
        return f"http://127.0.0.1:{self._port}"
