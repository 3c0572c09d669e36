"""Stream definitions: name rules, compiled schema validators and JSON encoding of values.

A :class:`StreamDef` turns a Python value into the JSON text the cache stores, or raises
:class:`~connectorsync.errors.ValidationError` and stores nothing. Schemas are compiled once
per stream. The common one-type schemas (``{"type": "number"}`` and friends) and ``{}`` are
checked without calling jsonschema, with exactly jsonschema's Draft 4 answers
(``tests/test_streams.py::test_fast_path_agrees_with_jsonschema`` proves it).
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Callable
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from .errors import SchemaError, StreamError, ValidationError

# ConnectorDB v0.3 names: a letter, then letters, digits, '_' or '-', shorter than 30 characters.
NAME_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
MAX_NAME_LENGTH = 29

_DUMPS = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode

# For each one-type schema: the exact Python types that pass and those that fail it. A value of
# any other type (a float subclass, say) goes through jsonschema.
_SCALARS = (int, float, str, bool, type(None))
_FAST_TYPES: dict[str, frozenset[type]] = {
    "number": frozenset({int, float}),
    "integer": frozenset({int}),
    "string": frozenset({str}),
    "boolean": frozenset({bool}),
    "null": frozenset({type(None)}),
}


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid stream name, else raise :class:`StreamError`.

    A name is a bare stream name (relative to the remote's device) or ``user/device/stream``;
    each part follows ConnectorDB's rule: ``^[a-zA-Z][a-zA-Z0-9_-]*$``, under 30 characters.
    """
    if not isinstance(name, str):
        raise StreamError(f"stream name must be a string; got {name!r} ({type(name).__name__})")
    parts = name.split("/")
    if len(parts) not in (1, 3) or not all(
        NAME_PATTERN.match(p) and len(p) <= MAX_NAME_LENGTH for p in parts
    ):
        raise StreamError(
            f"invalid stream name {name!r}: use 'name' or 'user/device/name', each part a letter "
            f"followed by letters, digits, '_' or '-', at most {MAX_NAME_LENGTH} characters"
        )
    return name


def _compile(name: str, schema: dict[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise SchemaError(
            f"stream {name!r}: invalid JSON schema {schema!r}: {exc.message}"
        ) from exc
    return cls(schema)


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than str() converts (sys.get_int_max_str_digits)
            return f"<int of {x.bit_length()} bits>"


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 8, 200, 200
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 20

#: Objects and lists may nest this deep in a value. Deeper values are refused at insert: no
#: sensor needs them, and JSON decoders, schema validators and remotes that flatten objects
#: recurse once per level, so a value a thousand levels deep would fail them far from the
#: insert that let it in.
MAX_DEPTH = 100


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and lists nest more than ``limit`` levels in ``value`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


class StreamDef:
    """A registered stream: its name, its JSON schema and the compiled checks for its values.

    :param name: the stream name (checked with :func:`check_name`)
    :param schema: a JSON schema as a dict (``None`` means any JSON value)
    :raises StreamError: bad name; :raises SchemaError: bad schema
    """

    __slots__ = ("_fast", "_fast_types", "_validator", "name", "schema", "schema_text")

    def __init__(self, name: str, schema: dict[str, Any] | None = None):
        self.name = check_name(name)
        if schema is None:
            schema = {}
        if not isinstance(schema, dict):
            raise SchemaError(f"stream {name!r}: a schema must be a dict; got {schema!r}")
        try:
            self.schema_text = _DUMPS(schema)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"stream {name!r}: the schema is not JSON: {exc}") from exc
        self.schema: dict[str, Any] = json.loads(self.schema_text)
        self._validator = _compile(name, self.schema)
        self._fast: Callable[[Any], bool] | None = None
        self._fast_types: frozenset[type] = frozenset()
        if self.schema == {}:
            self._fast_types = frozenset(_SCALARS)
        elif list(self.schema) == ["type"] and self.schema["type"] in _FAST_TYPES:
            self._fast_types = _FAST_TYPES[self.schema["type"]]

    def encode(self, value: Any) -> str:
        """Return ``value`` as compact JSON text after checking it against the schema.

        :raises ValidationError: not JSON (NaN, infinity, sets, objects...) or not matching
            the schema; the message names the stream, the value and what was expected.
        """
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise self._error(value, "a finite number (NaN and infinity are not JSON)")
            text = float.__repr__(value)
        elif kind is int:
            try:
                text = int.__repr__(value)
            except ValueError:  # more digits than str() converts
                digits = sys.get_int_max_str_digits()
                raise self._error(value, f"an integer of at most {digits} digits") from None
        else:
            if kind in (dict, list, tuple) and _nested_deeper_than(value, MAX_DEPTH):
                raise self._error(value, f"a JSON value nested at most {MAX_DEPTH} levels deep")
            try:
                text = _DUMPS(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise self._error(value, f"a JSON value ({exc})") from None
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:  # the cache and the remotes store UTF-8
                    raise self._error(
                        value,
                        "text that UTF-8 can encode (a lone surrogate such as '\\ud800' "
                        "is not a character)",
                    ) from None
        if kind in self._fast_types:
            return text
        if kind not in _SCALARS:
            # Check what the remote will see: JSON turns tuples into lists and keys into strings.
            value = json.loads(text)
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is not None:
            raise self._error(value, self.schema_text, reason=error.message)
        return text

    def _error(self, value: Any, expected: str, reason: str = "") -> ValidationError:
        shown = _REPR.repr(value)  # bounded in depth and length, whatever the value
        if len(shown) > 200:
            shown = shown[:200] + "..."
        message = f"stream {self.name!r} expects {expected}; got {shown} ({type(value).__name__})"
        if reason:
            message += f": {reason}"
        return ValidationError(message, stream=self.name, value=value, reason=reason or expected)

    def __repr__(self) -> str:
        return f"StreamDef({self.name!r}, {self.schema_text})"
