"""The model's NATS backend: a real nats-server with JetStream behind the NATS fault proxy,
read back from the stream (``idempotent``: a resend is dropped by its ``Nats-Msg-Id``).

Faults: a server restart (for a 5xx or a connection dropped before the request: the
publisher's connection goes, what JetStream acknowledged stays, on disk), an acknowledgement
lost (the proxy cuts the connection as it comes back: stored, the publisher never hears),
refusals (the proxy answers every string value as JetStream answers a message over a
stream's size limit), and datapoints larger than the server's ``max_payload``
(:data:`MAX_PAYLOAD`).

Refusals are on from the start of each example and may only be lifted
(``refusal_only_lifts``), as JetStream refuses a message for what it is (its size), the same
on every send, until an operator raises the limit (and then retries the dead letters). A
refusal switched on between a send whose answer was lost and its resend would stand for an
operator lowering a limit in between: the message stored by the first send, the resend
refused and dead-lettered here (a dead letter that is also stored; retried, it is stored
again, under the dead letter's own id). The soak found that case when refusals could be
toggled; it is documented in docs/remotes.rst, not modelled.
Each example gets a JetStream stream of its own, the previous one deleted.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from connectorsync import Logger, NATSRemote
from connectorsync.remotes.base import Remote
from connectorsync.testing.nats import NATSFaultProxy, NATSServer

from ..conftest import require_nats
from .backends import Backend, add_streams

#: The server's max_payload: an oversized datapoint is one whose message passes it.
MAX_PAYLOAD = 4096
NATS_TIMEOUT = 2.0  # each wait for the server: a lost acknowledgement is seen at once (the cut)


def _is_string_value(payload: bytes) -> bool:
    try:
        return isinstance(json.loads(payload).get("d"), str)
    except (ValueError, AttributeError):
        return False


def _nothing(payload: bytes) -> bool:
    return False


class NATSBackend(Backend):
    kind = "idempotent"
    name = "nats"
    max_payload = MAX_PAYLOAD
    restarts = True
    refusal_only_lifts = True

    def __init__(self, directory: Path) -> None:
        require_nats()
        self.server = NATSServer(directory, max_payload=MAX_PAYLOAD).start()
        self.proxy = NATSFaultProxy(self.server.port)
        self.prefix = ""
        self.stream = ""
        # Closed at the next example: a Logger closes only the remotes it built, and an
        # unclosed NATSRemote leaves its event loop to the garbage collector.
        self.made: list[NATSRemote] = []

    def new_example(self) -> None:
        self._close_remotes()
        if self.stream:
            self.server.delete_stream(self.stream)
        name = uuid.uuid4().hex[:10]
        self.prefix, self.stream = f"m{name}", f"M{name}"
        self.server.add_stream(self.stream, [f"{self.prefix}.>"])
        # A new proxy: a lost acknowledgement armed and not used up stays with the old one.
        self.proxy.close()
        self.proxy = NATSFaultProxy(self.server.port)
        self.proxy.refuse(_is_string_value)

    def remote(self) -> Remote:
        made = NATSRemote(self.proxy.url, subject=self.prefix + ".{stream}", timeout=NATS_TIMEOUT)
        self.made.append(made)
        return made

    def _close_remotes(self) -> None:
        made, self.made = self.made, []
        for remote in made:
            remote.close()

    def logger(self, path: str, **options: Any) -> Logger:
        return Logger(path, remote=self.remote(), on_create=add_streams, **options)

    def stored(self, stream: str) -> list[Any]:
        subject = f"{self.prefix}.{stream}"
        found = self.server.stream_messages(self.stream)
        return [m.json()["d"] for m in found if m.subject == subject]

    def writes(self) -> int:
        return len(self.proxy.published())

    def restart(self) -> None:
        self.server.restart()

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.restart()

    def drop_before(self) -> None:
        self.restart()

    def lose_answer(self) -> None:
        self.proxy.lose_next_answers(1)

    def delay(self, seconds: float) -> None:
        """The NATS proxy cannot hold a message back: a pass then runs without a delay."""

    def refuse(self, on: bool) -> None:
        self.proxy.refuse(_is_string_value if on else _nothing)

    def clear_faults(self) -> None:
        """The refusal is the model's (``refusal_only_lifts``); a lost answer armed is the
        proxy's until the next example."""

    def close(self) -> None:
        self._close_remotes()
        self.proxy.close()
        self.server.stop()
