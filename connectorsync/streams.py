"""Streams: name rules, compiled schema validators, JSON encoding of values, the registry of
a cache's streams, and the subscribers told of each insert.

A :class:`StreamDef` turns a Python value into the JSON text the cache stores, or raises
:class:`~connectorsync.errors.ValidationError` and stores nothing. Schemas are compiled once
per stream. The common one-type schemas (``{"type": "number"}`` and friends) and ``{}`` are
checked without calling jsonschema, with exactly jsonschema's Draft 4 answers
(``tests/test_streams.py::test_fast_path_agrees_with_jsonschema`` proves it).
"""

from __future__ import annotations

import json
import logging
import math
import re
import reprlib
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import referencing
import referencing.exceptions
import referencing.jsonschema

from .cache.properties import put_stream
from .cache.records import Policy
from .errors import (
    AmbiguousRemoteError,
    AuthError,
    SchemaError,
    StreamError,
    TransientRemoteError,
    UnknownStreamError,
    ValidationError,
)
from .remotes.base import ensure_stream
from .schemafit import refuse_misfits
from .streamprops import check_properties, take_policy

if TYPE_CHECKING:  # the registry is handed its cache and remote: types only
    from .cache import Cache
    from .remotes.base import Remote

log = logging.getLogger(__name__)

# ConnectorDB v0.3 names: a letter, then letters, digits, '_' or '-', shorter than 30 characters.
NAME_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")  # fullmatch: "$" would allow "a\n"
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
        NAME_PATTERN.fullmatch(p) and len(p) <= MAX_NAME_LENGTH for p in parts
    ):
        raise StreamError(
            f"invalid stream name {name!r}: use 'name' or 'user/device/name', each part a letter "
            f"followed by letters, digits, '_' or '-', at most {MAX_NAME_LENGTH} characters"
        )
    return name


def _compile(name: str, schema: dict[str, Any]) -> Any:
    """The validator for ``schema``, checked completely: whatever it will meet at insert is
    a value, never a schema it cannot use. Nothing is ever fetched from the network."""
    if not isinstance(schema.get("$schema", ""), str):
        raise SchemaError(
            f'stream {name!r}: "$schema" must be a meta-schema URI; got {schema["$schema"]!r}'
        )
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
        cls.check_schema(schema)
        specification = referencing.jsonschema.specification_with(
            cls.ID_OF(cls.META_SCHEMA) or "urn:unknown-dialect",
            default=referencing.Specification.OPAQUE,
        )
    except jsonschema.exceptions.SchemaError as exc:
        raise SchemaError(
            f"stream {name!r}: invalid JSON schema {schema!r}: {exc.message}"
        ) from exc
    except Exception as exc:  # jsonschema fails in its own ways on odd input; say so, as ours
        raise SchemaError(
            f"stream {name!r}: unusable JSON schema {schema!r}: {type(exc).__name__}: {exc}"
        ) from exc
    _check_references(name, schema, specification)
    return cls(schema, registry=referencing.Registry())  # no retrieval: local references only


# Keywords whose subschemas apply to the very value their schema checks: a loop of $ref
# through only these never reaches a smaller part of the value, so it recurses forever.
_SAME_VALUE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")
_SAME_VALUE_MAPS = ("dependencies", "dependentSchemas")  # {property: subschema}


def _check_references(
    name: str, schema: dict[str, Any], specification: referencing.Specification[Any]
) -> None:
    """Refuse what would fail at every insert: a ``$ref`` that is not local (``"#..."``),
    one that points nowhere, and a loop of references that never descends into the value,
    such as ``{"$ref": "#"}``
    (``test_streams.py::test_schemas_that_validation_could_not_finish_are_refused``)."""
    root = specification.create_resource(schema)
    same: dict[int, list[int]] = {}  # id(subschema) -> ids of those checking the same value
    refs: dict[int, str] = {}
    stack = [(root, referencing.Registry().resolver_with_root(root))]
    while stack:
        resource, resolver = stack.pop()
        node = resource.contents
        if not isinstance(node, dict) or id(node) in same:
            continue
        children = [node.get(k) for k in _SAME_VALUE]
        children += [
            v for k in _SAME_VALUE_MAPS if isinstance(node.get(k), dict) for v in node[k].values()
        ]
        children += [
            v for k in ("allOf", "anyOf", "oneOf") if isinstance(node.get(k), list) for v in node[k]
        ]
        same[id(node)] = [id(child) for child in children if isinstance(child, dict)]
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in node:
                raise SchemaError(f"stream {name!r}: {keyword} is not supported; use $ref")
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaError(
                    f'stream {name!r}: "$ref": {ref!r} is not a local reference: a stream\'s '
                    "schema must be self-contained, with references such as '#/definitions/x'"
                )
            try:
                target = resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                target = None
            if target is None or not isinstance(target.contents, dict | bool):
                raise SchemaError(
                    f'stream {name!r}: "$ref": {ref!r} points to no subschema of this schema'
                )
            refs[id(node)] = ref
            same[id(node)].append(id(target.contents))
            stack.append((specification.create_resource(target.contents), target.resolver))
        stack.extend((sub, resolver.in_subresource(sub)) for sub in resource.subresources())
    loop = _loop(same)
    if loop:
        shown = ", ".join(repr(refs[n]) for n in loop if n in refs)
        raise SchemaError(
            f"stream {name!r}: the schema leads back to itself through $ref {shown} without "
            "descending into the value: validating would never end"
        )


