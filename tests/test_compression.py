"""Compressed request bodies (``compression="gzip"``) and the bytes each stream puts on the
wire (``status().bytes_sent``), with real parts: a real influxd, the loopback ConnectorDB
server and HTTP receiver, a real ``connectorsync`` subprocess for the CLI."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from connectorsync import ConnectorDBRemote, HTTPRemote, InfluxDBRemote, Logger, thingsboard
from connectorsync.cli import main
from connectorsync.errors import ConfigurationError, RejectedError
from connectorsync.remotes import http as http_module
from connectorsync.remotes import remote_from_config
from connectorsync.remotes.base import Datapoint, Metered
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.influx import InfluxDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import PYTHON, ROOT, child_env, peak_memory

T0 = 1_700_000_000.0
TOKEN = "TB-gzip-token"
# Values of every kind a datapoint can hold, by kind (InfluxDB fixes a field's type per
# measurement); an object or a list becomes several fields.
KINDS: dict[str, list[Any]] = {
    "numbers": [21.5, -3, 1e-7, 1e300],
    "strings": ['a "quoted" ü, with = and \\ and\nnewline', ""],
    "bools": [True, False],
    "lists": [[1, "two", None, False]],
    "objects": [{"a": {"b": 1.25, "c": "x"}, "ok": True, "n": None}, {"a": {"b": -2}}],
}
VALUES: list[Any] = [v for values in KINDS.values() for v in values]


def batch(values: list[Any], start: float = T0) -> list[Datapoint]:
    return [(i + 1, start + i, json.dumps(v)) for i, v in enumerate(values)]


def numbers(count: int) -> list[dict[str, float]]:
    return [{"t": T0 + i, "d": 20.0 + i % 10} for i in range(count)]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver(tokens=[TOKEN]).start()
    try:
        yield rcv
    finally:
        rcv.stop()


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("build", "default"),
    [
        (lambda **kw: InfluxDBRemote("http://127.0.0.1:1", "db", **kw), "gzip"),
        (lambda **kw: HTTPRemote("http://127.0.0.1:1/x", **kw), None),
        (lambda **kw: thingsboard("http://127.0.0.1:1", TOKEN, **kw), None),
        (lambda **kw: ConnectorDBRemote("http://127.0.0.1:1", "key", **kw), None),
    ],
)
def test_compression_settings_defaults_and_config_round_trip(build: Any, default: Any) -> None:
    remote = build()
    assert remote.compression == default
    assert remote.to_config()["compression"] == default
    for given, expected in (("gzip", "gzip"), (None, None), ("none", None)):
        remote = build(compression=given)
        assert remote.compression == expected
        again = remote_from_config(remote.to_config())
        assert (again.compression, again.to_config()) == (expected, remote.to_config())
    for wrong in ("zip", "GZIP ", 6, True):
        with pytest.raises(ConfigurationError, match="compression must be 'gzip' or None"):
            build(compression=wrong)


def test_a_config_recorded_before_compression_builds_the_defaults() -> None:
    config = InfluxDBRemote("http://127.0.0.1:1", "db").to_config()
    del config["compression"]  # what an older connectorsync recorded
    assert remote_from_config(config).compression == "gzip"


def test_limits_count_the_body_before_compression(
    receiver: HTTPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server limits what it decompresses: a batch over the limit is refused unsent even
    when its compressed body would fit."""
    monkeypatch.setattr(http_module, "MAX_BODY_BYTES", 1000)
    remote = HTTPRemote(receiver.url + "/in", compression="gzip", timeout=5)
    with pytest.raises(RejectedError, match="1000-byte limit") as info:
        remote.push("s", batch(["x" * 2000]))
    assert info.value.status == 413 and receiver.requests == []
    assert remote.bytes_sent() == 0


# ----------------------------------------------------------------------------- influxd


