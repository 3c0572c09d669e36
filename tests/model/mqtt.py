"""The model's MQTT backend: a real mosquitto behind the MQTT fault proxy, read back by a real
subscriber (``at_least_once``).

Faults: a broker restart (for a 5xx or a connection dropped before the request: the
publisher's connection goes, what the broker acknowledged stays, persisted), a PUBACK lost
(the proxy cuts the connection as it comes back: the broker stored it, the publisher never
hears), refusals (the proxy answers PUBACK 0x99 to a string value, MQTT 5), and datapoints
larger than the broker's ``max_packet_size`` (:data:`MAX_PACKET`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from connectorsync import Logger
from connectorsync.remotes.mqtt import MQTTRemote
from connectorsync.testing.mosquitto import MosquittoBroker, MQTTFaultProxy, MQTTSubscriber

from ..conftest import require_mosquitto
from .backends import STREAMS, Backend, add_streams

#: The broker's max_packet_size: an oversized datapoint is one whose message passes it.
MAX_PACKET = 4096
MQTT_TIMEOUT = 2.0  # each wait for the broker: a lost PUBACK is seen at once (the cut)


def _is_string_value(payload: bytes) -> bool:
    try:
        return isinstance(json.loads(payload).get("d"), str)
    except (ValueError, AttributeError):
        return False


class MQTTBackend(Backend):
    kind = "at_least_once"
    name = "mqtt"
    max_payload = MAX_PACKET
    restarts = True

    def __init__(self, directory: Path) -> None:
        require_mosquitto()
        # It disconnects a client that sends a bigger packet; MQTT 5 clients learn the
        # limit from CONNACK.
        self.broker = MosquittoBroker(directory, max_packet_size=MAX_PACKET).start()
        self.proxy = MQTTFaultProxy(self.broker.port)
        self.subscriber = MQTTSubscriber(self.broker, "model/#")
        self.prefix = ""

    def new_example(self) -> None:
        self.prefix = "model/" + uuid.uuid4().hex[:10]
        # A new proxy: a lost PUBACK armed and not used up stays with the old one.
        self.proxy.close()
        self.proxy = MQTTFaultProxy(self.broker.port)

    def logger(self, path: str, **options: Any) -> Logger:
        remote = MQTTRemote(
            self.proxy.url,
            topic=self.prefix + "/{stream}",
            timeout=MQTT_TIMEOUT,
        )
        return Logger(path, remote=remote, on_create=add_streams, **options)

    def observe(self) -> None:
        self.subscriber.flush()

    def stored(self, stream: str) -> list[Any]:
        return [json.loads(p)["d"] for _, p in self.subscriber.messages(f"{self.prefix}/{stream}")]

    def writes(self) -> int:
        return sum(len(self.subscriber.messages(f"{self.prefix}/{s}")) for s in STREAMS)

    def restart(self) -> None:
        self.broker.restart()

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.restart()

    def drop_before(self) -> None:
        self.restart()

    def lose_answer(self) -> None:
        self.proxy.lose_next_answers(1)

    def delay(self, seconds: float) -> None:
        """The MQTT proxy cannot hold a message back: a pass then runs without a delay."""

    def refuse(self, on: bool) -> None:
        self.proxy.refuse(_is_string_value if on else (lambda payload: False))

    def clear_faults(self) -> None:
        self.proxy.refuse(lambda payload: False)

    def close(self) -> None:
        self.subscriber.close()
        self.proxy.close()
        self.broker.stop()
