"""The Logger's options and ConnectorDB's settings, each declared once, and their persistence.

This module is the only place an option is declared: :class:`Configurable` holds one
:class:`Option` record each (its default, its check, what it means, where it is stored,
what it acts on), and everything else is built from those records: :class:`Options` (the
values the parts read), the Logger's read/write attributes (the Logger is a
:class:`Configurable`), the keyword arguments ``Logger(**options)`` takes, the docs' options
table (``tests/test_options.py`` keeps it in step) and, by :class:`Target`, the step that
applies a changed option (:mod:`connectorsync.targets`). A new option is one new record.

Every option is a keyword argument of ``Logger`` and a read/write attribute of the same name;
setting one (either way) checks it, stores it in the cache file (:class:`Stored`), so that
the next open has it too, and then tells the parts it acts on. ConnectorDB's settings
(``apikey``, ``serverurl``, ``syncperiod``, ``lastsynctime``, ``data``) are kept the same way,
under their own names as connectordb 0.3.5 kept them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from .errors import ConfigurationError
from .option_checks import (
    anything,
    api_key,
    boolean,
    non_negative_number,
    one_of,
    optional,
    port,
    positive_int,
    positive_number,
    rate,
    server_url,
    text,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stored(enum.Enum):
    """Where an option's value is kept, so that the next open of the cache file has it."""

    SETTING = "stored in the cache file, under its own name as connectordb 0.3.5 kept it"
    OPTION = "stored in the cache file"
    #: Another process opening the file (``connectorsync sync``) must not, say, try to listen
    #: on the same port.
    PROCESS = "this process only: not stored in the cache file"


class Target(enum.Enum):
    """A part of the Logger that a changed option acts on (:mod:`connectorsync.targets` says
    how). An option that acts on none is read by the part that uses it, when it uses it (a
    pass reads ``batch_size`` at each batch), so a change takes effect then."""

    REMOTE = "the default remote is built again from serverurl, apikey and http_timeout"
    CREDENTIALS = "a pause on refused credentials ends, and the syncer tries them now"
    PERIOD = "the background syncer starts its new period now"
    COMMIT_INTERVAL = "the cache commits batched inserts at the new interval"
    DURABILITY = "the cache commits with the new durability"
    LIMITS = "the writer checks the new storage limits"
    ARCHIVE = "the writer archives to the new directory, format and fsync"
    CLOCK = "the clock trusts the system time, or waits for NTP"
    METRICS = "/metrics is served at the new port, or no longer"


class Scope(enum.Enum):
    """How many values an option has. With several remotes (issue 17), ``max_rate``,
    ``batch_size``, ``live_first`` and ``give_up_after`` get a scope of one value per remote,
    read by that remote's pass."""

    CACHE = "one value for the cache file and what it syncs to"


class OptionHolder(Protocol):
    """What holds option values: :class:`Options` keeps them; the Logger checks, stores and
    applies them (``Logger._set_option``)."""

    def _option_value(self, option: Option[Any]) -> Any: ...

    def _set_option(self, option: Option[Any], value: Any) -> None: ...