def _loop(graph: dict[int, list[int]]) -> list[int]:
    """The nodes of one cycle in ``graph`` (depth first, no recursion), or ``[]``."""
    done: set[int] = set()
    for start in graph:
        if start in done:
            continue
        path, on_path = [(start, iter(graph[start]))], {start}
        while path:
            node, children = path[-1]
            for child in children:
                if child in on_path:
                    nodes = [n for n, _ in path]
                    return nodes[nodes.index(child) :]
                if child not in done:
                    path.append((child, iter(graph.get(child, ()))))
                    on_path.add(child)
                    break
            else:
                path.pop()
                on_path.discard(node)
                done.add(node)
    return []


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

    def __init__(self, name: str, schema: Any = None):  # anything: checked here
        self.name = check_name(name)
        if schema is None:
            schema = {}
        if not isinstance(schema, dict):
            raise SchemaError(f"stream {name!r}: a schema must be a dict; got {schema!r}")
        if _nested_deeper_than(schema, MAX_DEPTH):  # validators recurse once per level
            raise SchemaError(f"stream {name!r}: a schema may nest at most {MAX_DEPTH} levels")
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
        elif list(self.schema) == ["type"] and str(self.schema["type"]) in _FAST_TYPES:
            self._fast_types = _FAST_TYPES[self.schema["type"]]  # a list of types: not fast

    def encode(self, value: Any) -> str:
        """Return ``value`` as compact JSON text after checking it against the schema.

        :raises ValidationError: not JSON (NaN, infinity, sets, objects...) or not matching
            the schema; the message names the stream, the value and what was expected.
        """
        kind = type(value)
        if kind is float and math.isfinite(value):  # the common case, kept inline
            text = float.__repr__(value)
        else:
            text = self._text(value, kind)
        if kind in self._fast_types:
            return text
        if kind not in _SCALARS:
            # Check what the remote will see: JSON turns tuples into lists and keys into strings.
            value = json.loads(text)
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except RecursionError:  # a deep value times a deep schema: more than Python's stack
            raise self._error(
                value, "a value this schema can check within Python's recursion limit"
            ) from None
        if error is not None:
            raise self._error(value, self.schema_text, reason=error.message)
        return text

    def _text(self, value: Any, kind: type) -> str:
        """``value`` as compact JSON text (any kind but a finite float).

        :raises ValidationError: not JSON, or text UTF-8 cannot encode
        """
        if kind is float:
            raise self._error(value, "a finite number (NaN and infinity are not JSON)")
        if kind is int:
            try:
                return int.__repr__(value)
            except ValueError:  # more digits than str() converts
                digits = sys.get_int_max_str_digits()
                raise self._error(value, f"an integer of at most {digits} digits") from None
        if kind in (dict, list, tuple) and _nested_deeper_than(value, MAX_DEPTH):
            raise self._error(value, f"a JSON value nested at most {MAX_DEPTH} levels deep")
        try:
            text: str = _DUMPS(value)
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


# --------------------------------------------------------------------------- the registry

OUT_OF_ORDER = ("reject", "restamp")

# What leaves the creation of a stream at add_stream to the first sync: the remote is out of
# reach now, or refuses the credentials (the sync reports that).
_OFFLINE = (TransientRemoteError, AmbiguousRemoteError, AuthError)
Schema = dict[str, Any] | str | None  # add_stream's: a dict, JSON text (as in 0.3.5) or none


