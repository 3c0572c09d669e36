"""The checks of option values: each takes the option's name and a value, and returns the
value as the option keeps it or raises.

A value of the wrong type raises :class:`~connectorsync.errors.ArgumentTypeError` (also a
``TypeError``, invariant 15), one out of range a :class:`~connectorsync.ConfigurationError`;
each message names the option and says what it must be (``test_arguments.py``,
``test_validation.py``). :mod:`connectorsync.options` pairs each option with its check.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ArgumentTypeError, ConfigurationError
from .remotes._http import hide_password
from .remotes.base import MAX_SECONDS

T = TypeVar("T")

#: A check: ``check(name, value)`` returns the value as option ``name`` keeps it, or raises.
Check = Callable[[str, Any], T]


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


def one_of(*choices: str) -> Callable[[str, Any], str]:
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


def optional(check: Callable[[str, Any], T]) -> Callable[[str, Any], T | None]:
    """``check``, and None allowed too."""

    def check_optional(name: str, value: Any) -> T | None:
        return None if value is None else check(name, value)

    return check_optional


def api_key(name: str, value: Any) -> str:
    if not isinstance(value, str):  # the message never shows the key (invariant 14)
        raise ArgumentTypeError(f"{name} must be a string; got a {type(value).__name__}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:  # the message never shows the key (invariant 14)
        raise ConfigurationError(
            f"{name} has a character outside latin-1, which HTTP Basic auth cannot send"
        ) from None
    return value


def anything(name: str, value: Any) -> Any:
    """Any value (``data`` and ``lastsynctime``: JSON is checked when it is stored)."""
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