def test_influxd_stores_gzip_bodies_as_it_stores_plain_ones(influxd: InfluxDBServer) -> None:
    """Every kind of value, through gzip and plain, reads back the same (a body influxd
    could not decompress would be refused as bad line protocol)."""
    assert influxd.admin is not None
    user, password = influxd.admin
    stored = {}
    big = batch([20.0 + i % 10 for i in range(2000)], start=T0 + 100)
    for compression in ("gzip", None):
        db = "gz_" + uuid.uuid4().hex[:10]
        influxd.create_database(db)
        remote = InfluxDBRemote(
            influxd.url, db, username=user, password=password, compression=compression
        )
        try:
            raw = 0
            for kind, values in [*KINDS.items(), ("big", big)]:
                points = big if kind == "big" else batch(values)
                remote.push(kind, points)
                raw += len(remote.encode(kind, points).encode())
            sent = remote.bytes_sent()
        finally:
            remote.close()
        stored[compression] = {kind: influxd.points(kind, db) for kind in [*KINDS, "big"]}
        if compression == "gzip":
            assert sent < raw / 5  # what went on the wire was compressed
        else:
            assert sent == raw
    assert stored["gzip"] == stored[None]
    got = stored["gzip"]
    assert [r["value"] for r in got["numbers"]] == [21.5, -3.0, 1e-7, 1e300]
    assert [r["value"] for r in got["strings"]] == KINDS["strings"]
    assert [r["value"] for r in got["bools"]] == [True, False]
    lists = got["lists"][0]
    assert (lists["value.0"], lists["value.1"], lists["value.3"]) == (1.0, "two", False)
    first, second = got["objects"]
    assert (first["a.b"], first["a.c"], first["ok"]) == (1.25, "x", True)
    assert (second["a.b"], second["a.c"]) == (-2.0, None)
    assert [r["value"] for r in got["big"][:3]] == [20.0, 21.0, 22.0] and len(got["big"]) == 2000


def test_the_sync_command_sends_an_influxdb_cache_gzipped(
    cache_path: str, influxd: InfluxDBServer
) -> None:
    """``connectorsync sync`` builds the recorded InfluxDBRemote again, compression included:
    the bytes it counted in the cache are the compressed ones."""
    influxd.create_database("cli_gzip")
    assert influxd.admin is not None
    user, password = influxd.admin
    remote = InfluxDBRemote(influxd.url, "cli_gzip", username=user, password=password)
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert_many("temperature", numbers(1000))
    raw = len(remote.encode("temperature", batch([20.0 + i % 10 for i in range(1000)])))
    remote.close()
    result = subprocess.run(
        [PYTHON, "-m", "connectorsync", "sync", cache_path],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "sent 1,000 datapoints\n"), result.stderr
    assert len(influxd.points("temperature", "cli_gzip")) == 1000
    sent = json.loads(run("status", cache_path, "--json")[1])["bytes_sent"]["temperature"]
    assert 0 < sent < raw / 5


# ----------------------------------------------------------------------------- test servers


def test_the_connectordb_server_stores_gzip_and_plain_alike(
    tmp_path: Any, server: ConnectorDBServer
) -> None:
    values = VALUES
    sent = {}
    for compression in ("gzip", None):
        remote = ConnectorDBRemote(server.url, server.apikey, compression=compression)  # type: ignore[attr-defined]
        stream = f"s_{compression}"
        with Logger(str(tmp_path / f"{compression}.db"), remote=remote) as lg:
            lg.addStream_force(stream, {})  # any JSON value
            lg.insert_many(stream, [{"t": T0 + i, "d": v} for i, v in enumerate(values * 50)])
            assert lg.sync().sent == {stream: len(values) * 50}
            sent[compression] = lg.status().bytes_sent[stream]
        remote.close()
    assert server.datapoints("alice/sensor/s_gzip") == server.datapoints("alice/sensor/s_None")
    assert [p["d"] for p in server.datapoints("alice/sensor/s_gzip")] == values * 50
    assert 0 < sent["gzip"] < sent[None] / 5


def test_the_http_receiver_decompresses_gzip_bodies(receiver: HTTPReceiver) -> None:
    plain = HTTPRemote(receiver.url + "/in/{stream}", timeout=5)
    packed = HTTPRemote(receiver.url + "/in/{stream}", compression="gzip", timeout=5)
    board = thingsboard(receiver.url, TOKEN, compression="gzip", timeout=5)
    for remote in (plain, packed, board):
        remote.push("t", batch(VALUES))
    first, second, third = receiver.requests
    assert "content-encoding" not in first.headers
    assert second.headers["content-encoding"] == "gzip" and second.body[:2] == b"\x1f\x8b"
    assert second.content == first.body
    assert receiver.bodies("/in/t")[0] == receiver.bodies("/in/t")[1]
    assert third.headers["content-encoding"] == "gzip"
    assert [item["values"] for item in receiver.telemetry(TOKEN)][-1] == VALUES[-1]
    # What each counted is what arrived: request bodies, as sent.
    assert [r.bytes_sent() for r in (plain, packed, board)] == [
        len(r.body) for r in (first, second, third)
    ]


