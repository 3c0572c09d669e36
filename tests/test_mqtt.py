"""MQTTRemote against a real mosquitto (skipped without one: ``conftest.require_mosquitto``),
read back by a real subscriber and counted on the wire by the fault proxy. The remote
contract (refusals, lost PUBACKs, outages, in both protocol versions) is in
``test_remote_contract.py``; here: payloads, what the broker does not take (its ACL, its
maximum packet size) under MQTT 5 and 3.1.1, a lost PUBACK and a broker restart under load,
credentials, paho missing, the ThingsBoard preset and TLS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger, MQTTRemote, thingsboard_mqtt
from connectorsync.errors import (
    AmbiguousRemoteError,
    AuthError,
    ConfigurationError,
    RejectedError,
    TransientRemoteError,
)
from connectorsync.remotes.config import remote_from_config
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTFaultProxy, MQTTSubscriber

from .conftest import ROOT, USERS, start_mosquitto, wait_for

T0 = 1_700_000_000.0
PROTOCOLS = ["5", "3.1.1"]


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


def test_the_window_is_lowered_to_the_brokers_receive_maximum(broker: MosquittoBroker) -> None:
    """mosquitto's ``max_inflight_messages`` (20 by default) is its MQTT 5 receive maximum; an
    MQTT 3.1.1 broker cannot say it, so ``max_inflight`` stands."""
    five = MQTTRemote(broker.url, max_inflight=100)
    older = MQTTRemote(broker.url, max_inflight=100, protocol="3.1.1")
    try:
        assert five.window == older.window == 100  # not connected: nothing known yet
        five.ping(), older.ping()
        assert (five.window, older.window) == (20, 100)
    finally:
        five.close(), older.close()


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


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_broker_restart_in_the_middle_of_a_sync_loses_nothing(
    broker: MosquittoBroker,
    subscriber: MQTTSubscriber,
    cache_path: str,
    fast_backoff: None,
    protocol: str,
) -> None:
    """Restarted while the syncer drains 20,000 datapoints: every one arrives; a datapoint
    comes twice only when its PUBACK was lost, and then with the same id."""
    count = 20_000
    remote = MQTTRemote(broker.url, topic="s/{stream}", timeout=5, protocol=protocol)
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


# ----------------------------------------------------------------------------- what the broker
# does not take: its ACL, its maximum packet size


# The device may publish to sensors/temperature only; the reader (the test's subscriber)
# reads everything and writes its flush markers.
def device(url: str, protocol: str, **kwargs: Any) -> MQTTRemote:
    return MQTTRemote(
        url,
        topic="sensors/{stream}",
        username="device",
        password=USERS["device"],
        timeout=5,
        protocol=protocol,
        **kwargs,
    )


def settle(lg: Logger) -> tuple[dict[str, int], dict[str, int]]:
    """``sent`` and ``deadlettered`` of passes until one goes through, at most two. mosquitto
    2.0 closes the connection after refusing a publish; with more messages unread behind it,
    the reset can take the PUBACK along, and that pass ends ambiguous (the next one sends
    one message at a time). However many are refused: the push connects again after each."""
    sent: dict[str, int] = {}
    dead: dict[str, int] = {}
    for _ in range(2):
        report = lg.sync()
        for total, counts in ((sent, report.sent), (dead, report.deadlettered)):
            for stream, n in counts.items():
                total[stream] = total.get(stream, 0) + n
        if report.ok:
            return sent, dead
        assert isinstance(report.exception, AmbiguousRemoteError), report.errors
    raise AssertionError(f"not settled in two passes: {report.errors}")


def acl_logger(path: str, remote: MQTTRemote) -> Logger:
    return Logger(
        path,
        remote=remote,
        on_create=lambda lg: (lg.add_stream("temperature", {}), lg.add_stream("secret", {})),
    )


def test_mqtt5_a_publish_the_acl_refuses_is_a_dead_letter_with_the_reason(
    acl_broker: MosquittoBroker, reader: MQTTSubscriber, cache_path: str
) -> None:
    """mosquitto refuses the publishes its ACL does not allow with PUBACK 0x87 (and closes the
    connection): they become dead letters with that reason, and nothing of them is deleted as
    delivered."""
    proxy = MQTTFaultProxy(acl_broker.port)
    try:
        remote = device(proxy.url, "5")
        with acl_logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(5)])
            lg.insert_many("secret", [{"t": T0 + i, "d": 100 + i} for i in range(10)])
            assert settle(lg) == ({"temperature": 5}, {"secret": 10})
            letters = lg.deadletters("secret")
            assert [(x.t, x.d) for x in letters] == [(T0 + i, 100 + i) for i in range(10)]
            for letter in letters:
                assert "0x87" in letter.reason and "Not authorized" in letter.reason
                assert "sensors/secret" in letter.reason
            assert len(lg) == 0
            assert lg.status().streams["secret"].deadletters == 10
            assert remote.caveat is None and "cannot tell" not in (lg.status().remote or "")
            refused = len(proxy.published("sensors/secret"))
            assert lg.sync().sent == {} and len(proxy.published("sensors/secret")) == refused
        assert [m["d"] for m in received(reader, "sensors/temperature")] == list(range(5))
        assert received(reader, "sensors/secret") == []
        # mosquitto 2.0 closes the connection after a refusal: what was in flight behind the
        # refused message is sent again, the refused one never.
        ids = [json.loads(p.payload)["id"] for p in proxy.published("sensors/secret")]
        assert len(set(ids)) == 10
    finally:
        proxy.close()


def test_a_refused_message_is_published_once_while_its_batch_is_bisected(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str
) -> None:
    """A broker that refuses a message (PUBACK 0x99 from the fault proxy) and keeps the
    connection: the pass bisects the batch, and neither the refused message nor the
    acknowledged ones go on the wire a second time."""
    proxy = MQTTFaultProxy(broker.port)
    try:
        proxy.refuse(lambda payload: b'"d":5}' in payload)
        remote = MQTTRemote(proxy.url, topic="s/{stream}", timeout=5)
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
            report = lg.sync()
            assert report.sent == {"temperature": 9}
            assert report.deadlettered == {"temperature": 1}
            values = [json.loads(p.payload)["d"] for p in proxy.published("s/temperature")]
            assert values == list(range(10))  # each once, in order
            (letter,) = lg.deadletters()
            assert letter.d == 5 and "PUBACK 0x99 Payload format invalid" in letter.reason
        assert [m["d"] for m in received(subscriber, "s/temperature")] == [
            i for i in range(10) if i != 5
        ]
    finally:
        proxy.close()


def test_mqtt311_cannot_see_a_refusal_and_status_says_so(
    acl_broker: MosquittoBroker, reader: MQTTSubscriber, cache_path: str
) -> None:
    """The documented limit of MQTT 3.1.1: mosquitto answers a publish its ACL refuses with a
    plain PUBACK and drops it, which no client can tell from a delivery. The remote says so
    in its repr, and so does ``status().remote`` (and ``connectorsync status``)."""
    remote = device(acl_broker.url, "3.1.1")
    with acl_logger(cache_path, remote) as lg:
        lg.insert_many("secret", [{"t": T0 + i, "d": i} for i in range(10)])
        assert settle(lg) == ({"secret": 10}, {})  # acknowledged...
        assert lg.deadletters() == [] and len(lg) == 0
        shown = lg.status().remote or ""
        assert "MQTT 3.1.1 cannot tell a refused message" in shown
        assert remote.caveat is not None and remote.caveat in shown
        assert 'protocol="5"' in shown  # what to do about it
    assert received(reader, "sensors/secret") == []  # ...and discarded by the broker


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_oversized_datapoint_is_a_dead_letter_before_it_is_sent(
    tmp_path: Path, cache_path: str, protocol: str
) -> None:
    """The broker closes the connection on a packet over its maximum (MQTT 5 says it in
    CONNACK; for 3.1.1 ``max_packet_size=`` says it): the datapoint becomes a dead letter
    without being sent, the one before it arrives once, the ones after it arrive."""
    broker = start_mosquitto(tmp_path / "mosquitto", max_packet_size=1000)
    proxy = MQTTFaultProxy(broker.port)
    subscriber = MQTTSubscriber(broker)
    try:
        limit = {"max_packet_size": 1000} if protocol == "3.1.1" else {}
        remote = MQTTRemote(proxy.url, topic="s/{stream}", timeout=5, protocol=protocol, **limit)
        big = "x" * 2000
        with logger(cache_path, remote, sync_jitter=0) as lg:
            lg.insert_many(
                "temperature", [{"t": T0 + i, "d": d} for i, d in enumerate([1, big, 3, 4])]
            )
            report = lg.sync()
            assert report.ok, report.errors
            assert report.sent == {"temperature": 3}
            assert report.deadlettered == {"temperature": 1}
            (letter,) = lg.deadletters()
            assert letter.d == big and "maximum packet size of 1000 bytes" in letter.reason
            assert len(lg) == 0
            assert lg.sync().sent == {}
        sent = [json.loads(p.payload)["d"] for p in proxy.published("s/temperature")]
        assert sent == [1, 3, 4]  # the big one never went on the wire, nothing went twice
        assert [m["d"] for m in received(subscriber, "s/temperature")] == [1, 3, 4]
    finally:
        subscriber.close()
        proxy.close()
        broker.stop()


def test_a_batch_message_over_the_maximum_packet_size_is_split_not_dead_lettered(
    tmp_path: Path, cache_path: str
) -> None:
    """``payload="batch"``: a batch whose one message would exceed the broker's maximum is
    bisected into messages that fit; every datapoint arrives once, none is a dead letter."""
    broker = start_mosquitto(tmp_path / "mosquitto", max_packet_size=400)
    subscriber = MQTTSubscriber(broker)
    try:
        remote = MQTTRemote(broker.url, topic="s/{stream}", payload="batch", timeout=5)
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(20)])
            report = lg.sync()
            assert report.ok, report.errors
            assert report.sent == {"temperature": 20} and lg.deadletters() == []
        batches = received(subscriber, "s/temperature")
        assert len(batches) > 1
        assert [m["d"] for b in batches for m in b] == list(range(20))
    finally:
        subscriber.close()
        broker.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_datapoint_of_exactly_the_maximum_packet_size_is_delivered(
    tmp_path: Path, protocol: str
) -> None:
    """The size compared with the broker's maximum is the whole packet as it goes on the wire
    (measured here by the proxy, not computed), as MQTT 5 defines it: a packet of exactly the
    maximum is delivered, one byte more is refused without being sent, and the connection
    stays up. (mosquitto 2.0 leaves the length bytes out of its own count, so it takes up to
    two bytes more: keeping to the definition never sends what a broker refuses.)"""
    maximum = 600
    broker = start_mosquitto(tmp_path / "mosquitto", max_packet_size=maximum)
    proxy = MQTTFaultProxy(broker.port)
    subscriber = MQTTSubscriber(broker)
    limit = {"max_packet_size": maximum} if protocol == "3.1.1" else {}
    remote = MQTTRemote(proxy.url, topic="s/{stream}", timeout=5, protocol=protocol, **limit)
    try:
        remote.push("temperature", [(1, T0, json.dumps("a" * 100))])
        (probe,) = proxy.published()
        fill = 100 + maximum - probe.size  # ids, times and length bytes keep their sizes
        remote.push("temperature", [(2, T0 + 1, json.dumps("a" * fill))])
        assert proxy.published()[-1].size == maximum
        with pytest.raises(RejectedError, match=f"maximum packet size of {maximum} bytes"):
            remote.push("temperature", [(3, T0 + 2, json.dumps("a" * (fill + 1)))])
        assert len(proxy.published()) == 2  # not sent
        remote.push("temperature", [(4, T0 + 3, "4")])  # the same connection goes on
        ids = [m["id"] for m in received(subscriber, "s/temperature")]
        assert ids == [1, 2, 4]
    finally:
        remote.close()
        subscriber.close()
        proxy.close()
        broker.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_lost_puback_is_sent_again_and_nothing_is_lost(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str, protocol: str
) -> None:
    """The broker stored a message, its PUBACK was lost (the proxy cut the connection): the
    pass fails ambiguous, the next one sends what was not acknowledged again, and every
    datapoint arrives; those whose PUBACK was lost twice, with the same id."""
    proxy = MQTTFaultProxy(broker.port)
    try:
        remote = MQTTRemote(proxy.url, topic="s/{stream}", timeout=5, protocol=protocol)
        with logger(cache_path, remote, sync_jitter=0) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
            proxy.lose_next_answers(1)
            report = lg.sync()
            assert isinstance(report.exception, AmbiguousRemoteError)
            assert len(lg) == 10  # nothing deleted without its PUBACK
            assert lg.sync().sent == {"temperature": 10}
            assert len(lg) == 0 and lg.deadletters() == []
        got = received(subscriber, "s/temperature")
        by_id: dict[int, Any] = {}
        for m in got:
            assert by_id.setdefault(m["id"], m) == m  # a duplicate is the very same message
        assert sorted(m["d"] for m in by_id.values()) == list(range(10))
        assert len(got) > 10  # at least once: what was stored without a PUBACK came again
    finally:
        proxy.close()


# ----------------------------------------------------------------------------- building it

NO_PAHO = """\
import importlib.abc
import sys


