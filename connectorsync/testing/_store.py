"""SQLite (apsw) storage behind the test ConnectorDB server.

Guarantees:

* Every public method of :class:`Store` runs under one lock, so each call, and
  therefore each HTTP request, is atomic with respect to all others.
* An insert is all or nothing: it is validated completely before anything is
  written, and written in one transaction.
* Within a stream, datapoints are kept in insertion order and their
  timestamps never decrease (inserts that would break this are refused or,
  when restamping, moved forward), so "insertion order" and "ordered by
  (t, id)" are the same order. Reads rely on that to use one index.
* With a file path, data survives a process restart (WAL,
  ``synchronous=NORMAL``: a committed insert survives a process crash, and an
  OS crash can lose only the last commits, never corrupt the file).
* A schema is stored, and so read back, as ConnectorDB v0.3 stores it: minified (the
  whitespace between JSON tokens removed, everything else exactly as sent; "" is "{}").
  ConnectorDB runs every schema through ``tdewolff/minify``'s JSON minifier when a stream
  is created or updated (``minifyAndValidateSchema`` in its ``users/stream.go``), and the
  0.3.5 client's own tests expect ``'{"type": "string"}'`` to read back as
  ``'{"type":"string"}'`` (``tests/test_server_clientsuite.py``).
* Only the stream's own device (or an admin: ConnectorDB gives admins full access) writes
  into a stream; any other device of the user writes only into a downlink stream, and then
  into its downlink substream, as ConnectorDB's ``InsertStreamByID`` decides
  (``tests/test_server_clientsuite.py``).
"""

from __future__ import annotations

import json
import math
import operator
import re
import threading
from collections.abc import Iterable
from itertools import islice, repeat
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

import apsw
from jsonschema import Draft4Validator
from jsonschema.exceptions import SchemaError

from ._accounts import Accounts
from ._errors import ApiError as ApiError
from ._errors import valid_name

SCHEMA_MSG = "At least one datapoint did not conform to the stream's schema"
# No word of this message may be one the ConnectorDB remote reads as a refusal of the data
# ("conform", "schema", ...): it is about who writes, so a Logger keeps the datapoints cached
# (an access error) instead of dead-lettering them.
WRITE_DENIED_MSG = "Write access to stream data denied: only {owner} writes into {path}"
UNORDERED_MSG = "Timestamps are not ordered!"
OLDER_MSG = "Greater timestamp already exists for the stream. Insert Failed."

#: Who sends an insert, as far as the stream is concerned: its own device, an admin, or another
#: device (of the stream's user: only those may read it at all).
Writer = Literal["own device", "admin", "other"]

_NUMBER = frozenset((int, float))
# JSON Schema (Draft 4) type names -> the Python types json.loads produces for
# them. bool is its own type here, so it is neither a number nor an integer,
# and 1.0 is not an integer: both exactly as Draft4Validator decides.
_JSON_TYPES = {
    "number": _NUMBER,
    "integer": frozenset((int,)),
    "string": frozenset((str,)),
    "boolean": frozenset((bool,)),
    "null": frozenset((type(None),)),
    "object": frozenset((dict,)),
    "array": frozenset((list,)),
}
# Stream properties kept besides the schema, with their defaults (and types).
_STREAM_PROPS: dict[str, Any] = {
    "nickname": "",
    "description": "",
    "icon": "",
    "datatype": "",
    "downlink": False,
    "ephemeral": False,
}
_encode_any = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

_TABLES = (
    # A downlink substream is a row named "<stream>/downlink" (no stream name has a "/").
    "CREATE TABLE IF NOT EXISTS streams (id INTEGER PRIMARY KEY,"
    " user TEXT NOT NULL, device TEXT NOT NULL, name TEXT NOT NULL,"
    " schema TEXT NOT NULL, props TEXT NOT NULL DEFAULT '{}',"
    " length INTEGER NOT NULL DEFAULT 0, last_t REAL, UNIQUE (user, device, name))",
    "CREATE TABLE IF NOT EXISTS datapoints (id INTEGER PRIMARY KEY,"
    " stream INTEGER NOT NULL, t REAL NOT NULL, d TEXT NOT NULL)",
    # (stream, t) plus the implicit rowid gives insertion order per stream.
    "CREATE INDEX IF NOT EXISTS datapoints_stream_t ON datapoints (stream, t)",
)


# A JSON string literal (escapes included), or a run of JSON's insignificant whitespace.
_STRING_OR_SPACE = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\n\r]+')


