"""MQTT publish speed of connectorsync against a plain paho-mqtt loop, from ONE run.

A backlog of N datapoints of one number stream waits in a cache file (``durability="normal"``)
and one ``Logger.sync()`` drains it through an :class:`MQTTRemote` (one message per datapoint,
QoS 1, MQTT 5) into a local mosquitto (:class:`connectorsync.testing.mosquitto.MosquittoBroker`,
its own process on 127.0.0.1). The ceiling: a plain paho-mqtt 2.x client with its network
thread (``loop_start``) publishing the very same payloads to the same topic with QoS 1 and
the same window of messages in flight (a semaphore), until the broker acknowledged the last
one; no cache behind it. The window is ``max_inflight`` lowered to the broker's Receive
Maximum (mosquitto's default: 20), for both. The two run ``--rounds`` times (3),
alternating; the median counts.

Targets (issue 12): connectorsync >= 0.7x the plain loop, and >= 10,000 datapoints/s.

Usage: python tests/benchmarks/bench_mqtt.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

from paho.mqtt.client import Client  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from connectorsync import Logger, MQTTRemote  # noqa: E402
from connectorsync.remotes.mqtt import plain_item  # noqa: E402  # the very same payloads
from connectorsync.testing.mosquitto import MosquittoBroker, find_mosquitto  # noqa: E402

T0 = 1_700_000_000.0
TOPIC = "bench/{stream}"


def values(count: int) -> list[dict[str, float]]:
    return [{"t": T0 + i / 1000, "d": 20.0 + i % 10} for i in range(count)]


def connectorsync_round(
    broker: MosquittoBroker, directory: str, count: int, n: int
) -> tuple[float, int]:
    path = os.path.join(directory, f"cache{n}.db")
    remote = MQTTRemote(broker.url, topic=TOPIC, timeout=30)
    lg = Logger(path, remote=remote, durability="normal", batch_size=5000,
                on_create=lambda lg: lg.add_stream("temperature", {"type": "number"}))  # fmt: skip
    lg.insert_many("temperature", values(count))
    remote.ping()  # connected before the clock starts, as the plain client is
    window = remote.window
    start = time.perf_counter()
    report = lg.sync()
    elapsed = time.perf_counter() - start
    assert report.ok and report.sent == {"temperature": count}, report
    assert len(lg) == 0
    lg.close()
    return count / elapsed, window


def plain_round(broker: MosquittoBroker, count: int, window: int) -> float:
    name = '"temperature"'
    payloads = [
        plain_item(name, (i + 1, p["t"], repr(p["d"]))).encode()
        for i, p in enumerate(values(count))
    ]
    done = threading.Event()
    acked = [0]
    # The window, kept by the loop itself: paho's own queue wraps its 16-bit message ids
    # beyond 65,535 queued messages and drops publishes.
    slots = threading.BoundedSemaphore(window)

    def on_publish(client: Client, userdata: object, mid: int, code: object, props: object) -> None:
        acked[0] += 1
        slots.release()
        if acked[0] == count:
            done.set()

    connected = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages = window
    client.max_queued_messages = 0
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10)
    topic = TOPIC.replace("{stream}", "temperature")
    start = time.perf_counter()
    for payload in payloads:
        slots.acquire()
        client.publish(topic, payload, qos=1)
    assert done.wait(300), f"only {acked[0]} of {count} acknowledged"
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if find_mosquitto() is None:
        sys.exit("mosquitto is not installed: apt-get install mosquitto")
    with tempfile.TemporaryDirectory() as directory:
        broker = MosquittoBroker(os.path.join(directory, "broker")).start()
        try:
            ours, plain, window = [], [], 0
            for n in range(args.rounds):
                rate, window = connectorsync_round(broker, directory, args.count, n)
                ours.append(rate)
                plain.append(plain_round(broker, args.count, window))
        finally:
            broker.stop()
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"MQTT, {args.count} datapoints, QoS 1, window {window}, median of {args.rounds}:")
    print(f"  connectorsync Logger.sync() -> MQTTRemote: {a:10,.0f} datapoints/s")
    print(f"  plain paho-mqtt loop (loop_start):         {b:10,.0f} datapoints/s")
    print(f"  ratio: {a / b:.2f}x (target >= 0.7x); "
          f"{'meets' if a >= 10_000 else 'misses'} >= 10,000 datapoints/s")  # fmt: skip


if __name__ == "__main__":
    main()
