"""One sync pass (issue 9): it ends while inserts outpace the remote, streams take turns,
batches are capped in bytes as well as in count, and what was sent without an answer (or
cut short by a crash) is settled by the remote's delivery kind, never inferred."""

from __future__ import annotations

import math
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from connectorsync import ConnectorDBRemote, HTTPRemote, Logger, RejectedError
from connectorsync.remotes.base import Datapoint
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import PYTHON, ROOT, child_env, peak_memory, within
from .test_remote_contract import AnswerDroppingProxy

pytestmark = pytest.mark.timeout(60)  # a hang fails the test instead of blocking the run

MiB = 1024 * 1024
T0 = 1_700_000_000.0


def stored(server: ConnectorDBServer, stream: str) -> list[Any]:
    try:
        return [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")]
    except KeyError:
        return []


def posts(server: ConnectorDBServer, stream: str) -> list[int]:
    """The positions in the server's request log of the data inserts into ``stream``."""
    return [
        i
        for i, (method, path) in enumerate(server.requests)
        if method == "POST" and path.endswith(f"/{stream}/data")
    ]


# ----------------------------------------------------------------------------- a bounded pass


class NotingRemote(ConnectorDBRemote):
    """The real ConnectorDB remote; ``on_first_push()`` runs before the first push."""

    def __init__(self, server: ConnectorDBServer, on_first_push: Any):
        super().__init__(server.url, server.apikey)  # type: ignore[attr-defined]
        self.on_first_push = on_first_push
        self.pushed = False

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not self.pushed:
            self.pushed = True
            self.on_first_push()
        super().push(stream, batch)


def test_a_pass_ends_while_inserts_outpace_the_remote(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """sync() delivers what was cached when it began, one batch per stream in turn, and
    returns, while another thread inserts faster than the remote takes them."""
    inserted = [0]  # raised before each insert: never less than what is committed
    cached_at_first_push: list[int] = []
    stop = threading.Event()
    remote = NotingRemote(server, lambda: cached_at_first_push.append(200 + inserted[0]))

    def insert_forever() -> None:
        while not stop.is_set() and inserted[0] < 200_000:
            inserted[0] += 50
            lg.insert_many("alpha", [1.0] * 50)
            stop.wait(0.002)  # still far faster than the remote: leave it some CPU

    with Logger(cache_path, remote=remote, batch_size=10, durability="normal") as lg:
        lg.add_stream("alpha", {"type": "number"})
        lg.add_stream("beta", {"type": "number"})
        lg.insert_many("alpha", [0.0] * 200)
        lg.insert_many("beta", [2.0] * 30)
        server.delay(0.005)  # a slow remote
        inserter = threading.Thread(target=insert_forever, name="test-inserter", daemon=True)
        inserter.start()
        try:
            report = within(15, lg.sync, what="sync() while inserts outpace the remote")
        finally:
            stop.set()
            inserter.join()
        server.delay(0)
        assert report.sent["beta"] == 30  # in the same pass, not after alpha's backlog
        assert report.sent["alpha"] <= cached_at_first_push[0]
        assert report.sent["alpha"] < 200 + inserted[0]  # the later inserts wait
        alpha, beta = posts(server, "alpha"), posts(server, "beta")
        assert beta[0] < alpha[-1], "streams take turns"
        assert len(lg) == 200 + inserted[0] - report.sent["alpha"]
    remote.close()


# ----------------------------------------------------------------------------- big values


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver()
    rcv.start()
    try:
        yield rcv
    finally:
        rcv.stop()


@pytest.mark.parametrize("given", ["keyword", "attribute"])
def test_large_values_go_in_batches_capped_by_bytes(
    cache_path: str, receiver: HTTPReceiver, given: str
) -> None:
    """max_batch_bytes caps each request's body, given to Logger() or set later."""
    values = [f"{i}" + "x" * 300_000 for i in range(10)]
    remote = HTTPRemote(receiver.url + "/ingest/{stream}", timeout=5)
    options = {"max_batch_bytes": MiB} if given == "keyword" else {}
    with Logger(cache_path, remote=remote, durability="normal", **options) as lg:
        if given == "attribute":
            lg.max_batch_bytes = MiB
        assert lg.max_batch_bytes == MiB  # three values a batch
        lg.add_stream("blob", {"type": "string"})
        lg.insert_many("blob", values)
        report = lg.sync()
        assert report.ok and report.sent == {"blob": 10}, report
    bodies = [len(r.body) for r in receiver.requests if r.method == "POST"]
    assert max(bodies) <= 1.3 * MiB, bodies
    assert len(bodies) == math.ceil(10 / 3), bodies
    assert [item["d"] for item in receiver.items("/ingest/blob")] == values
    remote.close()


@pytest.fixture
def server_process() -> Iterator[tuple[str, str]]:
    """A ConnectorDB test server in a process of its own (its memory is not the client's):
    its url and the apikey of ``alice/sensor``."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "connectorsync.testing.server", "--device", "alice/sensor"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        url, apikey = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        yield url, apikey
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()


def test_sync_memory_does_not_grow_with_value_size(
    cache_path: str, server_process: tuple[str, str]
) -> None:
    """40 values of 1 MB: the pass holds a few batches of at most max_batch_bytes (4 MiB by
    default) and their bodies, never the whole backlog."""
    url, apikey = server_process
    with Logger(cache_path, apikey=apikey, durability="normal") as lg:
        lg.serverurl = url
        lg.add_stream("blob", {"type": "string"})
        lg.insert_many("blob", [f"{i}" + "x" * 1_000_000 for i in range(40)])
        report, peak = peak_memory(lg.sync)
        assert report.ok and report.sent == {"blob": 40}, report
        assert len(lg) == 0
    assert peak < 40 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_a_value_larger_than_the_remote_takes_is_a_dead_letter(
    cache_path: str, server: ConnectorDBServer
) -> None:
    """One datapoint over the remote's body limit (ConnectorDB's 10 MiB) goes alone and
    becomes a dead letter saying so; the others are delivered, in bodies of at most
    max_batch_bytes (default 4 MiB) each."""
    big = "b" * (11 * 1000 * 1000)
    values = [f"{i}" + "x" * 3_000_000 for i in range(4)]
    remote = ConnectorDBRemote(server.url, server.apikey)  # type: ignore[attr-defined]
    with Logger(cache_path, remote=remote, durability="normal") as lg:
        lg.add_stream("blob", {"type": "string"})
        lg.insert_many("blob", [*values[:2], big, *values[2:]])
        report = lg.sync()
        assert report.sent == {"blob": 4} and report.deadlettered == {"blob": 1}, report
        [letter] = lg.deadletters()
        assert letter.d == big
        assert "byte limit" in letter.reason and "1 datapoints" in letter.reason, letter.reason
    assert stored(server, "blob") == values
    bodies = [
        size
        for (method, path), size in zip(server.requests, server.request_sizes(), strict=True)
        if method == "POST" and path.endswith("/data")
    ]
    assert bodies and max(bodies) <= 4.3 * MiB, bodies
    remote.close()


# ----------------------------------------------------------------------------- delivery kinds


def influx_remote(influxd: InfluxDBServer, db: str, url: str | None = None) -> InfluxDBRemote:
    assert influxd.admin is not None
    user, password = influxd.admin
    return InfluxDBRemote(
        url or influxd.url, db, username=user, password=password, create_database=True, timeout=5
    )


#: Floats with a string in the middle: once the field is a float, influxd stores the
#: floats and refuses the string (400 partial write: field type conflict).
MIXED = [0.0, 1.0, 2.0, "three", 4.0, 5.0, 6.0, 7.0]


def insert_mixed(lg: Logger) -> None:
    lg.add_stream("mixed", {})
    lg.insert("mixed", -1.0, T0 - 1)
    assert lg.sync().ok  # the field is a float now (a new field's conflict refuses all)
    lg.insert_many("mixed", [{"t": T0 + i, "d": v} for i, v in enumerate(MIXED)])


def assert_floats_once_and_the_string_dead(lg: Logger, influxd: InfluxDBServer, db: str) -> None:
    """Nothing missing, each datapoint counted in exactly one place."""
    assert len(lg) == 0
    assert [(d.t, d.d) for d in lg.deadletters()] == [(T0 + 3, "three")]
    assert "field type conflict" in lg.deadletters()[0].reason
    floats = [(round((T0 - 1) * 1e9), -1.0)]
    floats += [(round((T0 + i) * 1e9), v) for i, v in enumerate(MIXED) if isinstance(v, float)]
    assert [(r["time"], r["value"]) for r in influxd.points("mixed", db)] == floats


def test_a_partly_refused_batch_whose_answer_is_lost_is_sent_again(
    cache_path: str, influxd: InfluxDBServer
) -> None:
    """InfluxDB is idempotent: the batch is sent again, never inferred delivered from the
    newest timestamp (which would drop the refused string: neither stored nor a dead
    letter)."""
    db = "delivery_" + uuid.uuid4().hex[:12]
    proxy = AnswerDroppingProxy(influxd.port)
    remote = influx_remote(influxd, db, proxy.url)
    try:
        with Logger(cache_path, remote=remote) as lg:
            insert_mixed(lg)
            proxy.lose_next_answers(1)
            assert not lg.sync().ok  # stored the floats, refused the string, answer lost
            report = lg.sync()
            assert report.ok, report.errors
            assert_floats_once_and_the_string_dead(lg, influxd, db)
    finally:
        remote.close()
        proxy.close()


class Crash(BaseException):
    """The process dies here (nothing of it is handled)."""


class CrashingRemote(InfluxDBRemote):
    """InfluxDB; the process "dies" at the first push after a refusal: the first half of
    a bisection."""

    refused = False

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if self.refused:
            raise Crash
        try:
            super().push(stream, batch)
        except RejectedError:
            self.refused = True
            raise


def test_a_crash_during_bisection_loses_nothing(cache_path: str, influxd: InfluxDBServer) -> None:
    db = "delivery_" + uuid.uuid4().hex[:12]
    assert influxd.admin is not None
    user, password = influxd.admin
    crashing = CrashingRemote(
        influxd.url, db, username=user, password=password, create_database=True, timeout=5
    )
    abandoned = Logger(cache_path, remote=crashing)
    insert_mixed(abandoned)
    with pytest.raises(Crash):
        abandoned.sync()  # the floats are stored, the string refused, then the crash
    remote = influx_remote(influxd, db)
    try:
        with Logger(cache_path, remote=remote) as lg:
            report = lg.sync()
            assert report.ok, report.errors
            assert_floats_once_and_the_string_dead(lg, influxd, db)
    finally:
        remote.close()
        crashing.close()
        abandoned.close()


class SharedSinkRemote(HTTPRemote):
    """A plain HTTP sink (at least once) that other writers post to as well, and that can
    tell the newest timestamp it holds: which says nothing of what a batch stored."""

    def __init__(self, receiver: HTTPReceiver):
        super().__init__(receiver.url + "/ingest/{stream}", timeout=5)
        self.receiver = receiver

    def reconcile(self, stream: str) -> float | None:
        times = [item["t"] for item in self.receiver.items(f"/ingest/{stream}")]
        return max(times, default=None)


@pytest.mark.parametrize("kind", ["ordered", "at_least_once"])
def test_ambiguous_outcomes_by_delivery_kind(
    cache_path: str, server: ConnectorDBServer, receiver: HTTPReceiver, kind: str
) -> None:
    """A batch sent without an answer: an ordered remote (ConnectorDB) says by its newest
    timestamp what arrived, and nothing is sent twice; an at-least-once one gets the batch
    again, whatever it says of timestamps: duplicates maybe, never a loss. (Idempotent:
    InfluxDB, above.)"""
    first = [{"t": T0 + i, "d": float(i)} for i in range(3)]
    second = [{"t": T0 + 3 + i, "d": float(3 + i)} for i in range(2)]
    if kind == "ordered":
        remote: Any = ConnectorDBRemote(server.url, server.apikey)  # type: ignore[attr-defined]
        lose_stored, lose_unstored = server.drop_after_commit, server.drop_before
    else:
        remote = SharedSinkRemote(receiver)
        remote.push("temperature", [(1, T0 + 1000, "-1.0")])  # another writer, a later time
        lose_stored, lose_unstored = receiver.drop_after_commit, receiver.drop_before
    with Logger(cache_path, remote=remote) as lg:
        lg.add_stream("temperature", {"type": "number"})
        lg.insert_many("temperature", first)
        lose_stored(1)  # stored, the answer lost
        assert not lg.sync().ok
        lg.insert_many("temperature", second)
        lose_unstored(1)  # not stored, no answer either
        assert not lg.sync().ok
        assert lg.sync().ok
        assert len(lg) == 0 and lg.deadletters() == []
    sent = [p["d"] for p in first + second]
    if kind == "ordered":
        assert stored(server, "temperature") == sent  # exactly once
        assert len(posts(server, "temperature")) == 3  # the stored batch was not sent again
    else:
        got = [item["d"] for item in receiver.items("/ingest/temperature")]
        assert got[0] == -1.0 and set(got[1:]) == set(sent)  # nothing lost
        assert got[1:] == [p["d"] for p in first + first + second]  # sent again: twice
    remote.close()
