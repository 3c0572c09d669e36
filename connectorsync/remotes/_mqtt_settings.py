"""The settings of an :class:`~connectorsync.remotes.mqtt.MQTTRemote`, checked: each function
here takes what a user gave and returns it checked, or raises
:class:`~connectorsync.errors.ConfigurationError` naming the argument, the value and what is
expected (``tests/test_mqtt.py::test_bad_arguments_are_refused_naming_them``,
``tests/test_mqtt_qos.py::test_bad_qos_retain_and_will_are_refused_naming_them``).

Also what each choice of QoS and protocol cannot promise (:func:`caveat`): the remote shows it
in its ``repr``, so in ``Logger.status().remote`` and ``connectorsync status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._mqtt_session import PROTOCOL_MAX_PACKET, check_topic

PORTS = {"mqtt": 1883, "mqtts": 8883}
PROTOCOLS = ("5", "3.1.1")
QOS_LEVELS = (0, 1, 2)

#: What an MQTT 3.1.1 remote cannot see.
CAVEAT_311 = (
    "MQTT 3.1.1 cannot tell a refused message: a broker acknowledges a message its ACL or "
    "size limit refuses and discards it, and the datapoint is then deleted as delivered; "
    'use protocol="5" to have refusals kept as dead letters'
)
#: What QoS 0 cannot promise.
CAVEAT_QOS0 = (
    "QoS 0 is at most once: a datapoint is deleted from the cache once its message is "
    "written to the socket, with no acknowledgement; a broker or network failure loses it "
    "unseen, and a refusal is not seen either; use qos=1 (the default) or 2 to lose nothing"
)

#: The session a QoS 2 remote keeps on the broker lasts this long after its connection
#: drops (MQTT 5's Session Expiry Interval; 3.1.1 keeps it until a clean connect): a
#: reconnect within it finishes the messages in flight by their packet ids, exactly once.
SESSION_EXPIRY = 3600


@dataclass(frozen=True)
class Will:
    """A last will: the message the broker publishes when the remote's connection ends
    without a DISCONNECT (a crash, a cut network, a keepalive that ran out)."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = False

    def to_config(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "payload": self.payload,
            "qos": self.qos,
            "retain": self.retain,
        }


@dataclass(frozen=True)
class Address:
    """Where the broker is: ``url`` as shown (no credentials), host, port, TLS or not."""

    url: str
    host: str
    port: int
    tls: bool


def address(url: object) -> Address:
    """:raises ConfigurationError: not ``mqtt://host[:port]`` or ``mqtts://host[:port]``,
    or credentials in it"""
    if not isinstance(url, str):
        raise ConfigurationError(
            f"MQTTRemote url must be a str, mqtt://host[:port] or mqtts://host[:port]; "
            f"got {type(url).__name__}"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: a bad port raises here
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in PORTS or not parts.hostname:
        raise ConfigurationError(
            f"MQTTRemote url must be mqtt://host[:port] or mqtts://host[:port]; "
            f"got {shown_url(url)!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("MQTTRemote: put credentials in username=/password=")
    port = parts.port or PORTS[parts.scheme]
    return Address(
        f"{parts.scheme}://{parts.hostname}:{port}", parts.hostname, port, parts.scheme == "mqtts"
    )


def check_choice(name: str, value: object, choices: tuple[Any, ...]) -> None:
    # bool is an int: True must not pass for qos=1
    if isinstance(value, bool) or value not in choices:
        raise ConfigurationError(f"MQTTRemote {name} must be one of {choices}; got {value!r}")


def check_count(name: str, value: object) -> None:
    """A count MQTT frames in two bytes (``max_inflight``, ``keepalive``)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535):
        raise ConfigurationError(f"MQTTRemote {name} must be 1..65535; got {value!r}")


def check_packet_size(value: object) -> None:
    if value is not None and not (
        isinstance(value, int) and not isinstance(value, bool) and 0 < value <= PROTOCOL_MAX_PACKET
    ):
        raise ConfigurationError(
            f"MQTTRemote max_packet_size must be None or bytes, 1..{PROTOCOL_MAX_PACKET}; "
            f"got {value!r}"
        )


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"MQTTRemote {name} must be True or False; got {value!r}")


def will_setting(will: object) -> Will | None:
    """``will=`` as a :class:`Will`: None, or a dict ``{"topic": str, "payload": str,
    "qos": 0|1|2 (1), "retain": bool (False)}`` (JSON data, so that ``to_config`` keeps it).

    :raises ConfigurationError: anything else, naming the key and the value
    """
    if will is None:
        return None
    example = '{"topic": "devices/pi-3/status", "payload": "offline", "qos": 1, "retain": True}'
    if not isinstance(will, Mapping):
        raise ConfigurationError(
            f"MQTTRemote will must be None or a dict like {example}; got {will!r}"
        )
    unknown = sorted(set(will) - {"topic", "payload", "qos", "retain"})
    if unknown or "topic" not in will or "payload" not in will:
        problem = f"unknown key(s) {unknown}" if unknown else "topic and payload are required"
        raise ConfigurationError(f"MQTTRemote will: {problem}; expected a dict like {example}")
    topic, payload = will["topic"], will["payload"]
    if isinstance(topic, str) and "{stream}" in topic:
        raise ConfigurationError(
            f"MQTTRemote will topic is one topic, without {{stream}}; got {topic!r}"
        )
    try:
        check_topic(topic)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (the will's topic)") from None
    if not isinstance(payload, str):
        raise ConfigurationError(
            f"MQTTRemote will payload must be a str (sent as UTF-8); got {payload!r}"
        )
    qos, retain = will.get("qos", 1), will.get("retain", False)
    check_choice("will qos", qos, QOS_LEVELS)
    check_bool("will retain", retain)
    return Will(topic, payload, qos, retain)


def caveat(qos: int, protocol: str) -> str | None:
    """What a remote of this QoS and protocol cannot promise, in words; None: nothing beyond
    its delivery kind."""
    said = [CAVEAT_QOS0] if qos == 0 else []
    if protocol == "3.1.1" and qos > 0:
        said.append(CAVEAT_311)
    return "; ".join(said) or None


def shown_url(url: str) -> str:
    """``url`` for an error message: whatever stands before an ``@`` (credentials) masked."""
    return f"***@{url.rsplit('@', 1)[1]}" if "@" in url else url
