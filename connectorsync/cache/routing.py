"""The remotes of a cache: their names, configurations, stream filters, and which streams each
routes (a position row per remote and stream, see :mod:`.positions`).

Guarantees (each proved by the test named):

- Adding a remote gives it every cached datapoint of the streams it routes (``backfill``),
  or only what comes after; a stream registered later is routed by every remote whose
  filter matches it (``test_positions.py``).
- Removing a remote releases what only it held; a stream that no remote routes any more
  keeps its datapoints for the next remote added (``test_positions.py``). A remote that is
  another's fallback cannot be removed before that one (``test_routing.py``).
- ``give_up_after``: :func:`give_up` makes a remote that has been failing that long stop
  holding what is older than that (never its batch in flight), counted per remote, or hands
  it to its fallback; nothing reaches both (``test_routing.py``).
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

import apsw

from ..errors import ConfigurationError
from . import positions, seal
from .base import bump

#: The counter setting of the datapoints a remote released (``give_up_after``, no fallback)
#: is this and the remote's name; those handed to its fallback: :data:`HANDED_OVER`.
RELEASED = "stats.released."
HANDED_OVER = "stats.handed_over."


@dataclass(frozen=True)
class RemoteRow:
    """A remote as recorded in the cache.

    :ivar config: its ``to_config()``; None: the Logger's own, from its settings
    :ivar streams: the names and glob patterns of the streams it routes; None: every stream
    :ivar give_up_after: seconds of failing after which it stops holding older data
    :ivar fallback: the remote that takes, instead, what it gave up on
    :ivar failing_since: when its passes began to fail (None: the last one went well)
    """

    id: int
    name: str
    config: dict[str, Any] | None = None
    streams: list[str] | None = None
    give_up_after: float | None = None
    fallback: str | None = None
    failing_since: float | None = None


def routes(patterns: list[str] | None, stream: str) -> bool:
    """Whether a remote with stream filter ``patterns`` (names or glob patterns; None:
    every stream) routes ``stream``."""
    return patterns is None or any(fnmatchcase(stream, p) for p in patterns)


_COLUMNS = "id, name, config, streams, give_up_after, fallback, failing_since"
_ROUTED = "SELECT stream FROM positions WHERE remote = ?"
#: What a remote's name may be (it names counters and metric labels too).
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _row(conn: apsw.Connection, row: tuple[Any, ...]) -> RemoteRow:
    rid, name, config, streams, give_up_after, fallback, failing_since = row
    if config is not None:  # it holds credentials: sealed in a sealed cache
        config = seal.load(conn, seal.REMOTE, name, config, f"remotes row {rid} ({name!r})")
    return RemoteRow(
        rid,
        name,
        None if config is None else json.loads(config),
        None if streams is None else json.loads(streams),
        give_up_after,
        fallback,
        failing_since,
    )


def _stored_config(conn: apsw.Connection, remote: RemoteRow) -> str | bytes | None:
    """What to store of ``remote.config`` (sealed in a sealed cache), or None."""
    if remote.config is None:
        return None
    return seal.store(conn, seal.REMOTE, remote.name, json.dumps(remote.config))


def remotes(conn: apsw.Connection) -> dict[str, RemoteRow]:
    """Every remote of the cache by name, in the order they were added."""
    return {
        r.name: r
        for r in (
            _row(conn, row)
            for row in list(conn.execute(f"SELECT {_COLUMNS} FROM remotes ORDER BY id"))
        )
    }


def add(conn: apsw.Connection, remote: RemoteRow, *, backfill: bool) -> RemoteRow:
    """Record ``remote`` (its ``id`` is ignored) and route its streams: it holds every cached
    datapoint of them (``backfill``) or only what comes after. Returns it with its id.

    :raises ConfigurationError: a remote of that name exists, or its fallback does not
    """
    if not isinstance(remote.name, str) or not NAME.fullmatch(remote.name):
        raise ConfigurationError(
            f"a remote's name is a letter then letters, digits, '_' or '-' (at most 64); "
            f"got {remote.name!r}"
        )
    known = remotes(conn)
    if remote.name in known:
        raise ConfigurationError(f"the cache has a remote named {remote.name!r} already")
    if remote.fallback is not None and remote.fallback not in known:
        raise ConfigurationError(
            f"remote {remote.name!r}: its fallback {remote.fallback!r} is not a remote of "
            f"this cache (add it first); remotes: {', '.join(known) or 'none'}"
        )
    conn.execute(
        "INSERT INTO remotes (name, config, streams, give_up_after, fallback) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            remote.name,
            _stored_config(conn, remote),
            None if remote.streams is None else json.dumps(remote.streams),
            remote.give_up_after,
            remote.fallback,
        ),
    )
    rid = conn.last_insert_rowid()
    start = 0
    if not backfill:
        start = int(next(conn.execute("SELECT coalesce(max(id), 0) FROM datapoints"))[0])
    for sid, name in list(conn.execute("SELECT id, name FROM streams")):
        if routes(remote.streams, name):
            conn.execute(
                "INSERT INTO positions (remote, stream, done) VALUES (?, ?, ?)", (rid, sid, start)
            )
    return remotes(conn)[remote.name]


def update(conn: apsw.Connection, remote: RemoteRow) -> None:
    """Record the recorded remote ``remote.name``'s configuration, ``give_up_after`` and
    fallback anew (its stream filter and positions stay as they are).

    :raises ConfigurationError: no such remote, or a fallback that is not another remote
    """
    known = remotes(conn)
    if remote.name not in known:
        raise ConfigurationError(f"the cache has no remote named {remote.name!r}")
    if remote.fallback is not None and (
        remote.fallback not in known or remote.fallback == remote.name
    ):
        raise ConfigurationError(
            f"remote {remote.name!r}: its fallback {remote.fallback!r} is not a remote of "
            f"this cache (add it first); remotes: {', '.join(known)}"
        )
    conn.execute(
        "UPDATE remotes SET config = ?, give_up_after = ?, fallback = ? WHERE name = ?",
        (
            _stored_config(conn, remote),
            remote.give_up_after,
            remote.fallback,
            remote.name,
        ),
    )


def route_stream(conn: apsw.Connection, stream: int, name: str) -> None:
    """A stream registered: every remote whose filter matches it routes it from now on."""
    for rid, patterns in list(conn.execute("SELECT id, streams FROM remotes")):
        if routes(None if patterns is None else json.loads(patterns), name):
            conn.execute(
                "INSERT INTO positions (remote, stream) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (rid, stream),
            )


def remove(conn: apsw.Connection, name: str) -> int:
    """Forget the remote ``name``: what only it held leaves the cache (a stream no other
    remote routes keeps its datapoints). Returns how many left.

    :raises ConfigurationError: no such remote, or it is another remote's fallback
    """
    known = remotes(conn)
    if name not in known:
        raise ConfigurationError(
            f"the cache has no remote named {name!r}; remotes: {', '.join(known) or 'none'}"
        )
    leaning = [r.name for r in known.values() if r.fallback == name]
    if leaning:
        raise ConfigurationError(
            f"remote {name!r} is the fallback of {', '.join(leaning)}: remove "
            f"{'that' if len(leaning) == 1 else 'those'} first"
        )
    rid = known[name].id
    streams = [s for (s,) in conn.execute("SELECT stream FROM positions WHERE remote = ?", (rid,))]
    conn.execute("DELETE FROM positions WHERE remote = ?", (rid,))
    conn.execute("DELETE FROM taken WHERE remote = ?", (rid,))
    conn.execute("DELETE FROM remotes WHERE id = ?", (rid,))
    return sum(positions.settle(conn, stream) for stream in streams)


def failing(conn: apsw.Connection, name: str, since: float | None) -> None:
    """Record that the remote's passes fail since ``since`` (kept from the first failure
    on), or (None) that its last pass went well."""
    if since is None:
        conn.execute("UPDATE remotes SET failing_since = NULL WHERE name = ?", (name,))
    else:
        conn.execute(
            "UPDATE remotes SET failing_since = coalesce(failing_since, ?) WHERE name = ?",
            (since, name),
        )


def give_up(conn: apsw.Connection, name: str, now: float) -> int:
    """``give_up_after``: if the remote ``name`` has been failing for at least that long, it
    stops holding what it holds that is older than ``now - give_up_after`` (stopping before
    its batch in flight, whose outcome is unknown): released, or handed to its fallback
    (one that routes the stream itself has it already: released for this one). Returns how
    many; each counted in :data:`RELEASED` or :data:`HANDED_OVER`."""
    remote = remotes(conn).get(name)
    if (
        remote is None
        or remote.give_up_after is None
        or remote.failing_since is None
        or now - remote.failing_since < remote.give_up_after
    ):
        return 0
    fallback = None if remote.fallback is None else remotes(conn)[remote.fallback].id
    cutoff = now - remote.give_up_after
    released = handed = 0
    for stream, lo in list(
        conn.execute("SELECT stream, inflight_lo FROM positions WHERE remote = ?", (remote.id,))
    ):
        # In a stream, times grow with ids: what is older than the cutoff is a run of ids.
        (upto,) = next(
            conn.execute(
                "SELECT max(id) FROM datapoints "
                "WHERE stream = ?1 AND t < ?2 AND (?3 = 0 OR id < ?3)",
                (stream, cutoff, lo),
            )
        )
        if upto is not None:
            gone, moved = positions.hand_over(conn, remote.id, stream, upto, fallback)
            released, handed = released + gone, handed + moved
    bump(conn, RELEASED + name, released)
    bump(conn, HANDED_OVER + name, handed)
    return released + handed


class Remotes:
    """The remotes of the cache connection ``cache`` (its ``transaction``), each call one
    transaction: the role the Logger and the CLI use to add, remove and look at them."""

    def __init__(self, cache: Transactional):
        self._cache = cache

    def all(self) -> dict[str, RemoteRow]:
        """Every remote by name, in the order they were added."""
        with self._cache.snapshot("read the remotes") as conn:
            return remotes(conn)

    def add(self, remote: RemoteRow, *, backfill: bool = True) -> RemoteRow:
        """Record ``remote`` (see :func:`add`); committed on return."""
        with self._cache.transaction(f"add remote {remote.name!r}") as conn:
            return add(conn, remote, backfill=backfill)

    def update(self, remote: RemoteRow) -> None:
        """Record a recorded remote's configuration anew (see :func:`update`)."""
        with self._cache.transaction(f"update remote {remote.name!r}") as conn:
            update(conn, remote)

    def remove(self, name: str) -> int:
        """Forget the remote ``name`` (see :func:`remove`); returns how many datapoints left."""
        with self._cache.transaction(f"remove remote {name!r}") as conn:
            return remove(conn, name)

    def failing(self, name: str, since: float | None) -> None:
        """Record how the remote's passes go (see :func:`failing`)."""
        with self._cache.transaction(f"record how remote {name!r} goes") as conn:
            failing(conn, name, since)

    def give_up(self, name: str, now: float) -> int:
        """``give_up_after`` for the remote ``name`` (see :func:`give_up`)."""
        with self._cache.transaction(f"give up old data for remote {name!r}") as conn:
            return give_up(conn, name, now)

    def after_pass(self, name: str, ok: bool, now: float) -> int:
        """A pass of the remote ``name`` ended (``ok``: it went well): recorded in one
        transaction with what :func:`give_up` then lets go (``give_up_after``). Returns how
        many datapoints it gave up."""
        with self._cache.transaction(f"record how remote {name!r} goes") as conn:
            failing(conn, name, None if ok else now)
            return 0 if ok else give_up(conn, name, now)

    def summary(self) -> dict[str, RemoteSummary]:
        """Every remote's side of the cache by name, in one transaction."""
        with self._cache.snapshot("read the remotes") as conn:
            letters = dict(
                conn.execute(
                    "SELECT remote, count(*) FROM deadletters WHERE retry_id IS NULL "
                    "GROUP BY remote"
                )
            )
            counters = dict(conn.execute("SELECT key, value FROM settings"))
            summary = {}
            for name, row in remotes(conn).items():
                streams = [s for (s,) in conn.execute(_ROUTED, (row.id,))]
                summary[name] = RemoteSummary(
                    held=sum(positions.held_count(conn, row.id, s) for s in streams),
                    deadletters=int(letters.get(name, 0)),
                    released=int(counters.get(RELEASED + name, 0)),
                    handed_over=int(counters.get(HANDED_OVER + name, 0)),
                    failing_since=row.failing_since,
                )
            return summary

    def held(self, name: str) -> dict[str, int]:
        """How many cached datapoints the remote ``name`` holds, per stream it routes."""
        with self._cache.snapshot(f"count what remote {name!r} holds") as conn:
            rid = remotes(conn)[name].id
            rows = list(
                conn.execute(
                    "SELECT s.id, s.name FROM streams AS s JOIN positions AS p "
                    "ON p.stream = s.id WHERE p.remote = ?",
                    (rid,),
                )
            )
            return {sname: positions.held_count(conn, rid, sid) for sid, sname in rows}


@dataclass(frozen=True)
class RemoteSummary:
    """A remote's side of the cache, for ``status()``.

    :ivar held: cached datapoints it holds (not delivered to it yet), all streams together
    :ivar deadletters: dead letters at rest it refused
    :ivar released: datapoints it gave up (``give_up_after``, no fallback), ever
    :ivar handed_over: datapoints it handed to its fallback, ever
    :ivar failing_since: when its passes began to fail, or None
    """

    held: int
    deadletters: int
    released: int
    handed_over: int
    failing_since: float | None


class Transactional(Protocol):
    """What :class:`Remotes` uses of a cache connection (``Cache``, named by what it does):
    write transactions, and read ones (which work on a read-only connection too)."""

    def transaction(self, action: str) -> AbstractContextManager[apsw.Connection]: ...

    def snapshot(self, action: str) -> AbstractContextManager[apsw.Connection]: ...
