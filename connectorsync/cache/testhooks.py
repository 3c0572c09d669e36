"""What :mod:`connectorsync.testing` needs from a live cache connection, and nothing else uses.

Tests look at a cache through the file (:class:`connectorsync.testing.probe.CacheProbe`, a
second, read-only connection). A few things can only be seen or done on the very connection
a Logger writes with: a pragma that is per connection (``synchronous``), a size cap that
makes its next write fail as on a full disk (``max_page_count``), an exception raised from
inside its next ``COMMIT`` (SQLite's commit hook), and its group commit. This module is the
one door to them, so that no code outside ``cache/`` touches a private name of a
:class:`~connectorsync.cache.Cache` (``tests/test_private_names.py`` checks it).

None of it is for production use: each function changes or exposes what the cache's own
methods keep whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import wrapped

if TYPE_CHECKING:
    from . import Cache
    from .commit import GroupCommit

__all__ = [
    "cap_pages",
    "fail_next_commit",
    "followers_waiting",
    "group_commit",
    "pragma",
    "wake_followers",
]


def pragma(cache: Cache, name: str) -> Any:
    """The value of ``PRAGMA name`` on this very connection (``synchronous`` is per
    connection: a second connection would answer its own)."""
    cache.check_process()
    with cache._lock, wrapped(f"read PRAGMA {name}"):
        return next(cache._conn.execute(f"PRAGMA {name}"))[0]


def cap_pages(cache: Cache, extra: int) -> int:
    """Let this connection grow the file by at most ``extra`` pages from now on (SQLite's
    ``max_page_count``): past it every write fails with ``SQLITE_FULL``, as on a full disk.
    Returns the cap set, in pages; call again with a large ``extra`` for room again."""
    cache.check_process()
    with cache._lock, wrapped("cap the cache's size"):
        pages = int(next(cache._conn.execute("PRAGMA page_count"))[0])
        return int(next(cache._conn.execute(f"PRAGMA max_page_count={pages + extra}"))[0])


def fail_next_commit(cache: Cache, raise_it: Callable[[], object]) -> None:
    """The next ``COMMIT`` of this connection calls ``raise_it`` from SQLite's commit hook:
    what it raises turns the ``COMMIT`` into a ``ROLLBACK`` and is raised by the ``COMMIT``.
    Once only; the hook then stays registered as a no-op (apsw must not lose a hook while
    it calls it)."""
    fired = False

    def hook() -> bool:
        nonlocal fired
        if fired:
            return False
        fired = True
        raise_it()
        return False

    cache.check_process()
    cache._conn.setcommithook(hook)


def group_commit(cache: Cache) -> GroupCommit | None:
    """The group commit of this connection (``durability="full"``), else None."""
    return cache._group


def wake_followers(group: GroupCommit) -> None:
    """Wake every insert waiting for its group's outcome, as a leader's ``notify_all`` does:
    each must look at its outcome and wait again while it is not decided."""
    with group._done:
        group._done.notify_all()


def followers_waiting(group: GroupCommit) -> int:
    """How many inserts sleep on the condition their outcome is announced on."""
    # threading.Condition counts its sleepers only in this CPython attribute; the group keeps
    # no count of its own, for its hot path would then pay for what only tests ask.
    with group._done:
        return len(group._done._waiters)  # type: ignore[attr-defined]