@dataclass(frozen=True, eq=False)
class Option(Generic[T]):
    """One option, declared once, as an attribute of :class:`Configurable` (which names it).

    On a :class:`Configurable` instance the attribute reads and writes the option's value
    through the instance's ``_option_value`` and ``_set_option``; on the class it is this
    record.
    """

    default: T
    #: ``check(name, value)``: the value as the option keeps it; raises ArgumentTypeError
    #: (a wrong type) or ConfigurationError (:mod:`connectorsync.option_checks`)
    check: Callable[[str, Any], T]
    #: what it means, one line, as the docs' options table and the attribute say it
    doc: str
    stored: Stored = Stored.OPTION
    #: the parts told when it changes; none: the part that uses it reads it then
    acts: tuple[Target, ...] = ()
    scope: Scope = Scope.CACHE
    #: read from the cache file each time, not kept in memory: another process may change it
    reread: bool = False
    name: str = field(default="", init=False)

    def __set_name__(self, owner: type, name: str) -> None:
        # The record is frozen once named: its attribute name is the option's name.
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "__doc__", self.describe())

    @property
    def key(self) -> str | None:
        """Its key in the cache file's settings (None: not stored)."""
        if self.stored is Stored.PROCESS:
            return None
        return self.name if self.stored is Stored.SETTING else "option." + self.name

    def checked(self, value: Any) -> T:
        """``value`` as this option keeps it.

        :raises ArgumentTypeError: a value of the wrong type (also a TypeError)
        :raises ConfigurationError: a value out of range
        """
        return self.check(self.name, value)

    def describe(self) -> str:
        """What it means, its default and where it is kept: the attribute's docstring."""
        where = self.stored.value
        if self.reread:
            where += ", and read from it each time (another process may change it)"
        return f"{self.doc[0].upper()}{self.doc[1:]} (default {self.default!r}); {where}."

    def __repr__(self) -> str:
        return f"<option {self.name} (default {self.default!r})>"

    @overload
    def __get__(self, holder: None, owner: type | None = None) -> Option[T]: ...

    @overload
    def __get__(self, holder: OptionHolder, owner: type | None = None) -> T: ...

    def __get__(self, holder: OptionHolder | None, owner: type | None = None) -> Any:
        return self if holder is None else holder._option_value(self)

    def __set__(self, holder: OptionHolder, value: T) -> None:
        holder._set_option(self, value)


#: ``sync_jitter=None`` stands for this fraction of ``syncperiod``.
DEFAULT_JITTER = 0.1


class Configurable:
    """Every option and ConnectorDB setting, declared once: one :class:`Option` record each.

    The :class:`Logger <connectorsync.Logger>` and :class:`Options` are Configurable: each
    record is a read/write attribute of theirs.
    """

    # ConnectorDB's settings, kept as connectordb 0.3.5 kept them.
    apikey = Option(
        "",
        api_key,
        "the apikey the default remote uses",
        stored=Stored.SETTING,
        acts=(Target.REMOTE, Target.CREDENTIALS),
    )
    serverurl = Option(
        "http://localhost:3124",
        server_url,
        "the ConnectorDB server the default remote talks to",
        stored=Stored.SETTING,
        acts=(Target.REMOTE,),
    )
    syncperiod = Option(
        600.0,
        positive_number,
        "seconds between background sync attempts",
        stored=Stored.SETTING,
        acts=(Target.PERIOD,),
    )
    lastsynctime = Option[float](
        0, anything, "when the last complete sync ended (0: never)", stored=Stored.SETTING
    )
    data = Option[Any](
        {},
        anything,
        "your own settings, anything JSON",
        stored=Stored.SETTING,
        reread=True,
    )

    # The options.
    durability = Option(
        "full",
        one_of("full", "batched", "normal"),
        "'full' survives a power cut; 'batched' loses at most the last commit_interval to one;"
        " 'normal' survives a crash of the process",
        acts=(Target.DURABILITY, Target.ARCHIVE),
    )
    commit_interval = Option(
        0.2,
        positive_number,
        "with durability 'batched': seconds an insert may wait in memory before its commit",
        acts=(Target.COMMIT_INTERVAL,),
    )
    batch_size = Option(5000, positive_int, "datapoints per request to the remote")
    max_batch_bytes = Option(
        4 * 1024 * 1024,
        positive_int,
        "most bytes of cached values per request to the remote (a larger single value goes alone)",
    )
    sync_threshold = Option(
        None,
        optional(positive_int),
        "sync as soon as this many datapoints were inserted (None: by period)",
    )
    sync_jitter = Option(
        None,
        optional(non_negative_number),
        "seconds of random delay added to each periodic pass and to the first one after "
        f"start(), so a fleet started together does not sync in step (None: "
        f"{DEFAULT_JITTER:.0%} of syncperiod; 0: none)",
    )
    http_timeout = Option(
        30.0,
        positive_number,
        "seconds to connect, and to wait for each answer",
        acts=(Target.REMOTE,),
    )
    live_first = Option(
        True,
        boolean,
        "a pass sends what was inserted since the previous pass before the backlog, when the"
        " remote does not need order",
    )
    max_rate = Option(
        None,
        optional(rate),
        "most datapoints per second the backlog drains at (never the live lane; None: no limit)",
    )
    max_cached = Option(
        None, optional(positive_int), "most datapoints the cache may hold", acts=(Target.LIMITS,)
    )
    max_cache_bytes = Option(
        None,
        optional(positive_int),
        "most bytes the cached data may use",
        acts=(Target.LIMITS,),
    )
    min_free_disk = Option(
        None,
        optional(positive_int),
        "bytes that must stay free on the cache's disk",
        acts=(Target.LIMITS,),
    )
    on_full = Option(
        "reject",
        one_of("reject", "drop_oldest", "thin", "thin_or_reject"),
        "when a limit is reached: refuse the insert; drop the oldest datapoints (lowest"
        " priority first); thin the number streams (and thin=True ones), then drop the oldest"
        " ('thin') or refuse ('thin_or_reject')",
        acts=(Target.LIMITS,),
    )
    max_age = Option(
        None,
        optional(positive_number),
        "seconds after which a cached datapoint expires (counted)",
    )
    ntp_server = Option(
        None, optional(text), "NTP server that tells the true time", acts=(Target.CLOCK,)
    )
    hold_unsynced = Option(
        False,
        boolean,
        "keep datapoints stamped before NTP answered from the remote until then",
    )
    max_hold = Option(86400.0, positive_number, "seconds hold_unsynced holds a datapoint at most")
    archive_dir = Option(
        None,
        optional(text),
        "directory for the daily archive files",
        acts=(Target.ARCHIVE,),
    )
    archive_format = Option(
        "jsonl", one_of("jsonl", "csv"), "format of the archive files", acts=(Target.ARCHIVE,)
    )
    metrics_port = Option(
        None,
        optional(port),
        "serve /metrics on 127.0.0.1 at this port (0: any free one, see metrics_url; None: "
        "not served)",
        stored=Stored.PROCESS,
        acts=(Target.METRICS,),
    )


