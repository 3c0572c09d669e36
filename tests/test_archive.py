"""The local archive, latest values and subscriptions."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os

import pytest

from connectorsync import Logger, ValidationError

DAY1 = datetime.datetime(2026, 11, 22, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()
DAY2 = DAY1 + 2  # 2026-11-23 00:00:01 UTC


def test_archive_jsonl_by_day(tmp_path, server) -> None:
    archive = tmp_path / "archive"
    lg = Logger(str(tmp_path / "cache.db"), archive_dir=str(archive), apikey=server.apikey)
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.addStream("door", {"type": "object"})
    lg.insert("temperature", 21.5, timestamp=DAY1)
    lg.insert_many("temperature", [{"t": DAY2, "d": 22.0}, {"t": DAY2 + 1, "d": 22.5}])
    lg.insert("door", {"open": True, "by": "José"}, timestamp=DAY2 + 2)
    with pytest.raises(ValidationError):
        lg.insert("temperature", "hot")  # refused: not archived either
    assert lg.sync().ok  # the cache empties; the archive keeps the history
    lg.close()
    assert sorted(os.listdir(archive)) == ["2026-11-22.jsonl", "2026-11-23.jsonl"]
    day1 = [json.loads(x) for x in (archive / "2026-11-22.jsonl").read_text().splitlines()]
    day2 = [json.loads(x) for x in (archive / "2026-11-23.jsonl").read_text().splitlines()]
    assert day1 == [{"stream": "temperature", "t": DAY1, "d": 21.5}]
    assert day2 == [
        {"stream": "temperature", "t": DAY2, "d": 22.0},
        {"stream": "temperature", "t": DAY2 + 1, "d": 22.5},
        {"stream": "door", "t": DAY2 + 2, "d": {"open": True, "by": "José"}},
    ]


def test_archive_csv_appends_across_opens(tmp_path) -> None:
    archive = tmp_path / "archive"
    for value in (1, 2):
        with Logger(
            str(tmp_path / "cache.db"), archive_dir=str(archive), archive_format="csv"
        ) as lg:
            if "n" not in lg:
                lg.addStream_force("n", {})
            lg.insert("n", {"v": value, "note": 'a "quoted", comma'}, timestamp=DAY2 + value)
    with open(archive / "2026-11-23.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["stream", "t", "d"]
    assert [(r[0], float(r[1]), json.loads(r[2])) for r in rows[1:]] == [
        ("n", DAY2 + 1, {"v": 1, "note": 'a "quoted", comma'}),
        ("n", DAY2 + 2, {"v": 2, "note": 'a "quoted", comma'}),
    ]


def test_archive_holds_the_stored_timestamp(tmp_path) -> None:
    with Logger(str(tmp_path / "cache.db"), archive_dir=str(tmp_path / "a")) as lg:
        lg.addStream_force("n", {})
        lg.insert("n", 1, timestamp=DAY2)
        lg.insert("n", 2, timestamp=DAY2)  # a tie: stored 1 µs later, archived as stored
    lines = (tmp_path / "a" / "2026-11-23.jsonl").read_text().splitlines()
    assert [json.loads(x)["t"] for x in lines] == [DAY2, DAY2 + 1e-6]


def test_latest_survives_sync_and_restart(cache_path: str, server) -> None:
    lg = Logger(cache_path, apikey=server.apikey)
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    assert lg.latest("temperature") is None
    lg.insert_many("temperature", [{"t": 1.7e9, "d": 1.0}, {"t": 1.7e9 + 1, "d": 2.0}])
    assert lg.latest("temperature") == {"t": 1.7e9 + 1, "d": 2.0}
    assert lg.sync().ok and len(lg) == 0
    assert lg.latest("temperature") == {"t": 1.7e9 + 1, "d": 2.0}  # from what the cache kept
    lg.close()
    with Logger(cache_path) as again:
        assert again.latest("temperature") == {"t": 1.7e9 + 1, "d": 2.0}
        again.insert("temperature", 3.0)
        assert again.latest("temperature")["d"] == 3.0  # type: ignore[index]


def test_subscribe_after_commit_and_errors_stay_out(cache_path: str, caplog) -> None:
    seen: list[dict] = []

    def broken(point: dict) -> None:
        raise RuntimeError("subscriber bug")

    with Logger(cache_path) as lg:
        lg.addStream_force("n", {"type": "integer"})
        lg.addStream_force("other", {})
        unsubscribe = lg.subscribe("n", seen.append)
        lg.subscribe("n", broken)
        with caplog.at_level(logging.ERROR, logger="connectorsync"):
            lg.insert("n", 1, timestamp=1.7e9)
            lg.insert_many("n", [2, 3])
        lg.insert("other", "x")
        with pytest.raises(ValidationError):
            lg.insert("n", "not a number")  # not committed: nobody hears of it
        assert [p["d"] for p in seen] == [1, 2, 3]
        assert seen[0] == {"t": 1.7e9, "d": 1}
        assert "subscriber bug" in caplog.text
        unsubscribe()
        lg.insert("n", 4)
        assert len(seen) == 3
