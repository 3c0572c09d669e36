"""A real PostgreSQL (Debian's ``postgresql``) in a temporary directory, and a fault proxy.

:class:`PostgresServer` runs ``initdb`` into a directory of its own (made with
:func:`tempfile.mkdtemp` unless given), then ``postgres`` on ``127.0.0.1:<port>`` only, its
unix socket inside that directory, with password (SCRAM) authentication over TCP for a test
role that owns a test database. When the caller is root (PostgreSQL refuses to run as root),
the server runs as the ``postgres`` system user, who is given the directory (pytest's
``tmp_path`` lies under a root-only directory postgres cannot enter: hence ``mkdtemp``).

:meth:`PostgresServer.stop` is a fast shutdown by pid (SIGINT: clients are disconnected, data
written), then SIGQUIT and SIGKILL after its timeout, and reaps the server;
:meth:`~PostgresServer.kill` is a crash (SIGQUIT: no checkpoint, recovery at the next
start); :meth:`~PostgresServer.restart` keeps the port and the data. It never touches the
system's own clusters.

:class:`PostgresFaultProxy` sits between a client and the server and, armed, lets the next
``COMMIT`` reach the server and cuts the connection instead of relaying its answer: the
transaction is committed and the client never hears of it (a lost acknowledgement).

Needs psycopg 3 (the ``postgres`` extra) for its administration and its counting helpers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._process import ChildProcess, free_port
from ._proxy import AnswerLosingProxy, shut

__all__ = [
    "PostgresFaultProxy",
    "PostgresServer",
    "PostgresStartError",
    "find_postgres",
]

#: The test role and database every server has.
USER = "connectorsync"
DATABASE = "connectorsync"
_RUN_AS = "postgres"  # the system user that runs the server when we are root


class PostgresStartError(RuntimeError):
    """initdb or postgres failed, or the server was not ready in time; the message ends with
    its log."""


def find_postgres() -> str | None:
    """The directory holding ``initdb`` and ``postgres`` (on PATH, else Debian's
    ``/usr/lib/postgresql/<newest>/bin``), or None."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        where = os.path.dirname(os.path.realpath(initdb))
        if os.access(os.path.join(where, "postgres"), os.X_OK):
            return where
    for where in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if all(os.access(os.path.join(where, b), os.X_OK) for b in ("initdb", "postgres")):
            return where
    return None


def _version(path: str) -> int:
    number = path.split("/")[-2]
    return int(number) if number.isdigit() else 0


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the test extra has it
        raise PostgresStartError(
            "psycopg is not installed: pip install 'connectorsync[postgres]'"
        ) from exc
    return psycopg


