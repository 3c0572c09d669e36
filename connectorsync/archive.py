"""Archive: every inserted datapoint also goes to a readable daily file.

``archive_dir/YYYY-MM-DD.jsonl`` (one ``{"stream", "t", "d"}`` object per line) or ``.csv``
(``stream,t,d`` with d as JSON), by the UTC date of the datapoint's timestamp. A device so
keeps its history after the cache has been synced and emptied.

Written after the cache committed and before ``insert()`` returns; with
``durability="full"`` it is fsynced too. Each line goes out in one ``write`` to a file opened
for appending, so lines from several processes never interleave.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import threading
from collections.abc import Iterable

from .errors import CacheError, ConfigurationError

FORMATS = ("jsonl", "csv")


class Archive:
    """Appends datapoints to daily files in ``directory``.

    :param fmt: ``"jsonl"`` or ``"csv"`` (the option ``archive_format``, which has the default)
    :param fsync: fsync after each write
    """

    def __init__(self, directory: str, fmt: str, *, fsync: bool):
        if fmt not in FORMATS:
            raise ConfigurationError(f"archive_format must be one of {FORMATS}; got {fmt!r}")
        self.directory = directory
        self.fmt = fmt
        self.fsync = fsync
        self._lock = threading.Lock()
        self._day: str | None = None
        self._fd: int | None = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"archive_dir {directory!r}: {exc}") from exc

    def write(self, points: Iterable[tuple[str, float, str]]) -> None:
        """Append ``(stream, t, d as JSON text)`` points, each to its day's file.

        :raises CacheError: the file cannot be written (disk full, say)
        """
        by_day: dict[str, list[str]] = {}
        for stream, t, data in points:
            day = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(self._line(stream, t, data))
        with self._lock:
            for day, lines in by_day.items():
                try:
                    fd = self._open(day)
                    os.write(fd, "".join(lines).encode())
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    raise CacheError(
                        f"cannot write the archive {self.path(day)!r}: {exc} (the datapoint "
                        "is in the cache)"
                    ) from exc

    def path(self, day: str) -> str:
        return os.path.join(self.directory, f"{day}.{self.fmt}")

    def _line(self, stream: str, t: float, data: str) -> str:
        if self.fmt == "jsonl":
            return f'{{"stream":{json.dumps(stream)},"t":{t!r},"d":{data}}}\n'
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([stream, repr(t), data])
        return out.getvalue()

    def _open(self, day: str) -> int:
        if day != self._day or self._fd is None:
            self.close()
            path = self.path(day)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            try:
                # Whoever creates the file writes the CSV header: exactly one process.
                self._fd = os.open(path, flags | os.O_EXCL, 0o600)
                if self.fmt == "csv":
                    os.write(self._fd, b"stream,t,d\n")
            except FileExistsError:
                self._fd = os.open(path, flags, 0o600)
            self._day = day
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._day = None


def reconfigured(
    archive: Archive | None, directory: str | None, fmt: str, *, fsync: bool
) -> Archive | None:
    """The archive these settings describe: ``archive`` itself when its directory and format
    are still the same (with ``fsync`` updated), else a new one (the old one closed), or None
    without a directory."""
    if archive is not None and (archive.directory, archive.fmt) == (directory, fmt):
        archive.fsync = fsync
        return archive
    if archive is not None:
        archive.close()
    return None if directory is None else Archive(directory, fmt, fsync=fsync)