class NoPaho(importlib.abc.MetaPathFinder):
    # As if paho-mqtt were not installed.
    def find_spec(self, name, path=None, target=None):
        if name == "paho" or name.startswith("paho."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoPaho())
"""

BUILD_WITHOUT_PAHO = """\
try:
    import paho  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("paho is importable: the test proves nothing")
import connectorsync  # works without the extra
from connectorsync import ConfigurationError, MQTTRemote
try:
    MQTTRemote("mqtt://127.0.0.1:1883")
except ConfigurationError as exc:
    print("REFUSED:", exc)
else:
    print("BUILT")
"""


def test_without_paho_building_the_remote_fails_naming_the_extra(tmp_path: Path) -> None:
    """A real interpreter in which paho-mqtt cannot be imported (a sitecustomize blocks it):
    ``import connectorsync`` works, building an MQTTRemote raises ConfigurationError naming
    the ``connectorsync[mqtt]`` extra (rather than a remote that never delivers)."""
    (tmp_path / "sitecustomize.py").write_text(NO_PAHO)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WITHOUT_PAHO],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED:"), result.stdout
    assert "connectorsync[mqtt]" in result.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("broker.example.com:1883", "'broker.example.com:1883'"),
        ("broker.example.com", "'broker.example.com'"),
        ("http://broker.example.com", "'http://broker.example.com'"),
        ("device:s3cret@broker.example.com:1883", "'***@broker.example.com:1883'"),
    ],
)
def test_a_url_without_an_mqtt_scheme_is_echoed_in_the_error(url: str, shown: str) -> None:
    with pytest.raises(ConfigurationError, match="mqtt://host") as caught:
        MQTTRemote(url)
    assert shown in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_max_packet_size_is_checked_and_kept_in_the_config() -> None:
    for bad in (0, -1, True, 1.5, "1000", 2**40):
        with pytest.raises(ConfigurationError, match=f"max_packet_size .*got {bad!r}"):
            MQTTRemote("mqtt://127.0.0.1", max_packet_size=bad)  # type: ignore[arg-type]
    remote = MQTTRemote("mqtt://127.0.0.1", protocol="3.1.1", max_packet_size=1000)
    again = remote_from_config(remote.to_config())
    assert isinstance(again, MQTTRemote) and again.max_packet_size == 1000
    assert repr(again) == repr(remote)
