"""A real InfluxDB 1.x server (``influxd``) in a temporary directory, for tests and demos.

:class:`InfluxDBServer` writes a config file of its own under ``tmpdir`` (data, meta and WAL
directories beside it), starts ``influxd run -config <file>`` and waits until ``/ping``
answers. It never touches the system service or ``/var/lib/influxdb``.

Guarantees:

* Everything binds 127.0.0.1 only: the HTTP API on :attr:`InfluxDBServer.port`, the RPC
  (backup/restore) service on a second free port. Usage reporting, UDP, Graphite, collectd,
  OpenTSDB, subscriptions and the ``_internal`` monitor database are off, so the server reaches
  no other address and writes nothing it was not asked to.
* :meth:`InfluxDBServer.start` returns once ``/ping`` answers, or raises
  :class:`InfluxDBStartError` with the end of the server's log within ``start_timeout``.
* :meth:`InfluxDBServer.stop` sends SIGTERM to the pid, SIGKILL after ``timeout``, and always
  reaps the process. :meth:`InfluxDBServer.restart` keeps the ports and the data.

The Debian package is ``influxdb`` (InfluxDB 1.6): ``apt-get install influxdb``. Only its
binary is used; its systemd service may stay stopped.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from typing import Any

from ._process import ChildProcess, free_port

__all__ = ["InfluxDBServer", "InfluxDBStartError", "find_influxd"]

#: Where ``find_influxd`` looks when ``influxd`` is not on PATH (Debian puts it in /usr/bin).
_FALLBACK_PATHS = ("/usr/bin/influxd", "/usr/local/bin/influxd", "/usr/sbin/influxd")
_ADMIN = ("admin", "connectorsync-test-admin")


class InfluxDBStartError(RuntimeError):
    """influxd did not start, or did not answer ``/ping`` in time; the message ends with its
    log."""


@functools.lru_cache(maxsize=1)
def find_influxd() -> str | None:
    """The path of an InfluxDB 1.x ``influxd`` binary, or None when there is none.

    A 2.x ``influxd`` (another config format, another API) counts as none.
    """
    candidates = [shutil.which("influxd"), *_FALLBACK_PATHS]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [path, "version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "v1." in out:
            return path
    return None


class InfluxDBServer(ChildProcess):
    """An ``influxd`` of its own, on 127.0.0.1, keeping its files under ``tmpdir``.

    :param tmpdir: a directory for the config, the data and the log (created if missing)
    :param port: the HTTP port; 0 picks a free one at the first start and keeps it
    :param auth_enabled: turn on authentication and create an admin user
        (:attr:`admin` is its ``(username, password)``; :meth:`query` uses it)
    :param binary: the ``influxd`` to run (default :func:`find_influxd`)
    :param start_timeout: seconds :meth:`start` waits for ``/ping``

    Usable as a context manager (start on enter, stop on exit).
    """

    _program = "influxd"

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        port: int = 0,
        *,
        auth_enabled: bool = False,
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.dir = os.fspath(tmpdir)
        self.auth_enabled = auth_enabled
        self.start_timeout = start_timeout
        self._binary = binary
        self._port = port
        self._rpc_port = 0
        self._proc = None
        self._admin_created = False
        self._log_file = os.path.join(self.dir, "influxd.log")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> InfluxDBServer:
        """Start influxd and wait until ``/ping`` answers; a no-op if it runs. Returns self.

        :raises InfluxDBStartError: no influxd, it exited, or it did not answer in time
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        binary = self._binary or find_influxd()
        if binary is None:
            raise InfluxDBStartError(
                "influxd (InfluxDB 1.x) not found: install it with `apt-get install influxdb`"
            )
        os.makedirs(self.dir, exist_ok=True)
        # A free port found by binding and closing can be taken by someone else before influxd
        # binds it; when we picked the ports, try again with new ones.
        chosen = self._port == 0
        for attempt in range(3):
            if self._port == 0:
                self._port = free_port()
            if self._rpc_port == 0:
                self._rpc_port = free_port()
            try:
                self._launch(binary)
                break
            except InfluxDBStartError as exc:
                if not (chosen and "address already in use" in str(exc) and attempt < 2):
                    raise
                self._port = self._rpc_port = 0
        if self.auth_enabled and not self._admin_created:
            # With no user yet, influxd lets anyone create the first admin (and nothing else).
            name, password = _ADMIN
            self._post_query(
                f"CREATE USER \"{name}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES",
                None,
                auth=False,
            )
            self._admin_created = True
        return self

    def _launch(self, binary: str) -> None:
        config = os.path.join(self.dir, "influxdb.conf")
        with open(config, "w", encoding="utf-8") as f:
            f.write(self._config())
        argv = [binary, "run", "-config", config]
        self._spawn(argv, self.dir, self._log_file, self._ping, InfluxDBStartError)

    # -- facts -------------------------------------------------------------------

    @property
    def admin(self) -> tuple[str, str] | None:
        """``(username, password)`` of the admin user with ``auth_enabled``, else None."""
        return _ADMIN if self.auth_enabled else None

    # -- queries -----------------------------------------------------------------

    def query(self, q: str, db: str | None = None, *, epoch: str | None = "ns") -> dict[str, Any]:
        """Run InfluxQL ``q`` (on database ``db``) as the admin; return the parsed JSON answer.

        Times come as integers in ``epoch`` units (``"ns"`` by default; None: RFC 3339).
        :raises RuntimeError: influxd answered with an HTTP error
        """
        return self._post_query(q, db, epoch=epoch)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def points(self, measurement: str, db: str) -> list[dict[str, Any]]:
        """Every point of ``measurement`` (one dict per row: ``time`` in ns, tags, fields),
        oldest first; [] when there is none, or no such database."""
        quoted = measurement.replace("\\", "\\\\").replace('"', '\\"')
        answer = self.query(f'SELECT * FROM "{quoted}"', db)
        rows: list[dict[str, Any]] = []
        for result in answer.get("results", []):
            if "database not found" in str(result.get("error")):
                return []
            if "error" in result:
                raise RuntimeError(f"influxd: {result['error']}")
            for series in result.get("series", []):
                rows.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
        return rows

    def _post_query(
        self, q: str, db: str | None, *, epoch: str | None = None, auth: bool = True
    ) -> dict[str, Any]:
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        request = urllib.request.Request(
            self.url + "/query",
            data=urllib.parse.urlencode(params).encode(),
            method="POST",
        )
        if auth and self.auth_enabled:
            token = b64encode(":".join(_ADMIN).encode()).decode()
            request.add_header("Authorization", "Basic " + token)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read().decode(errors="replace")
            raise RuntimeError(f"influxd answered {exc.code} to {q!r}: {body}") from None

    # -- plumbing ----------------------------------------------------------------

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=1) as response:
                return bool(200 <= response.status < 300)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False

    def _config(self) -> str:
        d = self.dir.replace("\\", "\\\\").replace('"', '\\"')
        auth = "true" if self.auth_enabled else "false"
        # Upstream 1.x spells the switch reporting-disabled; Debian's build renamed it
        # reporting-enabled (default false). influxd ignores the key it does not know.
        return f"""\
reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:{self._rpc_port}"

[meta]
  dir = "{d}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  write-timeout = "10s"

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self._port}"
  auth-enabled = {auth}
  log-enabled = false
  suppress-write-log = true
  write-tracing = false
  pprof-enabled = false
  https-enabled = false
  max-row-limit = 0
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "error"
  suppress-logo = true

[continuous_queries]
  enabled = false
  log-enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""
