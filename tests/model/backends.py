"""The model's servers, one per delivery kind, each with a fresh namespace per example.

- ``ordered``: the ConnectorDB test server (``ConnectorDBServer``);
- ``idempotent``: a real influxd behind a loopback fault proxy (tests/model/influx_proxy.py);
- ``at_least_once``: the HTTP receiver with an ``HTTPRemote``; and a real mosquitto behind
  the MQTT fault proxy with an ``MQTTRemote`` (tests/model/mqtt.py).
"""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

from connectorsync import Logger
from connectorsync.remotes.base import Remote
from connectorsync.remotes.connectordb import ConnectorDBRemote
from connectorsync.remotes.http import HTTPRemote
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.receiver import HTTPReceiver

from ..conftest import start_influxd
from .influx_proxy import FaultProxy

STREAMS = ("a", "b")
HTTP_TIMEOUT = 0.4  # also bounds each pass's NTP wait while the NTP server is silent


def ident(value: Any) -> int:
    """The counter a datapoint's value carries: ``n``, ``"s<n>"``, or ``n`` as a float."""
    if isinstance(value, str):  # "s<n>", or "s<n>:xxx..." for an oversized one
        return int(value[1:].partition(":")[0])
    return int(value)


# ----------------------------------------------------------------------------- backends


def add_streams(lg: Logger, props: dict[str, dict[str, Any]] | None = None) -> None:
    """Register :data:`STREAMS` (any JSON value), each with its ``props`` (``priority``,
    ``thin``: tests/model/priorities.py)."""
    for stream in STREAMS:
        lg.add_stream(stream, {}, **(props or {}).get(stream, {}))


