"""The Logger's options and settings: names, defaults, checks, and their persistence.

Every option is a keyword argument of ``Logger`` and a read/write attribute of the same
name; setting one (either way) stores it in the cache file, so the next open has it too
(except :data:`PER_PROCESS` ones, like ``metrics_port``).
ConnectorDB's settings (``apikey``, ``serverurl``, ``syncperiod``, ``lastsynctime``, ``data``)
are kept the same way. This module is the only place an option is declared, checked,
defaulted and stored (:class:`Settings`); the other parts read :class:`Options`.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from .errors import ArgumentTypeError, ConfigurationError
from .remotes._http import hide_password
from .remotes.base import MAX_SECONDS

log = logging.getLogger(__name__)

Check = Callable[[str, Any], Any]


def _wrong_type(name: str, value: Any, expected: str) -> ArgumentTypeError:
    """A value of the wrong type for option ``name``: also a TypeError (invariant 15)."""
    return ArgumentTypeError(f"{name} must be {expected}; got {value!r} ({type(value).__name__})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    if type(value) is not int:
        raise _wrong_type(name, value, "a whole number >= 1")
    if value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1; got {value!r}")
    return value


def _within_max(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite; got {value!r}")
    if value > MAX_SECONDS:
        raise ConfigurationError(
            f"{name} must be at most {MAX_SECONDS:g} seconds (about 31 years); got {value!r}"
        )
    return float(value)


def positive_number(name: str, value: Any) -> float:
    if not _is_number(value):
        raise _wrong_type(name, value, "a number > 0")
    if not value > 0:
        raise ConfigurationError(f"{name} must be a number > 0; got {value!r}")
    return _within_max(name, value)


#: The slowest ``max_rate``: one datapoint in about 32 years. A slower one would ask for waits
#: longer than a thread can wait (``threading.TIMEOUT_MAX``), and every pass would fail.
MIN_RATE = 1e-9


def rate(name: str, value: Any) -> float:
    """Datapoints per second that a wait can be computed for: a finite number of at least
    :data:`MIN_RATE` (``test_lanes.py::test_a_max_rate_that_cannot_work_is_refused``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(name, value, "a number of datapoints per second (int or float)")
    if not math.isfinite(value) or not value >= MIN_RATE:
        raise ConfigurationError(
            f"{name} must be a finite number of datapoints per second, at least {MIN_RATE:g} "
            f"(None: no limit); got {value!r}"
        )
    return float(value)


def non_negative_number(name: str, value: Any) -> float:
    if not _is_number(value):
        raise _wrong_type(name, value, "a number >= 0")
    if not value >= 0:
        raise ConfigurationError(f"{name} must be a number >= 0; got {value!r}")
    return _within_max(name, value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, value, "True or False")
    return value


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a non-empty string")
    if not value:
        raise ConfigurationError(f"{name} must be a non-empty string; got {value!r}")
    return value


def one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type(name, value, f"one of {', '.join(map(repr, choices))}")
        if value not in choices:
            raise ConfigurationError(
                f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
            )
        return str(value)

    return check


def port(name: str, value: Any) -> int:
    if type(value) is not int:
        raise _wrong_type(name, value, "a TCP port, 0 to 65535 (0: any free one)")
    if not 0 <= value <= 65535:
        raise ConfigurationError(
            f"{name} must be a TCP port, 0 to 65535 (0: any free one); got {value!r}"
        )
    return value


def optional(check: Check) -> Check:
    def check_optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_optional


#: ``sync_jitter=None`` stands for this fraction of ``syncperiod``.
DEFAULT_JITTER = 0.1

# name: (default, check, meaning)
OPTIONS: dict[str, tuple[Any, Check, str]] = {
    "durability": (
        "full",
        one_of("full", "batched", "normal"),
        "'full' survives a power cut; 'batched' loses at most the last commit_interval to one;"
        " 'normal' survives a crash of the process",
    ),
    "commit_interval": (
        0.2,
        positive_number,
        "with durability 'batched': seconds an insert may wait in memory before its commit",
    ),
    "batch_size": (5000, positive_int, "datapoints per request to the remote"),
    "max_batch_bytes": (
        4 * 1024 * 1024,
        positive_int,
        "most bytes of cached values per request to the remote (a larger single value goes alone)",
    ),
    "sync_threshold": (
        None,
        optional(positive_int),
        "sync as soon as this many datapoints were inserted (None: by period)",
    ),
    "sync_jitter": (
        None,
        optional(non_negative_number),
        "seconds of random delay added to each periodic pass and to the first one after "
        "start(), so a fleet started together does not sync in step (None: 10% of "
        "syncperiod; 0: none)",
    ),
    "http_timeout": (30.0, positive_number, "seconds to connect, and to wait for each answer"),
    "live_first": (
        True,
        boolean,
        "a pass sends what was inserted since the previous pass before the backlog, when the"
        " remote does not need order",
    ),
    "max_rate": (
        None,
        optional(rate),
        "most datapoints per second the backlog drains at (never the live lane; None: no limit)",
    ),
    "max_cached": (None, optional(positive_int), "most datapoints the cache may hold"),
    "max_cache_bytes": (None, optional(positive_int), "most bytes the cached data may use"),
    "min_free_disk": (
        None,
        optional(positive_int),
        "bytes that must stay free on the cache's disk",
    ),
    "on_full": (
        "reject",
        one_of("reject", "drop_oldest"),
        "when a limit is reached: refuse the insert, or drop the oldest datapoints",
    ),
    "max_age": (
        None,
        optional(positive_number),
        "seconds after which a cached datapoint expires (counted)",
    ),
    "ntp_server": (None, optional(text), "NTP server that tells the true time"),
    "hold_unsynced": (
        False,
        boolean,
        "keep datapoints stamped before NTP answered from the remote until then",
    ),
    "max_hold": (86400.0, positive_number, "seconds hold_unsynced holds a datapoint at most"),
    "archive_dir": (None, optional(text), "directory for the daily archive files"),
    "archive_format": ("jsonl", one_of("jsonl", "csv"), "format of the archive files"),
    "metrics_port": (
        None,
        optional(port),
        "serve /metrics on 127.0.0.1 at this port (0: any free one; None: not served);"
        " this process only, not stored",
    ),
}

#: Options of the running process only, never stored in the cache file: another process
#: opening it (``connectorsync sync``) must not try to listen on the same port.
PER_PROCESS = frozenset({"metrics_port"})


class Options:
    """The current value of every option, read by the parts the Logger wires together.

    The Logger owns it and is the only writer (through :meth:`set`, after the value was
    stored in the cache file); the syncer and the pass read attributes when they need them,
    so a changed option takes effect at the next batch without calling back up into the
    Logger. ``syncperiod`` (a ConnectorDB setting) lives here too.
    """

    durability: str
    commit_interval: float
    batch_size: int
    max_batch_bytes: int
    sync_threshold: int | None
    sync_jitter: float | None
    http_timeout: float
    live_first: bool
    max_rate: float | None
    max_cached: int | None
    max_cache_bytes: int | None
    min_free_disk: int | None
    on_full: str
    max_age: float | None
    ntp_server: str | None
    hold_unsynced: bool
    max_hold: float
    archive_dir: str | None
    archive_format: str
    metrics_port: int | None
    syncperiod: float

    def __init__(self, syncperiod: float = 600.0) -> None:
        for name, (default, _, _) in OPTIONS.items():
            setattr(self, name, default)
        self.syncperiod = syncperiod

    def jitter(self) -> float:
        """The seconds ``sync_jitter`` stands for now: its value, or
        :data:`DEFAULT_JITTER` of ``syncperiod`` when None (so it follows ``syncperiod``)."""
        if self.sync_jitter is None:
            return DEFAULT_JITTER * self.syncperiod
        return self.sync_jitter

    def get(self, name: str) -> Any:
        """The value of option ``name``."""
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        """Every option (not ``syncperiod``) by name."""
        return {name: getattr(self, name) for name in OPTIONS}

    @staticmethod
    def check(name: str, value: Any) -> Any:
        """``value`` as option ``name`` stores it.

        :raises ConfigurationError: an unknown option or a bad value
        """
        if name == "syncperiod":
            return positive_number(name, value)
        check_options({name: value})
        return OPTIONS[name][1](name, value)

    def set(self, name: str, value: Any) -> None:
        """Keep ``value`` (checked by :meth:`check`) for option ``name``."""
        setattr(self, name, value)


def check_options(options: dict[str, Any]) -> None:
    """Raise ConfigurationError for an unknown option or a bad value."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(sorted(unknown))}; "
            f"options are {', '.join(sorted(OPTIONS))}"
        )
    for name, value in options.items():
        OPTIONS[name][1](name, value)


#: The options :func:`check_together` looks at.
TOGETHER = frozenset({"hold_unsynced", "ntp_server"})


def check_together(options: dict[str, Any]) -> None:
    """Raise ConfigurationError for options that contradict each other (``options`` holds
    every option): a setting that would silently do nothing is refused."""
    if options["hold_unsynced"] and options["ntp_server"] is None:
        raise ConfigurationError(
            "hold_unsynced=True holds datapoints until an NTP server answers, but ntp_server "
            "is not set (without it the system clock is trusted and nothing would be held): "
            "set ntp_server, e.g. ntp_server='pool.ntp.org', or hold_unsynced=False"
        )


# --------------------------------------------------------------------------- persisted settings


def _apikey(name: str, value: Any) -> str:
    if not isinstance(value, str):  # the message never shows the key (invariant 14)
        raise ArgumentTypeError(f"{name} must be a string; got a {type(value).__name__}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:  # the message never shows the key (invariant 14)
        raise ConfigurationError(
            f"{name} has a character outside latin-1, which HTTP Basic auth cannot send"
        ) from None
    return value


def _anything(name: str, value: Any) -> Any:
    return value


def server_url(name: str, value: Any) -> str:
    """``value`` if it is an http(s) url with a host (and a port that is a number): a url
    without its scheme (``localhost:8123``) would otherwise fail only at the first sync, as
    an SSL or connection error naming no host. The message echoes the url with its password
    masked (invariant 14).
    (``test_validation.py::test_a_serverurl_without_scheme_or_host_is_refused``)
    """
    if not isinstance(value, str):
        raise ArgumentTypeError(
            f"{name} must be a string url such as 'https://cdb.example.com'; "
            f"got {type(value).__name__}"
        )
    shown = hide_password(value)
    example = "such as 'http://localhost:3124' or 'https://cdb.example.com'"
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        # Not the ValueError's text: it quotes the "port", which may be a piece of a password
        # holding a raw '/', '?' or '#' (where the url's host part ends).
        raise ConfigurationError(
            f"{name} {shown!r} is not a url: its port is not a number (a password holding "
            f"'/', '?', '#' or '@' must be percent-encoded); give one {example}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(
            f"{name} {shown!r} must start with http:// or https:// ({example})"
        )
    if not parts.hostname:
        raise ConfigurationError(f"{name} {shown!r} names no host; give one {example}")
    return value


#: ConnectorDB's settings, kept in the cache file like the options: (default, check).
CONNECTORDB_SETTINGS: dict[str, tuple[Any, Check]] = {
    "apikey": ("", _apikey),
    "serverurl": ("http://localhost:3124", server_url),
    "syncperiod": (600.0, positive_number),
    "lastsynctime": (0, _anything),
    "data": ({}, _anything),
}


class SettingsStore(Protocol):
    """Where settings persist (the cache file): JSON values by key."""

    def settings(self) -> dict[str, Any]: ...

    def get_setting(self, key: str, default: Any = None) -> Any: ...

    def set_setting(self, key: str, value: Any) -> None: ...


class Settings:
    """Every persisted setting of one Logger: ConnectorDB's (``apikey``, ``serverurl``,
    ``syncperiod``, ``lastsynctime``, ``data``) and the options.

    The one place a setting is checked, stored in the cache file (before it is kept, so a
    failed store changes nothing) and read; ``changed(name)`` is called after each change,
    for the Logger to rebuild what depends on it. ``data`` is read from the file each time
    (another process may write it); the rest is kept in memory, the options in
    :attr:`options`, which the other parts read.
    """

    def __init__(self, store: SettingsStore, changed: Callable[[str], object]):
        self._store = store
        self._changed = changed
        self.options = Options()
        self._values: dict[str, Any] = {}
        self._pending: dict[str, Any] = {}  # the constructor's options, while it sets them

    def load(self, created: bool) -> None:
        """Read every setting from the store (a new file gets ConnectorDB's defaults first)."""
        if created:
            for key, (default, _) in CONNECTORDB_SETTINGS.items():
                self._store.set_setting(key, default)
        stored = self._store.settings()
        for key, (default, _) in CONNECTORDB_SETTINGS.items():
            self._values[key] = stored.get(key, default)
        self.options.set("syncperiod", self._values["syncperiod"])
        for name in OPTIONS.keys() - PER_PROCESS:
            if "option." + name in stored:
                self.options.set(name, stored["option." + name])

    def get(self, name: str) -> Any:
        """The value of setting or option ``name``."""
        if name == "data":
            return self._store.get_setting("data", {})
        if name in OPTIONS:
            return self.options.get(name)
        return self._values[name]

    def set(self, name: str, value: Any) -> None:
        """Check ``value``, store it in the file, keep it, then tell ``changed(name)``.

        :raises ConfigurationError: a bad value, or one that contradicts another option
        """
        if name in OPTIONS:
            value = Options.check(name, value)
            if name in TOGETHER:
                check_together({**self.options.as_dict(), **self._pending, name: value})
            if name in PER_PROCESS:  # acts only in this process: kept only if it acts
                before = getattr(self.options, name)
                self.options.set(name, value)
                try:
                    self._changed(name)
                except BaseException:
                    self.options.set(name, before)
                    raise
                return
            self._store.set_setting("option." + name, value)
            self.options.set(name, value)
        else:
            value = CONNECTORDB_SETTINGS[name][1](name, value)
            try:
                self._store.set_setting(name, value)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"{name} must be JSON (dicts, lists, numbers...): {exc}"
                ) from exc
            self._values[name] = value
            if name == "syncperiod":
                self.options.set(name, value)
        self._changed(name)

    @staticmethod
    def check_keywords(keywords: dict[str, Any]) -> None:
        """Check the Logger's keyword arguments: options, and ConnectorDB's settings passed
        where a connectordb 0.3.5 user would (``serverurl=``, ``syncperiod=``...).

        :raises ConfigurationError: an unknown name, or a bad value
        """
        settings = set(CONNECTORDB_SETTINGS) - {"apikey"}  # apikey is a parameter of its own
        unknown = set(keywords) - set(OPTIONS) - settings
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))}; options are "
                f"{', '.join(sorted(OPTIONS))}, and the settings {', '.join(sorted(settings))}"
            )
        for name, value in keywords.items():
            if name in OPTIONS:
                OPTIONS[name][1](name, value)
            else:
                CONNECTORDB_SETTINGS[name][1](name, value)

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