def minify_json(text: str) -> str:
    """Valid JSON ``text`` without the whitespace between its tokens, as ``tdewolff/minify``
    (which ConnectorDB uses) writes it: strings, numbers and key order stay as they are."""
    return _STRING_OR_SPACE.sub(lambda m: m[0] if m[0][0] == '"' else "", text)


def parse_schema(value: Any) -> str:
    """Check a stream schema given as JSON text (or a dict); return it as stored (minified)."""
    if isinstance(value, dict):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise ApiError(400, "The schema must be a JSON string")
    if value == "":  # ConnectorDB reads an empty schema as the empty one
        value = "{}"
    try:
        schema = json.loads(value)
    except ValueError:
        raise ApiError(400, "The schema is not valid JSON") from None
    if not isinstance(schema, dict):
        raise ApiError(400, "The schema must be a JSON object")
    try:
        Draft4Validator.check_schema(schema)
    except SchemaError as e:
        raise ApiError(400, "Invalid JSON schema: " + e.message) from None
    return minify_json(value)


class SchemaChecker:
    """Decides whether a batch of values conforms to one schema.

    Schemas that only constrain the JSON type (``{}``, ``{"type": "number"}``,
    ``{"type": ["string", "null"]}``, ...) are checked by comparing Python
    types, which gives Draft4Validator's answer without calling it per value.
    """

    def __init__(self, schema_text: str) -> None:
        schema = json.loads(schema_text)
        self.types: frozenset[type] | None = None
        self.validator: Draft4Validator | None = None
        names = schema.get("type")
        names = [names] if isinstance(names, str) else names
        if not schema:
            self.types = frozenset().union(*_JSON_TYPES.values())
        elif (
            schema.keys() == {"type"}
            and isinstance(names, list)
            and all(n in _JSON_TYPES for n in names)
        ):
            self.types = frozenset().union(*(_JSON_TYPES[n] for n in names))
        else:
            self.validator = Draft4Validator(schema)

    def accepts(self, values: list[Any], kinds: set[type]) -> bool:
        if self.types is not None:
            return kinds <= self.types
        assert self.validator is not None
        return all(map(self.validator.is_valid, values))


class Batch:
    """A parsed insert body: timestamps, values, value types and value JSON."""

    def __init__(self, body: bytes, now: float) -> None:
        try:
            points = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "The body is not valid JSON") from None
        if type(points) is not list:
            raise ApiError(400, "Expected a JSON array of datapoints")
        bad = ApiError(400, 'Each datapoint must be an object with a "d" and a finite number "t"')
        try:
            # A point without a "t" gets the server's time of arrival, as in ConnectorDB.
            # Not p.get(): a point that is no object must fail as a TypeError.
            ts = [p["t"] if "t" in p else now for p in points]  # noqa: SIM401
            self.values = [p["d"] for p in points]
        except (TypeError, KeyError):
            raise bad from None
        try:
            if not set(map(type, ts)) <= _NUMBER or not all(map(math.isfinite, ts)):
                raise bad
        except OverflowError:  # an integer too large for a float
            raise bad from None
        self.times: list[float] = list(map(float, ts))
        self.kinds = set(map(type, self.values))
        self.encoded = _encode_values(self.values, self.kinds)

    def ordered(self) -> bool:
        return all(map(operator.le, self.times, islice(self.times, 1, None)))


def _refuse_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _encode_values(values: list[Any], kinds: set[type]) -> list[str]:
    """JSON text of each value, with fast paths for all-number/all-string batches."""
    try:
        if kinds <= _NUMBER and all(map(math.isfinite, values)):
            return list(map(repr, values))  # repr of an int or finite float is JSON
    except OverflowError:  # an int too large for a float: the general path copes
        pass
    if kinds == {str}:
        return list(map(encode_basestring_ascii, values))
    try:
        return list(map(_encode_any, values))
    except ValueError:  # a non-finite float, e.g. parsed from "1e999"
        raise ApiError(400, "Datapoint values must be finite numbers") from None


def _rows_json(rows: Iterable[Any]) -> str:
    return "[" + ",".join([f'{{"t":{t!r},"d":{d}}}' for t, d in rows]) + "]"


