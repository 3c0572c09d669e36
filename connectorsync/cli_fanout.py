"""The command line and a cache's remotes: which ones it records, built again from the
configuration recorded with each, and a Logger that delivers to them (``connectorsync sync``
and ``deadletters retry``, all of them or the one ``--remote NAME`` names).

The ``default`` remote is built from the settings as before (its ``remote.config``, or the
ConnectorDB server they describe); every other from its ``config`` in the cache's
``remotes`` table (:func:`connectorsync.remotes.config.remote_from_routed`). A remote that
cannot be built here (one of your own) is named and skipped: the command then exits 2.

Opening a Logger changes nothing a remote left out holds
(``tests/test_cli_fanout.py::test_sync_of_one_remote_leaves_the_other_as_it_was``): a Logger
given remotes without ``default`` would drop an empty ``default`` from the cache, so a
``default`` that holds nothing comes along (with nothing to deliver, its report unshown);
one that cannot be built and holds nothing refuses the command instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError, ConnectorSyncError
from .remotes._http import hide_password

DEFAULT = "default"


class UsageError(Exception):
    """A problem the user can fix: exit code 2 with this message."""


@dataclass
class Recorded:
    """The remotes a cache records, as the command line builds them again.

    :ivar rows: each recorded remote's row (``RemoteRow``) by name, in the order added
    :ivar built: each remote to deliver to, built again (None: ``default``, the ConnectorDB
        server of the settings)
    :ivar skipped: why each remote that cannot be built here is left out, by name
    :ivar default: the ``default`` remote built again when it is recorded and buildable,
        even when left out of ``built`` (``--remote`` names another)
    :ivar default_held: how many datapoints ``default`` holds (0 when not recorded)
    :ivar default_why: why ``default`` cannot be built here, or None
    """

    rows: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    default: Any = None
    default_held: int = 0
    default_why: str | None = None

    def close(self) -> None:
        """Close every remote built here (a Logger does not close a remote it was given)."""
        for remote in {id(r): r for r in (*self.built.values(), self.default)}.values():
            if remote is not None:
                with contextlib.suppress(Exception):  # closing: nothing left to tell
                    remote.close()


def recorded_remotes(path: str, only: str | None = None) -> Recorded:
    """The remotes the cache at ``path`` records, built again (``only``: that one), read
    without writing the file. A cache an older connectorsync wrote (no remotes table) has
    the default remote only.

    :raises UsageError: no such file, or no remote named ``only``
    """
    from .cli_keys import open_sealed

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such cache file")
    try:
        cache = open_sealed(path)
    except ConnectorSyncError:  # an older cache, or none: open_logger says which
        if only not in (None, DEFAULT):
            raise UsageError(f"{path} has no remote named {only!r}; remotes: default") from None
        return Recorded(built={DEFAULT: None})
    try:
        settings = cache.settings()
        remotes = cache.remotes()
        rows = remotes.all()
        held = sum(remotes.held(DEFAULT).values()) if DEFAULT in rows else 0
    finally:
        cache.close()
    if only is not None and only not in rows:
        raise UsageError(
            f"{path} has no remote named {only!r}; remotes: {', '.join(rows) or 'none'}"
        )
    found = Recorded(rows=rows, default_held=held)
    for name, row in rows.items():
        try:
            remote = _build(name, row, settings)
        except ConfigurationError as exc:
            why = _why(name, settings, exc)
            if name == DEFAULT:
                found.default_why = why
            if only in (None, name):
                found.skipped[name] = why
            continue
        if name == DEFAULT:
            found.default = remote
        if only in (None, name):
            found.built[name] = remote
    return found


def _build(name: str, row: Any, settings: dict[str, Any]) -> Any:
    from .remotes.config import recorded_remote, remote_from_routed

    if name == DEFAULT:
        return recorded_remote(settings)  # None: the ConnectorDB server of the settings
    if not isinstance(row.config, dict):
        raise ConfigurationError("no configuration recorded to build it again")
    return remote_from_routed(row.config)


def _why(name: str, settings: dict[str, Any], exc: ConfigurationError) -> str:
    if name == DEFAULT and settings.get("remote") is not None:
        return f"syncs to {hide_password(settings['remote'])} (its program's remote), {exc}"
    return str(exc)


def refuse_skipped(path: str, found: Recorded) -> None:
    """Nothing to deliver to: every remote asked for cannot be built here.

    :raises UsageError: naming them, and what to do
    """
    if not found.built:
        if list(found.skipped) == [DEFAULT]:  # as before several remotes
            reasons = f" {found.skipped[DEFAULT]}"
        else:
            reasons = ": " + "; ".join(skipped(n, why) for n, why in found.skipped.items())
        raise UsageError(f"{path}{reasons}: sync from that program (Logger.sync()) instead")


def skipped(name: str, why: str) -> str:
    """``remote 'mine': why``: a remote the command cannot build, named."""
    return f"remote {name!r}: {why}"


@contextmanager
def delivering(path: str, found: Recorded) -> Iterator[Any]:
    """A Logger on the cache at ``path`` that delivers to every remote of ``found.built``
    (and to ``default``, with nothing to deliver, when it must come along); closed after,
    with the remotes built.

    :raises UsageError: no remote to deliver to, or a ``default`` that cannot be built
        holds nothing (leaving it out would drop it from the cache)
    """
    names = list(found.built)
    # Left out, an empty default would be dropped from the cache: it comes along.
    with_default = DEFAULT in found.built or (DEFAULT in found.rows and found.default_held == 0)
    try:
        refuse_skipped(path, found)
        if with_default and found.default_why is not None:
            raise UsageError(
                f"{path}: its remote 'default' cannot be built here ({found.default_why}) and "
                "holds nothing: left out, it would be dropped from the cache. Sync from its "
                "program (Logger.sync()) instead"
            )
        if with_default:
            logger = open_logger(path, found.default)
            if found.default is None:
                try:
                    refuse_another_remote(path, logger)
                except UsageError:
                    logger.close(timeout=0)
                    raise
        else:
            first = names[0]
            with _quiet_fanout():  # a default that holds data stays, as the log would say
                logger = open_logger(path, None, remotes={first: found.built[first]})
    except BaseException:
        found.close()
        raise
    try:
        for name in names:
            if name not in logger.remotes:
                row = found.rows[name]
                logger.add_remote(
                    name,
                    found.built[name],
                    row.streams,
                    give_up_after=row.give_up_after,
                    fallback=row.fallback,
                )
        yield logger
    finally:
        logger.close(timeout=0)
        found.close()


@contextmanager
def _quiet_fanout() -> Iterator[None]:
    """The Logger's warning that ``default`` keeps what it holds (it was not given): true,
    and what the command wants; not shown."""

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "remove_remote('default')" not in record.getMessage()

    quiet, library = Quiet(), logging.getLogger("connectorsync.fanout")
    library.addFilter(quiet)
    try:
        yield
    finally:
        library.removeFilter(quiet)


def open_logger(path: str, remote: Any, remotes: dict[str, Any] | None = None) -> Any:
    """A Logger on an existing cache file (syncing to ``remote``, or to ``remotes``, if
    given); never creates one. The caller closes it."""
    from .cli_keys import logger_keys
    from .logger import Logger

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such cache file")
    try:
        return Logger(path, remote=remote, remotes=remotes, **logger_keys())
    except ConnectorSyncError as exc:
        raise UsageError(f"{path}: {exc}") from exc


def refuse_another_remote(path: str, logger: Any) -> None:
    """No configuration recorded: sync only when the cache's remote is the Logger's default
    one (the ConnectorDB server in the settings); sending elsewhere than the program that
    logs would split the data in two."""
    recorded, ours = logger.status().remote, repr(logger.remote)
    recorded = None if recorded is None else hide_password(recorded)
    if recorded is not None and recorded != ours:
        raise UsageError(
            f"{path} syncs to {recorded} (its program's remote), and has no configuration "
            "recorded to build it again (an older connectorsync wrote it). Sync from that "
            "program (Logger.sync()), or open the cache once with this version's Logger "
            "given that remote: it records the configuration"
        )


def letters_of(path: str, remote: str | None) -> dict[int, str]:
    """The dead letters at rest of the cache at ``path`` by id, with the remote that refused
    each (``remote``: that one's only), read without writing the file.

    :raises UsageError: no remote of that name
    """
    from .cli_keys import open_sealed

    try:
        cache = open_sealed(path)
    except ConnectorSyncError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    try:
        names = list(cache.remotes().all())
        letters = cache.letter_remotes()
    finally:
        cache.close()
    if remote is not None and remote not in names:
        raise UsageError(
            f"{path} has no remote named {remote!r}; remotes: {', '.join(names) or 'none'}"
        )
    return {i: r for i, r in letters.items() if remote is None or r == remote}
