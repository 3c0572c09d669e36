"""MQTTRemote under hostile input and hostile timing, against a real mosquitto (skipped
without one) and a broker that never answers: topics no broker takes, a refused batch over
a link whose close arrives late, ``close()`` while connecting. (``test_mqtt.py`` has the
payloads, refusals, limits and outages.)"""

from __future__ import annotations

import gc
import os
import re
import socket
import threading
from typing import Any

import pytest

from connectorsync import Logger, MQTTRemote
from connectorsync.errors import ClosedError, ConfigurationError, TransientRemoteError
from connectorsync.remotes.config import remote_from_config
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTFaultProxy, MQTTSubscriber

from .conftest import wait_for
from .test_mqtt import T0, acl_logger, device, logger, received


def test_a_batch_message_the_acl_refuses_is_dead_lettered_over_a_slow_link(
    acl_broker: MosquittoBroker, reader: MQTTSubscriber, cache_path: str
) -> None:
    """``payload="batch"`` behind a proxy (the broker's close takes a moment to arrive, as
    over any real link): mosquitto refuses the batch's message (0x87) and closes the
    connection; the pass bisects the batch, and each half goes on a new connection, so
    every datapoint becomes a dead letter in one pass. Before, the half went on the closing
    connection, was lost unanswered, the pass ended ambiguous, and every pass did the same
    (3 of 40 dead-lettered after 10 passes, the stream blocked)."""
    proxy = MQTTFaultProxy(acl_broker.port)
    try:
        remote = device(proxy.url, "5", payload="batch")
        with acl_logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(5)])
            lg.insert_many("secret", [{"t": T0 + i, "d": 100 + i} for i in range(40)])
            report = lg.sync()
            assert report.ok, report.errors
            assert (report.sent, report.deadlettered) == ({"temperature": 5}, {"secret": 40})
            assert len(lg) == 0 and all("0x87" in x.reason for x in lg.deadletters())
        assert [m["d"] for b in received(reader, "sensors/temperature") for m in b] == list(
            range(5)
        )
        assert received(reader, "sensors/secret") == []
        assert len(proxy.published("sensors/secret")) == 2 * 40 - 1  # bisected, each once
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("s/\x00/{stream}", "U+0000"),
        ("s/\ud800/{stream}", "UTF-8"),
        ("t" * 65_500 + "/{stream}", "65535 bytes"),
        ("s/+/{stream}", "wildcards"),
        ("", "non-empty"),
    ],
)
def test_a_topic_no_broker_takes_is_refused_when_the_remote_is_built(topic: str, why: str) -> None:
    """A topic a broker (or paho) refuses at every publish: a NUL (mosquitto closes the
    connection: every pass ambiguous, for ever), a lone surrogate (UnicodeEncodeError), more
    than 65,535 bytes once a stream's name is in it (paho's ValueError). Each was taken,
    and the device then never delivered; now refused at once, naming the topic."""
    expected = f"MQTTRemote topic must be .*{re.escape(why)}"
    with pytest.raises(ConfigurationError, match=expected) as info:
        MQTTRemote("mqtt://127.0.0.1", topic=topic)
    assert "long" in str(info.value) or repr(topic) in str(info.value)
    with pytest.raises(ConfigurationError, match="MQTTRemote topic"):
        remote_from_config({"kind": "mqtt", "url": "mqtt://127.0.0.1", "topic": topic})


def test_a_unicode_topic_is_delivered(
    broker: MosquittoBroker, subscriber: MQTTSubscriber, cache_path: str
) -> None:
    remote = MQTTRemote(broker.url, topic="capteurs/été/{stream}", timeout=5)
    with logger(cache_path, remote) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(3)])
        assert lg.sync().sent == {"temperature": 3}
    assert [m["d"] for m in received(subscriber, "capteurs/été/temperature")] == [0, 1, 2]


