"""Bounded storage: max_cached, max_cache_bytes, min_free_disk, on_full, max_age, and a real
full disk (SQLite's max_page_count) with recovery. Invariant 10."""

from __future__ import annotations

import time

import apsw
import pytest

from connectorsync import CacheFullError, Logger
from connectorsync.testing.live import fill_disk_after
from connectorsync.testing.probe import CacheProbe

from .conftest import dump


def values(lg: Logger, stream: str = "n") -> list[object]:
    from connectorsync.cache import Cache

    cache = Cache.connect(lg.path)
    try:
        import json

        rows = cache.batch(cache.streams()[stream].id, 0, 10**6)
        return [json.loads(d) for _, _, d in rows]
    finally:
        cache.close()


def used_bytes(lg: Logger) -> int:
    """Bytes of the cache file's pages in use, as the storage limits count them."""
    with CacheProbe(lg.path) as probe:
        return probe.used_bytes()


@pytest.fixture
def lg(cache_path: str):
    with Logger(cache_path, durability="normal") as lg:
        lg.addStream_force("n", {"type": "integer"})
        yield lg


def test_max_cached_rejects_and_changes_nothing(lg: Logger, server) -> None:
    lg.max_cached = 10
    lg.insert_many("n", list(range(10)))
    before = dump(lg.path)
    with pytest.raises(CacheFullError, match="max_cached is 10"):
        lg.insert("n", 10)
    with pytest.raises(CacheFullError):
        lg.insert_many("n", [10, 11])
    assert dump(lg.path) == before
    # Delivered data makes room again.
    lg.apikey = server.apikey
    lg.serverurl = server.url
    assert lg.sync().sent == {"n": 10}
    lg.insert("n", 10)
    assert lg.status().dropped == 0


def test_drop_oldest_keeps_the_newest_and_counts(lg: Logger) -> None:
    lg.max_cached = 100
    lg.on_full = "drop_oldest"
    for i in range(150):
        lg.insert("n", i)
    assert values(lg) == list(range(50, 150))
    assert lg.status().dropped == 50
    lg.insert_many("n", list(range(150, 180)))
    assert values(lg) == list(range(80, 180))
    assert lg.status().dropped == 80


@pytest.mark.parametrize("on_full", ["reject", "drop_oldest"])
def test_more_at_once_than_max_cached_is_refused_whole(lg: Logger, on_full: str) -> None:
    """More datapoints in one insert_many (or one restamped retry of dead letters) than
    max_cached can never fit, whatever is dropped: refused, nothing changed (on b064757
    drop_oldest stored them all, over the cap)."""
    lg.max_cached = 3
    lg.on_full = on_full
    lg.insert("n", 0)
    before = dump(lg.path)
    with pytest.raises(CacheFullError, match="4 datapoints at once can never fit max_cached=3"):
        lg.insert_many("n", [1, 2, 3, 4])
    assert dump(lg.path) == before
    if on_full == "drop_oldest":
        lg.insert_many("n", [1, 2, 3])  # as many as the cap: the oldest makes room
        assert values(lg) == [1, 2, 3] and lg.status().dropped == 1


def test_limits_count_every_stream_and_every_process(cache_path: str) -> None:
    with Logger(cache_path, max_cached=5) as one, Logger(cache_path) as two:
        one.addStream_force("a", {})
        two.addStream_force("b", {})
        one.insert_many("a", [1, 2, 3])
        two.insert_many("b", [1, 2])  # the limit is stored in the cache: it applies here too
        with pytest.raises(CacheFullError):
            one.insert("a", 4)
        with pytest.raises(CacheFullError):
            two.insert("b", 3)


def test_max_cache_bytes(lg: Logger) -> None:
    lg.on_full = "drop_oldest"
    lg.max_cache_bytes = 200_000
    blob = "x" * 2000
    for i in range(500):  # about 1 MB in all
        lg.insert("n", i) if i % 2 else lg.addStream_force("s", {}) or lg.insert("s", blob)
    status = lg.status()
    assert status.dropped > 0
    conn = apsw.Connection(lg.path, flags=apsw.SQLITE_OPEN_READONLY)
    pages, free, size = (
        next(conn.execute(f"PRAGMA {p}"))[0] for p in ("page_count", "freelist_count", "page_size")
    )
    conn.close()
    assert (pages - free) * size <= 200_000 + 3 * size
    lg.on_full = "reject"
    with pytest.raises(CacheFullError, match="max_cache_bytes"):
        for _ in range(200):
            lg.insert("s", blob)


def test_min_free_disk(lg: Logger) -> None:
    lg.insert_many("n", list(range(1000)))
    lg.min_free_disk = 10**18  # more than any disk has
    with pytest.raises(CacheFullError, match="min_free_disk"):
        lg.insert("n", 1000)
    # With drop_oldest the file stops growing: the oldest datapoints make room inside it.
    lg.on_full = "drop_oldest"
    size = used_bytes(lg)
    for i in range(1000, 1500):
        lg.insert("n", i)
    assert lg.status().dropped > 0
    assert values(lg)[-1] == 1499
    assert used_bytes(lg) <= size


def test_a_full_disk_raises_keeps_everything_and_recovers(lg: Logger) -> None:
    # SQLite's own size limit: past it every write fails with SQLITE_FULL, as on a full disk.
    fill_disk_after(lg, 3)
    stored = []
    with pytest.raises(CacheFullError, match="full"):
        for i in range(100_000):
            lg.insert("n", i)
            stored.append(i)
    assert stored and len(stored) < 100_000
    before = dump(lg.path)
    with pytest.raises(CacheFullError):
        lg.insert_many("n", [1, 2, 3])
    assert dump(lg.path) == before
    assert values(lg) == stored  # nothing committed was lost
    with CacheProbe(lg.path) as probe:
        assert probe.integrity() == "ok"
    fill_disk_after(lg, 1000)  # room again
    lg.insert("n", -1)
    assert values(lg) == [*stored, -1]


def test_a_full_disk_with_drop_oldest_makes_room(lg: Logger) -> None:
    lg.on_full = "drop_oldest"
    fill_disk_after(lg, 3)
    for i in range(3000):
        lg.insert("n", i)
    kept = values(lg)
    assert kept[-1] == 2999 and kept == list(range(kept[0], 3000))
    assert lg.status().dropped == kept[0]


def test_max_age_expires_and_counts(lg: Logger) -> None:
    now = time.time()
    lg.insert_many("n", [{"t": now - 1000, "d": 1}, {"t": now - 900, "d": 2}, {"t": now, "d": 3}])
    lg.max_age = 950
    lg.insert("n", 4)  # inserts expire now and then
    assert values(lg) == [2, 3, 4]
    assert lg.status().expired == 1
    lg.max_age = 100
    lg.sync()  # every pass expires first (even when it cannot reach the remote)
    assert values(lg) == [3, 4]
    assert lg.status().expired == 2
    assert lg.latest("n") == {"t": lg.latest("n")["t"], "d": 4}  # type: ignore[index]
