"""Logger.sync(): one pass, keyset-paged batches, acknowledged datapoints deleted, callbacks."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest

import connectorsync.syncer
from connectorsync import (
    ConnectorDBRemote,
    Logger,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from connectorsync.remotes import Prepared
from connectorsync.remotes.base import Datapoint
from connectorsync.testing import ConnectorDBServer

from .conftest import peak_memory


class RecordingRemote(ConnectorDBRemote):
    """The real ConnectorDB remote, noting the size of every batch pushed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        super().push(stream, batch)
        self.batches.append(len(batch))


def test_sync_creates_the_remote_stream_with_its_schema(logger: Logger, server) -> None:
    logger.addStream("status", {"type": "object", "required": ["ok"]})
    logger.insert("status", {"ok": 1})
    report = logger.sync()
    assert report.ok and report.sent == {"status": 1}
    assert server.stream_schema("alice/sensor/status") == {"type": "object", "required": ["ok"]}
    assert server.stream_schema("alice/sensor/temperature") == {"type": "number"}
    # A second pass with nothing cached sends nothing and is still a success.
    report = logger.sync()
    assert report.ok and report.sent == {}


def test_sync_pages_by_batch_size(cache_path: str, server: ConnectorDBServer) -> None:
    remote = RecordingRemote(server.url, server.apikey)
    with Logger(cache_path, remote=remote, batch_size=7) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [float(i) for i in range(50)])
        report = lg.sync()
    assert report.sent == {"temperature": 50}
    assert remote.batches == [7] * 7 + [1]
    assert [p["d"] for p in server.datapoints("alice/sensor/temperature")] == list(range(50))
    remote.close()


def _peak_sync_memory(path: str, server: ConnectorDBServer, backlog: int) -> int:
    remote = ConnectorDBRemote(server.url, server.apikey)
    with Logger(path, remote=remote, batch_size=500, durability="normal") as lg:
        lg.addStream("temperature", {"type": "number"})
        for start in range(0, backlog, 5000):
            lg.insert_many("temperature", [float(i) for i in range(start, start + 5000)])
        report, peak = peak_memory(lg.sync)
    remote.close()
    assert report.sent == {"temperature": backlog}
    return peak


def test_sync_memory_does_not_grow_with_the_backlog(tmp_path, server: ConnectorDBServer) -> None:
    """Invariant 3: 8x the backlog must not mean 8x the memory (keyset paging, no fetchall)."""
    small = _peak_sync_memory(str(tmp_path / "small.db"), server, 5_000)
    large = _peak_sync_memory(str(tmp_path / "large.db"), server, 40_000)
    assert large < 2 * small, (small, large)


def test_failed_push_keeps_everything(logger: Logger, server: ConnectorDBServer) -> None:
    logger.insert_many("temperature", [1.0, 2.0, 3.0])
    server.fail_next(5, status=503)
    report = logger.sync()
    assert not report.ok
    assert "503" in report.errors["*"]
    assert isinstance(report.exception, TransientRemoteError)
    assert len(logger) == 3
    assert logger.lastsynctime == 0
    assert logger.status().last_error is not None
    server.clear_faults()
    assert logger.sync().sent == {"temperature": 3}
    assert logger.status().last_error is None
    assert logger.lastsynctime > 0


def test_unreachable_server_keeps_everything(cache_path: str) -> None:
    with Logger(cache_path, apikey="k", http_timeout=2) as lg:
        lg.serverurl = "http://127.0.0.1:9"  # discard port: nothing listens
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        report = lg.sync()
        assert isinstance(report.exception, TransientRemoteError)
        assert len(lg) == 1


def test_one_failing_stream_does_not_stop_the_others(logger: Logger, server) -> None:
    logger.addStream("humidity", {"type": "number"})
    logger.insert_many("temperature", [1.0, 2.0])
    logger.insert_many("humidity", [50.0, 51.0])
    server.fail_next(10, status=500, path="/temperature/data")
    report = logger.sync()
    assert report.sent == {"humidity": 2}
    assert "500" in report.errors["temperature"]
    assert logger.status().streams["temperature"].cached == 2
    assert logger.status().streams["humidity"].cached == 0


