"""What the test servers that are real programs share (influxd, mosquitto): a child process
started with a config file of its own under a directory of its own, on 127.0.0.1, stopped by
pid.

Guarantees: :meth:`ChildProcess.stop` sends SIGTERM by pid, SIGKILL after its timeout, and
reaps the child; :meth:`ChildProcess.kill` is a crash (SIGKILL, no shutdown); both are
idempotent. A child that exits or is not ready in time while starting is reaped and reported
with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._service import LoopbackService

_P = TypeVar("_P", bound="ChildProcess")


def free_port() -> int:
    """A port free on 127.0.0.1 right now (someone may take it before it is bound: callers
    that picked it try again on "address already in use")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess(LoopbackService):
    """A program run as a child process, its output going to ``log_path``.

    A subclass writes :meth:`start` (finding the binary, choosing ports) around
    :meth:`_spawn`, and names the program in ``_program`` and its log in ``_log_file``.
    """

    _proc: subprocess.Popen[bytes] | None = None
    _program = "the program"
    _log_file: str
    start_timeout: float

    def _spawn(
        self,
        argv: Sequence[str],
        cwd: str,
        log_path: str,
        ready: Callable[[], bool],
        error: type[Exception],
    ) -> None:
        """Start ``argv`` and wait until ``ready()``; ``error`` (with the log's tail) when it
        exits first, or is not ready within ``start_timeout`` (then it is stopped)."""
        with open(log_path, "ab") as log:
            # In the caller's process group, so a Ctrl-C or a kill of the group ends it too
            # when the caller gets no chance to call stop().
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise error(f"{self._program} exited with {code}:\n{self._log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise error(
                    f"{self._program} was not ready within {self.start_timeout} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log, for an error message."""
        try:
            with open(self._log_file, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL after ``timeout`` seconds, and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self: _P) -> _P:
        """Stop and start again, on the same ports, with the same data."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        return self._proc.pid if self._proc is not None and self.running else None
