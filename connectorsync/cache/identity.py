"""A cache file's identity: one name for the datapoints of this file, wherever they go.

Remotes that drop a resent message by an id (NATS JetStream's ``Nats-Msg-Id``) or a resent
row by a key (PostgreSQL's unique key) need an id for a datapoint that is the same on every
resend and different from every other cache's: this identity and the datapoint's id in the
file (ids are never reused, ``test_streams.py``) make one.

Guarantees (each proved by the test named, in ``tests/test_identity.py``):

- Every cache file has one, made when it is first asked for (a new file, or one written
  before identities), and it never changes: reopening, another process, ``connectorsync``
  commands and migrations keep it (``test_the_identity_is_made_once_and_kept``).
- Two cache files never share one, even made in the same process at the same instant: 128
  random bits (``test_two_caches_have_two_identities``). A file copied whole (an SD card
  image cloned to a second device) keeps the same identity: give each device its own cache.
- Two processes opening a file without one at once agree on one
  (``test_processes_racing_to_make_it_agree``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import apsw

#: The setting that holds it: 32 lowercase hex digits.
SETTING = "cache.identity"


class _Store(Protocol):
    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def transaction(self, action: str) -> AbstractContextManager[apsw.Connection]: ...


def cache_identity(cache: _Store) -> str:
    """The cache's identity, made (and committed) in this call if it has none yet.

    :raises CacheError: it had none and the file cannot be written (a read-only card)
    """
    rows = cache.read("SELECT value FROM settings WHERE key = ?", (SETTING,))
    if rows:  # the common case: no write, so a Logger opens without one
        return str(json.loads(rows[0][0]))
    made = json.dumps(uuid.uuid4().hex)
    with cache.transaction("give the cache its identity") as conn:
        # One transaction: of two processes racing, the second finds the first's.
        conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (SETTING, made))
        rows = conn.execute("SELECT value FROM settings WHERE key = ?", (SETTING,)).fetchall()
    return str(json.loads(rows[0][0]))