#: Every option and ConnectorDB setting by name, in the order :class:`Configurable` declares
#: them.
OPTIONS: Mapping[str, Option[Any]] = {
    name: value for name, value in vars(Configurable).items() if isinstance(value, Option)
}


class Options(Configurable):
    """The current value of every option and setting, read by the parts the Logger wires.

    The Logger owns it and is the only writer (through :class:`Settings`, after the value
    was stored in the cache file); the syncer and the pass read attributes when they need
    them, so a changed option takes effect at the next batch without calling back up into
    the Logger. ``data`` is kept as the file held it at open: :meth:`Settings.get` reads it
    from the file each time.
    """

    def __init__(self, **values: Any) -> None:
        """Every option at its default, but for ``values`` (taken as they are)."""
        unknown = values.keys() - OPTIONS.keys()
        if unknown:
            raise ConfigurationError(f"unknown option(s) {', '.join(sorted(unknown))}")
        self._values = {name: option.default for name, option in OPTIONS.items()}
        self._values.update(values)

    def _option_value(self, option: Option[Any]) -> Any:
        return self._values[option.name]

    def _set_option(self, option: Option[Any], value: Any) -> None:
        self._values[option.name] = value

    def jitter(self) -> float:
        """The seconds ``sync_jitter`` stands for now: its value, or
        :data:`DEFAULT_JITTER` of ``syncperiod`` when None (so it follows ``syncperiod``)."""
        if self.sync_jitter is None:
            return DEFAULT_JITTER * self.syncperiod
        return self.sync_jitter

    def get(self, name: str) -> Any:
        """The value of option ``name``."""
        return self._values[name]

    def set(self, name: str, value: Any) -> None:
        """Keep ``value`` for option ``name`` (checked already: see :class:`Settings`)."""
        self._values[name] = value

    def as_dict(self) -> dict[str, Any]:
        """Every value by name."""
        return dict(self._values)


#: The options :func:`check_together` looks at.
TOGETHER = frozenset({"hold_unsynced", "ntp_server"})


