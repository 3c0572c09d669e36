"""A ConnectorDB-v0.3-compatible server running in-process, for tests, benchmarks and demos.

:class:`ConnectorDBServer` serves the REST API that the ``connectordb`` 0.3.5
client speaks (see ``_api``), storing everything in SQLite (see ``_store``).

Guarantees:

* It binds 127.0.0.1 only; :meth:`ConnectorDBServer.start` returns once the
  socket is listening.
* Every request is atomic, and an insert is all or nothing.
* :meth:`ConnectorDBServer.stop` closes the listening socket and every open
  connection and waits for their threads; ``start`` afterwards listens on the
  same port with the same storage (in memory too). ``close`` also closes the
  storage.
* With a ``path`` the data survives a process restart.
* Accounts as in ConnectorDB (see ``_accounts``): users of role "admin" or "user" who log
  in with their name and password, each with its "user" and "meta" devices; other devices
  log in with their apikey. An admin does anything, a user touches only their own user,
  devices and streams.

Run ``python -m connectorsync.testing.server [--port P] [--path FILE]
[--device user/device] [--admin NAME [--admin-password-file FILE]]`` to serve until
SIGTERM or SIGINT: it prints the url, then the device's apikey, one line each.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Collection
from typing import Any

from ._api import Predicate, _HTTPServer
from ._errors import valid_name
from ._faults import Faults as _Faults
from ._service import LoopbackService
from ._store import OLDER_MSG, SCHEMA_MSG, UNORDERED_MSG, SchemaChecker, Store

__all__ = [
    "OLDER_MSG",
    "SCHEMA_MSG",
    "UNORDERED_MSG",
    "ConnectorDBServer",
    "SchemaChecker",
    "main",
]


class ConnectorDBServer(LoopbackService):
    """A ConnectorDB v0.3 server on 127.0.0.1, serving from a daemon thread.

    ``path`` is the SQLite file to persist to (None: in memory); ``port`` 0
    picks a free port on the first ``start`` and keeps it afterwards.
    ``admin=(name, password)`` makes sure, when the storage opens, that this admin user
    exists with that password (see :meth:`add_user`).
    Usable as a context manager (start on enter, stop on exit).

    It answers what the ``connectordb`` 0.3.5 client asks: users at ``crud/USER``
    (create with email and password, read, update, delete with everything they own),
    devices at ``crud/USER/DEVICE`` (their ``apikey`` shown to their user, an admin and
    themselves; ``"apikey": ""`` makes a new one), streams and their data; ``?q=ls`` for
    users (admins only), a user's devices and a device's streams, ``?q=streams`` for a
    user's streams; ``?q=countusers|countdevices|countstreams`` (admins only); ``meta/version``,
    ``meta/transforms`` (none: transforms are refused) and ``meta/interpolators``
    (ConnectorDB's built-in ones; merge and dataset queries answer 501). Schemas are
    stored and read back minified, as ConnectorDB stores them. A datapoint without ``t``
    gets the time it arrives; a batch for an ephemeral stream is checked but not stored;
    one from any device other than its own for a downlink stream goes to its downlink
    substream (read with ``?downlink=true``), and for any other stream is refused (403),
    unless an admin sends it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        port: int = 0,
        admin: tuple[str, str] | None = None,
    ) -> None:
        self._path = None if path is None else os.fspath(path)
        self._admin = admin
        self._port = port
        self._store: Store | None = None
        self._httpd: _HTTPServer | None = None
        self._lifecycle = threading.Lock()  # serialises start/stop/close
        self._stopping = threading.Event()  # set while stopping, to cut injected delays short
        self._faults = _Faults()
        self._log: list[tuple[str, str]] = []
        self._times: list[float] = []  # time.monotonic() of each request in _log
        self._sizes: list[int] = []  # the body bytes of each request in _log
        self._log_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ConnectorDBServer:
        """Listen and serve; a no-op if already serving. Returns self."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            self._httpd = _HTTPServer(self, self._open_store(), self._port)
            self._port = self._httpd.server_address[1]
            self._stopping.clear()
            self._httpd.serve_in_thread("connectordb-server")
            return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and all connections. Idempotent."""
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            self._stopping.set()
            httpd.stop_serving()

    def close(self) -> None:
        """Stop, and close the storage (an in-memory store is lost)."""
        self.stop()
        with self._lifecycle:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _open_store(self) -> Store:
        if self._store is None:
            self._store = Store(self._path)
            if self._admin is not None:
                self._store.add_user(*self._admin, role="admin")
        return self._store

    # -- data access for tests ------------------------------------------------------

    def add_device(self, user: str, device: str) -> str:
        """Create the user (without a password: it cannot log in by name) and the device
        if missing; return the device's apikey."""
        return self._open_store().add_device(user, device)

    def add_user(self, name: str, password: str, role: str = "user") -> None:
        """Create the user (role "user" or "admin") with its "user" and "meta" devices, so
        that ``connectordb.ConnectorDB(name, password, url=...)`` logs in; for an existing
        user, set its password and role instead. ValueError on an invalid name or role."""
        self._open_store().add_user(name, password, role)

    def datapoints(self, stream_path: str) -> list[dict[str, Any]]:
        """All ``{"t", "d"}`` of a "user/device/stream" in stored order; KeyError if missing."""
        return self._open_store().datapoints(stream_path)

    def stream_schema(self, stream_path: str) -> dict[str, Any] | None:
        """The stream's JSON schema, or None if the stream does not exist."""
        return self._open_store().stream_schema(stream_path)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request received so far, in order."""
        with self._log_lock:
            return list(self._log)

    def request_times(self) -> list[float]:
        """The ``time.monotonic()`` at which each request of :attr:`requests` arrived, in the
        same order: per-second request rates for benchmarks (``bench_fleet.py``). Linux's
        monotonic clock is system-wide, so other processes' ``time.monotonic()`` compare."""
        with self._log_lock:
            return list(self._times)

    def request_sizes(self) -> list[int]:
        """The bytes of each request's body as sent (its Content-Length, 0 when none), in the
        order of :attr:`requests`."""
        with self._log_lock:
            return list(self._sizes)

    def _record(self, method: str, path: str, size: int) -> None:
        with self._log_lock:
            self._log.append((method, path))
            self._times.append(time.monotonic())
            self._sizes.append(size)

    # -- fault injection ----------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: Any = None,
        methods: Collection[str] | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next n requests (with a method in ``methods``, and a path containing
        ``path``, if given) with ``status`` and a JSON error, plus ``Retry-After`` if given,
        without processing them."""
        self._faults.fail_next(n, status, retry_after, methods, path)

    def delay(self, seconds: float, n: int | None = None) -> None:
        """Sleep ``seconds`` before handling each of the next n requests
        (n=None: every request until ``delay(0)``)."""
        self._faults.set_delay(seconds, n)

    def drop_before(self, n: int = 1) -> None:
        """Close the next n data-insert requests' connections without storing or answering."""
        self._faults.add_drops(before=n)

    def drop_after_commit(self, n: int = 1) -> None:
        """Process the next n data-insert requests (committing them if valid), then
        close the connection instead of answering: a lost acknowledgement."""
        self._faults.add_drops(after=n)

    def reject(self, predicate: Predicate | None) -> None:
        """Fail inserts (403, schema message) holding a point where
        ``predicate(stream_path, {"t": t, "d": d})`` is true; None clears it."""
        self._faults.reject = predicate

    def clear_faults(self) -> None:
        self._faults.clear()