def test_onsync_and_onsyncfail(cache_path: str, server: ConnectorDBServer) -> None:
    calls: list[Any] = []

    def failed(error: Exception) -> bool:
        calls.append(error)
        return False

    lg = Logger(
        cache_path, apikey=server.apikey, onsync=lambda: calls.append("ok"), onsyncfail=failed
    )
    lg.serverurl = server.url
    lg.addStream("temperature", {"type": "number"})
    lg.insert("temperature", 1.0)
    lg.sync()
    assert calls == ["ok"]
    server.fail_next(1, status=500)
    lg.sync()  # onsyncfail returned False: no raise
    assert isinstance(calls[-1], RemoteError) and "500" in str(calls[-1])
    lg.onsyncfail = lambda error: True
    server.fail_next(1, status=500)
    with pytest.raises(TransientRemoteError):
        lg.sync()
    lg.close()


def test_syncraise_without_onsyncfail(cache_path: str, server: ConnectorDBServer) -> None:
    with Logger(cache_path, apikey="wrong", syncraise=True) as lg:
        lg.serverurl = server.url
        with pytest.raises(RemoteError) as info:
            lg.sync()
        assert info.value.status == 401
        assert "wrong" not in str(info.value)  # the apikey never shows


def test_changing_apikey_and_serverurl_takes_effect(cache_path: str, server) -> None:
    with Logger(cache_path, apikey="wrong") as lg:
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.insert("temperature", 1.0)
        assert not lg.sync().ok
        lg.apikey = server.apikey
        assert lg.sync().sent == {"temperature": 1}
        assert lg.name == "alice/sensor" and lg.ping() == "alice/sensor"


def test_full_stream_paths_and_data_as_sent(logger: Logger, server) -> None:
    # The logger's own device: as in ConnectorDB, another device's stream takes datapoints
    # from its own device only (or, for a downlink stream, into its downlink substream).
    logger.addStream("alice/sensor/pressure", {"type": "integer"})
    logger.insert("alice/sensor/pressure", 1013, timestamp=1.7e9)
    assert logger.sync().ok
    assert server.datapoints("alice/sensor/pressure") == [{"t": 1.7e9, "d": 1013}]


def test_sync_leaves_nothing_in_memory_it_should_not(logger: Logger, server) -> None:
    value = {"nested": [1, 2.5, "x", None, True], "é": "ü"}
    logger.addStream_force("blob")
    logger.insert("blob", value, timestamp=1.7e9)
    assert logger.sync().ok
    stored = server.datapoints("alice/sensor/blob")
    assert stored == [{"t": 1.7e9, "d": value}]
    assert json.dumps(stored[0]["d"]) == json.dumps(value)


def test_stream_deleted_remotely_is_created_again(logger: Logger, server) -> None:
    import requests

    logger.insert("temperature", 1.0)
    assert logger.sync().ok
    response = requests.delete(
        f"{server.url}/api/v1/crud/alice/sensor/temperature", auth=("", server.apikey), timeout=5
    )
    assert response.status_code == 200
    response.close()
    logger.insert("temperature", 2.0)
    report = logger.sync()
    assert "does not exist" in report.errors["temperature"]
    assert len(logger) == 1
    assert logger.sync().sent == {"temperature": 1}
    assert server.datapoints("alice/sensor/temperature")[-1]["d"] == 2.0