def check_together(options: Mapping[str, Any]) -> None:
    """Raise ConfigurationError for options that contradict each other (``options`` holds
    every option): a setting that would silently do nothing is refused."""
    if options["hold_unsynced"] and options["ntp_server"] is None:
        raise ConfigurationError(
            "hold_unsynced=True holds datapoints until an NTP server answers, but ntp_server "
            "is not set (without it the system clock is trusted and nothing would be held): "
            "set ntp_server, e.g. ntp_server='pool.ntp.org', or hold_unsynced=False"
        )


# --------------------------------------------------------------------------- persistence


class SettingsStore(Protocol):
    """Where settings persist (the cache file): JSON values by key."""

    def settings(self) -> dict[str, Any]: ...

    def get_setting(self, key: str, default: Any = None) -> Any: ...

    def set_setting(self, key: str, value: Any) -> None: ...


class Settings:
    """Every option and setting of one Logger, as its cache file keeps them.

    The one place a value is checked, stored in the cache file (before it is kept, so a
    failed store changes nothing) and read; ``changed(option)`` is called after each change,
    for the Logger to apply it to the parts it acts on (:attr:`Option.acts`). The values are
    kept in :attr:`options`, which the other parts read; ``data`` is read from the file each
    time (:attr:`Option.reread`).
    """

    def __init__(self, store: SettingsStore, changed: Callable[[Option[Any]], object]):
        self._store = store
        self._changed = changed
        self.options = Options()
        self._pending: dict[str, Any] = {}  # the constructor's options, while it sets them

    def load(self, created: bool) -> None:
        """Read every value from the store (a new file gets ConnectorDB's defaults first)."""
        settings = [option for option in OPTIONS.values() if option.stored is Stored.SETTING]
        if created:
            for option in settings:
                self._store.set_setting(option.name, option.default)
        stored = self._store.settings()
        for option in OPTIONS.values():
            if option.key is not None and option.key in stored:
                self.options.set(option.name, stored[option.key])

    def get(self, name: str) -> Any:
        """The value of option or setting ``name``."""
        option = OPTIONS[name]
        if option.reread:
            return self._store.get_setting(name, option.default)
        return self.options.get(name)

    def set(self, name: str, value: Any) -> None:
        """Check ``value``, store it in the file, keep it, then tell ``changed(option)``.

        :raises ConfigurationError: a bad value, or one that contradicts another option
        """
        option = OPTIONS[name]
        value = option.checked(value)
        if name in TOGETHER:
            check_together({**self.options.as_dict(), **self._pending, name: value})
        if option.key is None:  # acts only in this process: kept only if it acts
            before = self.options.get(name)
            self.options.set(name, value)
            try:
                self._changed(option)
            except BaseException:
                self.options.set(name, before)
                raise
            return
        try:
            self._store.set_setting(option.key, value)
        except (TypeError, ValueError) as exc:  # ``data``: the checks let only JSON by
            raise ConfigurationError(
                f"{name} must be JSON (dicts, lists, numbers...): {exc}"
            ) from exc
        self.options.set(name, value)
        self._changed(option)

    @staticmethod
    def check_keywords(keywords: Mapping[str, Any]) -> None:
        """Check the Logger's keyword arguments: options, and ConnectorDB's settings passed
        where a connectordb 0.3.5 user would (``serverurl=``, ``syncperiod=``...).

        :raises ConfigurationError: an unknown name, or a bad value
        """
        unknown = keywords.keys() - OPTIONS.keys()
        if unknown:
            options = [o.name for o in OPTIONS.values() if o.stored is not Stored.SETTING]
            settings = [o.name for o in OPTIONS.values() if o.stored is Stored.SETTING]
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))}; options are "
                f"{', '.join(sorted(options))}, and the settings {', '.join(sorted(settings))}"
            )
        for name, value in keywords.items():
            OPTIONS[name].checked(value)

    def set_from_constructor(self, options: dict[str, Any], on_file: str) -> None:
        """Apply the constructor's options: a contradiction among them is refused before
        anything is stored; one the file already held (an older version's) is only logged."""
        try:
            check_together({**self.options.as_dict(), **options})
        except ConfigurationError as exc:
            if options.keys() & TOGETHER:
                raise
            log.warning("cache file %r: %s; nothing is held until then", on_file, exc)
        self._pending = options
        try:
            for name, value in options.items():
                self.set(name, value)
        finally:
            self._pending = {}
