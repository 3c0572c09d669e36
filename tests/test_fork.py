"""A Logger used after ``os.fork()``: the child gets a clear error, never a false success.

SQLite forbids using a connection in a child forked after it was opened, and what a
``batched`` Logger queued is copied into the child although the parent commits it. So in a
forked child every use of an inherited Logger raises a ``CacheError`` that says to open a new
Logger there, before any lock is taken, whatever the durability; ``close()`` in the child
changes nothing of the parent's (file, syncer, sync lock). A new Logger opened in the child
works, even when another thread of the parent was writing at the fork (the fork waits for its
transaction). Real ``os.fork()``, real files (``cache/connection.py`` says why).
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import apsw
import pytest

from connectorsync import CacheError, Logger
from connectorsync.testing import ConnectorDBServer

from .conftest import wait_for

DURABILITIES = ["full", "normal", "batched"]


def in_child(work: Callable[[], str], timeout: float = 60.0) -> str:
    """Run ``work`` in a child made by ``os.fork()``; what it returned, or ``raised TYPE:
    MESSAGE``. The child ends with ``os._exit`` (no atexit, as multiprocessing does); one
    that does not answer within ``timeout`` seconds (a hang) is killed and the test fails."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read)
            try:
                answer = work()
            except BaseException as exc:
                answer = f"raised {type(exc).__name__}: {exc}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child hung; it said so far: {b''.join(chunks)!r}")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def make_logger(cache_path: str) -> Iterator[Callable[..., Logger]]:
    made: list[Logger] = []

    def make(**options: object) -> Logger:
        lg = Logger(
            cache_path, on_create=lambda lg: lg.addStream("n", {"type": "integer"}), **options
        )
        made.append(lg)
        return lg

    yield make
    for lg in made:
        lg.close()


def _stored(path: str) -> list[int]:
    with Logger(path) as lg:
        return [dp["d"] for dp in lg.export("n")]


@pytest.mark.parametrize("durability", DURABILITIES)
def test_an_inherited_logger_refuses_in_the_child_and_the_parent_goes_on(
    cache_path: str, make_logger: Callable[..., Logger], durability: str
) -> None:
    """The child's insert raises a clear CacheError and stores nothing; its close() touches
    nothing; the parent's datapoints (a batched queue included) are stored once."""
    lg = make_logger(durability=durability, commit_interval=3600.0)
    lg.insert("n", 1)  # batched: still queued at the fork

    def child() -> str:
        try:
            lg.insert("n", 666)
        except CacheError as exc:
            answer = f"refused: {exc}"
        else:
            answer = "inserted"
        lg.close()  # must neither hang nor write
        return answer

    answer = in_child(child)
    assert answer.startswith("refused: "), answer
    assert "fork" in answer and "new Logger" in answer and str(os.getpid()) in answer
    lg.insert("n", 2)
    lg.close()
    assert _stored(cache_path) == [1, 2]


@pytest.mark.parametrize("durability", DURABILITIES)
def test_every_method_of_an_inherited_logger_refuses_in_the_child(
    cache_path: str, make_logger: Callable[..., Logger], durability: str
) -> None:
    lg = make_logger(durability=durability)
    lg.insert("n", 1)

    def child() -> str:
        answers = []
        for name, call in [
            ("insert_many", lambda: lg.insert_many("n", [5, 6])),
            ("len", lambda: len(lg)),
            ("flush", lg.flush),
            ("status", lg.status),
            ("sync", lg.sync),
            ("export", lambda: list(lg.export("n"))),
        ]:
            try:
                call()
            except CacheError as exc:
                answers.append("fork" in str(exc))
            else:
                return f"{name} worked in the child"
        return "all refused" if all(answers) else "a refusal did not say why"

    assert in_child(child) == "all refused"
    lg.close()
    assert _stored(cache_path) == [1]


