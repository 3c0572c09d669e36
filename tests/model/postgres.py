"""The model's PostgreSQL backend: a real PostgreSQL behind the PostgreSQL fault proxy, a
``PostgresRemote`` into a table of its own per example (``idempotent``).

Faults: a server restart (for a 5xx: every connection goes, what was committed stays),
every connection cut by the proxy (for a connection dropped before the request: the next
statement on it fails), a lost answer (the proxy lets a batch's COMMIT through and cuts its
answer), held-back messages (the proxy's delay), and refusals (a CHECK constraint, added
``NOT VALID`` so that strings stored before stay, refuses a string value: SQLSTATE 23514).
"""

from __future__ import annotations

import uuid
from typing import Any

from connectorsync import Logger
from connectorsync.remotes.base import Remote
from connectorsync.remotes.postgres import PostgresRemote
from connectorsync.testing.postgres import PostgresFaultProxy, PostgresServer

from ..conftest import start_postgres
from .backends import Backend, add_streams

PG_TIMEOUT = 2.0  # connect and statement timeout: a lost answer is seen at once (the cut)
_REFUSAL = "model_refuses_strings"


class PostgresBackend(Backend):
    kind = "idempotent"
    name = "postgres"
    restarts = True
    # A CHECK constraint refuses a value for what it is, on every send, from the start of an
    # example; the model may lift it (and then retry the dead letters), never add it back:
    # added between a send whose answer was lost and its resend, it would make the row
    # stored by the first send a dead letter too, which the soak found and docs/remotes.rst
    # says; not modelled.
    refusal_only_lifts = True

    def __init__(self) -> None:
        self.server: PostgresServer = start_postgres()
        self.proxy = PostgresFaultProxy(self.server.port)
        self.table = ""
        self._made: list[PostgresRemote] = []

    def new_example(self) -> None:
        self._close_remotes()
        self.table = "model_" + uuid.uuid4().hex[:12]
        # A new proxy: a lost answer armed and not used up stays with the old one.
        self.proxy.close()
        self.proxy = PostgresFaultProxy(self.server.port)
        maker = PostgresRemote(self.server.dsn(), self.table, device="maker", timeout=10)
        maker.ping()  # makes the table, so that a refusal can be added before the first pass
        maker.close()
        self.refuse(True)

    def remote(self) -> Remote:
        made = PostgresRemote(self.server.dsn(port=self.proxy.port), self.table, timeout=PG_TIMEOUT)
        self._made.append(made)
        return made

    def logger(self, path: str, **options: Any) -> Logger:
        return Logger(path, remote=self.remote(), on_create=add_streams, **options)

    def stored(self, stream: str) -> list[Any]:
        rows = self.server.query(
            f"SELECT value FROM {self.table} WHERE stream = %s ORDER BY t, id",
            (stream,),
        )
        return [row[0] for row in rows]

    def writes(self) -> int:
        return self.proxy.copies

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.server.restart()

    def drop_before(self) -> None:
        self.proxy.cut_all()

    def lose_answer(self) -> None:
        self.proxy.lose_next_answers(1)

    def delay(self, seconds: float) -> None:
        self.proxy.delay(seconds)

    def refuse(self, on: bool) -> None:
        self.server.query(f"ALTER TABLE {self.table} DROP CONSTRAINT IF EXISTS {_REFUSAL}")
        if on:
            self.server.query(
                f"ALTER TABLE {self.table} ADD CONSTRAINT {_REFUSAL} "
                "CHECK (jsonb_typeof(value) <> 'string') NOT VALID"
            )

    def clear_faults(self) -> None:
        self.proxy.clear()  # the refusal is the model's (refusal_only_lifts)

    def _close_remotes(self) -> None:
        while self._made:
            self._made.pop().close()

    def close(self) -> None:
        self._close_remotes()
        self.proxy.close()
        self.server.cleanup()
