"""Space given back after a sync (issue 11, point 3): free pages returned in bounded steps,
the WAL checkpointed and cut, older caches converted once. Real files, a real loopback
ConnectorDB server, real threads and processes."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator

import apsw
import pytest

from connectorsync import Logger
from connectorsync.cache import Cache, space
from connectorsync.testing import ConnectorDBServer

from .conftest import PYTHON, ROOT, child_env, wait_for

NONE, INCREMENTAL = 0, 2


def pragma(path: str, name: str) -> int:
    """A PRAGMA's value read through a connection of its own that writes nothing."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(next(conn.execute(f"PRAGMA {name}"))[0])
    finally:
        conn.close()


def disk_size(path: str) -> int:
    """The cache file and its WAL, as the disk holds them."""
    wal = path + "-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


def make_old_cache(path: str, count: int = 20_000) -> None:
    """A current (v4) cache as connectorsync made it before free pages were given back:
    auto_vacuum NONE, with ``count`` datapoints."""
    with Logger(path) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [float(i) for i in range(count)])
    conn = apsw.Connection(path)
    conn.execute("PRAGMA auto_vacuum=NONE").fetchall()
    conn.execute("VACUUM").fetchall()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    assert pragma(path, "auto_vacuum") == NONE


def test_a_new_cache_is_incremental(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        lg.addStream("temperature", {"type": "number"})
    assert pragma(cache_path, "auto_vacuum") == INCREMENTAL


def test_an_older_cache_is_converted_when_opened(
    cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_old_cache(cache_path)
    with (
        caplog.at_level(logging.INFO, logger="connectorsync.cache.space"),
        Logger(cache_path) as lg,
    ):
        assert lg.status().streams["temperature"].cached == 20_000
        lg.insert("temperature", 1e9)
    assert pragma(cache_path, "auto_vacuum") == INCREMENTAL
    assert any("converted" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert pragma(cache_path, "freelist_count") == 0


@contextlib.contextmanager
def other_process(cache_path: str) -> Iterator[None]:
    """Another process that has the cache file open (an old program still running)."""
    code = (
        "import sys, apsw; c = apsw.Connection(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM datapoints').fetchall(); "
        "print('open', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [PYTHON, "-c", code, cache_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "open"
            yield
        finally:
            child.kill()


def test_a_conversion_that_cannot_run_is_a_warning_and_the_open_works(
    cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_old_cache(cache_path)
    # Another process has the file open: VACUUM would hold the write lock while it rewrites
    # the file, and its inserts would wait: not now.
    with (
        caplog.at_level(logging.WARNING, logger="connectorsync.cache.space"),
        other_process(cache_path),
        Logger(cache_path) as lg,
    ):
        lg.insert("temperature", 1e9)
        assert lg.status().streams["temperature"].cached == 20_001
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("another process has it open" in m for m in warnings), warnings
    assert pragma(cache_path, "auto_vacuum") == NONE
    # The next open, alone, converts it.
    with Logger(cache_path) as lg:
        assert lg.status().streams["temperature"].cached == 20_001
    assert pragma(cache_path, "auto_vacuum") == INCREMENTAL


class _CappedFile(apsw.VFSFile):
    def __init__(self, vfs: FullDisk, name: object, flags: list[int]):
        super().__init__(vfs.base, name, flags)  # type: ignore[arg-type]
        main = flags[0] & apsw.mapping_open_flags["SQLITE_OPEN_MAIN_DB"]
        self.cap = None if main else vfs.cap

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.cap is not None and offset + len(data) > self.cap:
            raise apsw.FullError("database or disk is full (simulated)")
        super().xWrite(data, offset)


class FullDisk(apsw.VFS):
    """The process's default VFS while it exists: a disk with room for ``cap`` bytes of WAL
    and temporary files, not for VACUUM's copy of a larger cache."""

    def __init__(self, cap: int) -> None:
        self.base, self.cap = apsw.vfs_names()[0], cap
        super().__init__("fulldisk", base=self.base, makedefault=True)

    def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:
        return _CappedFile(self, name, flags)


def test_a_conversion_on_a_full_disk_is_a_warning_and_the_open_works(
    cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_old_cache(cache_path, 50_000)
    assert os.path.getsize(cache_path) > 1_000_000
    disk = FullDisk(cap=256 * 1024)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="connectorsync.cache.space"),
            Logger(cache_path) as lg,
        ):
            lg.insert("temperature", 1e9)
            assert lg.status().streams["temperature"].cached == 50_001
    finally:
        disk.unregister()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("VACUUM failed" in m and "full" in m for m in warnings), warnings
    assert pragma(cache_path, "auto_vacuum") == NONE
    with Logger(cache_path) as lg:  # room again: converted
        assert lg.status().streams["temperature"].cached == 50_001
    assert pragma(cache_path, "auto_vacuum") == INCREMENTAL


def test_draining_a_backlog_gives_the_space_back(
    logger: Logger, cache_path: str, server: ConnectorDBServer
) -> None:
    peak = 0
    for start in range(0, 200_000, 10_000):
        logger.insert_many("temperature", [20.0 + i % 10 for i in range(start, start + 10_000)])
        peak = max(peak, disk_size(cache_path))
    report = logger.sync()
    assert report.ok and report.total_sent == 200_000
    after = disk_size(cache_path)
    assert after <= 0.05 * peak, f"{after} bytes after the drain, peak {peak}"
    assert pragma(cache_path, "freelist_count") == 0
    # Cut to 0, then a few pages of the pass's own state (last sync time...) written after.
    assert os.path.getsize(cache_path + "-wal") < 64 * 1024
    logger.insert("temperature", 1e10)  # the cache goes on working
    assert logger.status().streams["temperature"].cached == 1


def freed_pages(cache_path: str, count: int) -> None:
    """Leave about ``count`` datapoints' worth of free pages in the cache file."""
    with Logger(cache_path) as lg:
        if "temperature" not in lg:
            lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [20.0 + i % 10 for i in range(count)])
        lg.cleardata()


def test_each_vacuum_step_is_bounded(cache_path: str) -> None:
    freed_pages(cache_path, 100_000)
    assert pragma(cache_path, "freelist_count") > 3 * space.STEP_PAGES
    steps_needed = -(-pragma(cache_path, "freelist_count") // space.STEP_PAGES)
    cache = Cache.connect(cache_path)
    try:
        calls = 0
        while True:
            pages = pragma(cache_path, "page_count")
            free = pragma(cache_path, "freelist_count")
            report = cache.give_back_space(max_steps=1)
            calls += 1
            # Counted from outside: a step takes at most N free pages, and the file loses
            # those (plus, now and then, a pointer-map page, one per ~800, they no longer need).
            assert free - pragma(cache_path, "freelist_count") <= space.STEP_PAGES
            assert pages - pragma(cache_path, "page_count") == report.pages_freed
            assert report.pages_freed <= space.STEP_PAGES + 1
            assert report.steps <= 1
            if not report.pages_freed:
                break
        assert calls - 1 == steps_needed
        assert pragma(cache_path, "freelist_count") == 0
    finally:
        cache.close()


def _in_a_thread(cache_path: str) -> tuple[Callable[[], list[int]], Callable[[], None]]:
    stored: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Logger(cache_path, durability="normal") as lg:
                i = 0
                while not stop.is_set():
                    lg.insert("counter", i)
                    stored.append(i)
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(30)
        assert not errors, errors

    return lambda: stored, end


def _in_a_process(cache_path: str) -> tuple[Callable[[], list[int]], Callable[[], None]]:
    child = subprocess.Popen(
        [PYTHON, "-m", "tests.helpers.inserter", cache_path, "normal", "counter"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline().strip() == "ready"
    stored: list[int] = []
    out = child.stdout

    def read() -> None:
        for line in out:
            stored.append(int(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def end() -> None:
        assert child.poll() is None, child.stderr.read()  # type: ignore[union-attr]
        child.kill()
        child.wait()
        reader.join(10)
        errors = child.stderr.read()  # type: ignore[union-attr]
        for pipe in (child.stdout, child.stderr):
            pipe.close()  # type: ignore[union-attr]
        assert "locked" not in errors, errors

    return lambda: stored, end


@pytest.mark.parametrize("inserter", [_in_a_thread, _in_a_process], ids=["thread", "process"])
def test_inserts_go_on_while_space_is_given_back(
    cache_path: str,
    inserter: Callable[[str], tuple[Callable[[], list[int]], Callable[[], None]]],
) -> None:
    freed_pages(cache_path, 200_000)
    with Logger(cache_path) as lg:
        lg.addStream("counter", {"type": "integer"})
    stored, end = inserter(cache_path)
    cache = Cache.connect(cache_path)
    try:
        steps = 0
        while True:
            seen = len(stored())
            report = cache.give_back_space(max_steps=1)
            if not report.pages_freed:
                break
            steps += 1
            # The other writer's next insert goes in between this step and the next.
            wait_for(lambda seen=seen: len(stored()) > seen + 1, 30, "an insert between steps")
        assert steps >= 5
    finally:
        cache.close()
        end()
    values = stored()
    with Logger(cache_path) as lg:
        assert [p["d"] for p in lg.export("counter")][: len(values)] == values
    assert pragma(cache_path, "freelist_count") < space.STEP_PAGES
