"""Invariant 15: a public function given an argument of the wrong type raises a connectorsync
error that is also a TypeError, naming the function and the argument, and changes nothing.

The table walks every public method of Logger (and its constructor) and every one of their
arguments: a method added without a row here, or an argument without a check, fails."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import connectorsync
from connectorsync import (
    ArgumentTypeError,
    ConfigurationError,
    ConnectorSyncError,
    HTTPRemote,
    Logger,
    SchemaError,
    StreamError,
    TimestampError,
    ValidationError,
)
from connectorsync.options import OPTIONS

from .conftest import dump

#: Not an argument any public function takes.
WRONG = object()

#: method -> a good value for each argument (a wrong one replaces each in turn).
GOOD: dict[str, dict[str, Any]] = {
    "__init__": {
        "path": "{path}",
        "on_create": None,
        "apikey": "key",
        "onsync": None,
        "onsyncfail": None,
        "syncraise": False,
        "remote": None,
        "remotes": None,
    },
    "add_stream": {"name": "humidity", "schema": {"type": "number"}, "out_of_order": "reject"},
    "addStream": {"name": "humidity", "schema": {"type": "number"}, "out_of_order": "reject"},
    "addStream_force": {"name": "humidity", "schema": None, "out_of_order": "reject"},
    "insert": {"stream": "temperature", "value": 1.0, "timestamp": None},
    "insert_many": {"stream": "temperature", "values": [1.0]},
    "export": {"stream": "temperature"},
    "latest": {"stream": "temperature"},
    "subscribe": {"stream": "temperature", "callback": print},
    "sync_clock": {"server": "127.0.0.1", "port": 9, "timeout": 0.1},
    "sync": {"progress": None},
    "deadletters": {"stream": "temperature"},
    "retry_deadletters": {"ids": [1], "restamp": False},
    "purge_deadletters": {"ids": [1]},
    "add_remote": {
        "name": "b",
        "remote": HTTPRemote("http://127.0.0.1:9/b/{stream}"),
        "streams": None,
        "backfill": True,
        "give_up_after": None,
        "fallback": None,
    },
    "remove_remote": {"name": "b"},
    "close": {"timeout": 1.0},
}
#: Methods that take no argument: nothing to check.
NO_ARGUMENTS = {
    "start",
    "stop",
    "flush",
    "ping",
    "cleardata",
    "status",
    "metrics",
}
#: Arguments that take any type by design, and the error a wrong value gets instead.
VALUE_ERRORS: dict[tuple[str, str], type[ConnectorSyncError]] = {
    ("insert", "value"): ValidationError,  # any JSON value; not JSON: ValidationError
    ("add_stream", "schema"): SchemaError,  # a JSON schema: a schema or SchemaError
    ("addStream", "schema"): SchemaError,
    ("addStream_force", "schema"): SchemaError,
}
#: Whose wrong type is a domain error too (a StreamError, a TimestampError).
ALSO: dict[str, type[ConnectorSyncError]] = {
    "stream": StreamError,
    "name": StreamError,
    "timestamp": TimestampError,
}


#: Whose ``name`` is a remote's, not a stream's.
REMOTE_METHODS = {"add_remote", "remove_remote"}


def public_methods() -> list[str]:
    names = ["__init__"]
    for name, member in inspect.getmembers(Logger):
        if name.startswith("_") or isinstance(member, property) or not callable(member):
            continue
        names.append(name)
    return names


def cases() -> list[Any]:
    found = []
    for method in public_methods():
        if method in NO_ARGUMENTS:
            params = [p for p in inspect.signature(getattr(Logger, method)).parameters][1:]
            found.append(pytest.param(method, None, id=f"{method}-no-arguments"))
            assert not params, f"{method} takes arguments now: give it a row in GOOD"
            continue
        good = GOOD.get(method)
        signature = inspect.signature(getattr(Logger, method))
        for param in list(signature.parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue  # options and stream properties: checked by name (test_validation)
            found.append(
                pytest.param(method, param.name, id=f"{method}-{param.name}")
                if good is not None and param.name in good
                else pytest.param(method, f"missing:{param.name}", id=f"{method}-{param.name}")
            )
    return found


def test_the_table_covers_every_public_method() -> None:
    """A new public method must get a row (or be listed as taking no argument)."""
    missing = set(public_methods()) - set(GOOD) - NO_ARGUMENTS
    assert not missing, f"public methods without a row in GOOD: {sorted(missing)}"


@pytest.fixture
def lg(tmp_path: Path) -> Any:
    with Logger(str(tmp_path / "cache.db")) as lg:
        lg.add_stream("temperature", {"type": "number"})
        lg.insert("temperature", 20.0, timestamp=1.7e9)
        yield lg


def call(lg: Logger, method: str, arguments: dict[str, Any]) -> Any:
    result = getattr(lg, method)(**arguments)
    if method == "export":
        list(result)
    return result


@pytest.mark.parametrize(("method", "argument"), cases())
def test_every_public_method_refuses_a_wrong_typed_argument(
    method: str, argument: str | None, lg: Logger, tmp_path: Path
) -> None:
    if argument is None:
        return  # nothing to give a wrong type
    assert not argument.startswith("missing:"), f"{method}({argument[8:]}=...) has no row"
    arguments = dict(GOOD[method])
    arguments[argument] = WRONG
    expected: type[Exception] = VALUE_ERRORS.get((method, argument), ArgumentTypeError)
    if method == "__init__":
        path = tmp_path / "new.db"
        arguments["path"] = str(path) if argument != "path" else WRONG
        with pytest.raises(expected) as raised:
            Logger(**arguments)
        assert not path.exists(), "a refused Logger() left a cache file"
    else:
        before = dump(lg.path)
        with pytest.raises(expected) as raised:
            call(lg, method, arguments)
        assert dump(lg.path) == before
        assert lg.status() is not None  # still open (close refused too)
    error = raised.value
    assert isinstance(error, ConnectorSyncError)
    if expected is ArgumentTypeError:
        assert isinstance(error, TypeError)
        assert argument in str(error), error
        assert "object" in str(error), error  # what it got
        where = "Logger()" if method == "__init__" else f"{method}()"
        if method not in ("addStream",):  # the alias is add_stream itself
            assert where in str(error), error
        also = None if method in REMOTE_METHODS else ALSO.get(argument)
        if also is not None:
            assert isinstance(error, also), error


def test_a_url_given_as_remote_says_to_build_a_remote(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with pytest.raises(TypeError) as raised:
        Logger(str(path), remote="http://user:secret@localhost:3124")
    error = raised.value
    assert isinstance(error, ConfigurationError)
    message = str(error)
    assert "Remote object" in message and "ConnectorDBRemote(" in message, message
    assert "serverurl=" in message, message
    assert "secret" not in message, message
    assert not path.exists()


@pytest.mark.parametrize(
    "values", [5, None, "hello", {"t": 1.8e9, "d": 1}], ids=["int", "None", "str", "dict"]
)
def test_insert_many_with_a_non_collection_names_values(lg: Logger, values: Any) -> None:
    before = dump(lg.path)
    with pytest.raises(ArgumentTypeError, match=r"insert_many\(\).*values") as raised:
        lg.insert_many("temperature", values)
    assert isinstance(raised.value, TypeError)
    assert dump(lg.path) == before


def test_apikey_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match="apikey") as raised:
        Logger(str(tmp_path / "c.db"), apikey=b"s3cr3t-key")  # type: ignore[arg-type]
    assert "s3cr3t" not in str(raised.value)


def check_signature(method: Callable[..., Any]) -> None:
    """The checks keep each method's signature for help() and Sphinx."""
    assert "self" in inspect.signature(method).parameters


