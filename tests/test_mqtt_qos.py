"""MQTTRemote's knobs against a real mosquitto (skipped without one: ``conftest.
require_mosquitto``): ``qos=0|1|2``, ``retain=`` and ``will=``, read back by real
subscribers and faulted by the MQTT fault proxy (lost PUBRECs and PUBCOMPs, swallowed
PUBLISHes, cut connections), and a real ``kill -9`` for what QoS 2 cannot promise."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connectorsync import Logger, MQTTRemote
from connectorsync.errors import AmbiguousRemoteError, ConfigurationError
from connectorsync.remotes.base import DeliveryKind
from connectorsync.remotes.config import remote_from_config
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTFaultProxy, MQTTSubscriber

from .conftest import PYTHON, ROOT, child_env, wait_for
from .test_mqtt import PROTOCOLS, acl_logger, device, logger, received

T0 = 1_700_000_000.0
URL = "mqtt://127.0.0.1:1"  # nothing connects in the tests that use it


@pytest.fixture
def exact(broker: MosquittoBroker) -> Any:
    """A subscriber with QoS 2: it receives each message the broker released exactly once."""
    made = MQTTSubscriber(broker, "q/#", qos=2)
    try:
        yield made
    finally:
        made.close()


def values(subscriber: MQTTSubscriber, topic: str = "q/temperature") -> list[Any]:
    return [m["d"] for m in received(subscriber, topic)]


def sync_until_ok(lg: Logger, passes: int = 4) -> dict[str, int]:
    """``sent`` of passes until one goes through; each failed one must be ambiguous."""
    sent: dict[str, int] = {}
    for _ in range(passes):
        report = lg.sync()
        for stream, n in report.sent.items():
            sent[stream] = sent.get(stream, 0) + n
        if report.ok:
            return sent
        assert isinstance(report.exception, AmbiguousRemoteError), report.errors
    raise AssertionError(f"no pass went through in {passes}")


# ----------------------------------------------------------------------------- settings


def test_qos1_is_the_default_and_every_qos_settles_as_at_least_once() -> None:
    remote = MQTTRemote(URL)
    assert remote.qos == 1 and remote.retain is False and remote.will is None
    assert remote.caveat is None
    assert "qos" not in remote.to_config() and "will" not in remote.to_config()
    for qos in (0, 1, 2):
        assert MQTTRemote(URL, qos=qos).delivery_kind is DeliveryKind.AT_LEAST_ONCE


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"qos": 3}, r"qos must be one of \(0, 1, 2\); got 3"),
        ({"qos": True}, r"qos must be one of \(0, 1, 2\); got True"),
        ({"qos": "1"}, r"qos must be one of \(0, 1, 2\); got '1'"),
        ({"retain": "yes"}, "retain must be True or False; got 'yes'"),
        ({"will": "offline"}, "will must be None or a dict like"),
        ({"will": {"topic": "a"}}, "will: topic and payload are required"),
        ({"will": {"topic": "a", "payload": "x", "colour": 1}}, r"unknown key\(s\) \['colour'\]"),
        ({"will": {"topic": "a/#", "payload": "x"}}, "without the wildcards.*the will's topic"),
        ({"will": {"topic": "s/{stream}", "payload": "x"}}, "one topic, without {stream}"),
        ({"will": {"topic": "a", "payload": b"x"}}, "will payload must be a str"),
        ({"will": {"topic": "a", "payload": "x", "qos": 5}}, "will qos must be one of"),
        ({"will": {"topic": "a", "payload": "x", "retain": 1}}, "will retain must be True or"),
    ],
)
def test_bad_qos_retain_and_will_are_refused_naming_them(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MQTTRemote(URL, **kwargs)


def test_qos_retain_and_will_are_in_the_configuration() -> None:
    will = {"topic": "devices/pi/status", "payload": "offline", "qos": 2, "retain": True}
    remote = MQTTRemote(URL, qos=2, retain=True, will=will)
    config = remote.to_config()
    assert (config["qos"], config["retain"], config["will"]) == (2, True, will)
    again = remote_from_config(json.loads(json.dumps(config)))
    assert isinstance(again, MQTTRemote) and again.to_config() == config
    assert (again.qos, again.retain, again.will) == (2, True, remote.will)
    short = MQTTRemote(URL, will={"topic": "w", "payload": ""}).to_config()["will"]
    assert short == {"topic": "w", "payload": "", "qos": 1, "retain": False}  # the defaults


# ----------------------------------------------------------------------------- QoS 0


def test_qos0_deletes_what_the_network_lost_and_says_so(
    broker: MosquittoBroker,
    exact: MQTTSubscriber,
    cache_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """QoS 0 is at most once, only on request, and said: a PUBLISH the network swallowed is
    deleted from the cache all the same (nothing can tell), the remote's caveat says so in
    status(), and building it logs a warning."""
    proxy = MQTTFaultProxy(broker.port)
    try:
        with caplog.at_level(logging.WARNING, logger="connectorsync.remotes.mqtt"):
            remote = MQTTRemote(proxy.url, topic="q/{stream}", qos=0, timeout=5)
        assert any("QoS 0 is at most once" in r.getMessage() for r in caplog.records)
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(5)])
            assert lg.sync().sent == {"temperature": 5}
            # Written to the socket is not through the proxy yet: arm it after those.
            wait_for(lambda: len(proxy.published()) == 5, what="the first 5 through the proxy")
            proxy.swallow_next_publishes(1)
            lg.insert_many("temperature", [{"t": T0 + 5 + i, "d": 5 + i} for i in range(3)])
            assert lg.sync().sent == {"temperature": 3}
            assert len(lg) == 0 and lg.deadletters() == []
            shown = lg.status().remote or ""
            assert "QoS 0 is at most once" in shown and "qos=0" in shown
        # Nothing acknowledges QoS 0: wait for the last; 5 went before it on the same
        # connection, so it would be here by then: lost on the way, unseen.
        wait_for(lambda: len(exact.messages()) == 7, what="the messages the proxy let through")
        assert values(exact) == [0, 1, 2, 3, 4, 6, 7]
        assert len(proxy.published("q/temperature")) == 8
    finally:
        proxy.close()


# ----------------------------------------------------------------------------- QoS 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("at", ["last", "pubrec"])
def test_qos2_a_lost_pubcomp_stores_nothing_twice(
    broker: MosquittoBroker, exact: MQTTSubscriber, cache_path: str, at: str, protocol: str
) -> None:
    """The connection is cut as the broker's PUBCOMP (the message was released to
    subscribers) or PUBREC (stored, not released) comes back: the remote reconnects into
    its session and finishes each message by its packet id, so every datapoint is
    released exactly once, where QoS 1 gives a duplicate
    (test_mqtt.py::test_a_lost_puback_is_sent_again_and_nothing_is_lost)."""
    proxy = MQTTFaultProxy(broker.port)
    try:
        remote = MQTTRemote(proxy.url, topic="q/{stream}", qos=2, timeout=5, protocol=protocol)
        with logger(cache_path, remote, sync_jitter=0) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(10)])
            proxy.lose_next_answers(1, at=at)
            assert sync_until_ok(lg) == {"temperature": 10}
            proxy.lose_next_answers(2, at=at)
            lg.insert_many("temperature", [{"t": T0 + 10 + i, "d": 10 + i} for i in range(5)])
            assert sync_until_ok(lg) == {"temperature": 5}
            assert len(lg) == 0 and lg.deadletters() == []
        assert values(exact) == list(range(15))  # each once, in order
        assert len(proxy.published("q/temperature")) >= 15
    finally:
        proxy.close()


CRASHING_CHILD = """\
import os, signal, sys
from connectorsync import Logger, MQTTRemote
remote = MQTTRemote(sys.argv[2], topic="q/{stream}", qos=2, timeout=5)
lg = Logger(sys.argv[1], remote=remote)
report = lg.sync()
print("ambiguous" if not report.ok else "sent", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the packet ids in flight die with the process
"""


@pytest.mark.parametrize(("at", "copies"), [("last", 2), ("pubrec", 1)])
def test_qos2_through_a_crash_is_at_least_once(
    broker: MosquittoBroker, exact: MQTTSubscriber, tmp_path: Path, at: str, copies: int
) -> None:
    """What QoS 2 cannot promise: a process killed (-9) with a message between PUBREL and
    PUBCOMP takes its packet ids along; the next process sends the batch again in a new
    session, and that message arrives twice, with the same id. One killed between PUBLISH
    and PUBREC arrives once: the broker never releases the dead session's copy."""
    proxy = MQTTFaultProxy(broker.port)
    path = str(tmp_path / "crash.db")
    try:
        with Logger(path, on_create=lambda lg: lg.add_stream("temperature", {})) as lg:
            lg.insert("temperature", 42, T0)
        proxy.lose_next_answers(1, at=at)
        child = subprocess.run(
            [PYTHON, "-c", CRASHING_CHILD, path, proxy.url],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert child.stdout == "ambiguous\n"
        remote = MQTTRemote(broker.url, topic="q/{stream}", qos=2, timeout=5)
        with Logger(path, remote=remote) as lg:
            assert lg.sync().sent == {"temperature": 1}
        got = received(exact, "q/temperature")
        assert [m["d"] for m in got] == [42] * copies
        assert len({m["id"] for m in got}) == 1  # a duplicate carries the same id
    finally:
        proxy.close()


def test_qos2_a_publish_the_acl_refuses_is_a_dead_letter(
    acl_broker: MosquittoBroker, reader: MQTTSubscriber, cache_path: str
) -> None:
    """mosquitto refuses a QoS 2 publish its ACL does not allow with PUBREC 0x87 (paho 2.x
    would go on with PUBREL and take the PUBCOMP for a delivery): a dead letter with the
    reason, and the allowed stream delivered. mosquitto closes the connection after each
    refusal, often before its PUBREC is read, and paho sends every message still in flight
    again at each reconnect: a pass may end ambiguous; the refusals settle over passes."""
    remote = device(acl_broker.url, "5", qos=2)
    with acl_logger(cache_path, remote) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(3)])
        lg.insert_many("secret", [{"t": T0 + i, "d": 100 + i} for i in range(4)])
        sent: dict[str, int] = {}
        dead: dict[str, int] = {}
        for _ in range(10):
            report = lg.sync()
            for total, counts in ((sent, report.sent), (dead, report.deadlettered)):
                for stream, n in counts.items():
                    total[stream] = total.get(stream, 0) + n
            if report.ok:
                break
            assert isinstance(report.exception, AmbiguousRemoteError), report.errors
        assert (sent, dead) == ({"temperature": 3}, {"secret": 4})
        letters = lg.deadletters("secret")
        assert [x.d for x in letters] == [100, 101, 102, 103]
        assert all("PUBREC 0x87 Not authorized" in x.reason for x in letters)
        assert len(lg) == 0
    assert [m["d"] for m in received(reader, "sensors/temperature")] == [0, 1, 2]
    assert received(reader, "sensors/secret") == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos2_a_broker_restart_in_the_middle_of_a_sync_loses_nothing(
    broker: MosquittoBroker, cache_path: str, fast_backoff: None, protocol: str
) -> None:
    """The broker restarts while the syncer drains 20,000 datapoints: nothing is lost, and
    a duplicate is the same message (same id). How many: not bounded here, since the
    subscriber's own QoS 2 session goes through the restart too (CI once saw 55). Not
    exactly once:
    mosquitto 2.0.11 does not keep an MQTT 5 session of a client connected at its shutdown
    (CONNACK without "session present": what was in flight is sent again as new), and with
    a 3.1.1 session it keeps, a restart still released a few messages twice in our runs
    (0 to 18 of 20,000); exactly once holds for a dropped connection to a running broker
    (test_qos2_a_lost_pubcomp_stores_nothing_twice)."""
    count = 20_000
    subscriber = MQTTSubscriber(broker, "q/#", qos=2)
    remote = MQTTRemote(broker.url, topic="q/{stream}", qos=2, timeout=5, protocol=protocol)
    lg = logger(cache_path, remote, batch_size=2000, sync_jitter=0)
    try:
        lg.insert_many("temperature", [{"t": T0 + i / 8, "d": i} for i in range(count)])
        lg.start()
        wait_for(lambda: len(subscriber.messages()) > 2000, what="the sync to be under way")
        broker.restart()
        wait_for(lambda: len(lg) == 0, timeout=90, what="delivery after the restart")
    finally:
        lg.close()
    try:
        got = received(subscriber, "q/temperature")
        by_id: dict[int, Any] = {}
        for m in got:
            assert by_id.setdefault(m["id"], m) == m  # a duplicate is the very same message
        assert sorted(m["d"] for m in by_id.values()) == list(range(count))
    finally:
        subscriber.close()


