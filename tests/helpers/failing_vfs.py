"""A disk that fails on demand: an apsw VFS shim whose writes and fsyncs raise while armed.

:class:`FailingVFS` becomes the process's default VFS. It passes every operation through to
the real one, except that, while :meth:`FailingVFS.fail` is armed, ``xWrite``, ``xTruncate``
and ``xSync`` of a file under ``prefix`` raise: ``"eio"`` as an I/O error (SQLITE_IOERR, a
dying SD card), ``"readonly"`` as SQLITE_READONLY (a file system remounted read-only).
:meth:`FailingVFS.recover` ends it. The files of other paths (a test server's own SQLite
store) are never failed.

It is a test helper (tests/helpers/, not ``connectorsync.testing``) until the failing-write
hooks of the batched-durability work are unified with it.
"""

from __future__ import annotations

import threading
from typing import Any

import apsw

MODES = ("eio", "readonly")


def _filename(name: object) -> str:
    return name.filename() if isinstance(name, apsw.URIFilename) else str(name)


class FailingFile(apsw.VFSFile):
    def __init__(self, vfs: FailingVFS, name: Any, flags: list[int]):
        super().__init__(vfs.base, name, flags)
        self.vfs = vfs
        self.path = _filename(name)

    def xWrite(self, data: Any, offset: int) -> None:
        self.vfs.check(self.path)
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:
        self.vfs.check(self.path)
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:
        self.vfs.check(self.path)
        super().xSync(flags)


class FailingVFS(apsw.VFS):
    """The shim (see the module docstring); ``close()`` stops it being the default."""

    def __init__(self, name: str = "failing") -> None:
        self.base = apsw.vfs_names()[0]  # the real default, before this one replaces it
        self.mode: str | None = None
        self.prefix = "\0"  # matches no path until armed
        self.failures = 0  # operations failed so far
        self._lock = threading.Lock()
        super().__init__(name, base=self.base, makedefault=True)

    def fail(self, prefix: str, mode: str = "eio") -> None:
        """From now on, fail every write and fsync of the files whose path starts with
        ``prefix`` (``mode``: "eio" or "readonly")."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        with self._lock:
            self.prefix, self.mode = prefix, mode

    def recover(self) -> None:
        """The disk works again."""
        with self._lock:
            self.mode = None

    def check(self, path: str) -> None:
        with self._lock:
            mode = self.mode
            if mode is None or not path.startswith(self.prefix):
                return
            self.failures += 1
        if mode == "eio":
            raise apsw.IOError(f"injected EIO on {path}")
        raise apsw.ReadOnlyError(f"injected read-only file system on {path}")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        if name is None:  # a temporary file of SQLite's own: nothing durable in it
            return super().xOpen(name, flags)
        return FailingFile(self, name, flags)

    def close(self) -> None:
        self.unregister()
