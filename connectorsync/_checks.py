"""The type checks of the public API's arguments, declared next to each method by
:func:`checked`.

Guarantee (invariant 15): a public function given an argument of the wrong type raises
:class:`~connectorsync.errors.ArgumentTypeError` (a ``ConnectorSyncError`` and a
``TypeError``; for a stream name a :class:`~connectorsync.errors.StreamTypeError`, for a
timestamp a :class:`~connectorsync.errors.TimestampTypeError`) naming the function, the
argument, what it got and what it expects, before anything is done
(``test_arguments.py::test_every_public_method_refuses_a_wrong_typed_argument``, which walks
every public method of ``Logger``, so a new method without its checks fails it).

The checks look at types only; what a value means (a schema, a stream that exists, a
timestamp in range) is checked by the part that uses it. They are cheap: each checked
argument is found by its position, without binding the whole signature (``insert`` is hot).
"""

from __future__ import annotations

import datetime
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from .errors import ArgumentTypeError, StreamTypeError, TimestampTypeError
from .remotes._http import hide_password
from .remotes.base import DeliveryKind
from .streams import check_values

P = ParamSpec("P")
R = TypeVar("R")

#: ``check(where, name, value)``: raise for a wrong ``value`` of argument ``name`` of the
#: function ``where`` (``"insert()"``); return None when it is fine.
Check = Callable[[str, str, Any], None]


def _shown(value: Any) -> str:
    text = hide_password(repr(value))  # a url given by mistake may hold a password
    return (text if len(text) <= 80 else text[:77] + "...") + f" ({type(value).__name__})"


def of_type(
    accepted: Callable[[Any], bool],
    expected: str,
    error: type[ArgumentTypeError] = ArgumentTypeError,
    *,
    secret: bool = False,
) -> Check:
    """A check that ``accepted(value)`` holds; else ``error`` saying ``expected`` (and what
    it got, only its type when the argument is a ``secret``)."""

    def check(where: str, name: str, value: Any) -> None:
        if not accepted(value):
            got = type(value).__name__ if secret else _shown(value)
            raise error(f"{where}: {name} must be {expected}; got {got}")

    return check


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional(accepted: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepted(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


STREAM = of_type(_is_str, "a stream name (a str)", StreamTypeError)
OPTIONAL_STREAM = of_type(_optional(_is_str), "a stream name (a str) or None", StreamTypeError)
TEXT = of_type(_is_str, "a str")
OPTIONAL_TEXT = of_type(_optional(_is_str), "a str or None")
SECRET = of_type(_optional(_is_str), "a str or None", secret=True)
TOKEN = of_type(_is_str, "a str", secret=True)
NUMBER = of_type(_number, "a number of seconds (int or float)")
OPTIONAL_PORT = of_type(_optional(lambda v: type(v) is int), "a port number (int) or None")
BOOL = of_type(lambda v: isinstance(v, bool), "True or False")
CALLABLE = of_type(callable, "a function")
OPTIONAL_CALLABLE = of_type(_optional(callable), "a function or None")
PATH = of_type(lambda v: isinstance(v, str | os.PathLike), "a file path (a str or a pathlib.Path)")


def insert_arguments(stream: Any, timestamp: Any) -> None:
    """``insert(stream, value, timestamp)``: a str stream name, and a timestamp that is a
    number of seconds, a datetime or None (its value is checked when it is stamped)."""
    STREAM("insert()", "stream", stream)
    if timestamp is None or _number(timestamp) or isinstance(timestamp, datetime.datetime):
        return
    raise TimestampTypeError(
        f"insert(): timestamp for stream {stream!r} must be seconds since the epoch (int or "
        f"float), an aware datetime, or None for now; got {_shown(timestamp)}"
    )


def remote(where: str, name: str, value: Any) -> None:
    """``remote=`` takes a Remote object (one that declares its ``delivery_kind``); a url
    given there says how to build one."""
    if value is None or isinstance(getattr(value, "delivery_kind", None), DeliveryKind):
        return
    if hasattr(value, "push"):  # a Remote of the user's own, without its delivery kind
        raise ArgumentTypeError(
            f"{where}: {name} {_shown(value)} declares no delivery_kind (a "
            "connectorsync.DeliveryKind): say how it stores a batch (see docs/remotes.rst)"
        )
    raise ArgumentTypeError(
        f"{where}: {name} must be a Remote object, not {_shown(value)}: build one, e.g. "
        "remote=connectorsync.ConnectorDBRemote(serverurl, apikey), InfluxDBRemote(...) or "
        "HTTPRemote(url, ...); for ConnectorDB, serverurl='http://host:port' alone also works"
    )


def insert_many_arguments(stream: Any, values: Any) -> None:
    """``insert_many(stream, values)``, or ``insert_many({stream: datapoints, ...})``: each
    stream name a str, each datapoints a collection (a str would be stored letter by letter,
    a dict key by key)."""
    where = "insert_many()"
    given = stream if values is None and isinstance(stream, Mapping) else {stream: values}
    if values is None and not isinstance(stream, Mapping):
        raise ArgumentTypeError(
            f"{where}: values must be given (a list of values or {{'t': ..., 'd': ...}} "
            f"datapoints), or stream must be a dict {{stream: datapoints}}; got stream "
            f"{_shown(stream)} and no values"
        )
    for name, items in given.items():
        STREAM(where, "stream", name)
        try:
            check_values(name, items)
        except TypeError as exc:
            raise ArgumentTypeError(str(exc).replace("insert_many: ", f"{where}: ")) from None


def checked(**checks: Check) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Check the arguments named in ``checks`` before each call of the decorated function.

    An argument left out (its default applies) is not checked; one given twice or missing
    is left for Python's own ``TypeError``.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        params = list(inspect.signature(func).parameters)
        unknown = set(checks) - set(params)
        if unknown:  # a typo in a declaration is a bug here, caught at import
            raise AssertionError(f"{func.__qualname__} has no argument {sorted(unknown)}")
        where = ("Logger" if func.__name__ == "__init__" else func.__name__) + "()"
        spots = [(params.index(name), name, check) for name, check in checks.items()]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for position, name, check in spots:
                if position < len(args):
                    check(where, name, args[position])
                elif name in kwargs:
                    check(where, name, kwargs[name])
            return func(*args, **kwargs)

        return wrapper

    return decorate


#: The checks of ``Logger(...)``'s arguments (its options are checked by options.py).
logger_arguments = checked(
    path=PATH,
    on_create=OPTIONAL_CALLABLE,
    apikey=SECRET,
    onsync=OPTIONAL_CALLABLE,
    onsyncfail=OPTIONAL_CALLABLE,
    syncraise=BOOL,
    remote=remote,
)
