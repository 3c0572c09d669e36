"""InfluxDBRemote: datapoints as InfluxDB line protocol, over a ``requests.Session``.

Two modes, exactly one of which is configured:

- **v1** (InfluxDB 1.x, or 1.x-compatible endpoints): ``database=``;
  ``POST {url}/write?db=<database>&precision=ns``, HTTP Basic auth with ``username``/``password``,
  or ``Authorization: Token <token>`` (InfluxDB 1.8+ and 2.x's compatibility API).
- **v2** (InfluxDB 2.x and Cloud): ``org=`` and ``bucket=`` and ``token=``;
  ``POST {url}/api/v2/write?org=&bucket=&precision=ns`` with ``Authorization: Token <token>``.

How a datapoint becomes a point: :mod:`connectorsync.remotes.line_protocol` (and, for users,
``docs/remotes.rst``).

Tags and field types per stream are settings of the remote (``stream_tags=``,
``integer_streams=``), not of the stream: they must be the same on every send of a datapoint,
in every process that sends it, and the remote's settings are (given by the program that
builds it each time, or recorded by ``to_config()`` for ``connectorsync sync``), whereas a
stream's schema and properties reach a remote once per cache file, when the stream is
created there. InfluxDB's identity of a point is its measurement, tag set and time: a resend
with the same tags overwrites the first send
(``tests/test_influx_tags.py::test_a_resend_after_a_lost_answer_stores_nothing_twice``); a
stream whose tags change while a batch of it waits for an answer stores that batch's resend
as new series, beside the first send. Change a stream's tags (or ``integer_streams``) only
after ``close()`` delivered everything, and at a shard boundary for the field type (InfluxDB
fixes it per measurement and shard).

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

import copy
import csv
import io
import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..errors import ConfigurationError, RejectedError, RemoteError
from ._http import (
    Client,
    Prepared,
    compression_setting,
    header_safe,
    hide_password,
    statuses,
    timeout_setting,
    within_limit,
)
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote
from .line_protocol import (
    MAX_NS,
    MIN_NS,
    encode_batch,
    measurement,
    ns_to_seconds,
    rfc3339_ns,
    tag_text,
)

_MISSING_TARGET = re.compile(
    r"(database|bucket)\b.*\bnot found|not found.*\b(database|bucket)", re.I
)


class _MissingTarget(RemoteError):
    """404: the database (v1) or bucket (v2) does not exist."""


def _not_found(reason: str) -> type[RemoteError]:
    return _MissingTarget if _MISSING_TARGET.search(reason) else RemoteError


_CREDENTIALS = "check username/password or token"
# A write's 400 is a bad line or a partial write (the valid lines stored): the data's fault.
STATUSES = statuses(
    overrides={404: _not_found},
    writes={400: RejectedError, 413: RejectedError},
    hints={401: _CREDENTIALS, 403: _CREDENTIALS},
)


@register_remote
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
    :param stream_tags: tags of one stream's points, by stream name:
        ``{"temperature": {"room": "kitchen"}}``; added to ``tags`` (a key in both takes the
        stream's value). Refused here when a stream name cannot be a measurement or a tag
        cannot be written (the message names the stream and the tag)
    :param integer_streams: streams whose values are written as InfluxDB integers (``21i``),
        meant for streams of schema ``{"type": "integer"}`` (refused at ``add_stream``
        otherwise); every other number is a float. InfluxDB fixes a field's type at its first
        write to a measurement (per shard): name a stream here before its first point is
        written, or at a new measurement, not for one that holds floats already
    :param create_database: v1 mode: create the database (``CREATE DATABASE``, needs an admin
        user) when it is missing, instead of raising
        :class:`~connectorsync.errors.ConfigurationError`
    :param timeout: seconds for connecting and for each read
    :param verify: TLS verification: True, False, or a CA bundle path
    :param compression: ``"gzip"`` (the default: InfluxDB 1.x and 2.x take
        ``Content-Encoding: gzip`` on writes; line protocol shrinks some 5-12x) or None
        (``"none"``) for plain bodies. The 8 MiB body limit counts the body before compression.
    :raises ConfigurationError: neither or both modes, a missing part of one, bad tags, an
        unknown compression
    """

    delivery_kind = DeliveryKind.IDEMPOTENT
    kind: ClassVar[str] = "influxdb"

    def __init__(  # noqa: PLR0913 - a server's settings, keyword-only past the database
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
        stream_tags: Mapping[str, Mapping[str, str]] | None = None,
        integer_streams: Sequence[str] = (),
        create_database: bool = False,
        timeout: float = 30.0,
        verify: bool | str = True,
        compression: str | None = "gzip",
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
        # Each contradiction in the settings, and what to do about it; the first found is said.
        problems = (
            (
                database is not None and v2,
                "give either database= (InfluxDB 1.x) or org= and bucket= (InfluxDB 2.x), not both",
            ),
            (
                database is None and not v2,
                "needs database= (InfluxDB 1.x) or org= and bucket= (InfluxDB 2.x)",
            ),
            (
                v2 and not (org and bucket and token),
                "in InfluxDB 2.x mode needs org=, bucket= and token=",
            ),
            (database is not None and not database, "database= must not be empty"),
            (
                v2 and (username is not None or password is not None),
                "InfluxDB 2.x authenticates with token=, not username/password",
            ),
            (password is not None and username is None, "password= needs username="),
            (
                username is not None and token is not None,
                "give username/password or token, not both",
            ),
            (
                create_database and v2,
                "create_database= works with database= (1.x); create 2.x buckets yourself",
            ),
        )
        for wrong, message in problems:
            if wrong:
                raise ConfigurationError(f"InfluxDBRemote: {message}")
        timeout = timeout_setting("InfluxDBRemote", timeout)
        for what, secret in (("token", token), ("username", username), ("password", password)):
            header_safe("InfluxDBRemote", what, secret)
        self.compression = compression_setting("InfluxDBRemote", compression)
        # What to_config() gives: the arguments as given (credentials too, for the cache file).
        self._config: dict[str, Any] = {"kind": self.kind, "url": url, "database": database}
        self._config.update(org=org, bucket=bucket, token=token, username=username)
        self._config.update(password=password, tags=dict(tags or {}))
        self._config.update(create_database=create_database, timeout=timeout, verify=verify)
        self._config.update(compression=self.compression)
        self.tags = dict(tags or {})
        self._tag_text = tag_text(self.tags)
        # Per stream: its tags (the remote's with the stream's over them), escaped, and which
        # streams are integers; both checked whole here, so a bad one never reaches a push.
        self._stream_tags = _stream_tags(stream_tags, self.tags)
        self._stream_tag_text = {
            stream: tag_text(every, f"InfluxDBRemote stream_tags: stream {stream!r}")
            for stream, every in self._stream_tags.items()
        }
        self.integer_streams = _integer_streams(integer_streams)
        if stream_tags:
            self._config["stream_tags"] = {s: dict(t) for s, t in stream_tags.items()}
        if self.integer_streams:
            self._config["integer_streams"] = sorted(self.integer_streams)
        self.url = url.rstrip("/")
        self.database = database
        self.org = org
        self.bucket = bucket
        self.create_database = create_database
        self.timeout = float(timeout)
        self._http = Client(STATUSES, timeout=self.timeout, verify=verify, base=self.url)
        if username is not None:
            self._http.session.auth = (username, password or "")
        elif token is not None:
            self._http.session.headers["Authorization"] = f"Token {token}"
        self._bodies = Prepared(self._checked_body, self.compression)
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

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:meth:`from_config`):
        ``{"kind": "influxdb", ...}`` with the constructor's arguments, the token and password
        too. Secrets: the Logger keeps them only in the (owner-only) cache file."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> InfluxDBRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`)."""
        kind, arguments = config_arguments(cls, config)
        return build_from_config(kind, cls, arguments)

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
        response = self._http.request("GET", self.url + "/ping")
        version = response.headers.get("X-Influxdb-Version", "unknown version")
        if self._credentials and self.database is not None:
            self._influxql("SHOW DATABASES", on_database=False)
        return f"influxdb {version}/{self.target}"

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Measurements need no creation; with ``create_database`` the database is created
        (once per remote object; ``CREATE DATABASE`` is harmless when it exists). Returns
        None: InfluxDB keeps no schema. ``properties`` are accepted and ignored: a
        measurement has none of ConnectorDB's stream properties.

        :raises ConfigurationError: ``stream`` cannot be a measurement name, or is one of
            ``integer_streams`` with a schema other than ``{"type": "integer"}``
        """
        measurement(stream)
        if stream in self.integer_streams and schema.get("type") != "integer":
            raise ConfigurationError(
                f"stream {stream!r} is one of InfluxDBRemote's integer_streams, so its schema "
                f'must be {{"type": "integer"}}; got {json.dumps(schema)}'
            )
        if self.create_database and not self._database_ready:
            self._create_database()
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}`` when the measurement holds a point (with our tags), else None: InfluxDB keeps
        no JSON schema."""
        return {} if self.reconcile(stream) is not None else None

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` ahead of :meth:`push` (see :class:`._http.Prepared`)."""
        self._bodies.prepare(stream, batch)

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        if not batch:
            return
        data = self._bodies.body(stream, batch)
        for attempt in (1, 2):
            try:
                self._http.send(
                    "POST",
                    self._write_url,
                    data,
                    encoding=self._bodies.encoding,
                    params=self._write_params,
                )
                return
            except _MissingTarget as exc:
                if not self.create_database or attempt == 2:
                    hint = (
                        "create the bucket"
                        if self.database is None
                        else "create the database, or pass create_database=True"
                    )
                    # A RemoteError, as at sync time every remote raises only those: the
                    # database can be created while the data waits in the cache.
                    raise RemoteError(f"{exc} ({hint})", status=exc.status, body=exc.body) from exc
                self._create_database()

    def reconcile(self, stream: str) -> float | None:
        """The newest timestamp stored in the measurement, among points with our ``tags``
        (another writer's points do not count), as seconds; None when there is none (or no
        database).

        It is the largest float ``s`` whose nanoseconds
        (:func:`~connectorsync.remotes.line_protocol.seconds_to_ns`) are at or below the stored
        ones, so each cached ``t`` that was written is at or below it, and each that was not is
        above it.
        """
        measurement(stream)  # refuse a name no point could have
        newest = self._newest_ns(stream)
        return None if newest is None else ns_to_seconds(newest)

    def bytes_sent(self) -> int:
        """Bytes of request bodies sent, as on the wire (:class:`.base.Metered`)."""
        return self._http.bytes_sent

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------------- encoding

    def _checked_body(self, stream: str, batch: Sequence[Datapoint]) -> bytes:
        return within_limit(stream, batch, self.encode(stream, batch).encode())

    def encode(self, stream: str, batch: Sequence[Datapoint]) -> str:
        """The line-protocol body for ``batch``, one line per datapoint
        (:func:`.line_protocol.encode_batch` with the stream's tags and field type).

        :raises RejectedError: a datapoint cannot be a point (the message says which and why)
        :raises ConfigurationError: ``stream`` cannot be a measurement name
        """
        tags = self._stream_tag_text.get(stream, self._tag_text)
        return encode_batch(stream, tags, batch, integers=stream in self.integer_streams)

    def tags_of(self, stream: str) -> dict[str, str]:
        """The tags ``stream``'s points carry: ``tags`` with its ``stream_tags`` over them."""
        return dict(self._stream_tags.get(stream, self.tags))

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
                f"{_ident(k)} = {_literal(v)}" for k, v in sorted(self.tags_of(stream).items())
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
            f"r[{_flux_string(k)}] == {_flux_string(v)}"
            for k, v in sorted(self.tags_of(stream).items())
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
        response = self._http.request("POST" if post else "GET", self.url + "/query", params=params)
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
        response = self._http.request(
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


# ----------------------------------------------------------------------------- settings


def _stream_tags(
    stream_tags: Mapping[str, Mapping[str, str]] | None, tags: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Each stream's whole tag set: ``tags`` with the stream's own over them.

    :raises ConfigurationError: not a dict of stream names to dicts, or a stream name that
        cannot be a measurement
    """
    if stream_tags is None:
        return {}
    if not isinstance(stream_tags, Mapping):
        raise ConfigurationError(
            "InfluxDBRemote stream_tags must be a dict of stream name to a dict of tags, "
            f'e.g. {{"temperature": {{"room": "kitchen"}}}}; got {type(stream_tags).__name__}'
        )
    out = {}
    for stream, own in stream_tags.items():
        if not isinstance(stream, str):
            raise ConfigurationError(
                f"InfluxDBRemote stream_tags: a stream name is a str; got {stream!r}"
            )
        measurement(stream)
        if not isinstance(own, Mapping):
            raise ConfigurationError(
                f"InfluxDBRemote stream_tags: stream {stream!r} needs a dict of tags "
                f'(e.g. {{"room": "kitchen"}}); got {own!r}'
            )
        out[stream] = {**tags, **own}
    return out


def _integer_streams(streams: Sequence[str]) -> frozenset[str]:
    """:raises ConfigurationError: not a list of stream names that can be measurements"""
    if isinstance(streams, str) or not isinstance(streams, Sequence | set | frozenset):
        raise ConfigurationError(
            "InfluxDBRemote integer_streams must be a list of stream names, "
            f'e.g. ["count"]; got {streams!r}'
        )
    for stream in streams:
        if not isinstance(stream, str):
            raise ConfigurationError(
                f"InfluxDBRemote integer_streams: a stream name is a str; got {stream!r}"
            )
        measurement(stream)
    return frozenset(streams)


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