def bomb(decompressed: int) -> bytes:
    """A gzip body that decompresses to ``decompressed`` zero bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(decompressed >> 20)]
    return b"".join(parts) + packer.flush()


def test_a_gzip_bomb_is_refused_without_decompressing_it(server: ConnectorDBServer) -> None:
    """256 MiB of zeros in a ~250 kB body: refused 413 with at most the 10 MiB limit (and
    change) decompressed; a body just over the limit too; what is not gzip gets 400 or 415."""
    body = bomb(256 << 20)
    assert len(body) < 1 << 20
    url = server.url + "/api/v1/crud/alice/sensor/s/data"
    auth = ("", server.apikey)  # type: ignore[attr-defined]

    def post(data: bytes, encoding: str = "gzip") -> requests.Response:
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        return requests.post(url, data=data, headers=headers, auth=auth, timeout=30)

    response, peak = peak_memory(lambda: post(body))
    assert response.status_code == 413 and "decompressed" in response.json()["msg"]
    assert peak < 40 << 20  # the server held no more than the limit of it
    over = gzip.compress(b" " * (10 * 1024 * 1024 + 1))
    assert post(over).status_code == 413
    assert post(b"not gzip at all").status_code == 400
    assert post(gzip.compress(b"[]")[:-5]).status_code == 400  # cut short
    assert post(b"[]", "br").status_code == 415
    assert post(gzip.compress(b'[{"t": 1.0, "d": 1}]')).status_code != 400


def test_the_receiver_refuses_a_gzip_bomb(receiver: HTTPReceiver) -> None:
    response = requests.post(
        receiver.url + "/in",
        data=bomb(64 << 20),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413 and receiver.bodies("/in") == []


# ----------------------------------------------------------------------------- bytes sent


def test_status_shows_bytes_sent_per_stream(cache_path: str, receiver: HTTPReceiver) -> None:
    """Every request body that went out counts, as it arrived (a refused one too); the count
    is kept in the cache, shown by ``status()`` and ``connectorsync status``."""
    remote = HTTPRemote(receiver.url + "/in/{stream}", compression="gzip", timeout=5)
    assert isinstance(remote, Metered)
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.addStream_force("idle", {"type": "number"})
        lg.insert_many("temperature", numbers(3000))
        receiver.fail_next(1, status=503)  # sent, refused: still on the wire
        assert not lg.sync().ok
        assert lg.sync().sent == {"temperature": 3000}
        status = lg.status()
    on_the_wire = sum(len(r.body) for r in receiver.requests if r.method == "POST")
    assert status.bytes_sent == {"temperature": on_the_wire, "idle": 0}
    with Logger(cache_path, remote=remote) as lg:  # kept in the cache file
        assert lg.status().bytes_sent["temperature"] == on_the_wire
    code, out = run("status", cache_path)
    assert code == 0 and "sent (bytes on the wire)" in out
    assert f"{on_the_wire / 1000:.1f} kB" in out.split("temperature", 1)[1].splitlines()[0]
    data = json.loads(run("status", cache_path, "--json")[1])
    assert data["bytes_sent"] == {"temperature": on_the_wire, "idle": 0}


def test_gzip_costs_fewer_bytes_than_plain(tmp_path: Any, receiver: HTTPReceiver) -> None:
    sent = {}
    for compression in ("gzip", None):
        remote = HTTPRemote(receiver.url + "/in", compression=compression, timeout=5)
        path = str(tmp_path / f"{compression}.db")
        with Logger(path, remote=remote, batch_size=500) as lg:
            lg.addStream_force("temperature", {"type": "number"})
            lg.insert_many("temperature", numbers(2000))
            assert lg.sync().ok
            sent[compression] = lg.status().bytes_sent["temperature"]
        assert json.loads(run("status", path, "--json")[1])["bytes_sent"] == {
            "temperature": sent[compression]
        }
    assert 0 < sent["gzip"] < sent[None] / 5


def test_a_bisected_batch_counts_every_request(cache_path: str, receiver: HTTPReceiver) -> None:
    receiver.reject(lambda path, item: item["d"] == 13.0)
    remote = HTTPRemote(receiver.url + "/in", compression="gzip", timeout=5)
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert_many("temperature", [{"t": T0 + i, "d": float(i)} for i in range(64)])
        report = lg.sync()
        assert (report.sent, report.deadlettered) == ({"temperature": 63}, {"temperature": 1})
        assert lg.status().bytes_sent["temperature"] == sum(
            len(r.body) for r in receiver.requests if r.method == "POST"
        )
