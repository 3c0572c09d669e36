"""Publishing one batch of an :class:`~connectorsync.remotes.mqtt.MQTTRemote` over a
connected session: the payloads, the window of messages in flight, and what the broker
answered of each message (:class:`Publisher`).

A message is answered by its PUBACK (QoS 1), its PUBCOMP (QoS 2; or a PUBREC that refuses
it, MQTT 5), or by being written to the socket (QoS 0: paho's "published"; nothing comes
back). A message whose PUBLISH would exceed the broker's maximum packet size is not sent and
counts as refused (reason 0x95), as a broker closes the connection on it.

QoS 2 messages outlive a push: the remote keeps its paho client and its session, and paho
sends what is unfinished again by its packet id when it reconnects. :class:`InFlight` keeps,
across pushes, which datapoints each such message carries, so that a push waits for the
message instead of publishing its datapoints a second time, and an answer that comes during
another stream's push settles the datapoints of the stream it belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import AmbiguousRemoteError
from ._mqtt_session import (
    PACKET_TOO_LARGE,
    PROTOCOL_MAX_PACKET,
    Outcome,
    Refusals,
    Session,
    publish_size,
)
from .base import Datapoint

Memos = dict[str, dict[int, Outcome]]  # per stream, what the broker said of each datapoint


def plain_item(name: str, point: Datapoint) -> str:
    """``{"stream", "id", "t", "d"}``; ``name`` is the stream's name as JSON."""
    # The cache holds each value as JSON text already: no decode/encode round trip.
    return f'{{"stream":{name},"id":{point[0]},"t":{point[1]!r},"d":{point[2]}}}'


def thingsboard_item(name: str, point: Datapoint) -> str:
    """``{"ts": ms, "values": {...}}``: an object value as it is, another as ``{stream: v}``."""
    _, t, d = point
    values = d if d.startswith("{") else f"{{{name}:{d}}}"
    return f'{{"ts":{round(t * 1000)},"values":{values}}}'


class InFlight:
    """QoS 2 messages the remote's paho client has in flight: packet id -> (stream, the
    datapoints of the message). Only the pushing thread touches it."""

    def __init__(self) -> None:
        self._messages: dict[int, tuple[str, list[Datapoint]]] = {}
        #: answers read on a connection that was dropped before they were taken: they end
        #: messages of this same client (its packet ids), so the next push takes them.
        self.unread: list[tuple[int, int]] = []

    def add(self, mid: int, stream: str, points: list[Datapoint]) -> None:
        self._messages[mid] = (stream, points)

    def take(self, mid: int) -> tuple[str, list[Datapoint]] | None:
        return self._messages.pop(mid, None)

    def forget(self, mids: Sequence[int]) -> None:
        """Paho no longer has these (the broker lost the session): they will not finish."""
        for mid in mids:
            self._messages.pop(mid, None)

    def clear(self) -> None:
        self._messages.clear()
        self.unread.clear()

    def of(
        self, stream: str, todo: Sequence[Datapoint]
    ) -> tuple[dict[int, list[Datapoint]], set[tuple[int, float, str]]]:
        """The messages of ``stream`` that carry a datapoint of ``todo``, and every datapoint
        those messages carry (not to be published again)."""
        wanted = {(p[0], p[1], p[2]) for p in todo}
        messages: dict[int, list[Datapoint]] = {}
        carried: set[tuple[int, float, str]] = set()
        for mid, (owner, points) in self._messages.items():
            keys = {(p[0], p[1], p[2]) for p in points}
            if owner == stream and keys & wanted:
                messages[mid] = points
                carried |= keys
        return messages, carried