class OverlapRemote(ConnectorDBRemote):
    """The real ConnectorDB remote whose push of a batch waits until the next batch has been
    prepared: a syncer that prepares only after an acknowledgement never gets past the first.
    ``last_id``: the id of the last datapoint, after which there is nothing to prepare."""

    def __init__(self, *args: Any, last_id: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.last_id = last_id
        self.prepared: list[int] = []  # first id of every batch prepared
        self.pushed: list[int] = []
        self.prepared_more = threading.Condition()

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        super().prepare(stream, batch)
        with self.prepared_more:
            self.prepared.append(batch[0][0])
            self.prepared_more.notify_all()

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if batch[-1][0] < self.last_id:
            with self.prepared_more:
                if not self.prepared_more.wait_for(
                    lambda: self.prepared[-1] > batch[-1][0], timeout=5
                ):
                    raise TransientRemoteError(f"the batch after id {batch[-1][0]} is unprepared")
        super().push(stream, batch)
        self.pushed.append(batch[0][0])


def test_the_next_batch_is_prepared_while_one_is_sent(
    cache_path: str, server: ConnectorDBServer
) -> None:
    remote = OverlapRemote(server.url, server.apikey, last_id=35)
    with Logger(cache_path, remote=remote, batch_size=10) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [float(i) for i in range(35)])
        report = lg.sync()
        assert report.ok, report.errors
    remote.close()
    assert remote.pushed == [1, 11, 21, 31]  # each sent once the next one was prepared
    assert remote.prepared == [1, 11, 21, 31]
    assert [p["d"] for p in server.datapoints("alice/sensor/temperature")] == list(range(35))


def test_a_prepared_body_serves_only_its_own_batch() -> None:
    made: list[int] = []

    def encode(stream: str, batch: Sequence[Datapoint]) -> bytes:
        made.append(len(batch))
        if stream == "bad":
            raise RejectedError("refused", body="refused")
        return f"{stream}:{[d for _, _, d in batch]}".encode()

    bodies = Prepared(encode)
    batch = [(1, 1.0, "1"), (2, 2.0, "2")]
    bodies.prepare("s", batch)
    assert bodies.body("s", list(batch)) == b"s:['1', '2']"  # an equal list: made again
    assert bodies.body("s", batch[:1]) == b"s:['1']"  # a half (bisection): made again
    assert made == [2, 2, 1]
    assert bodies.body("s", batch) == b"s:['1', '2']" and made == [2, 2, 1]  # taken
    assert bodies.body("s", batch) == b"s:['1', '2']" and made == [2, 2, 1, 2]  # once only
    bodies.prepare("bad", batch)  # the error waits for push
    with pytest.raises(RejectedError):
        bodies.body("bad", batch)
    made.clear()
    batches = [[(3, 3.0, "3")] for _ in range(5)]
    for each in batches:  # never more than two kept: the newest two
        bodies.prepare("s", each)
    assert made == [1] * 5
    remade = []
    for each in batches:
        before = len(made)
        bodies.body("s", each)
        remade.append(len(made) > before)
    assert remade == [True, True, True, False, False]  # the two newest were kept, only


class BuggyRemote(ConnectorDBRemote):
    """The real ConnectorDB remote with a bug for one stream: a bare exception from push."""

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if stream == "broken":
            raise KeyError("a bug")
        super().push(stream, batch)


def test_an_unexpected_error_in_one_stream_does_not_stop_the_others(
    cache_path: str, server: ConnectorDBServer
) -> None:
    remote = BuggyRemote(server.url, server.apikey)
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream("broken", {"type": "number"})
        lg.addStream("fine", {"type": "number"})
        lg.insert("broken", 1.0)
        lg.insert("fine", 2.0)
        report = lg.sync()
        assert report.sent == {"fine": 1}
        assert "unexpected KeyError" in report.errors["broken"]
        assert "unexpected KeyError" in (lg.status().last_error or "")
        assert len(lg) == 1  # the broken stream's datapoint waits
    remote.close()


def test_without_a_thread_to_read_ahead_the_pass_reads_in_its_own(
    cache_path: str, server: ConnectorDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RecordingRemote(server.url, server.apikey)
    with Logger(cache_path, remote=remote, batch_size=4) as lg:
        lg.addStream("temperature", {"type": "number"})
        lg.insert_many("temperature", [float(i) for i in range(10)])

        class NoThread(threading.Thread):
            def start(self) -> None:
                raise RuntimeError("can't start new thread")

        class ThreadingWithoutThreads:  # the syncer's view of threading (the server keeps its)
            Thread = NoThread

            def __getattr__(self, name: str) -> Any:
                return getattr(threading, name)

        monkeypatch.setattr(connectorsync.syncer, "threading", ThreadingWithoutThreads())
        report = lg.sync()
        monkeypatch.undo()
        assert report.ok and report.sent == {"temperature": 10}
    assert remote.batches == [4, 4, 2]
    remote.close()