class Registered(NamedTuple):
    """A registered stream: its definition, its id in the cache and its timestamp policy."""

    definition: StreamDef
    id: int
    restamp: bool  # out_of_order="restamp": explicit older timestamps move after the newest


class _New(NamedTuple):
    """A registration checked and ready to store."""

    definition: StreamDef
    out_of_order: str
    properties: dict[str, Any]
    policy: Policy


class StreamRegistry:
    """The streams registered in one cache file, as this process knows them.

    Other processes may register streams too: a name not known here is looked up again in
    the cache before it is called unknown. A stream whose stored schema this version refuses
    (written by an older one) stays listed but refuses inserts, saying why.
    """

    def __init__(self, cache: Cache, remote_name: str = "default"):
        self._cache = cache
        self._remote_name = remote_name  # the remote add() is given: its stream is created
        self._defs: dict[str, Registered] = {}
        self._broken: dict[str, str] = {}  # name -> why it cannot be used

    def load(self) -> None:
        """Read the registered streams from the cache (a definition unchanged is kept)."""
        defs, broken = {}, {}
        for row in self._cache.streams().values():
            current = self._defs.get(row.name)
            restamp = row.out_of_order == "restamp"
            if current is not None and current.definition.schema_text == row.schema:
                defs[row.name] = current._replace(restamp=restamp)
                continue
            try:
                definition = StreamDef(row.name, json.loads(row.schema))
            except (StreamError, SchemaError) as exc:
                log.warning("stream %r in the cache cannot be used: %s", row.name, exc)
                broken[row.name] = str(exc)
                continue
            defs[row.name] = Registered(definition, row.id, restamp)
        self._defs, self._broken = defs, broken

    def register(
        self, name: str, schema: Schema, out_of_order: str, properties: Mapping[str, Any]
    ) -> None:
        """Register ``name`` with ``schema`` (None: any JSON value) and ``properties``, or
        replace those of a registered stream; cached datapoints stay, and a changed schema
        makes the next sync ensure the stream on the remote again.

        :raises StreamError, SchemaError: bad name, schema, ``out_of_order`` or property
        """
        self._store(self._checked(name, schema, out_of_order, properties))

    def add(
        self, name: str, schema: Schema, remote: Remote | None, out_of_order: str, **props: Any
    ) -> None:
        """``add_stream``: check it all, ask ``remote`` (None: none to ask yet), register.

        Without a schema the remote's is used. With one, the stream is created on the remote
        now; one there already keeps its schema, used here too (a different one given is a
        WARNING). :data:`_OFFLINE` errors leave the creation to the first sync.

        :raises StreamError, SchemaError: bad name, schema, ``out_of_order`` or property
        :raises UnknownStreamError: no schema, and the remote has no such stream
        :raises RemoteError: no schema and the remote failed; or with one, the remote
            refused the creation (but for the credentials)
        """
        new = self._checked(name, schema or {}, out_of_order, props)  # before asking
        if schema is None and remote is not None:
            schema = self.remote_schema(name, remote)
            self._store(self._checked(name, schema, out_of_order, props), remote_created=True)
        elif remote is not None:
            self._store(*self._create(new, remote))
        else:
            self._store(new)

    def _checked(
        self, name: str, schema: Schema, out_of_order: str, properties: Mapping[str, Any]
    ) -> _New:
        """A registration checked whole, before anything is changed or asked."""
        check_name(name)
        if out_of_order not in OUT_OF_ORDER:
            raise StreamError(
                f"stream {name!r}: out_of_order must be 'reject' or 'restamp'; got {out_of_order!r}"
            )
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise SchemaError(f"stream {name!r}: the schema is not JSON: {exc}") from None
        rest = dict(properties)
        policy = take_policy(name, rest)
        properties = check_properties(name, rest)
        refuse_misfits(self._cache, definition := StreamDef(name, schema))  # the cache's fit
        return _New(definition, out_of_order, properties, policy)

    def _create(self, new: _New, remote: Remote) -> tuple[_New, bool]:
        """Create the stream on ``remote`` now: what to register, and whether it is there."""
        name, schema = new.definition.name, new.definition.schema
        try:
            existing = ensure_stream(remote, name, schema, new.properties)
        except _OFFLINE as exc:
            level = logging.WARNING if isinstance(exc, AuthError) else logging.INFO
            log.log(level, "stream %r: registered; created remotely at a sync (%s)", name, exc)
            return new, False
        if existing is not None and existing != schema:
            log.warning(
                "stream %r exists on the remote with schema %s, not %s: using the remote's",
                *(name, json.dumps(existing), new.definition.schema_text),
            )
            return new._replace(definition=StreamDef(name, existing)), True
        return new, True

    def _store(self, new: _New, remote_created: bool = False) -> None:
        name, text = new.definition.name, new.definition.schema_text
        row = put_stream(self._cache, name, text, new.out_of_order, new.properties, new.policy)
        if remote_created:
            self._cache.outbox(self._remote_name).set_remote_created(name)
        restamp = new.out_of_order == "restamp"
        self._defs = {**self._defs, name: Registered(new.definition, row.id, restamp)}
        self._broken.pop(name, None)

    def remote_schema(self, name: str, remote: Remote) -> dict[str, Any]:
        """The schema of stream ``name`` on ``remote``, to register it with.

        :raises StreamError: a bad name (checked before asking)
        :raises UnknownStreamError: the remote has no such stream
        :raises RemoteError: the remote could not be asked
        """
        check_name(name)
        schema = remote.stream_schema(name)
        if schema is None:
            raise UnknownStreamError(
                f"stream {name!r} was not found on the remote; "
                "give a schema to create it: add_stream(name, schema)"
            )
        return schema

    def get(self, name: str) -> Registered:
        """The registered stream ``name``.

        :raises UnknownStreamError: not registered (here or by another process)
        :raises StreamError: registered with a schema this version refuses
        """
        found = self._defs.get(name)
        if found is None:
            self.load()  # another process may have added it
            found = self._defs.get(name)
            if found is None:
                if name in self._broken:
                    raise StreamError(
                        f"stream {name!r} cannot be used: {self._broken[name]}; "
                        "register it again with add_stream(name, schema)"
                    )
                known = ", ".join(sorted(self._defs)) or "none"
                raise UnknownStreamError(
                    f"stream {name!r} is not registered (registered: {known}); "
                    "add it first with add_stream(name, schema)"
                )
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def __len__(self) -> int:
        return len(self._defs)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._defs)

    def schemas(self) -> dict[str, dict[str, Any]]:
        """name -> JSON schema (copies)."""
        return {name: dict(r.definition.schema) for name, r in self._defs.items()}

    def ids(self) -> dict[str, int]:
        """name -> the stream's id in the cache."""
        return {name: r.id for name, r in self._defs.items()}