class Store(Accounts):
    """Users, devices (see ``_accounts``), streams and datapoints in one SQLite database."""

    def __init__(self, path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._db = apsw.Connection(path if path is not None else ":memory:")
        self._checkers: dict[str, SchemaChecker] = {}
        if path is not None:
            self._db.set_busy_timeout(5000)
            self._db.execute("PRAGMA journal_mode=WAL").fetchall()
            self._db.execute("PRAGMA synchronous=NORMAL").fetchall()
        with self._db:
            self._create_account_tables()
            for sql in _TABLES:
                self._db.execute(sql)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- streams ---------------------------------------------------------------

    def _stream_row(self, path: str, downlink: bool = False) -> Any:
        """(id, schema, props, length, last_t) of a "user/device/stream" path (or of its
        downlink substream), or None."""
        parts = path.split("/")
        if len(parts) != 3:
            return None
        if downlink:
            parts[2] += "/downlink"
        return self._one(
            "SELECT id, schema, props, length, last_t FROM streams"
            " WHERE user=? AND device=? AND name=?",
            parts,
        )

    @staticmethod
    def _stream_json(name: str, schema: str, props: str) -> dict[str, Any]:
        return {"name": name, "schema": schema, **_STREAM_PROPS, **json.loads(props)}

    def list_streams(self, user: str, device: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._all(
                "SELECT name, schema, props FROM streams WHERE user=? AND device=?"
                " AND name NOT LIKE '%/%' ORDER BY id",
                (user, device),
            )
        return [self._stream_json(*row) for row in rows]

    def list_user_streams(self, user: str, only: dict[str, bool]) -> list[dict[str, Any]]:
        """The streams of a user's devices, each with its "device"; ``only`` may ask for
        those of public devices, downlink streams, those of visible devices (True)."""
        found = []
        for device in self.list_devices(user, with_keys=False):
            if (only.get("public") and not device["public"]) or (
                only.get("visible") and not device["visible"]
            ):
                continue
            for stream in self.list_streams(user, device["name"]):
                if stream["downlink"] or not only.get("downlink"):
                    found.append({**stream, "device": device["name"]})
        return found

    def read_stream(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._stream_row(path)
        return None if row is None else self._stream_json(path.rsplit("/", 1)[1], row[1], row[2])

    def create_stream(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        user, device, name = path.split("/")
        if not valid_name(name):
            raise ApiError(400, f"Invalid stream name {name!r}")
        schema = parse_schema(body.get("schema", "{}"))
        props = json.dumps(_props(body))
        with self._lock, self._db:
            if self._one("SELECT 1 FROM devices WHERE user=? AND name=?", (user, device)) is None:
                raise ApiError(404, f"Device {user}/{device} does not exist")
            if self._stream_row(path) is not None:
                raise ApiError(409, f"Stream {path} already exists")
            self._db.execute(
                "INSERT INTO streams (user, device, name, schema, props) VALUES (?,?,?,?,?)",
                (user, device, name, schema, props),
            )
        return self._stream_json(name, schema, props)

    def update_stream(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        new_schema = parse_schema(body["schema"]) if "schema" in body else None
        with self._lock, self._db:
            row = self._stream_row(path)
            if row is None:
                raise ApiError(404, f"Stream {path} does not exist")
            props = json.dumps({**json.loads(row[2]), **_props(body)})
            schema: str = new_schema if new_schema is not None else row[1]
            self._db.execute(
                "UPDATE streams SET schema=?, props=? WHERE id=?", (schema, props, row[0])
            )
        return self._stream_json(path.rsplit("/", 1)[1], schema, props)

    def delete_stream(self, path: str) -> bool:
        with self._lock, self._db:
            row = self._stream_row(path)
            for found in (row, self._stream_row(path, downlink=True)):
                if found is not None:
                    self._db.execute("DELETE FROM datapoints WHERE stream=?", (found[0],))
                    self._db.execute("DELETE FROM streams WHERE id=?", (found[0],))
        return row is not None

    def stream_schema(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._stream_row(path)
        return None if row is None else json.loads(row[1])

    # -- datapoints --------------------------------------------------------------

    def insert(
        self,
        path: str,
        batch: Batch,
        restamp: bool,
        rejected: bool = False,
        writer: Writer = "own device",
    ) -> None:
        """Append a batch to a stream, or raise ApiError without storing anything.

        ``rejected`` says an injected fault refused a datapoint; it fails like
        a schema violation, once the stream is known to exist. As in ConnectorDB, a
        batch for an ephemeral stream is checked but not stored; one from a ``writer`` other
        than the stream's own device goes to the downlink substream of a downlink stream, and
        for any other stream is refused (403) unless it comes from an admin (who writes into
        the stream itself).
        """
        with self._lock:
            row = self._stream_row(path)
            if row is None:
                raise ApiError(403, f"Stream {path} does not exist")
            schema, props = row[1], json.loads(row[2])
            downlink = writer != "own device" and bool(props.get("downlink"))
            if writer == "other" and not downlink:
                device = path.rsplit("/", 1)[0]
                raise ApiError(403, WRITE_DENIED_MSG.format(owner=device, path=path))
            checker = self._checkers.get(schema)
            if checker is None:
                checker = self._checkers[schema] = SchemaChecker(schema)
            if rejected or not checker.accepts(batch.values, batch.kinds):
                raise ApiError(403, SCHEMA_MSG)
            if not batch.ordered():
                raise ApiError(403, UNORDERED_MSG)
            if props.get("ephemeral"):
                return
            with self._db:  # a new downlink substream is kept only with its points
                if downlink:
                    row = self._downlink_row(path, schema)
                self._append(row, batch, restamp)

    def _downlink_row(self, path: str, schema: str) -> Any:
        row = self._stream_row(path, downlink=True)
        if row is None:
            user, device, name = path.split("/")
            self._db.execute(
                "INSERT INTO streams (user, device, name, schema) VALUES (?,?,?,?)",
                (user, device, name + "/downlink", schema),
            )
            row = self._stream_row(path, downlink=True)
        return row

    def _append(self, row: Any, batch: Batch, restamp: bool) -> None:
        stream_id, last_t = row[0], row[4]
        times = batch.times
        if not times:
            return
        if last_t is not None and times[0] < last_t:
            if not restamp:
                raise ApiError(403, OLDER_MSG)
            times = [t if t >= last_t else last_t for t in times]
        with self._db:
            self._db.executemany(
                "INSERT INTO datapoints (stream, t, d) VALUES (?,?,?)",
                zip(repeat(stream_id), times, batch.encoded),
            )
            self._db.execute(
                "UPDATE streams SET length=length+?, last_t=? WHERE id=?",
                (len(times), times[-1], stream_id),
            )

    def _data_row(self, path: str, downlink: bool) -> Any:
        """The stream's row, or its downlink substream's (an empty one if none was written)."""
        row = self._stream_row(path)
        if row is None:
            raise ApiError(404, f"Stream {path} does not exist")
        if downlink:
            row = self._stream_row(path, downlink=True) or (None, row[1], row[2], 0, None)
        return row

    def length(self, path: str, downlink: bool = False) -> int:
        with self._lock:
            return int(self._data_row(path, downlink)[3])

    def read_index(self, path: str, i1: int, i2: int, downlink: bool = False) -> str:
        """JSON of datapoints [i1:i2] (Python-style; i2 == 0 means to the end)."""
        with self._lock:
            row = self._data_row(path, downlink)
            n = row[3]
            start = _clamp(i1, n)
            stop = n if i2 == 0 else _clamp(i2, n)
            if stop <= start:
                return "[]"
            if start < n - stop:
                rows = self._all(
                    "SELECT t, d FROM datapoints WHERE stream=? ORDER BY t, id LIMIT ? OFFSET ?",
                    (row[0], stop - start, start),
                )
            else:  # nearer the end: walk the index backwards (e.g. the last point)
                rows = self._all(
                    "SELECT t, d FROM datapoints WHERE stream=?"
                    " ORDER BY t DESC, id DESC LIMIT ? OFFSET ?",
                    (row[0], stop - start, n - stop),
                )
                rows.reverse()
        return _rows_json(rows)

    def read_time(
        self, path: str, span: tuple[float, float], limit: int, downlink: bool = False
    ) -> str:
        """JSON of datapoints with t1 <= t < t2 (t2 == 0: no bound), at most limit (0: all)."""
        t1, t2 = span
        with self._lock:
            row = self._data_row(path, downlink)
            rows = self._all(
                "SELECT t, d FROM datapoints WHERE stream=? AND t>=? AND t<?"
                " ORDER BY t, id LIMIT ?",
                (row[0], t1, t2 if t2 != 0 else math.inf, limit if limit > 0 else -1),
            )
        return _rows_json(rows)

    def datapoints(self, path: str) -> list[dict[str, Any]]:
        """All datapoints of a stream, decoded; KeyError if it does not exist."""
        with self._lock:
            row = self._stream_row(path)
            if row is None:
                raise KeyError(path)
            rows = self._all("SELECT t, d FROM datapoints WHERE stream=? ORDER BY t, id", (row[0],))
        return [{"t": t, "d": json.loads(d)} for t, d in rows]


def _clamp(i: int, n: int) -> int:
    return min(max(i + n if i < 0 else i, 0), n)


def _props(body: dict[str, Any]) -> dict[str, Any]:
    """The known stream properties in a request body, type-checked."""
    props = {k: body[k] for k in _STREAM_PROPS if k in body}
    for key, value in props.items():
        if type(value) is not type(_STREAM_PROPS[key]):
            raise ApiError(400, f"Invalid value for {key}")
    return props
