"""PostgresRemote: store datapoints in a PostgreSQL (or TimescaleDB) table, exactly once.

Each datapoint is a row ``(device, stream, t, id, value)`` of one table (``table=``, created
when missing, see :mod:`._postgres_sql`) with a unique key on ``(device, stream, t, id)``
(``id``: the datapoint's id in its cache file, which keeps apart two datapoints of a stream
within one microsecond, the resolution of ``timestamptz``). A batch goes in one transaction:
``COPY`` into a temporary table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. A
batch sent again (after a lost answer) stores nothing twice, so the delivery kind is
**idempotent**: a push whose answer is lost is sent again whole and stored once
(``tests/test_postgres.py::test_a_lost_commit_answer_stores_nothing_twice``,
``test_a_server_restart_in_the_middle_of_a_sync_loses_and_duplicates_nothing``,
``test_two_datapoints_within_one_microsecond_are_both_stored``).

``device`` is who the rows belong to: given, or the identity of the Logger's cache file
(32 hex characters, different for every cache file), which the Logger hands over through
``bind_cache`` before the first push. A remote used by hand without a Logger needs
``device=`` (:class:`~connectorsync.errors.ConfigurationError` at the first push without).

With ``typed=True`` the table has a ``number double precision`` column too: a number value
goes there as well (queries and indexes on it need no jsonb cast), anything else leaves it
NULL. When the TimescaleDB extension is installed in the database, a table this remote
creates becomes a hypertable partitioned by ``t`` (``hypertable=False`` to keep a plain
table); :attr:`PostgresRemote.hypertable` says which it is.

Errors (one map, :mod:`._postgres_errors`): refused credentials or missing privileges raise
:class:`~connectorsync.errors.AuthError` (syncing pauses, the data stays); a missing
database, :class:`~connectorsync.errors.RemoteError` saying so; a server that cannot be
reached, is shutting down or starting, or a connection lost before ``COMMIT``,
:class:`~connectorsync.errors.TransientRemoteError` (nothing stored); a connection lost after
``COMMIT`` was sent, :class:`~connectorsync.errors.AmbiguousRemoteError`; a value the server
refuses (a string jsonb cannot hold, ``\\u0000``; a number beyond double precision in a typed
table), :class:`~connectorsync.errors.RejectedError`: nothing of the batch is stored, the
pass bisects it and dead-letters exactly the refused datapoints
(``test_postgres.py::test_a_refused_value_is_a_dead_letter_and_the_rest_is_stored``).

The password is never shown: not in the repr, an error or a log line (libpq's and psycopg's
messages are scrubbed). Every call ends: ``connect_timeout`` and ``statement_timeout`` are
``timeout``, and a watchdog cuts the connection of a push, ping or reconcile that has not
ended within three times ``timeout`` (a server that went silent). :meth:`close` from another
thread ends a push under way at once.

psycopg 3 (the ``postgres`` extra: ``pip install 'connectorsync[postgres]'``) is needed to
build the remote (:class:`~connectorsync.errors.ConfigurationError` without it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from ..errors import (
    ArgumentTypeError,
    ClosedError,
    ConfigurationError,
    RemoteError,
    TransientRemoteError,
)
from . import _postgres_sql as statements
from ._http import timeout_setting
from ._postgres_errors import describe_dsn, map_error, scrub
from .base import Datapoint, DeliveryKind, build_from_config, config_arguments, register_remote

log = logging.getLogger(__name__)

_IDENTITY_MAX = 200  # characters of a device name


def load_psycopg() -> Any:
    """The ``psycopg`` module.

    :raises ConfigurationError: psycopg 3 is not installed (or cannot be imported)
    """
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigurationError(
            "PostgresRemote needs psycopg 3, which cannot be imported here "
            f"({type(exc).__name__}: {exc}): pip install 'connectorsync[postgres]'"
        ) from None
    return psycopg


@register_remote
class PostgresRemote:
    """A PostgreSQL table: one row per datapoint, stored exactly once.

    :param dsn: a libpq connection string: ``postgresql://user[:password]@host[:port]/db``
        or ``"host=... dbname=... user=..."``; its password is never shown
    :param table: the table (``name`` or ``schema.name``); created when missing
    :param device: the ``device`` of the rows; default the identity of the Logger's cache
        file (given by the Logger through :meth:`bind_cache`)
    :param password: the password, when it is not in ``dsn``; never shown
    :param typed: a ``number double precision`` column that holds each number value too
    :param hypertable: make a table this remote creates a TimescaleDB hypertable when the
        extension is installed in the database
    :param timeout: seconds for connecting and for each statement (a push ends within three
        times this)
    :raises ConfigurationError: a bad argument (named; a dsn's text is never quoted), or
        psycopg is not installed
    """

    delivery_kind = DeliveryKind.IDEMPOTENT
    kind: ClassVar[str] = "postgres"

    def __init__(  # noqa: PLR0913 - a database's settings, keyword-only past the table
        self,
        dsn: str,
        table: str = "datapoints",
        *,
        device: str | None = None,
        password: str | None = None,
        typed: bool = False,
        hypertable: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._psycopg = load_psycopg()
        if not isinstance(dsn, str):
            raise ArgumentTypeError(
                f"PostgresRemote(): dsn must be a str (a libpq connection string); "
                f"got {type(dsn).__name__}"
            )
        if password is not None and not isinstance(password, str):
            raise ArgumentTypeError(
                f"PostgresRemote(): password must be a str or None; got {type(password).__name__}"
            )
        try:
            params = self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.Error as exc:
            secret = password or _password_in(dsn)
            raise ConfigurationError(
                f"PostgresRemote dsn is not a libpq connection string: "
                f"{scrub(str(exc).strip(), secret)}"
            ) from None
        if not isinstance(table, str):
            raise ArgumentTypeError(
                f"PostgresRemote(): table must be a str; got {type(table).__name__}"
            )
        if not statements.valid_table(table):
            raise ConfigurationError(
                "PostgresRemote table must be a name or schema.name (letters, digits and _, "
                f"not starting with a digit); got {table!r}"
            )
        _check_device(device)
        for name, value in (("typed", typed), ("hypertable", hypertable)):
            if not isinstance(value, bool):
                raise ArgumentTypeError(
                    f"PostgresRemote(): {name} must be True or False; got {value!r}"
                )
        self.timeout = timeout_setting("PostgresRemote", timeout)
        if password is not None:
            params["password"] = password
        self._password: str | None = params.get("password")
        self._params = params
        self.table, self.typed, self.device = table, typed, device
        self.where = describe_dsn(params)
        #: Whether the table is a TimescaleDB hypertable: None until the first connection.
        self.hypertable: bool | None = None
        self._hypertable_wanted = hypertable
        self._config: dict[str, Any] = {"kind": self.kind, "dsn": dsn, "table": table}
        self._config.update(device=device, password=password, typed=typed)
        self._config.update(hypertable=hypertable, timeout=timeout)
        self._lock = threading.Lock()  # held by a call on the connection; close() does not wait
        self._conn: Any = None
        self._table_ready = False
        self._bound: str | None = None  # the cache identity given by bind_cache
        self._closed = False
        self._sent = 0
        self._sent_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresRemote({self.where!r}, table={self.table!r})"

    # ----------------------------------------------------------------------- as data

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again (:meth:`from_config`): ``{"kind": "postgres",
        ...}`` with the constructor's arguments, the dsn and password too (the Logger keeps
        them only in the owner-only cache file). A device bound by the Logger is not in it:
        the Logger binds it again."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PostgresRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`)."""
        kind, arguments = config_arguments(cls, config)
        return build_from_config(kind, cls, arguments)

    def bind_cache(self, identity: str) -> None:
        """The Logger's cache identity: the ``device`` of the rows, unless ``device=`` was
        given. Binding the same identity again does nothing.

        :raises ConfigurationError: bound to another cache already (one remote object
            serves one cache file: make another for another Logger)
        """
        _check_device(identity)
        if self._bound is not None and self._bound != identity:
            raise ConfigurationError(
                f"{self!r} delivers the datapoints of another cache file already; give each "
                "Logger a PostgresRemote of its own"
            )
        self._bound = identity
        if self._config["device"] is None:
            self.device = identity

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """Connect (if not connected; the table is created when missing) and return
        ``user/database`` as the server sees them."""
        with self._session(f"PostgreSQL {self.where}") as conn:
            row = conn.execute("SELECT current_user, current_database()").fetchone()
            conn.rollback()  # read only: nothing to commit
        return f"{row[0]}/{row[1]}"

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Nothing to create: every stream shares the table. Returns None."""
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}``: the table takes any JSON value and keeps no schema."""
        return {}

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Store ``batch`` in one transaction; rows the table holds already (a batch sent
        again) are left as they are. An empty batch returns at once.

        :raises ConfigurationError: no device (neither ``device=`` nor a Logger's cache)
        :raises RejectedError: the server refused a value; nothing of the batch was stored
        :raises TransientRemoteError: nothing was stored (the server is down, restarting, or
            the connection dropped before ``COMMIT``)
        :raises AmbiguousRemoteError: the connection dropped after ``COMMIT`` was sent
        :raises AuthError: the credentials or the privileges were refused
        """
        if not batch:
            return
        device = self._device()
        payload = statements.copy_payload(batch)
        sql = self._psycopg.sql
        insert = statements.insert_staged(sql, self.table, typed=self.typed)
        where = f"PostgreSQL {self.where}, table {self.table}, stream {stream!r}"
        # A connection kept from an earlier call may have died meanwhile (a server restart):
        # when it fails before the COPY was taken, it is tried once more on a new one.
        for attempt in range(2):
            committing = copying_started = False
            with self._session(where) as conn:
                fresh = conn is not self._reused
                try:
                    with conn.cursor() as cur:
                        with cur.copy(statements.copy_staging(sql)) as copying:
                            copying_started = True
                            self._count(len(payload))
                            copying.write(payload)
                        cur.execute(insert, (device, stream))
                    committing = True
                    conn.commit()
                    return
                except self._psycopg.Error as exc:
                    self._settle(conn)
                    error = map_error(
                        exc, where=where, secret=self._password, committing=committing
                    )
                    stale = not (fresh or attempt or copying_started or self._closed)
                    if not (stale and _is_lost(error)):
                        raise error from None
                    log.debug("%s; connecting again", error)
        raise AssertionError("unreachable")  # pragma: no cover

    def reconcile(self, stream: str) -> float | None:
        """The newest ``t`` of ``stream`` (this device's) in the table, or None (read-only)."""
        device = self._device()
        sql = self._psycopg.sql
        where = f"PostgreSQL {self.where}, table {self.table}, stream {stream!r}"
        with self._session(where) as conn:
            row = conn.execute(statements.newest(sql, self.table), (device, stream)).fetchone()
            conn.rollback()  # read only: nothing to commit
        return None if row[0] is None else float(row[0])

    def bytes_sent(self) -> int:
        """Bytes of COPY payload sent so far (an approximation of the wire: the statements
        and the protocol's framing, a few dozen bytes a batch, are not counted)."""
        with self._sent_lock:
            return self._sent

    def close(self) -> None:
        """Disconnect, for good: ``push``, ``ping`` and ``reconcile`` raise
        :class:`ClosedError` afterwards. Safe to call twice, and from another thread during
        a push, which then ends at once (with a transient or ambiguous error)."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()
            return
        _cut(self._conn)  # the push under way fails at once; it drops the connection

    # ----------------------------------------------------------------------- plumbing

    _reused: Any = None  # the connection an earlier call left open, during a call

    @contextlib.contextmanager
    def _session(self, where: str) -> Iterator[Any]:
        """The connection (made, with the table, when there is none), under the lock and a
        watchdog; a psycopg error escaping the body is mapped, the connection dropped."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"{where}: this remote was closed; nothing sent")
            self._reused = self._conn
            if self._conn is None:
                self._conn = self._connect(where)
                if self._closed:  # close() came while connecting: it could not cut it
                    self._drop()
                    raise TransientRemoteError(
                        f"{where}: close() ended the connecting; nothing sent"
                    )
            conn = self._conn
            timer = threading.Timer(3 * self.timeout, _cut, (conn,))
            timer.daemon = True
            timer.start()
            try:
                yield conn
            except self._psycopg.Error as exc:
                self._settle(conn)
                raise map_error(exc, where=where, secret=self._password) from None
            finally:
                timer.cancel()
                self._reused = None

    def _connect(self, where: str) -> Any:
        psycopg = self._psycopg
        params = dict(self._params)
        milliseconds = int(self.timeout * 1000)
        options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
        params["options"] = f"{params.get('options', '')} {options}".strip()
        params.setdefault("connect_timeout", str(max(2, math.ceil(self.timeout))))
        params.setdefault("application_name", "connectorsync")
        # A peer that vanished is noticed by TCP itself within the timeout.
        params.setdefault("tcp_user_timeout", str(milliseconds))
        params.setdefault("keepalives_idle", str(max(1, math.ceil(self.timeout / 3))))
        params.setdefault("keepalives_interval", str(max(1, math.ceil(self.timeout / 9))))
        params.setdefault("keepalives_count", "3")
        try:
            conn = psycopg.connect(**params)
        except psycopg.Error as exc:
            raise map_error(exc, where=where, secret=self._password) from None
        try:
            self._prepare(conn)
        except psycopg.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise map_error(exc, where=where, secret=self._password) from None
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        log.debug("connected to PostgreSQL %s", self.where)
        return conn

    def _prepare(self, conn: Any) -> None:
        """The table (once per remote object) and this connection's staging table."""
        sql = self._psycopg.sql
        if not self._table_ready:
            try:
                for statement in statements.create_table(sql, self.table, typed=self.typed):
                    conn.execute(statement)
                conn.commit()
            except self._psycopg.errors.UniqueViolation:
                conn.rollback()  # another device created it at the same moment
            self.hypertable = self._hypertable(conn)
            self._table_ready = True
        conn.execute(statements.create_staging(sql))
        conn.commit()

    def _hypertable(self, conn: Any) -> bool:
        """Make the table a hypertable when TimescaleDB is installed (and wanted)."""
        installed = conn.execute(statements.TIMESCALEDB_INSTALLED).fetchone() is not None
        conn.commit()
        if not installed:
            log.debug("TimescaleDB is not installed in %s: a plain table", self.where)
            return False
        if not self._hypertable_wanted:
            return False
        conn.execute(statements.make_hypertable(self._psycopg.sql, self.table))
        conn.commit()
        return True

    def _device(self) -> str:
        if self.device is None:
            raise ConfigurationError(
                f"{self!r} has no device: give device= when using it without a Logger "
                "(a Logger gives the identity of its cache file)"
            )
        return self.device

    def _count(self, n: int) -> None:
        with self._sent_lock:
            self._sent += n

    def _settle(self, conn: Any) -> None:
        """After an error: a connection the server answered on is rolled back and kept (a
        refused batch is bisected on it); a broken one is dropped."""
        if conn.broken or conn.closed or self._closed:
            self._drop()
            return
        try:
            conn.rollback()
        except self._psycopg.Error:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _is_lost(error: RemoteError) -> bool:
    return isinstance(error, TransientRemoteError)


def _cut(conn: Any) -> None:
    """Shut ``conn``'s socket from any thread: whatever waits on it fails at once."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        dup = socket.socket(fileno=os.dup(conn.fileno()))
        with contextlib.suppress(OSError):
            dup.shutdown(socket.SHUT_RDWR)
        dup.close()


def _check_device(device: object) -> None:
    if device is not None and not isinstance(device, str):
        raise ArgumentTypeError(
            f"PostgresRemote: device must be a str or None; got {type(device).__name__}"
        )
    if device is not None and not (
        isinstance(device, str) and 0 < len(device) <= _IDENTITY_MAX and device.isprintable()
    ):
        raise ConfigurationError(
            f"PostgresRemote device must be None or a name of 1..{_IDENTITY_MAX} printable "
            f"characters; got {device!r}"
        )


def _password_in(dsn: str) -> str | None:
    """The password of a ``postgresql://user:password@`` URL or a ``password=`` pair, for
    scrubbing a message that quotes the dsn."""
    if "://" in dsn and "@" in dsn:
        credentials = dsn.split("://", 1)[1].rsplit("@", 1)[0]
        if ":" in credentials:
            return credentials.split(":", 1)[1]
    for part in dsn.split():
        if part.startswith("password="):
            return part[len("password=") :].strip("'")
    return None