class Backend:
    """A server of one delivery kind, started once per test, with a fresh namespace (device,
    path or database) per example, its observations and its faults."""

    kind = ""
    name = ""
    refuses_always = False  # influxd refuses a string in a float field by itself
    # Refusals on from the start of each example, and only ever lifted (an operator who drops
    # a constraint, then retries the dead letters), never switched on mid-example: one
    # switched on between a send whose answer was lost and its resend would make a datapoint
    # both stored and a dead letter, which no client can see (docs/remotes.rst).
    refusal_only_lifts = False
    max_payload: int | None = None  # a datapoint bigger than this is refused (MQTT)
    restarts = False  # "fail" and "drop_before" restart the server (answers may be lost)
    #: Per stream, the properties ``add_stream`` gets (``priority``, ``thin``); set by a model
    #: before it opens a Logger, for the examples of tests/model/priorities.py.
    props: dict[str, dict[str, Any]] = {}  # noqa: RUF012 (replaced, never changed in place)

    def add_streams(self, lg: Logger) -> None:
        """``on_create``: register the streams with this example's :attr:`props`."""
        add_streams(lg, self.props)

    def write_streams(self) -> list[str]:
        """The stream of each data write that reached the server so far, in arrival order
        (the backends a priority variant runs on have it)."""
        raise NotImplementedError

    def observe(self) -> None:
        """Wait until what the server stored so far can be read (a subscriber's flush)."""

    def new_example(self) -> None:
        raise NotImplementedError

    def logger(self, path: str, **options: Any) -> Logger:
        """A Logger on ``path`` delivering to this example's namespace."""
        raise NotImplementedError

    def remote(self) -> Remote:
        """A remote delivering to this example's namespace (for a Logger of several)."""
        raise NotImplementedError

    def stored(self, stream: str) -> list[Any]:
        """The values stored for ``stream`` in this example, in stored order."""
        raise NotImplementedError

    def writes(self) -> int:
        """How many data writes reached the server so far (answered or not)."""
        raise NotImplementedError

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        raise NotImplementedError

    def drop_before(self) -> None:
        raise NotImplementedError

    def lose_answer(self) -> None:
        raise NotImplementedError

    def lose_answer_unreconciled(self) -> None:
        """A lost answer, and reconciliation right after it fails too: the batch stays in
        flight into the next pass."""
        self.lose_answer()

    def delay(self, seconds: float) -> None:
        """Hold back every request ``seconds`` (0: stop)."""
        raise NotImplementedError

    def refuse(self, on: bool) -> None:
        """Refuse (as a bad value) every datapoint whose value is a string, or stop."""

    def clear_faults(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class OrderedBackend(Backend):
    kind = name = "ordered"

    def __init__(self) -> None:
        self.server = ConnectorDBServer().start()
        self.device = ""
        self.apikey = ""
        self.examples = 0

    def new_example(self) -> None:
        self.examples += 1
        self.device = f"d{self.examples}"
        self.apikey = self.server.add_device("u", self.device)

    def logger(self, path: str, **options: Any) -> Logger:
        apikey, url = self.apikey, self.server.url

        def init(lg: Logger) -> None:
            lg.apikey = apikey
            lg.serverurl = url
            add_streams(lg, props)

        props = self.props
        return Logger(path, on_create=init, **options)

    def remote(self) -> Remote:
        return ConnectorDBRemote(self.server.url, self.apikey, timeout=HTTP_TIMEOUT)

    def stored(self, stream: str) -> list[Any]:
        try:
            return [p["d"] for p in self.server.datapoints(f"u/{self.device}/{stream}")]
        except KeyError:
            return []

    def writes(self) -> int:
        return sum(1 for m, p in self.server.requests if m == "POST" and "/data" in p)

    def write_streams(self) -> list[str]:
        # POST .../u/<device>/<stream>/data: the stream is the part before "data".
        prefix = f"/u/{self.device}/"
        paths = [p.partition("?")[0] for m, p in self.server.requests if m == "POST"]
        return [p.split("/")[-2] for p in paths if p.endswith("/data") and prefix in p]

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.server.fail_next(n, status=status, retry_after=retry_after)

    def drop_before(self) -> None:
        self.server.drop_before(1)

    def lose_answer(self) -> None:
        self.server.drop_after_commit(1)

    def lose_answer_unreconciled(self) -> None:
        self.server.drop_after_commit(1)
        self.server.fail_next(1, status=503, methods=["GET"], path="/data")

    def delay(self, seconds: float) -> None:
        self.server.delay(seconds)

    def refuse(self, on: bool) -> None:
        self.server.reject((lambda stream, point: isinstance(point["d"], str)) if on else None)

    def clear_faults(self) -> None:
        self.server.clear_faults()

    def close(self) -> None:
        self.server.stop()


class AtLeastOnceBackend(Backend):
    kind = name = "at_least_once"

    def __init__(self) -> None:
        self.receiver = HTTPReceiver().start()
        self.prefix = ""
        self.examples = 0

    def new_example(self) -> None:
        self.examples += 1
        self.prefix = f"/ex{self.examples}"

    def logger(self, path: str, **options: Any) -> Logger:
        return Logger(path, remote=self.remote(), on_create=self.add_streams, **options)

    def remote(self) -> Remote:
        url = self.receiver.url
        return HTTPRemote(
            url + self.prefix + "/{stream}", ping_url=url + "/health", timeout=HTTP_TIMEOUT
        )

    def stored(self, stream: str) -> list[Any]:
        return [item["d"] for item in self.receiver.items(f"{self.prefix}/{stream}")]

    def writes(self) -> int:
        return sum(
            1
            for r in self.receiver.requests
            if r.method == "POST" and r.path.startswith(self.prefix)
        )

    def write_streams(self) -> list[str]:
        paths = [r.path.partition("?")[0] for r in self.receiver.requests if r.method == "POST"]
        return [p.rsplit("/", 1)[-1] for p in paths if p.startswith(self.prefix + "/")]

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.receiver.fail_next(n, status=status, retry_after=retry_after)

    def drop_before(self) -> None:
        self.receiver.drop_before(1)

    def lose_answer(self) -> None:
        self.receiver.drop_after_commit(1)

    def delay(self, seconds: float) -> None:
        self.receiver.delay(seconds)

    def refuse(self, on: bool) -> None:
        self.receiver.reject((lambda path, item: isinstance(item["d"], str)) if on else None)

    def clear_faults(self) -> None:
        self.receiver.clear_faults()

    def close(self) -> None:
        self.receiver.stop()


class IdempotentBackend(Backend):
    kind = name = "idempotent"
    refuses_always = True

    def __init__(self, directory: Path) -> None:
        self.influxd = start_influxd(directory)
        self.proxy = FaultProxy(self.influxd.port)
        self.db = ""

    def new_example(self) -> None:
        self.db = "model_" + uuid.uuid4().hex[:12]
        # One shard from 1970 for two centuries: InfluxDB fixes a field's type per shard, so
        # the priming points (value 0, which no datapoint of the model has, at t = 1 s, older
        # than all of them) make "value" a float field for every datapoint: a string value
        # is then refused (a partial write).
        self.influxd.query(f'CREATE DATABASE "{self.db}" WITH SHARD DURATION 10000w')
        body = "".join(f"{s} value=0 1000000000\n" for s in STREAMS).encode()
        request = urllib.request.Request(
            f"{self.influxd.url}/write?db={self.db}", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def logger(self, path: str, **options: Any) -> Logger:
        return Logger(path, remote=self.remote(), on_create=add_streams, **options)

    def remote(self) -> Remote:
        return InfluxDBRemote(self.proxy.url, self.db, timeout=HTTP_TIMEOUT)

    def stored(self, stream: str) -> list[Any]:
        rows = self.influxd.points(stream, self.db)  # oldest first
        return [row["value"] for row in rows if row["value"] != 0]

    def writes(self) -> int:
        return self.proxy.writes

    def fail(self, n: int, status: int, retry_after: str | None) -> None:
        self.proxy.faults.fail_next(n, status, retry_after, None)

    def drop_before(self) -> None:
        self.proxy.faults.add_drops(before=1)

    def lose_answer(self) -> None:
        self.proxy.faults.add_drops(after=1)

    def lose_answer_unreconciled(self) -> None:
        self.proxy.faults.add_drops(after=1)
        self.proxy.faults.fail_next(1, 503, None, None, "/query")

    def delay(self, seconds: float) -> None:
        self.proxy.faults.set_delay(seconds, None)

    def clear_faults(self) -> None:
        self.proxy.faults.clear()

    def close(self) -> None:
        self.proxy.close()
        self.influxd.stop()
