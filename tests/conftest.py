"""Shared fixtures: real cache files under tmp_path and a real loopback ConnectorDB server."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from connectorsync import Logger
from connectorsync.testing import ConnectorDBServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache_path(tmp_path: Path) -> str:
    return str(tmp_path / "cache.db")


@pytest.fixture
def server() -> Iterator[ConnectorDBServer]:
    """A ConnectorDB-compatible server on 127.0.0.1 with device ``alice/sensor``."""
    srv = ConnectorDBServer()
    srv.start()
    srv.apikey = srv.add_device("alice", "sensor")  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def logger(cache_path: str, server: ConnectorDBServer) -> Iterator[Logger]:
    """A Logger on a fresh cache, pointed at ``server``, with a number stream ``temperature``."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    lg = Logger(cache_path, on_create=init)
    try:
        yield lg
    finally:
        lg.close()


def dump(path: str) -> list[tuple[str, list[tuple[object, ...]]]]:
    """Every table's rows, to compare a cache file before and after a failed call."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, list(conn.execute(f"SELECT * FROM {t} ORDER BY 1"))) for t in tables]
    finally:
        conn.close()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``condition()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


def child_env() -> dict[str, str]:
    """The environment for a child Python process that imports connectorsync from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
