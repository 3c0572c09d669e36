"""Invariant 1: insert() returns only after the datapoint is committed.

A real child process inserts; the parent SIGKILLs it right after reading that an insert
returned, then reopens the cache and finds every returned datapoint. Invariant 8's "inserting
never fails with database is locked" is exercised by several processes inserting at once.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import time

import pytest

from connectorsync import Logger
from connectorsync.cache import Cache
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.live import connection_pragma
from connectorsync.testing.probe import CacheProbe

from .conftest import PYTHON, ROOT, child_env, power_cut_run


def start_inserter(path: str, durability: str, stream: str, start: int = 0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.helpers.inserter", path, durability, stream, str(start)],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", line + proc.stderr.read() if proc.stderr else ""
    return proc


def delivered(server: ConnectorDBServer, stream_path: str) -> int:
    """How many datapoints the server holds in the stream (0 before it exists)."""
    try:
        return len(server.datapoints(stream_path))
    except KeyError:
        return 0


def cached_values(path: str, stream: str) -> list[int]:
    cache = Cache.connect(path)
    try:
        stream_id = cache.streams()[stream].id
        return [json.loads(d) for _, _, d in cache.batch(stream_id, 0, 10**9)]
    finally:
        cache.close()


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_kill_9_right_after_insert_loses_nothing(cache_path: str, durability: str) -> None:
    rng = random.Random(1)
    stored: list[int] = []
    for _ in range(5):
        proc = start_inserter(cache_path, durability, "counter", start=len(stored))
        printed: list[int] = []
        try:
            assert proc.stdout is not None
            for _ in range(rng.randint(1, 150)):
                printed.append(int(proc.stdout.readline()))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        # Through the text wrapper: communicate() would skip what readline() buffered.
        rest = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        # The child prints a value only after insert() returned: each one printed, before or
        # after we read it, must be in the cache, plus at most one committed but not printed.
        printed += [int(x) for x in rest.split()]
        stored = cached_values(cache_path, "counter")
        assert stored == list(range(len(stored))), "in order, no gap, no duplicate"
        assert printed[-1] + 1 <= len(stored) <= printed[-1] + 2


def test_processes_inserting_together_never_see_locked(cache_path: str) -> None:
    """Four processes insert into one stream at once: no errors, timestamps strictly increase."""
    Logger(
        cache_path,
        durability="normal",
        on_create=lambda lg: lg.addStream("counter", {"type": "integer"}),
    ).close()
    procs = [start_inserter(cache_path, "normal", "counter", start=n * 10**6) for n in range(4)]
    try:
        for _ in range(300):
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
    finally:
        errors = []
        for proc in procs:
            proc.kill()
            _, err = proc.communicate()
            errors.append(err)
    assert not any("Error" in e for e in errors), errors
    cache = Cache.connect(cache_path)
    try:
        rows = cache.batch(cache.streams()["counter"].id, 0, 10**9)
    finally:
        cache.close()
    times = [t for _, t, _ in rows]
    assert len(rows) >= 1200
    assert all(a < b for a, b in itertools.pairwise(times)), "timestamps must strictly increase"
    # Each process's own values stay in its insertion order.
    for n in range(4):
        mine = [json.loads(d) for _, _, d in rows if json.loads(d) // 10**6 == n]
        assert mine == sorted(mine)


def test_durability_pragmas_are_applied(cache_path: str) -> None:
    import apsw

    for durability, level in (("full", 2), ("normal", 1)):
        with Logger(cache_path, durability=durability) as lg:
            assert connection_pragma(lg, "journal_mode") == "wal"
            assert connection_pragma(lg, "synchronous") == level
            with CacheProbe(cache_path) as probe:
                assert probe.pragma("journal_mode") == "wal"  # the file's mode, for all
    assert isinstance(apsw.sqlite_lib_version(), str)
    assert os.path.exists(cache_path)


def test_full_durability_survives_a_power_cut(tmp_path) -> None:
    """durability="full" loses nothing that insert() returned; "normal" is shown to lose
    recent inserts under the same simulated power cut, so the simulation has teeth."""
    survivors = {}
    for durability in ("full", "normal"):
        path = str(tmp_path / f"{durability}.db")
        Logger(path, on_create=lambda lg: lg.addStream("counter", {"type": "integer"})).close()
        returned = power_cut_run(path, durability, 40)
        assert returned == [("counter", i) for i in range(40)]
        if os.path.exists(path + "-shm"):
            os.remove(path + "-shm")  # shared memory does not survive a reboot
        cache = Cache.connect(path)  # it opens as a cache, its WAL recovered
        try:
            with CacheProbe(path) as probe:
                assert probe.integrity() == "ok"
        finally:
            cache.close()
        survivors[durability] = cached_values(path, "counter")
    assert survivors["full"] == list(range(40))
    assert len(survivors["normal"]) < 40
    assert survivors["normal"] == list(range(len(survivors["normal"])))


def test_inserting_while_another_process_syncs(cache_path: str, server) -> None:
    """Two processes insert while this one's background syncer drains them into the server:
    no insert fails, everything printed arrives once and in order."""
    Logger(
        cache_path,
        durability="normal",
        apikey=server.apikey,
        on_create=lambda lg: lg.addStream("counter", {"type": "integer"}),
    ).close()
    syncing = Logger(cache_path, batch_size=100)
    syncing.serverurl = server.url
    syncing.syncperiod = 0.05  # other processes' inserts do not wake this syncer: poll
    syncing.start()
    procs = [start_inserter(cache_path, "normal", "counter", start=n * 10**6) for n in range(2)]
    printed: list[int] = []
    try:
        # At least 400 inserts each, and on until the syncer has delivered some (a loaded
        # machine may run it late): the inserts then overlap a pass.
        deadline = time.monotonic() + 120
        rounds = 0
        while rounds < 400 or not delivered(server, "alice/sensor/counter"):
            assert time.monotonic() < deadline, "the syncer delivered nothing in 120 s"
            for _ in range(50):
                for proc in procs:
                    assert proc.stdout is not None
                    printed.append(int(proc.stdout.readline()))
            rounds += 50
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        errors = []
        for proc in procs:
            printed += [int(x) for x in proc.stdout.read().split()]  # type: ignore[union-attr]
            errors.append(proc.stderr.read())  # type: ignore[union-attr]
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    delivered_meanwhile = len(server.datapoints("alice/sensor/counter"))
    syncing.close(timeout=30)
    assert not any(errors), errors
    assert delivered_meanwhile > 0, "the syncer should have run during the inserts"
    with Logger(cache_path) as lg:
        while len(lg):
            assert lg.sync().ok
    stored = [p["d"] for p in server.datapoints("alice/sensor/counter")]
    assert len(stored) == len(set(stored))
    assert set(printed) <= set(stored)
    for n in range(2):
        mine = [v for v in stored if v // 10**6 == n]
        assert mine == sorted(mine)


SYNC_THEN_CUT = """
import os, sys
import apsw
from tests.helpers.powercut import PowerCutVFS
from connectorsync import Logger
from connectorsync.testing import ConnectorDBServer
from connectorsync.cache import Cache
from connectorsync.testing.live import connection_pragma
from connectorsync.testing.probe import CacheProbe
# The power goes right after the pass's last acknowledgement, before the checkpoint that
# gives space back (which would make everything durable anyway).
Cache.give_back_space = lambda self, *args, **kwargs: None
path, url, apikey = sys.argv[1:4]
vfs = PowerCutVFS()
lg = Logger(path, durability="normal", apikey=apikey, serverurl=url)
for i in range(20):
    lg.insert("n", i)
checkpoint = apsw.Connection(path)  # the same disk (the VFS is the process's default)
checkpoint.execute("PRAGMA wal_checkpoint(FULL)").fetchall()  # the inserts are durable
print(lg.sync().sent, flush=True)
os._exit(0)  # the power goes: whatever was not fsynced is lost
"""


def test_a_power_cut_after_a_sync_brings_back_nothing_delivered(cache_path: str, server) -> None:
    """With ``durability="normal"`` inserts are not fsynced, but a sync pass's deletions and
    in-flight marks are (its connection is always "full"): after a power cut, the datapoints
    the server acknowledged are not back in the cache, to be refused as dead letters."""
    Logger(cache_path, on_create=lambda lg: lg.addStream("n", {"type": "integer"})).close()
    result = subprocess.run(
        [PYTHON, "-c", SYNC_THEN_CUT, cache_path, server.url, server.apikey],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "{'n': 20}", result.stderr
    if os.path.exists(cache_path + "-shm"):
        os.remove(cache_path + "-shm")
    with Logger(cache_path) as lg:
        assert len(lg) == 0
        assert lg.sync().ok and not lg.deadletters()
    assert [p["d"] for p in server.datapoints("alice/sensor/n")] == list(range(20))
