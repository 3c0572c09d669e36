"""MQTTRemote against a real mosquitto (skipped without one: ``conftest.require_mosquitto``),
read back by a real subscriber. The remote contract (refusals, lost PUBACKs, outages) is in
``test_remote_contract.py``; here: payloads, a broker restart under load, credentials, the
ThingsBoard preset and TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger, MQTTRemote, thingsboard_mqtt
from connectorsync.errors import AuthError, TransientRemoteError
from connectorsync.remotes.config import remote_from_config
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTSubscriber

from .conftest import start_mosquitto, wait_for

T0 = 1_700_000_000.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    made = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[MQTTSubscriber]:
    made = MQTTSubscriber(broker)
    try:
        yield made
    finally:
        made.close()


def logger(path: str, remote: Any, **options: Any) -> Logger:
    return Logger(
        path,
        remote=remote,
        on_create=lambda lg: (lg.add_stream("temperature", {}), lg.add_stream("gps", {})),
        **options,
    )


def received(subscriber: MQTTSubscriber, topic: str) -> list[Any]:
    subscriber.flush()
    return [json.loads(payload) for _, payload in subscriber.messages(topic)]


def test_every_payload_carries_its_id_value_and_timestamp(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str
) -> None:
    remote = MQTTRemote(broker.url, topic="sensors/dev1/{stream}", timeout=5)
    with logger(cache_path, remote) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": 20 + i / 4} for i in range(50)])
        lg.insert("gps", {"lat": 1.5, "lon": -2.25}, T0)
        assert lg.sync().sent == {"temperature": 50, "gps": 1}
    temps = received(subscriber, "sensors/dev1/temperature")
    assert [(m["stream"], m["t"], m["d"]) for m in temps] == [
        ("temperature", T0 + i, 20 + i / 4) for i in range(50)
    ]
    ids = [m["id"] for m in temps]
    assert ids == sorted(set(ids))  # one id each, in insertion order
    assert received(subscriber, "sensors/dev1/gps") == [
        {"stream": "gps", "id": ids[-1] + 1, "t": T0, "d": {"lat": 1.5, "lon": -2.25}}
    ]


def test_one_message_per_batch(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str
) -> None:
    remote = MQTTRemote(broker.url, topic="s/{stream}", payload="batch", timeout=5)
    with logger(cache_path, remote, batch_size=4) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
        assert lg.sync().sent == {"temperature": 10}
    batches = received(subscriber, "s/temperature")
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [(m["t"], m["d"]) for b in batches for m in b] == [(T0 + i, i) for i in range(10)]


def test_a_broker_restart_in_the_middle_of_a_sync_loses_nothing(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str, fast_backoff: None
) -> None:
    """Restarted while the syncer drains 20,000 datapoints: every one arrives; a datapoint
    comes twice only when its PUBACK was lost, and then with the same id."""
    count = 20_000
    remote = MQTTRemote(broker.url, topic="s/{stream}", timeout=5)
    lg = logger(cache_path, remote, batch_size=2000, sync_jitter=0)
    try:
        lg.insert_many("temperature", [{"t": T0 + i / 8, "d": i} for i in range(count)])
        lg.start()
        wait_for(lambda: len(subscriber.messages()) > 2000, what="the sync to be under way")
        broker.restart()
        wait_for(lambda: len(lg) == 0, timeout=60, what="delivery after the restart")
    finally:
        lg.close()
    messages = received(subscriber, "s/temperature")
    by_id: dict[int, Any] = {}
    for m in messages:
        assert by_id.setdefault(m["id"], m) == m  # a duplicate is the very same message
    assert sorted((m["t"], m["d"]) for m in by_id.values()) == [
        (T0 + i / 8, i) for i in range(count)
    ]
    assert len(messages) - count <= 2000  # duplicates: at most a batch in flight


def test_wrong_credentials_pause_syncing(tmp_path: Path, cache_path: str) -> None:
    broker = start_mosquitto(tmp_path / "mosquitto", users={"device": "right"})
    try:
        remote = MQTTRemote(broker.url, username="device", password="WRONG-PW-123", timeout=5)
        with logger(cache_path, remote, sync_jitter=0) as lg:  # the first pass at once
            lg.insert("temperature", 1.0)
            report = lg.sync()
            assert isinstance(report.exception, AuthError)
            assert "WRONG-PW-123" not in str(report.exception)
            lg.start()
            wait_for(lambda: lg.status().paused, what="syncing to pause")
            assert len(lg) == 1 and lg.deadletters() == []
            assert "WRONG-PW-123" not in repr(lg.status()) + repr(remote)
    finally:
        broker.stop()


def test_thingsboard_preset_topic_and_payload(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str
) -> None:
    remote = thingsboard_mqtt(broker.url, "TOKEN-XYZ", timeout=5)
    assert "TOKEN-XYZ" not in repr(remote)
    with logger(cache_path, remote) as lg:
        lg.insert("temperature", 21.5, T0 + 0.0016)
        lg.insert("gps", {"lat": 1.5, "lon": 2}, T0)
        assert lg.sync().ok
    assert received(subscriber, "v1/devices/me/telemetry") == [
        {"ts": 1_700_000_000_002, "values": {"temperature": 21.5}},
        {"ts": 1_700_000_000_000, "values": {"lat": 1.5, "lon": 2}},
    ]
    again = remote_from_config(remote.to_config())  # connectorsync sync CACHE builds it again
    assert isinstance(again, MQTTRemote) and again.topic == "v1/devices/me/telemetry"
    assert again.to_config() == remote.to_config()


def self_signed(directory: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_mqtts_verifies_the_broker_by_default(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    broker = start_mosquitto(tmp_path / "mosquitto", tls=(cert, key))
    try:
        assert broker.url.startswith("mqtts://")
        with pytest.raises(TransientRemoteError, match="certificate verification failed"):
            MQTTRemote(broker.url, timeout=5).push("s", [(1, T0, "1")])
        remote = MQTTRemote(broker.url, verify=cert, timeout=5)  # the broker's CA file
        remote.push("s", [(1, T0, "1")])
        remote.close()
    finally:
        broker.stop()