#: The environment variable ``serve --admin NAME`` reads the admin's password from.
ADMIN_PASSWORD_ENV = "CONNECTORSYNC_ADMIN_PASSWORD"


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the url, then the device's apikey if --device.

    Secrets stay off the command line (anyone on the machine reads ``/proc/PID/cmdline``)
    and out of other users' reach: ``--admin NAME`` takes the password from
    ``--admin-password-file``, else :data:`ADMIN_PASSWORD_ENV`, else a prompt on a terminal;
    a ``--path`` file is created owner-only (0600) from its first byte, and one that exists
    is made owner-only (it holds apikeys and passwords)
    (``tests/test_cli.py::test_serve_keeps_secrets_off_argv_and_its_file_owner_only``).
    """
    parser = argparse.ArgumentParser(
        prog="connectorsync serve", description="Serve a test ConnectorDB v0.3 API on 127.0.0.1."
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--path", help="SQLite file to keep the data in, owner-only (default: memory)"
    )
    parser.add_argument("--device", help="create this user/device and print its apikey")
    parser.add_argument(
        "--admin",
        metavar="NAME",
        help="make sure this admin user exists; its password comes from "
        f"--admin-password-file, else ${ADMIN_PASSWORD_ENV}, else a prompt on a terminal",
    )
    parser.add_argument(
        "--admin-password-file",
        metavar="FILE",
        help="read the --admin password from this file (its first line)",
    )
    args = parser.parse_args(argv)
    device = args.device.split("/") if args.device else None
    if device is not None and len(device) != 2:
        parser.error("--device must be user/device")
    admin = None
    if args.admin is not None:
        admin = (args.admin, admin_password(parser, args))
    elif args.admin_password_file is not None:
        parser.error("--admin-password-file goes with --admin NAME")
    if args.path is not None:
        owner_only(parser, args.path)

    # Block the signals before any thread starts (threads inherit the mask), then
    # wait for them synchronously: no handler can race with the wait.
    signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    srv = ConnectorDBServer(path=args.path, port=args.port, admin=admin)
    try:
        srv.start()
        print(srv.url, flush=True)
        if device is not None:
            print(srv.add_device(*device), flush=True)
        signal.sigwait(signals)
    finally:
        srv.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


def admin_password(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The password of ``--admin NAME``: from the file, the environment or a prompt; never
    from the command line (``NAME:PASSWORD`` is refused, saying where it goes)."""
    name = args.admin
    if ":" in name:
        parser.error(
            "--admin takes the NAME only: a password on the command line is in every "
            f"process listing; put it in --admin-password-file FILE or ${ADMIN_PASSWORD_ENV}"
        )
    if not valid_name(name):
        parser.error(f"--admin {name!r}: not a valid user name (a letter, then letters, digits)")
    if args.admin_password_file is not None:
        try:
            with open(args.admin_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--admin-password-file {args.admin_password_file!r}: {exc}")
        where = f"--admin-password-file {args.admin_password_file!r}"
    elif os.environ.get(ADMIN_PASSWORD_ENV):
        password, where = os.environ[ADMIN_PASSWORD_ENV], f"${ADMIN_PASSWORD_ENV}"
    elif sys.stdin.isatty():
        password, where = getpass.getpass(f"password of the admin {name!r}: "), "the prompt"
    else:
        parser.error(
            f"--admin {name}: no password: give --admin-password-file FILE or "
            f"${ADMIN_PASSWORD_ENV} (no terminal to ask on)"
        )
    if not password:
        parser.error(f"--admin {name}: the password from {where} is empty")
    return password


def owner_only(parser: argparse.ArgumentParser, path: str) -> None:
    """Create ``path`` owner-only (0600) from its first byte, whatever the umask (SQLite
    gives its -wal and -shm files the same mode); an existing one is made owner-only, and the
    -wal, -shm and -journal files a killed server left beside it
    (``tests/test_cli.py::test_serve_makes_the_files_a_killed_server_left_owner_only``)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        parser.error(f"--path {path!r}: {exc.strerror}")
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)  # an existing file, made before with a wider mode
    finally:
        os.close(fd)
    # What SQLite left beside it (a server killed before it closed the file) holds the same
    # secrets, and SQLite opens it with the mode it has: owner-only too.
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            if stat.S_IMODE(os.stat(path + suffix).st_mode) & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:
            parser.error(f"--path {path + suffix!r}: {exc.strerror}")


if __name__ == "__main__":
    sys.exit(main())
