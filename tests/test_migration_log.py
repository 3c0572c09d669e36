"""Issue 16: a new cache is created without a word about migrations; migrating an existing one
logs where its backup is (WARNING) and ``status().migration_backup`` names it, also after a
restart."""

from __future__ import annotations

import logging
import os

import apsw
import pytest

from connectorsync import Logger
from connectorsync.cache import MIGRATIONS

from .test_migration import make_connectordb_cache


def cache_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("connectorsync.cache")]


def test_a_new_cache_logs_no_migration(cache_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="connectorsync"), Logger(cache_path) as lg:
        lg.addStream_force("temperature")
        status = lg.status()
    said = [r.getMessage() for r in cache_records(caplog)]
    assert not [m for m in said if "migrat" in m], said
    assert status.migration_backup is None


def make_v1_cache(path: str) -> None:
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    MIGRATIONS[0][1](conn)  # a v1 cache, as an older connectorsync left it
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO streams (name, schema) VALUES ('temperature', '{}')")
    conn.execute("INSERT INTO datapoints (stream, t, d) VALUES (1, 1.7e9, '21.5')")
    conn.close()
    os.chmod(path, 0o600)


@pytest.mark.parametrize("kind", ["connectordb", "v1"])
def test_a_migrated_cache_names_its_backup_in_the_log_and_in_status(
    cache_path: str, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    if kind == "connectordb":
        make_connectordb_cache(cache_path, "k", "http://127.0.0.1:9")
    else:
        make_v1_cache(cache_path)
    backup = f"{cache_path}.{kind}-backup"
    with caplog.at_level(logging.INFO, logger="connectorsync"), Logger(cache_path) as lg:
        assert lg.status().migration_backup == backup
    warnings = [r for r in cache_records(caplog) if r.levelno == logging.WARNING]
    assert [backup in r.getMessage() for r in warnings] == [True], warnings
    assert os.path.exists(backup)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="connectorsync"), Logger(cache_path) as lg:
        assert lg.status().migration_backup == backup  # kept in the file
    assert not [r for r in cache_records(caplog) if "migrat" in r.getMessage()]
