"""A Logger's remotes by name: which one is its primary, and their record in the cache.

``Logger(path, remote=R)`` delivers to one remote, named ``default``; ``Logger(path)`` to the
ConnectorDB server its settings describe, ``default`` too; ``Logger(path, remotes={"cloud":
A, "alarms": B})`` to each of those, and ``add_remote``/``remove_remote`` change the set
while it runs. Every remote has its own courier (:mod:`.courier`) and its own position per
stream in the cache (:mod:`.cache.positions`): a datapoint leaves once every remote that
routes its stream has it.

Guarantees (each proved by the test named):

- A remote the Logger is given and the cache has not recorded is recorded with its
  configuration (``to_config()``) and holds the whole backlog of the streams it routes
  (``backfill``), or only what comes after (``test_fanout.py``).
- Reopening with the same remotes changes nothing on disk: each keeps its position
  (``test_fanout.py::test_reopening_with_the_same_remotes_resends_nothing``); a remote given
  with another configuration under a recorded name keeps its position too, and its new
  configuration is recorded at once, for ``connectorsync sync``
  (``test_reconfigure.py::test_another_url_is_what_another_process_delivers_to``).
- A remote recorded in the cache that this Logger was not given keeps what it holds: nothing
  is released but by ``remove_remote`` (``test_fanout.py``,
  ``test_cli_fanout.py::test_a_second_logger_without_default_keeps_the_default_another_delivers_to``);
  a new cache made with ``remotes=`` and no ``default`` has no ``default`` remote.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from . import _checks as check
from .cache import Cache
from .cache.routing import RemoteRow
from .errors import ArgumentTypeError, ConfigurationError
from .remotes.base import MAX_SECONDS, Remote
from .remotes.config import routed_config as remote_config  # with its module

log = logging.getLogger(__name__)

DEFAULT = "default"


def named(remote: Remote | None, remotes: Mapping[str, Remote] | None) -> dict[str, Remote]:
    """The remotes a Logger was given, by name (``remote=`` is ``{"default": remote}``;
    neither: ``{}``, the default remote from the settings).

    :raises ConfigurationError: both given, or an empty mapping, or a name a remote cannot have
    :raises ArgumentTypeError: a value that is not a Remote
    """
    if remotes is None:
        return {} if remote is None else {DEFAULT: remote}
    if remote is not None:
        raise ConfigurationError(
            "Logger(): give remote= (one remote, named 'default') or remotes= (several, by "
            "name), not both"
        )
    if not isinstance(remotes, Mapping) or not remotes:
        raise ArgumentTypeError(
            f"Logger(): remotes must be a non-empty mapping of names to Remote objects, "
            f"not {remotes!r}"
        )
    for name, value in remotes.items():
        check.remote("Logger()", f"remotes[{name!r}]", value)
    return dict(remotes)


def primary_name(given: Mapping[str, Remote]) -> str:
    """The remote whose courier is the Logger's first (``sync()`` reports it first, the
    ConnectorDB settings rebuild it): ``default`` if given or none given, else the first."""
    return DEFAULT if DEFAULT in given or not given else next(iter(given))


def record(cache: Cache, given: Mapping[str, Remote], *, created: bool) -> None:
    """Bring the cache's record of remotes in line with ``given``: each given remote not
    recorded yet is added (with its configuration; it takes the backlog). ``default``, when
    ``remotes=`` did not name it, goes from a new cache only: in an existing one it may be
    another program's (a script on the same cache, ``connectorsync sync --remote``), so it
    stays, holding what it holds and what comes, and says so, until
    ``remove_remote("default")``. So does any other recorded remote this Logger was not
    given: leaving a remote out of ``remotes=`` never releases what it holds
    (``test_reconfigure.py::test_a_named_remote_left_out_keeps_what_it_holds_and_says_so``)."""
    remotes = cache.remotes()
    recorded = remotes.all()
    for name, remote in given.items():
        config = remote_config(remote)
        if name not in recorded:
            remotes.add(RemoteRow(0, name, config=config), backfill=True)
        elif recorded[name].config != config:  # another URL or kind: another process's too
            remotes.update(dataclasses.replace(recorded[name], config=config))
    if given and DEFAULT not in given and DEFAULT in recorded and created:
        remotes.remove(DEFAULT)
        return
    left_out = [name for name in recorded if given and name not in given]
    if left_out:
        summary = remotes.summary()
        for name in left_out:
            log.warning(
                "cache %s: its remote %r holds %d datapoints and %d dead letters, and every "
                "datapoint inserted from now on, but this Logger was not given it at open: "
                "give it (remotes=, add_remote) to deliver them, or remove_remote(%r) "
                "releases the datapoints (its dead letters stay), if no other program "
                "delivers to it",
                cache.path,
                name,
                summary[name].held,
                summary[name].deadletters,
                name,
            )


def add(  # noqa: PLR0913 - add_remote's keywords, checked and recorded together
    cache: Cache,
    name: str,
    remote: Remote,
    streams: Sequence[str] | None,
    *,
    backfill: bool,
    give_up_after: float | None,
    fallback: str | None,
) -> None:
    """``Logger.add_remote``: check its arguments and record the remote in the cache (see
    :func:`connectorsync.cache.routing.add`). A remote recorded already keeps its position;
    its configuration, ``give_up_after`` and fallback are the ones given now.

    :raises ConfigurationError: a bad name, fallback or ``give_up_after``, or a recorded
        remote of that name that routes other streams
    :raises ArgumentTypeError: an argument of the wrong type
    """
    if remote is None:
        raise ArgumentTypeError("add_remote(): remote must be a Remote object, not None")
    check.remote("add_remote()", "remote", remote)
    patterns = _patterns(streams)
    if give_up_after is not None:
        if isinstance(give_up_after, bool) or not isinstance(give_up_after, int | float):
            raise ArgumentTypeError(
                f"add_remote(): give_up_after must be seconds (a number) or None, "
                f"not {give_up_after!r}"
            )
        if not 0 < give_up_after <= MAX_SECONDS:
            raise ConfigurationError(
                f"add_remote(): give_up_after must be more than 0 and at most {MAX_SECONDS:g} "
                f"seconds; got {give_up_after!r}"
            )
    row = RemoteRow(
        0,
        name,
        config=remote_config(remote),
        streams=patterns,
        give_up_after=None if give_up_after is None else float(give_up_after),
        fallback=fallback,
    )
    recorded = cache.remotes().all().get(name)
    if recorded is None:
        cache.remotes().add(row, backfill=backfill)
    elif recorded.streams != patterns:
        raise ConfigurationError(
            f"add_remote(): the cache's remote {name!r} routes {recorded.streams or 'every'} "
            f"stream(s), not {patterns or 'every'}: remove_remote({name!r}) first (it "
            "releases what only it holds), then add it again"
        )
    elif (recorded.config, recorded.give_up_after, recorded.fallback) != (
        row.config,
        row.give_up_after,
        row.fallback,
    ):  # added again with other settings: they hold from now on, its position stays
        cache.remotes().update(row)


def _patterns(streams: Sequence[str] | None) -> list[str] | None:
    if streams is None:
        return None
    if not isinstance(streams, list | tuple) or not all(isinstance(p, str) for p in streams):
        raise ArgumentTypeError(
            f"add_remote(): streams must be a list of stream names or glob patterns, or "
            f"None (every stream); got {streams!r}"
        )
    return list(streams)