class Publisher:
    """Publishes the messages of a batch with one remote's settings (see the module)."""

    def __init__(  # noqa: PLR0913 - one remote's publishing settings, keyword-only
        self,
        *,
        url: str,
        payload: str,
        fields: str,
        qos: int,
        retain: bool,
        max_inflight: int,
        max_packet_size: int | None,
        timeout: float,
        v5: bool,
    ) -> None:
        self.url, self.payload, self.fields = url, payload, fields
        self.qos, self.retain, self.v5 = qos, retain, v5
        self.max_inflight, self.max_packet_size, self.timeout = (
            max_inflight,
            max_packet_size,
            timeout,
        )

    def publish(  # noqa: PLR0913 - one push's state, handed down
        self,
        session: Session,
        stream: str,
        topic: str,
        todo: list[Datapoint],
        memos: Memos,
        refused: Refusals,
        *,
        inflight: InFlight | None = None,
        cautious: bool = False,
    ) -> None:
        """Publish ``todo`` and wait for every answer, noting each outcome of a message of
        one datapoint in ``memos[stream]``, and each message refused (by its answer, or too
        large to be sent) in ``refused``. ``inflight`` (QoS 2): the messages the client
        still has in flight, waited for instead of published again. ``cautious``: one
        message in flight at a time.

        :raises AmbiguousRemoteError: the connection dropped, or no answer came in
            ``timeout`` seconds, with messages unanswered
        """
        pending: dict[int, list[Datapoint]] = {}
        if inflight is not None:
            pending, carried = inflight.of(stream, todo)
            todo = [p for p in todo if (p[0], p[1], p[2]) not in carried]
        messages = self._sendable(session, topic, self._messages(stream, todo), refused)
        window = self._window(session, cautious=cautious)
        sent = 0
        while True:
            for mid, code in _answers(session, inflight):
                points = pending.pop(mid, None)
                owner = stream
                if inflight is not None and (taken := inflight.take(mid)) is not None:
                    owner, points = taken
                if points is not None:
                    self._settle(
                        topic,
                        session,
                        owner == stream,
                        memos.setdefault(owner, {}),
                        refused,
                        points,
                        code,
                    )
            while sent < len(messages) and len(pending) < window and not session.lost:
                body, points = messages[sent]
                info = session.client.publish(topic, body, qos=self.qos, retain=self.retain)
                if inflight is not None and info.rc != _QUEUE_FULL:
                    inflight.add(info.mid, stream, points)  # paho keeps it, to send again
                if info.rc != 0:
                    session.lost = True
                    break
                pending[info.mid] = points
                sent += 1
            if not pending and sent == len(messages):
                return
            if session.lost or not session.pump(self.timeout):
                unacked = sum(map(len, pending.values())) + sum(len(m[1]) for m in messages[sent:])
                why = "the connection dropped" if session.lost else f"no answer in {self.timeout} s"
                raise AmbiguousRemoteError(
                    f"MQTT {self.url}, stream {stream!r}: {why} with {unacked} datapoint(s) "
                    "unacknowledged; they are sent again"
                )

    def _window(self, session: Session, *, cautious: bool) -> int:
        """Messages in flight at most: 1 when ``cautious``."""
        window = 1 if cautious else min(self.max_inflight, session.receive_maximum)
        if self.qos == 2 and not self.v5:
            # 3.1.1 has no Receive Maximum: a broker takes so many QoS 2 messages in flight
            # and drops the connection beyond (mosquitto: max_inflight_messages, 20).
            window = min(window, QOS2_WINDOW_311)
        return window

    def _settle(  # noqa: PLR0913 - one answer and where it goes
        self,
        topic: str,
        session: Session,
        ours: bool,
        memo: dict[int, Outcome],
        refused: Refusals,
        points: list[Datapoint],
        code: int,
    ) -> None:
        """Note the answer ``code`` of the message of ``points``; ``ours``: of the stream
        being pushed (a refusal of another stream's message is only remembered)."""
        if code < 0x80:
            memo.update((p[0], Outcome(p[1], p[2], code, "")) for p in points)
            return
        reason = (
            f"the broker refused the message to topic {topic!r}: "
            f"{'PUBREC' if self.qos == 2 else 'PUBACK'} {code:#04x} "
            f"{session.reason_text(code)}"
        )
        if ours:
            refused.add(code, reason, points)
        if len(points) == 1:  # a message of its own: the refusal is this datapoint's
            point = points[0]
            memo[point[0]] = Outcome(point[1], point[2], code, reason)

    def _sendable(
        self,
        session: Session,
        topic: str,
        messages: list[tuple[bytes, list[Datapoint]]],
        refused: Refusals,
    ) -> list[tuple[bytes, list[Datapoint]]]:
        """``messages`` but those too large for the broker, which are refused instead: a
        broker closes the connection on a packet over its maximum, so sent, one would be a
        lost answer on every pass, and the stream behind it blocked for ever."""
        limits = [PROTOCOL_MAX_PACKET, self.max_packet_size, session.maximum_packet_size]
        limit = min(each for each in limits if each is not None)
        wire_topic = topic.encode()
        out = []
        for body, points in messages:
            size = publish_size(wire_topic, len(body), v5=self.v5, qos=self.qos)
            if size <= limit:
                out.append((body, points))
                continue
            reason = (
                f"not sent: the message to topic {topic!r} would be a packet of {size} bytes, "
                f"over the broker's maximum packet size of {limit} bytes"
            )
            refused.add(PACKET_TOO_LARGE, reason, points)
        return out

    def _messages(
        self, stream: str, points: list[Datapoint]
    ) -> list[tuple[bytes, list[Datapoint]]]:
        item = thingsboard_item if self.fields == "thingsboard" else plain_item
        name = json.dumps(stream)
        if not points:
            return []
        if self.payload == "batch":
            body = "[" + ",".join(item(name, p) for p in points) + "]"
            return [(body.encode(), points)]
        return [(item(name, p).encode(), [p]) for p in points]


def _answers(session: Session, inflight: InFlight | None) -> list[tuple[int, int]]:
    """The answers to take now: those left unread by a dropped connection, then the
    session's."""
    answers = session.take_acks()
    if inflight is not None and inflight.unread:
        answers, inflight.unread = inflight.unread + answers, []
    return answers


_QUEUE_FULL = 15  # paho's MQTT_ERR_QUEUE_SIZE: the message was not kept
#: QoS 2 messages in flight at most under MQTT 3.1.1 (``max_inflight`` lowers it further).
QOS2_WINDOW_311 = 20