def test_close_ends_a_push_waiting_for_the_brokers_connack() -> None:
    """A broker that takes the connection and does not answer (no CONNACK): ``close()`` from
    another thread ends the push at once, as it does one waiting for PUBACKs (a
    TransientRemoteError: nothing was sent), and the remote refuses to connect again
    (close() is final: ClosedError). Before, the push waited out its whole ``timeout``
    (here 300 s) after ``close()``."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    remote = MQTTRemote(f"mqtt://127.0.0.1:{silent.getsockname()[1]}", timeout=300)
    failures: list[Exception] = []

    def push() -> None:
        try:
            remote.push("temperature", [(1, T0, "1")])
        except Exception as exc:
            failures.append(exc)

    pushing = threading.Thread(target=push, daemon=True)
    pushing.start()
    try:
        wait_for(lambda: accepted, what="the connection")
        remote.close()
        pushing.join(30)
        assert not pushing.is_alive(), "the push went on waiting after close()"
        assert [type(exc) for exc in failures] == [TransientRemoteError], failures
        assert "close()" in str(failures[0])
        with pytest.raises(ClosedError, match="closed"):
            remote.ping()
        assert len(accepted) == 1
    finally:
        remote.close()
        silent.close()
        for sock in accepted:
            sock.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_connections_leave_no_file_descriptors_behind(broker: MosquittoBroker) -> None:
    """A broker that drops every connection (a reconnect per push, for days): each connection
    is given back at once, its socket and paho's wake-up socket pair, not at the next full
    garbage collection (which a quiet device may not run for hours). Before, with the
    collector off, each connection kept two descriptors open: 100 connections, 200."""
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for n in range(100):
            remote = MQTTRemote(broker.url, topic="x/{stream}", timeout=5)
            remote.push("temperature", [(n + 1, T0 + n, "1")])
            remote.close()  # a connection per push, as after a drop
        assert len(os.listdir("/proc/self/fd")) - before < 10
    finally:
        gc.enable()


def test_a_pass_publishes_nothing_once_closed(broker: MosquittoBroker, cache_path: str) -> None:
    """A manual sync() over four streams; while the first stream's batch is on the wire the
    Logger closes and then its remote: the push under way ends, no other stream's turn
    starts, nothing more is published and the remote connects no more (push and ping raise
    ClosedError). Before, the pass took the next turns and the push reset the abort: it
    connected again and published, and that session was never closed (a socket and a paho
    client leaked per Logger)."""
    proxy = MQTTFaultProxy(broker.port)
    remote = MQTTRemote(proxy.url, topic="x/{stream}", timeout=30)
    streams = ["a", "b", "c", "d"]
    lg = Logger(
        cache_path,
        remote=remote,
        batch_size=2,
        on_create=lambda made: [made.add_stream(name, {}) for name in streams],
    )
    closed = threading.Event()

    def close_once(payload: bytes) -> bool:  # the proxy's hook on each PUBLISH: forward all
        if not closed.is_set():
            closed.set()
            lg.close()
            remote.close()
        return False

    try:
        for name in streams:
            lg.insert_many(name, [1, 2, 3, 4])
        proxy.refuse(close_once)
        reports: list[Any] = []
        syncing = threading.Thread(target=lambda: reports.append(lg.sync()), daemon=True)
        syncing.start()
        syncing.join(60)
        assert not syncing.is_alive(), "the pass went on after close()"
        assert closed.is_set() and reports and not reports[0].ok
        assert not reports[0].sent, reports[0]
        # Only the batch on the wire when close() came: one topic, at most its two messages.
        published = proxy.published()
        assert {p.topic for p in published} == {published[0].topic}, published
        assert len(published) <= 2, published
        # The other streams' turns never started (no push was tried after close()).
        first = published[0].topic.removeprefix("x/")
        errors = reports[0].errors
        assert all("the rest waits" in errors[name] for name in streams if name != first), errors
        with pytest.raises(ClosedError):
            remote.push("a", [(100, T0, "1")])
        with pytest.raises(ClosedError):
            remote.ping()
        assert len(proxy.published()) == len(published)
    finally:
        lg.close()
        remote.close()
        proxy.close()