class PostgresServer(ChildProcess):
    """A PostgreSQL server of its own on 127.0.0.1, keeping its files under ``tmpdir``.

    :param tmpdir: where the cluster lives; default a new directory from
        :func:`tempfile.mkdtemp`, removed by :meth:`cleanup` (a given one is left alone).
        When run as root, the ``postgres`` user must be able to enter it: it is given to them.
    :param port: the port; 0 (the default) picks a free one at the first start, kept after
    :param password: the test role's password (:data:`USER`, owner of :data:`DATABASE`)
    :param settings: more ``postgres -c name=value`` settings
    """

    _noun = "server"
    _program = "postgres"

    def __init__(
        self,
        tmpdir: str | os.PathLike[str] | None = None,
        port: int = 0,
        *,
        password: str = "connectorsync-test-pw",
        settings: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._own_dir = tmpdir is None
        self.dir = (
            tempfile.mkdtemp(prefix="connectorsync-pg-") if tmpdir is None else os.fspath(tmpdir)
        )
        self.user, self.database, self.password = USER, DATABASE, password
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._port = port
        self._proc = None
        self._data = os.path.join(self.dir, "data")
        self._log_file = os.path.join(self.dir, "postgres.log")
        self._runs_as = _RUN_AS if os.geteuid() == 0 else None

    # ----------------------------------------------------------------------- addresses

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        port: int | None = None,
    ) -> str:
        """A ``postgresql://`` URL of the test role (or ``user``) on 127.0.0.1 (or ``port``,
        a proxy's)."""
        if self._port == 0:
            raise RuntimeError("the server has not been started yet")
        who = user or self.user
        secret = self.password if password is None else password
        return (
            f"postgresql://{who}:{secret}@127.0.0.1:{port or self._port}/"
            f"{database or self.database}"
        )

    @property
    def url(self) -> str:
        """The test role's ``postgresql://`` URL, password included."""
        return self.dsn()

    # ----------------------------------------------------------------------- life

    def start(self) -> PostgresServer:
        """Make the cluster (first start), start ``postgres`` and wait until it takes
        connections; a no-op if it runs. Returns self.

        :raises PostgresStartError: no PostgreSQL, initdb failed, it exited, or it was not
            ready in time
        """
        if self.running:
            return self
        where = find_postgres()
        if where is None:
            raise PostgresStartError("PostgreSQL not found: `apt-get install postgresql`")
        os.makedirs(self.dir, exist_ok=True)
        self._give(self.dir)
        fresh = not os.path.exists(os.path.join(self._data, "PG_VERSION"))
        if fresh:
            self._initdb(where)
        chosen = self._port == 0
        for attempt in range(3):
            if self._port == 0:
                self._port = free_port()
            try:
                self._launch(where)
                break
            except PostgresStartError as exc:
                if not (chosen and "already in use" in str(exc) and attempt < 2):
                    raise
                self._port = 0
        if fresh:
            self._create_role()
        return self

    def _give(self, path: str) -> None:
        if self._runs_as is not None:
            entry = pwd.getpwnam(self._runs_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(path, 0o700)

    def _initdb(self, where: str) -> None:
        argv = [
            os.path.join(where, "initdb"),
            "-D",
            self._data,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",  # administration through the socket in our own directory
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]
        with open(self._log_file, "ab") as log:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                user=self._runs_as,
                group=self._runs_as,
                check=False,
                timeout=self.start_timeout,
            )
        if done.returncode != 0:
            raise PostgresStartError(f"initdb exited with {done.returncode}:\n{self._log_tail()}")

    def _launch(self, where: str) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": self.dir,
            "fsync": "off",  # a test cluster: speed over surviving a power cut
            "full_page_writes": "off",
            "max_connections": "300",
            "logging_collector": "off",
            **self.settings,
        }
        argv = [os.path.join(where, "postgres"), "-D", self._data]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self._spawn_as(argv)

    def _spawn_as(self, argv: Sequence[str]) -> None:
        """:meth:`ChildProcess._spawn`, as the user that may run the server."""
        with open(self._log_file, "ab") as log:
            # In the caller's process group, so a Ctrl-C or a kill of the group ends it too.
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                user=self._runs_as,
                group=self._runs_as,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise PostgresStartError(f"postgres exited with {code}:\n{self._log_tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresStartError(
                    f"postgres was not ready within {self.start_timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with self.admin(connect_timeout=2):
                return True
        except Exception:  # any failure means "not yet"
            return False

    def _create_role(self) -> None:
        psycopg = _psycopg()
        sql = psycopg.sql
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)
                )
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown by pid (SIGINT: sessions are ended, data is written), SIGQUIT then
        SIGKILL after ``timeout`` seconds, and reap it. Idempotent."""
        self._signal(signal.SIGINT, timeout)

    def kill(self) -> None:
        """A crash: immediate shutdown (SIGQUIT: no checkpoint; the next start recovers from
        the write-ahead log). Idempotent."""
        self._signal(signal.SIGQUIT, 10.0)

    def _signal(self, first: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig in (first, signal.SIGQUIT, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()

    def cleanup(self) -> None:
        """Stop, and remove the directory if this server made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------------- looking

    def admin(self, *, database: str = "postgres", connect_timeout: int = 10) -> Any:
        """A psycopg connection (autocommit) of the superuser through the unix socket."""
        psycopg = _psycopg()
        return psycopg.connect(
            host=self.dir,
            port=self._port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=connect_timeout,
        )

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of ``statement`` run by the superuser in the test database."""
        with self.admin(database=self.database) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def rows(self, table: str = "datapoints") -> list[tuple[str, str, float, Any]]:
        """Every row of ``table`` as ``(device, stream, t in seconds, value)``, by device,
        stream, time and cache id; none when there is no such table."""
        sql = _psycopg().sql
        statement = sql.SQL(
            "SELECT device, stream, extract(epoch FROM t)::float8, value FROM {} "
            "ORDER BY device, stream, t, id"
        ).format(sql.Identifier(*table.split(".")))
        with self.admin(database=self.database) as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                return []
            return [tuple(row) for row in conn.execute(statement).fetchall()]

    def count(self, table: str = "datapoints", stream: str | None = None) -> int:
        """How many rows ``table`` holds (of ``stream``); 0 when there is no such table."""
        sql = _psycopg().sql
        where = sql.SQL(" WHERE stream = %s") if stream is not None else sql.SQL("")
        statement = sql.SQL("SELECT count(*) FROM {}{}").format(
            sql.Identifier(*table.split(".")), where
        )
        with self.admin(database=self.database) as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                return 0
            return int(conn.execute(statement, () if stream is None else (stream,)).fetchone()[0])

    def duplicates(self, table: str = "datapoints") -> int:
        """Rows beyond the first of each (device, stream, id): 0 when no datapoint of a cache
        was stored twice."""
        sql = _psycopg().sql
        statement = sql.SQL(
            "SELECT count(*) - count(DISTINCT (device, stream, id)) FROM {}"
        ).format(sql.Identifier(*table.split(".")))
        with self.admin(database=self.database) as conn:
            return int(conn.execute(statement).fetchone()[0])

    def sessions(self) -> int:
        """Client sessions open in the test database right now (ours excluded)."""
        rows = self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,),
        )
        return int(rows[0][0])


class PostgresFaultProxy(AnswerLosingProxy):
    """A loopback TCP proxy to ``127.0.0.1:port``. Armed (:meth:`lose_next_answers`), it lets
    the next ``COMMIT`` of a transaction that ran a ``COPY`` (a batch: not the commit that
    makes a table) through to the server and, when the server answers (committed by then),
    cuts the client's connection instead of relaying the answer. :meth:`cut_all` cuts every
    connection now (a network failure); :meth:`delay` holds back what clients send."""

    def __init__(self, port: int) -> None:
        self._delay = 0.0
        #: Answers to a COMMIT the proxy cut so far.
        self.commits_cut = 0
        #: COPY statements (batches) clients sent through the proxy so far.
        self.copies = 0
        super().__init__(port, scheme="postgresql")

    def delay(self, seconds: float) -> None:
        """Hold back each message a client sends ``seconds`` (0: relay at once)."""
        self._delay = seconds

    def clear(self) -> None:
        """No lost answer armed, no delay."""
        self._disarm()
        self._delay = 0.0

    def cut_all(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        shut(*sockets)

    def _pump(
        self, src: socket.socket, dst: socket.socket, drop: threading.Event, from_client: bool
    ) -> None:
        copied = False  # this connection's transaction ran a COPY
        try:
            while data := src.recv(1 << 16):
                if from_client:
                    if self._delay:
                        time.sleep(self._delay)
                    if b"COPY " in data:
                        copied = True
                        with self._lock:
                            self.copies += 1
                    if b"COMMIT" in data:
                        if copied and self.take_armed():
                            drop.set()
                        copied = False
                elif drop.is_set():
                    with self._lock:
                        self.commits_cut += 1
                    break  # the server answered the COMMIT: committed, the client never knows
                dst.sendall(data)
        except OSError:
            pass
        finally:
            shut(src, dst)