def test_a_child_forked_from_a_syncing_logger_leaves_the_sync_lock_to_the_parent(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """The parent syncs in the background and serves metrics; the child closes its copy:
    nothing hangs (the metrics server and the syncer thread do not exist in the child), and
    the parent's syncer keeps the sync lock and goes on delivering."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("n", {"type": "integer"})

    with Logger(cache_path, on_create=init, syncperiod=3600, sync_jitter=0, metrics_port=0) as lg:
        lg.insert("n", 1)
        assert lg.metrics_url is not None  # a server thread the child does not have
        lg.start()  # its first pass at once: from then on its thread holds the sync lock
        wait_for(lambda: lg.status().last_sync is not None, what="the first background pass")

        def child() -> str:
            lg.close()
            with Logger(cache_path) as mine:  # the parent is another process here
                return mine.sync().errors["*"]

        assert "another process syncs" in in_child(child)
        with Logger(cache_path) as other:  # the parent's syncer still holds the sync lock
            assert "another Logger of this process syncs" in other.sync().errors["*"]
        lg.insert("n", 2)
        report = lg.sync()
        assert report.ok and report.sent == {"n": 1}, report
        assert [dp["d"] for dp in server.datapoints("alice/sensor/n")] == [1, 2]


@pytest.mark.parametrize("durability", DURABILITIES)
def test_a_new_logger_in_the_child_works(
    cache_path: str, make_logger: Callable[..., Logger], durability: str
) -> None:
    lg = make_logger(durability=durability)
    lg.insert("n", 1)
    lg.flush()

    def child() -> str:
        with Logger(cache_path, durability=durability) as mine:
            mine.insert("n", 2)
        return "stored"

    assert in_child(child) == "stored"
    lg.insert("n", 3)
    lg.close()
    assert _stored(cache_path) == [1, 2, 3]


class _HeldFile(apsw.VFSFile):
    def __init__(self, vfs: HoldingVFS, name: str | apsw.URIFilename | None, flags: list[int]):
        self._vfs = vfs
        super().__init__(vfs.base, name, flags)

    def xSync(self, flags: int) -> None:
        self._vfs.syncing()
        super().xSync(flags)


class HoldingVFS(apsw.VFS):
    """The real file system, made the process's default VFS, that can hold the next
    ``xSync`` of one thread: inside its ``COMMIT`` (``synchronous=FULL`` syncs the WAL
    there), its write lock held."""

    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]
        super().__init__("test-fork-hold", base=self.base, makedefault=True)
        self.hold: Callable[[], None] | None = None
        self.thread: int | None = None

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        return _HeldFile(self, name, flags)

    def syncing(self) -> None:
        hold = self.hold
        if hold is not None and threading.get_ident() == self.thread:
            self.hold = None
            hold()


def test_a_fork_while_another_thread_writes_leaves_the_child_free_to_write(
    cache_path: str,
) -> None:
    """Another thread of the parent is inside a write transaction (in its ``COMMIT``) when
    the main thread forks: the fork waits for it to end, so the child's new Logger on the
    same file writes at once. (SQLite keeps its locks in the process's memory: a transaction
    under way at the fork would stay under way in the child's copy for ever, and the child's
    first write would wait out the whole busy timeout, 60 s, for a thread that is not
    there: ``cache/connection.py``, ``_quiesce_before_fork``.)"""
    vfs = HoldingVFS()
    try:
        lg = Logger(cache_path, on_create=lambda lg: lg.addStream("n", {"type": "integer"}))
        try:
            lg.insert("n", 1)
            inside, forking = threading.Event(), threading.Event()

            def hold() -> None:
                inside.set()
                forking.wait(30)
                time.sleep(0.5)  # still inside while the fork happens (were it not waited for)

            def write() -> None:
                vfs.thread, vfs.hold = threading.get_ident(), hold
                lg.insert("n", 2)

            def child() -> str:
                with Logger(cache_path) as mine:
                    mine.insert("n", 3)
                return "stored"

            writer = threading.Thread(target=write)
            writer.start()
            assert inside.wait(30), "the writer's COMMIT did not sync"
            forking.set()
            assert in_child(child, timeout=30) == "stored"
            writer.join(30)
            lg.insert("n", 4)
        finally:
            lg.close()
    finally:
        vfs.unregister()
    assert _stored(cache_path) == [1, 2, 3, 4]
