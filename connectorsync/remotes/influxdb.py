"""InfluxDBRemote: datapoints as InfluxDB line protocol, over a ``requests.Session``.

Two modes, exactly one of which is configured:

- **v1** (InfluxDB 1.x, or 1.x-compatible endpoints): ``database=``;
  ``POST {url}/write?db=<database>&precision=ns``, HTTP Basic auth with ``username``/``password``,
  or ``Authorization: Token <token>`` (InfluxDB 1.8+ and 2.x's compatibility API).
- **v2** (InfluxDB 2.x and Cloud): ``org=`` and ``bucket=`` and ``token=``;
  ``POST {url}/api/v2/write?org=&bucket=&precision=ns`` with ``Authorization: Token <token>``.

How a datapoint becomes a point (``docs/remotes.rst`` says the same for users):

- The stream name is the measurement; ``tags`` are added to every point.
- A JSON number is the float field ``value``; a string, boolean or list likewise sits under
  ``value`` (a list as ``value.0``, ``value.1``...). An object gives one field per key, nested
  keys joined with ``.`` (``{"a": {"b": 1}}`` is field ``a.b``), lists as ``key.0``, ``key.1``...
  Flattening keeps numbers inside objects and lists queryable, which a JSON string would not.
- Every JSON number is written as a float, integers too: InfluxDB fixes a field's type per
  measurement (per shard) at its first write, and JSON does not tell ``21`` from ``21.0``, so
  a sensor sending ``21`` and then ``21.5`` would have its second point refused if integers
  were written as integers.
- ``null`` (at any depth) is skipped. A datapoint left with no field at all (``null``, ``{}``,
  ``[]``) cannot be stored by InfluxDB: it refuses the batch
  (:class:`~connectorsync.errors.RejectedError`) before anything is sent, so the syncer's
  bisection makes that one datapoint a dead letter with the reason, instead of dropping it
  silently. So does a field key that appears twice after flattening, or one that line
  protocol cannot write (see :func:`encode_line`).
- The timestamp is ``round(t * 1e9)`` nanoseconds, computed exactly (:func:`seconds_to_ns`).

Delivery is exactly once: InfluxDB overwrites a point with the same measurement, tag set and
timestamp, so sending a batch again stores nothing twice, and :meth:`InfluxDBRemote.reconcile`
reads the newest timestamp stored (under our tags) after a lost answer
(``tests/test_remote_contract.py::test_a_lost_answer_loses_nothing``). A 400 "partial write"
stored the valid lines; the syncer sends them again while it bisects, which overwrites them
with themselves.

The token and the password travel only in the Authorization header: never in the url, a
repr or an error message.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import requests

from ..errors import (
    AuthError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from .base import (
    Datapoint,
    DeliveryKind,
    Prepared,
    hide_password,
    parse_retry_after,
    send,
    short_reason,
)

#: A batch whose body is larger is refused before sending (RejectedError), so the syncer
#: halves it. influxd refuses bodies over its ``max-body-size`` (25 MB by default).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: The range of InfluxDB timestamps, in nanoseconds since the epoch.
MIN_NS = -9223372036854775806
MAX_NS = 9223372036854775806

_MISSING_TARGET = re.compile(
    r"(database|bucket)\b.*\bnot found|not found.*\b(database|bucket)", re.I
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.I
)
_SECONDS_EXACT_FROM, _SECONDS_EXACT_TO = 2.0**20, 2.0**62  # see seconds_to_ns
# Times that take encode()'s fast path: exact nanoseconds, within InfluxDB's range.
_FAST_FROM, _FAST_TO = _SECONDS_EXACT_FROM, 9.2e9
_NUMBER_START = frozenset("-0123456789")  # the first character of a JSON number
_DIGITS = frozenset("0123456789")  # its last
_MEASUREMENT_SPECIALS = ", "
_KEY_SPECIALS = ",= "


class _BadPoint(Exception):
    """A datapoint that cannot be written as line protocol; the message says why."""


class _MissingTarget(RemoteError):
    """404: the database (v1) or bucket (v2) does not exist."""


class InfluxDBRemote:
    """An InfluxDB database (1.x) or bucket (2.x), written in line protocol.

    :param url: e.g. ``"http://localhost:8086"``
    :param database: v1 mode: the database to write to
    :param org: v2 mode: the organization (name or id)
    :param bucket: v2 mode: the bucket
    :param token: the API token (required in v2 mode; in v1 mode sent as ``Token``, for
        InfluxDB 1.8+ and 2.x's 1.x-compatible API)
    :param username: v1 mode: the user, sent with ``password`` as HTTP Basic auth
    :param password: v1 mode: the user's password
    :param tags: tags added to every point (strings); reconcile looks only at points with them
    :param create_database: v1 mode: create the database (``CREATE DATABASE``, needs an admin
        user) when it is missing, instead of raising
        :class:`~connectorsync.errors.ConfigurationError`
    :param timeout: seconds for connecting and for each read
    :param verify: TLS verification: True, False, or a CA bundle path
    :raises ConfigurationError: neither or both modes, a missing part of one, bad tags
    """

    delivery_kind = DeliveryKind.IDEMPOTENT

    def __init__(
        self,
        url: str,
        database: str | None = None,
        *,
        org: str | None = None,
        bucket: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tags: Mapping[str, str] | None = None,
        create_database: bool = False,
        timeout: float = 30.0,
        verify: bool | str = True,
    ):
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                "InfluxDBRemote needs the server's url with its scheme, "
                "e.g. 'http://localhost:8086'"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                "InfluxDBRemote: pass username=/password= or token=, not credentials in the url"
            )
        v2 = org is not None or bucket is not None
        if database is not None and v2:
            raise ConfigurationError(
                "InfluxDBRemote: give either database= (InfluxDB 1.x) or org= and bucket= "
                "(InfluxDB 2.x), not both"
            )
        if database is None and not v2:
            raise ConfigurationError(
                "InfluxDBRemote needs database= (InfluxDB 1.x) or org= and bucket= (InfluxDB 2.x)"
            )
        if v2 and not (org and bucket and token):
            raise ConfigurationError(
                "InfluxDBRemote in InfluxDB 2.x mode needs org=, bucket= and token="
            )
        if database is not None and not database:
            raise ConfigurationError("InfluxDBRemote: database= must not be empty")
        if v2 and (username is not None or password is not None):
            raise ConfigurationError(
                "InfluxDBRemote: InfluxDB 2.x authenticates with token=, not username/password"
            )
        if password is not None and username is None:
            raise ConfigurationError("InfluxDBRemote: password= needs username=")
        if username is not None and token is not None:
            raise ConfigurationError("InfluxDBRemote: give username/password or token, not both")
        if create_database and v2:
            raise ConfigurationError(
                "InfluxDBRemote: create_database= works with database= (1.x); "
                "create 2.x buckets yourself"
            )
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(
                f"InfluxDBRemote timeout must be a positive number; got {timeout!r}"
            )
        self.url = url.rstrip("/")
        self.database = database
        self.org = org
        self.bucket = bucket
        self.create_database = create_database
        self.timeout = float(timeout)
        self.tags = dict(tags or {})
        self._tag_text = _tag_text(self.tags)
        self._session = requests.Session()
        self._bodies = Prepared(self._checked_body)
        self._session.verify = verify
        if username is not None:
            self._session.auth = (username, password or "")
        elif token is not None:
            self._session.headers["Authorization"] = f"Token {token}"
        self._credentials = username is not None or token is not None
        if database is not None:
            self._write_url = self.url + "/write"
            self._write_params = {"db": database, "precision": "ns"}
        else:
            self._write_url = self.url + "/api/v2/write"
            self._write_params = {"org": org or "", "bucket": bucket or "", "precision": "ns"}
        self._database_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if self.database is not None:
            return f"InfluxDBRemote({hide_password(self.url)!r}, database={self.database!r})"
        url = hide_password(self.url)
        return f"InfluxDBRemote({url!r}, org={self.org!r}, bucket={self.bucket!r})"

    @property
    def target(self) -> str:
        """``database`` (v1) or ``org/bucket`` (v2)."""
        return self.database if self.database is not None else f"{self.org}/{self.bucket}"

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """``GET /ping``; with credentials in v1 mode also ``SHOW DATABASES``, which any
        user may run, to check them. Returns ``"influxdb <version>/<target>"``.

        (In v2 mode a bad token shows at the first write: checking it needs a read
        permission a write-only token may lack.)
        """
        response = self._request("GET", self.url + "/ping")
        version = response.headers.get("X-Influxdb-Version", "unknown version")
        if self._credentials and self.database is not None:
            self._influxql("SHOW DATABASES", on_database=False)
        return f"influxdb {version}/{self.target}"

    def ensure_stream(self, stream: str, schema: dict[str, Any]) -> None:
        """Measurements need no creation; with ``create_database`` the database is created
        (once per remote object; ``CREATE DATABASE`` is harmless when it exists).

        :raises ConfigurationError: ``stream`` cannot be a measurement name
        """
        _measurement(stream)
        if self.create_database and not self._database_ready:
            self._create_database()

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}`` when the measurement holds a point (with our tags), else None: InfluxDB keeps
        no JSON schema."""
        return {} if self.reconcile(stream) is not None else None

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` ahead of :meth:`push` (see :class:`.base.Prepared`)."""
        self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        for attempt in (1, 2):
            try:
                self._request(
                    "POST", self._write_url, params=self._write_params, data=data, write=True
                )
                return
            except _MissingTarget as exc:
                if not self.create_database or attempt == 2:
                    hint = (
                        "create the bucket"
                        if self.database is None
                        else "create the database, or pass create_database=True"
                    )
                    raise ConfigurationError(f"{exc} ({hint})") from exc
                self._create_database()

    def reconcile(self, stream: str) -> float | None:
        """The newest timestamp stored in the measurement, among points with our ``tags``
        (another writer's points do not count), as seconds; None when there is none (or no
        database).

        It is the largest float ``s`` whose nanoseconds (:func:`seconds_to_ns`) are at or
        below the stored ones, so each cached ``t`` that was written is at or below it, and
        each that was not is above it.
        """
        _measurement(stream)  # refuse a name no point could have
        newest = self._newest_ns(stream)
        return None if newest is None else ns_to_seconds(newest)

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------------- encoding

    def _checked_body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        data = self.encode(stream, batch).encode()
        if len(data) > MAX_BODY_BYTES:
            raise RejectedError(
                f"stream {stream!r}: a batch of {len(batch)} datapoints is {len(data)} bytes, "
                f"over the {MAX_BODY_BYTES}-byte limit",
                status=413,
            )
        return data

    def encode(self, stream: str, batch: Sequence[Datapoint]) -> str:
        """The line-protocol body for ``batch``, one line per datapoint.

        :raises RejectedError: a datapoint cannot be a point (the message says which and why)
        :raises ConfigurationError: ``stream`` cannot be a measurement name
        """
        prefix = _measurement(stream) + self._tag_text
        number_prefix = prefix + " value="
        lines: list[str] = []
        append = lines.append
        for _, t, d in batch:
            # Fast path for the usual sensor reading, a JSON number at a time after 1970-01-13:
            # the float field "value", the number's text as it is (line protocol reads every
            # JSON number form as a float; the cache holds finite floats as repr() and whole
            # numbers as digits, and 24 characters keep digits within a float's range).
            # Anything else takes encode_line, which refuses what InfluxDB cannot hold.
            if (
                d[0] in _NUMBER_START
                and d[-1] in _DIGITS  # not "-Infinity" (a connectordb 0.3.5 cache may hold it)
                and len(d) <= 24
                and _FAST_FROM <= t <= _FAST_TO
            ):
                whole = int(t)  # seconds_to_ns(t), inlined: this loop is the hot path
                append(f"{number_prefix}{d} {whole * 1_000_000_000 + round((t - whole) * 1e9)}")
                continue
            try:
                append(encode_line(prefix, t, json.loads(d)))
            except RecursionError:  # a value from before inserts were limited in depth
                reason = "the value is nested too deeply to flatten into fields"
                raise RejectedError(
                    f"stream {stream!r}: the datapoint at t={t!r} cannot be written: {reason}",
                    body=reason,
                ) from None
            except _BadPoint as exc:
                reason = str(exc)
                raise RejectedError(
                    f"stream {stream!r}: the datapoint at t={t!r} cannot be written: {reason}",
                    body=reason,
                ) from None
        return "\n".join(lines)

    # ----------------------------------------------------------------------- queries

    def _create_database(self) -> None:
        assert self.database is not None
        self._influxql(f"CREATE DATABASE {_ident(self.database)}", on_database=False, post=True)
        with self._lock:
            self._database_ready = True

    def _newest_ns(self, stream: str) -> int | None:
        """The newest stored timestamp (ns) of measurement ``stream`` under our tags, or None."""
        if self.database is not None:
            where = " AND ".join(
                f"{_ident(k)} = {_literal(v)}" for k, v in sorted(self.tags.items())
            )
            q = f"SELECT * FROM {_ident(stream)}"
            if where:
                q += f" WHERE {where}"
            result = self._influxql(q + " ORDER BY time DESC LIMIT 1")
            for series in (result or {}).get("series") or []:
                columns = series.get("columns") or []
                values = series.get("values") or []
                if values and "time" in columns:
                    return int(values[0][columns.index("time")])
            return None
        conditions = [f"r._measurement == {_flux_string(stream)}"]
        conditions += [
            f"r[{_flux_string(k)}] == {_flux_string(v)}" for k, v in sorted(self.tags.items())
        ]
        query = (
            f"from(bucket: {_flux_string(self.bucket or '')})"
            f" |> range(start: time(v: {MIN_NS}), stop: time(v: {MAX_NS + 1}))"
            f" |> filter(fn: (r) => {' and '.join(conditions)})"
            " |> last()"
            ' |> keep(columns: ["_time"])'
            " |> group()"
            ' |> sort(columns: ["_time"], desc: true)'
            " |> limit(n: 1)"
        )
        for row in self._flux(query):
            if row.get("_time"):
                return rfc3339_ns(row["_time"])
        return None

    def _influxql(
        self, q: str, *, on_database: bool = True, post: bool = False
    ) -> dict[str, Any] | None:
        """Run one InfluxQL statement; its result, or None when the database does not exist.

        :raises RemoteError: the statement failed
        """
        params = {"q": q, "epoch": "ns"}
        if on_database and self.database is not None:
            params["db"] = self.database
        response = self._request("POST" if post else "GET", self.url + "/query", params=params)
        try:
            results = response.json().get("results") or [{}]
        except (ValueError, AttributeError) as exc:
            raise RemoteError(f"/query answered something that is not JSON: {exc}") from exc
        result: dict[str, Any] = results[0]
        error = result.get("error")
        if error:
            if "database not found" in str(error):
                return None
            raise RemoteError(f"InfluxQL {q!r} failed: {error}", status=response.status_code)
        return result

    def _flux(self, query: str) -> list[dict[str, str]]:
        """Run a Flux query (v2 mode); its rows as dicts of strings."""
        response = self._request(
            "POST",
            self.url + "/api/v2/query",
            params={"org": self.org or ""},
            headers={"Accept": "application/csv", "Content-Type": "application/json"},
            data=json.dumps(
                {
                    "query": query,
                    "type": "flux",
                    "dialect": {"header": True, "annotations": [], "delimiter": ","},
                }
            ),
        )
        rows: list[dict[str, str]] = []
        header: list[str] | None = None
        for record in csv.reader(io.StringIO(response.text)):
            if not any(record):
                header = None  # a blank line ends a table; the next one has its own header
                continue
            if header is None:
                header = record
                continue
            row = dict(zip(header, record, strict=False))
            if "error" in header and row.get("error"):
                raise RemoteError(f"Flux query failed: {row['error']}", status=200)
            rows.append(row)
        return rows

    # ----------------------------------------------------------------------- plumbing

    def _request(
        self, method: str, url: str, *, write: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One HTTP call mapped onto the error tree; the only place errors are mapped.

        ``write``: a failure after the request went out is ambiguous, and a 400 refuses data.
        """
        what = f"{method} {url.removeprefix(self.url)}"
        response = send(
            self._session,
            method,
            url,
            what=what,
            timeout=self.timeout,
            write=write,
            allow_redirects=False,
            **kwargs,
        )
        with response:
            if 200 <= response.status_code < 300:
                return response
            raise self._error(what, response, write=write)

    def _error(self, what: str, response: requests.Response, *, write: bool) -> RemoteError:
        status = response.status_code
        body = short_reason(response.text)  # InfluxDB's {"error"} (1.x), {"message"} (2.x)
        message = f"{what}: {status} {body}".strip()
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientRemoteError(message, status=status, body=body, retry_after=retry_after)
        if status in (401, 403):
            hint = "check username/password or token"
            return AuthError(f"{message} ({hint})", status=status, body=body)
        if status == 404 and _MISSING_TARGET.search(body):
            return _MissingTarget(message, status=status, body=body)
        if write and status in (400, 413):
            return RejectedError(message, status=status, body=body)
        return RemoteError(message, status=status, body=body)


# ----------------------------------------------------------------------------- line protocol


def encode_line(prefix: str, t: float, value: Any) -> str:
    """One line: ``prefix`` (escaped measurement and tags), the fields of ``value``, the time.

    Line protocol escapes commas and spaces in measurements; commas, equals signs and spaces
    in tag keys, tag values and field keys; double quotes and backslashes in string field
    values. A backslash before one of those characters, or at the end, of a name cannot be
    written unambiguously (InfluxDB 1.x reads backslashes there as escapes), nor can a line
    break: such a name is refused.

    :raises _BadPoint: the value has no field left, a field key appears twice or cannot be
        written, a number does not fit a float, or the time is outside InfluxDB's range
    """
    fields: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(str(key), item, fields)
    else:
        _flatten("value", value, fields)
    if not fields:
        raise _BadPoint(
            f"no field to store: the value {_short(value)} holds no non-null scalar "
            "(InfluxDB stores no point without fields)"
        )
    seen: set[str] = set()
    parts = []
    for key, item in fields:
        if key in seen:
            raise _BadPoint(f"the field {key!r} appears twice once nested keys are joined with '.'")
        seen.add(key)
        problem = _name_problem(key)
        if problem:
            raise _BadPoint(f"field key {key!r} {problem}")
        parts.append(f"{_escape(key, _KEY_SPECIALS)}={_field_value(key, item)}")
    ns = seconds_to_ns(t) if math.isfinite(t) else MAX_NS + 1
    if not MIN_NS <= ns <= MAX_NS:
        raise _BadPoint(f"t={t!r} is outside InfluxDB's time range (years 1677 to 2262)")
    return f"{prefix} {','.join(parts)} {ns}"


def _flatten(key: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for sub, item in value.items():
            _flatten(f"{key}.{sub}", item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{key}.{index}", item, out)
    else:
        out.append((key, value))


def _field_value(key: str, value: Any) -> str:
    if isinstance(value, bool):  # before numbers: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise _BadPoint(f"field {key!r}: {value} does not fit a float") from None
        if not math.isfinite(number):
            raise _BadPoint(f"field {key!r}: {value!r} is not a finite number")
        return repr(number)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise _BadPoint(f"field {key!r}: {type(value).__name__} is not a JSON scalar")


def _measurement(stream: str) -> str:
    problem = _name_problem(stream)
    if problem is None and stream.startswith("#"):
        problem = "starts with '#' (a comment line in line protocol)"
    if problem:
        raise ConfigurationError(
            f"stream {stream!r} cannot be an InfluxDB measurement: it {problem}"
        )
    return _escape(stream, _MEASUREMENT_SPECIALS)


def _tag_text(tags: Mapping[str, str]) -> str:
    """``,k=v`` for every tag, sorted by key (InfluxDB's preferred order)."""
    out = []
    for key, value in sorted(tags.items()):
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(f"InfluxDB tags are strings; got {key!r}: {value!r}")
        for what, text in (("key", key), ("value", value)):
            problem = _name_problem(text)
            if problem:
                raise ConfigurationError(f"InfluxDB tag {what} {text!r} {problem}")
        if key == "time":
            raise ConfigurationError("InfluxDB refuses a tag named 'time'")
        out.append(f",{_escape(key, _KEY_SPECIALS)}={_escape(value, _KEY_SPECIALS)}")
    return "".join(out)


def _name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a name in line protocol, or None."""
    if not text:
        return "is empty"
    if "\n" in text or "\r" in text:
        return "holds a line break"
    if text.endswith("\\") or re.search(r"\\[,= ]", text):
        return "holds a backslash at its end or before ',', '=' or ' '"
    return None


def _escape(text: str, specials: str) -> str:
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- queries


def _ident(name: str) -> str:
    """An InfluxQL identifier: double-quoted, backslashes and quotes escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flux_string(text: str) -> str:
    """A Flux string literal (``${`` would start an interpolation)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped + '"'


def seconds_to_ns(t: float) -> int:
    """``t`` seconds as whole nanoseconds: ``round(t * 1e9)`` computed exactly (half to even).

    ``t * 1e9`` in floats moves in steps of 256 ns at today's timestamps, coarser than the
    float ``t`` itself (about 238 ns), so two neighbouring timestamps could land on one
    nanosecond and overwrite each other in InfluxDB. The float's exact ratio cannot.
    """
    if _SECONDS_EXACT_FROM <= t <= _SECONDS_EXACT_TO:
        # Today's timestamps, fast and still exact: t's fraction (t - whole) is exact, and at
        # t >= 2**20 it is a multiple k of t's unit in the last place, 2**-32 or coarser, with
        # k < 2**32; so fraction * 1e9 = k * 5**9 * 2**(9 - 32 or more) needs under 53 bits
        # and the float product is exact too; round() then rounds it half to even.
        whole = int(t)
        return whole * 1_000_000_000 + round((t - whole) * 1e9)
    numerator, denominator = t.as_integer_ratio()
    ns, rest = divmod(numerator * 1_000_000_000, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and ns % 2):
        ns += 1
    return ns


def ns_to_seconds(ns: int) -> float:
    """The largest float ``s`` with ``seconds_to_ns(s) <= ns``.

    Every ``t`` written at or below ``ns`` is at or below ``s``, and every ``t`` written above
    it is above ``s``: comparing floats in seconds gives the same answer as comparing
    InfluxDB's nanoseconds.
    """
    # The boundary between ns and ns + 1 is exactly (ns + 1/2) / 1e9; a tie there rounds to
    # the even one. float() of a Fraction is correctly rounded, so one step down at most.
    boundary = Fraction(2 * ns + 1, 2_000_000_000)
    s = float(boundary)
    if Fraction(s) > boundary or (Fraction(s) == boundary and ns % 2):
        s = math.nextafter(s, -math.inf)
    return s


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fractional digits."""
    found = _RFC3339.fullmatch(text.strip())
    if not found:
        raise RemoteError(f"cannot read the time {text!r}")
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = found.group(8).upper()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((found.group(7) or "").ljust(9, "0"))