# ----------------------------------------------------------------------------- retain, will


@pytest.mark.parametrize("retain", [True, False])
def test_retain_a_late_subscriber_gets_the_last_value(
    broker: MosquittoBroker, cache_path: str, retain: bool
) -> None:
    remote = MQTTRemote(broker.url, topic="r/{stream}", retain=retain, timeout=5)
    with logger(cache_path, remote) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": 20 + i} for i in range(3)])
        lg.insert("gps", {"lat": 1.0}, T0)
        assert lg.sync().sent == {"temperature": 3, "gps": 1}
    late = MQTTSubscriber(broker, "r/#")  # subscribes after the publishes
    try:
        late.flush()
        got = {topic: json.loads(payload)["d"] for topic, payload in late.messages()}
        assert len(late.messages()) == (2 if retain else 0)
        assert got == ({"r/temperature": 22, "r/gps": {"lat": 1.0}} if retain else {})
    finally:
        late.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_is_published_when_the_connection_dies(
    broker: MosquittoBroker, cache_path: str, protocol: str
) -> None:
    """The broker publishes the will when the connection ends without DISCONNECT (the proxy
    cuts it, as a dead network or a killed process would); ``close()`` disconnects and no
    will comes."""
    watcher = MQTTSubscriber(broker, "status/#")
    proxy = MQTTFaultProxy(broker.port)
    will = {"topic": "status/pi-3", "payload": "offline", "qos": 1, "retain": False}
    try:
        remote = MQTTRemote(proxy.url, topic="w/{stream}", will=will, timeout=5, protocol=protocol)
        with logger(cache_path, remote) as lg:
            lg.insert("temperature", 1, T0)
            assert lg.sync().sent == {"temperature": 1}
            watcher.flush()
            assert watcher.messages() == []  # connected: no will
            proxy.cut()
            wait_for(lambda: watcher.messages() != [], what="the will")
            assert watcher.messages() == [("status/pi-3", b"offline")]
            lg.insert("temperature", 2, T0 + 1)
            assert sync_until_ok(lg) == {"temperature": 1}  # connects again
        # close() sent DISCONNECT: the broker drops the will.
        watcher.flush()
        assert watcher.messages() == [("status/pi-3", b"offline")]
    finally:
        proxy.close()
        watcher.close()


def test_the_will_of_an_acl_user(
    acl_broker: MosquittoBroker, reader: MQTTSubscriber, cache_path: str
) -> None:
    """A will is published with the rights of its client (mosquitto checks its topic against
    the ACL at CONNECT): one on an allowed topic arrives when the connection dies."""
    proxy = MQTTFaultProxy(acl_broker.port)
    try:
        will = {"topic": "sensors/temperature", "payload": '{"d": "gone"}'}
        remote = device(proxy.url, "5", will=will)
        with acl_logger(cache_path, remote) as lg:
            lg.insert("temperature", 5, T0)
            assert lg.sync().sent == {"temperature": 1}
            proxy.cut()
            wait_for(lambda: len(reader.messages("sensors/temperature")) == 2, what="the will")
        assert [m["d"] for m in received(reader, "sensors/temperature")] == [5, "gone"]
    finally:
        proxy.close()