def test_checked_methods_keep_their_signatures() -> None:
    for name in GOOD:
        check_signature(getattr(Logger, name))


#: The functions at the top of connectorsync: a good value for each argument.
FUNCTIONS: dict[str, dict[str, Any]] = {
    "thingsboard": {"url": "https://thingsboard.example", "token": "TOKEN"},
    "thingsboard_mqtt": {"host": "thingsboard.example", "token": "TOKEN"},
}


def top_level_functions() -> list[str]:
    return [
        name for name in connectorsync.__all__ if inspect.isfunction(getattr(connectorsync, name))
    ]


def test_every_top_level_function_has_a_row() -> None:
    assert set(top_level_functions()) == set(FUNCTIONS)


@pytest.mark.parametrize(
    ("function", "argument"),
    [(f, a) for f in top_level_functions() for a in FUNCTIONS.get(f, {"?": None})],
)
def test_every_top_level_function_refuses_a_wrong_typed_argument(
    function: str, argument: str
) -> None:
    arguments = {**FUNCTIONS[function], argument: b"s3cr3t"}
    with pytest.raises(ArgumentTypeError) as raised:
        getattr(connectorsync, function)(**arguments)
    message = str(raised.value)
    assert isinstance(raised.value, TypeError)
    assert f"{function}()" in message and argument in message and "bytes" in message, message
    assert "s3cr3t" not in message or argument != "token", message


def typed_settings() -> list[str]:
    """Every option, and ConnectorDB's settings that have a type (``data`` and
    ``lastsynctime`` hold anything JSON)."""
    return [name for name in OPTIONS if name not in {"data", "lastsynctime"}]


@pytest.mark.parametrize("name", sorted(typed_settings()))
def test_every_option_refuses_a_wrong_type_as_attribute_and_keyword(
    name: str, lg: Logger, tmp_path: Path
) -> None:
    before = dump(lg.path)
    with pytest.raises(ArgumentTypeError) as raised:
        setattr(lg, name, WRONG)
    assert isinstance(raised.value, TypeError) and name in str(raised.value)
    assert dump(lg.path) == before
    if name == "apikey":
        return  # a parameter of Logger(), checked in the table above
    with pytest.raises(ArgumentTypeError, match=name):
        Logger(str(tmp_path / "new.db"), **{name: WRONG})
    assert not (tmp_path / "new.db").exists()