def check_values(stream: str, values: Any) -> None:
    """``insert_many``'s values must be a collection: a str, bytes or a dict is iterable
    too, but would be stored letter by letter, byte by byte or key by key.

    :raises TypeError: naming ``values`` and what it must be
    """
    try:
        iter(values)
        usable = not isinstance(values, str | bytes | bytearray | memoryview | Mapping)
    except TypeError:
        usable = False
    if not usable:
        raise TypeError(
            f"insert_many: values for stream {stream!r} must be an iterable (a list, say) of "
            f"values or {{'t': ..., 'd': ...}} datapoints; got a {type(values).__name__}"
        )


# --------------------------------------------------------------------------- subscribers

Subscriber = Callable[[dict[str, Any]], Any]


class Subscribers:
    """Callbacks called after each committed insert into a stream (``Logger.subscribe``).

    A callback runs in the inserting thread, after the commit and outside every lock; its
    exception is logged, never raised into the inserting code. The mapping is replaced, never
    changed in place, so notifying needs no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stream: dict[str, list[Subscriber]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_stream)

    def add(self, stream: str, callback: Subscriber) -> Callable[[], None]:
        """Subscribe ``callback`` to ``stream``; returns the function that unsubscribes it."""
        with self._lock:
            self._by_stream = {
                **self._by_stream,
                stream: [*self._by_stream.get(stream, []), callback],
            }

        def unsubscribe() -> None:
            with self._lock:
                left = [f for f in self._by_stream.get(stream, []) if f is not callback]
                by_stream = {**self._by_stream, stream: left}
                if not left:
                    del by_stream[stream]
                self._by_stream = by_stream

        return unsubscribe

    def notify(self, stream: str, t: float, value: Any) -> None:
        """Tell ``stream``'s subscribers about the datapoint ``(t, value)``."""
        for callback in self._by_stream.get(stream, ()):
            try:
                callback({"t": t, "d": value})
            except Exception:
                log.exception("subscriber %r of stream %r failed", callback, stream)
