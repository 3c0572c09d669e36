"""A model of delivery, searched by hypothesis: nothing lost, nothing counted twice.

A ``RuleBasedStateMachine`` drives a real Logger on a real cache file against a real loopback
server of each delivery kind (DESIGN.md, "Delivery kinds"):

- ``ordered``: the ConnectorDB test server (``ConnectorDBServer``);
- ``idempotent``: a real influxd behind a loopback fault proxy (``FaultProxy`` below);
- ``at_least_once``: the HTTP receiver with an ``HTTPRemote``.

Rules insert, sync, inject every fault the servers have (5xx with Retry-After, connections
dropped before and after commit, refusal of chosen values, delay), crash (the Logger is
abandoned without close and the file reopened), answer NTP with an offset, cap the cache with
``drop_oldest``, expire by ``max_age``, retry and purge dead letters, clear the cache, change
the apikey, and run some of these while a batch is on the wire.

Each datapoint is identified by a unique counter in its value (``n``, or ``"s<n>"`` for one
the remote may be told to refuse), never by its timestamp (NTP re-times datapoints). After
every step the observations (``export()``, ``deadletters()``, ``status()`` counters and what
the server stored) must show each inserted datapoint in exactly one place: cached, delivered,
dead-lettered, or counted once as dropped, expired, cleared or purged; stored once on
``ordered`` and ``idempotent`` remotes, none missing on ``at_least_once`` ones, and in
insertion order per stream.

``make test`` runs a few derandomized examples per kind; ``make soak`` sets
``CONNECTORSYNC_SOAK=1`` (and optionally ``CONNECTORSYNC_SOAK_EXAMPLES``) for many more.
"""

from __future__ import annotations

import collections
import http.client
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from connectorsync import Logger
from connectorsync.remotes.http import HTTPRemote
from connectorsync.remotes.influxdb import InfluxDBRemote
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing._faults import Faults
from connectorsync.testing._httpd import LoopbackHandler, LoopbackHTTPServer
from connectorsync.testing.ntp import NTPServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import start_influxd

STREAMS = ("a", "b")
HTTP_TIMEOUT = 0.4  # also bounds each pass's NTP wait while the NTP server is silent
DELAY = 0.15
FAULTS = st.sampled_from(
    [None, "fail", "drop_before", "lose_answer", "lose_answer_unreconciled", "delay"]
)  # below HTTP_TIMEOUT: a delayed request still answers in time
SOAK = os.environ.get("CONNECTORSYNC_SOAK") == "1"

if SOAK:
    SETTINGS = settings(
        max_examples=int(os.environ.get("CONNECTORSYNC_SOAK_EXAMPLES", "120")),
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )
else:  # `make test`: bounded and the same every run, so CI is stable
    SETTINGS = settings(
        max_examples=12,
        stateful_step_count=20,
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking here: it would take longer than the per-test timeout, and a failure
        # prints its steps either way; `make soak` shrinks to the minimal example.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def ident(value: Any) -> int:
    """The counter a datapoint's value carries: ``n``, ``"s<n>"``, or ``n`` as a float."""
    if isinstance(value, str):
        return int(value[1:])
    return int(value)


# ----------------------------------------------------------------------------- backends


def add_streams(lg: Logger) -> None:
    for stream in STREAMS:
        lg.add_stream(stream, {})


class Backend:
    """A server of one delivery kind, started once per test, with a fresh namespace (device,
    path or database) per example, its observations and its faults."""

    kind = ""
    refuses_always = False  # influxd refuses a string in a float field by itself

    def new_example(self) -> None:
        raise NotImplementedError

    def logger(self, path: str, **options: Any) -> Logger:
        """A Logger on ``path`` delivering to this example's namespace."""
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
    kind = "ordered"

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
            for stream in STREAMS:
                lg.add_stream(stream, {})

        return Logger(path, on_create=init, **options)

    def stored(self, stream: str) -> list[Any]:
        try:
            return [p["d"] for p in self.server.datapoints(f"u/{self.device}/{stream}")]
        except KeyError:
            return []

    def writes(self) -> int:
        return sum(1 for m, p in self.server.requests if m == "POST" and "/data" in p)

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
    kind = "at_least_once"

    def __init__(self) -> None:
        self.receiver = HTTPReceiver().start()
        self.prefix = ""
        self.examples = 0

    def new_example(self) -> None:
        self.examples += 1
        self.prefix = f"/ex{self.examples}"

    def logger(self, path: str, **options: Any) -> Logger:
        url = self.receiver.url
        remote = HTTPRemote(
            url + self.prefix + "/{stream}", ping_url=url + "/health", timeout=HTTP_TIMEOUT
        )
        return Logger(
            path,
            remote=remote,
            on_create=add_streams,
            **options,
        )

    def stored(self, stream: str) -> list[Any]:
        return [item["d"] for item in self.receiver.items(f"{self.prefix}/{stream}")]

    def writes(self) -> int:
        return sum(
            1
            for r in self.receiver.requests
            if r.method == "POST" and r.path.startswith(self.prefix)
        )

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
    kind = "idempotent"
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
        remote = InfluxDBRemote(self.proxy.url, self.db, timeout=HTTP_TIMEOUT)
        return Logger(
            path,
            remote=remote,
            on_create=add_streams,
            **options,
        )

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


class _ProxyServer(LoopbackHTTPServer):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(0, _ProxyHandler, "fault-proxy-conn")


class _ProxyHandler(LoopbackHandler):
    """Relays one request to influxd, unless a fault says otherwise."""

    server: _ProxyServer
    _HOP = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date"}
    )

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        is_write = self.command == "POST" and self.path.startswith("/write")
        if is_write:
            proxy.count_write()
        time.sleep(proxy.faults.take_delay())
        failure = proxy.faults.take_failure(self.command, self.path)
        if failure is not None:
            status, retry_after = failure
            headers = None if retry_after is None else {"Retry-After": str(retry_after)}
            self._respond(status, "application/json", b'{"error":"injected"}', headers)
            return
        if is_write and proxy.faults.take_drop(after=False):
            self._abort()
            return
        conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in self._HOP}
        finally:
            conn.close()
        if is_write and proxy.faults.take_drop(after=True):
            self._abort()  # influxd has answered: whatever it stored stays stored
            return
        content_type = kept.pop("Content-Type", "")
        self._respond(response.status, content_type, answer, kept)

    do_GET = do_POST = do_HEAD = _dispatch


class FaultProxy:
    """A loopback HTTP proxy to influxd with the test servers' faults: failures with a status
    (and Retry-After), writes dropped before they reach influxd or after it answered, and
    delays."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.writes = 0
        self._lock = threading.Lock()
        self._httpd = _ProxyServer(self)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="fault-proxy", daemon=True
        )
        self._thread.start()

    def count_write(self) -> None:
        with self._lock:
            self.writes += 1

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join()


# ----------------------------------------------------------------------------- the model


class DeliveryModel(RuleBasedStateMachine):
    """One example: a fresh cache file and a fresh namespace on the class's server."""

    backend: Backend
    tmpdir: Path
    ntp: NTPServer

    def __init__(self) -> None:
        super().__init__()
        self.backend.clear_faults()
        self.backend.new_example()
        self.path = str(self.tmpdir / f"cache-{uuid.uuid4().hex[:8]}.db")
        self.options: dict[str, Any] = {}
        self.lg: Logger | None = None
        self.abandoned: list[Logger] = []
        self.counter = 0
        self.stream_of: dict[int, str] = {}
        self.poison: set[int] = set()
        self.retried: set[int] = set()  # requeued out of order: left out of order checks
        self.present: set[int] = set()  # in the cache, a dead letter, or stored remotely
        self.gone: set[int] = set()  # counted dropped, expired, cleared or purged
        self.sunk = 0  # datapoints this step counted as cleared or purged
        self.purged: set[int] = set()  # dead letters purged this step
        self.dropped = 0
        self.expired = 0
        self.refusing = self.backend.refuses_always
        # A lost answer whose reconciliation failed was armed: stored-and-cached may last.
        # Sticky, since an armed fault may wait passes for a write to hit.
        self.unresolved = False
        self.ntp_mode = False
        self.clean_pass: bool | None = None  # set by a sync step: report.ok

    # -- plumbing ---------------------------------------------------------------------

    @property
    def logger(self) -> Logger:
        assert self.lg is not None
        return self.lg

    def open(self) -> None:
        self.lg = self.backend.logger(self.path, **self.options)

    def value(self, stream: str, poison: bool) -> Any:
        self.counter += 1
        n = self.counter
        self.stream_of[n] = stream
        if poison:
            self.poison.add(n)
            return f"s{n}"
        return n

    def teardown(self) -> None:
        self.backend.clear_faults()
        self.backend.delay(0)
        self.ntp.silent = True
        for lg in [*self.abandoned, *([self.lg] if self.lg is not None else [])]:
            lg.close(timeout=1)

    # -- rules ------------------------------------------------------------------------

    @initialize(ntp=st.booleans(), cap=st.sampled_from([None, 3]))
    def start(self, ntp: bool, cap: int | None) -> None:
        RUNS[type(self).__name__]["examples"] += 1
        self.ntp_mode = ntp
        self.options = {"batch_size": 2, "http_timeout": HTTP_TIMEOUT, "on_full": "drop_oldest"}
        if cap is not None:
            self.options["max_cached"] = cap
        if ntp:
            # Silent until the ntp rule: datapoints are stamped untrusted, to be re-timed.
            self.ntp.silent = True
            self.ntp.offset = 0.0
            self.options["ntp_server"] = self.ntp.address
        self.open()

    @rule(stream=st.sampled_from(STREAMS), poison=st.booleans())
    def insert(self, stream: str, poison: bool) -> None:
        self.logger.insert(stream, self.value(stream, poison))

    @rule(stream=st.sampled_from(STREAMS), poisons=st.lists(st.booleans(), min_size=1, max_size=4))
    def insert_many(self, stream: str, poisons: list[bool]) -> None:
        self.logger.insert_many(stream, [self.value(stream, p) for p in poisons])

    def pass_(self) -> None:
        self.clean_pass = self.logger.sync().ok

    def arm_fault(self, fault: str, n: int, status: int, retry_after: str | None) -> None:
        if fault == "fail":
            self.backend.fail(n, status, retry_after)
        elif fault == "drop_before":
            self.backend.drop_before()
        elif fault == "lose_answer":
            self.backend.lose_answer()
        elif fault == "lose_answer_unreconciled":
            self.backend.lose_answer_unreconciled()
            self.unresolved = True

    @rule(
        fault=FAULTS,
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
        retry_after=st.sampled_from([None, "0.01", "0"]),
    )
    def sync(self, fault: str | None, n: int, status: int, retry_after: str | None) -> None:
        """One pass, after arming ``fault`` (faults not used up stay for later passes)."""
        if fault == "delay":
            self.backend.delay(DELAY)
            try:
                self.pass_()
            finally:
                self.backend.delay(0)
            return
        if fault is not None:
            self.arm_fault(fault, n, status, retry_after)
        self.pass_()

    @rule(
        fault=FAULTS.filter(lambda f: f not in (None, "delay")),
        n=st.integers(1, 3),
        status=st.sampled_from([500, 503, 429]),
        retry_after=st.sampled_from([None, "0.01", "0"]),
    )
    def arm(self, fault: str, n: int, status: int, retry_after: str | None) -> None:
        """A fault for a later pass (or one running while something else happens)."""
        self.arm_fault(fault, n, status, retry_after)

    @precondition(lambda self: not self.backend.refuses_always)
    @rule(on=st.booleans())
    def refuse_strings(self, on: bool) -> None:
        self.backend.refuse(on)
        self.refusing = on

    @rule()
    def clear_faults(self) -> None:
        self.backend.clear_faults()
        self.backend.refuse(self.refusing)

    @rule()
    def crash(self) -> None:
        """The Logger is abandoned, never closed (its syncer never ran in the background,
        so nothing of it runs on), and the file opened again as after a kill."""
        self.abandoned.append(self.logger)
        self.open()

    @precondition(lambda self: self.ntp_mode)
    @rule(offset=st.sampled_from([0.5, 30.0, 3600.0]), now=st.booleans())
    def ntp_answers(self, offset: float, now: bool) -> None:
        """NTP answers with ``offset``: asked now (sync_clock), or by the next pass, which
        asks before it reconciles what a lost answer left in flight."""
        self.ntp.offset = offset
        self.ntp.silent = False
        if now:
            self.logger.sync_clock(timeout=2.0)

    @rule(cap=st.sampled_from([None, 1, 3, 6]))
    def cap(self, cap: int | None) -> None:
        """max_cached with on_full="drop_oldest": the next insert drops the oldest."""
        self.logger.max_cached = cap
        self.options["max_cached"] = cap

    @rule()
    def expire(self) -> None:
        """max_age expires everything cached at the next pass (its first step)."""
        self.logger.max_age = 0.001
        try:
            self.pass_()
        finally:
            self.logger.max_age = None

    @rule(some=st.booleans())
    def retry_deadletters(self, some: bool) -> None:
        letters = self.logger.deadletters()
        chosen = letters[::2] if some else letters
        self.logger.retry_deadletters([d.id for d in chosen] if some else None)
        self.retried |= {ident(d.d) for d in chosen}

    @rule(some=st.booleans())
    def purge_deadletters(self, some: bool) -> None:
        letters = self.logger.deadletters()
        chosen = letters[1::2] if some else letters
        self.purge([d.id for d in chosen] if some else None)

    def purge(self, ids: list[int] | None) -> None:
        before = {ident(d.d) for d in self.logger.deadletters()}
        self.sunk += self.logger.purge_deadletters(ids)
        self.purged |= before - {ident(d.d) for d in self.logger.deadletters()}

    @rule()
    def cleardata(self) -> None:
        self.sunk += self.logger.cleardata()

    @rule()
    def apikey_change(self) -> None:
        """A wrong apikey for one pass (ConnectorDB refuses it: nothing may move), then the
        right one again."""
        good = self.logger.apikey
        self.logger.apikey = "wrong-" + uuid.uuid4().hex[:8]
        try:
            self.logger.sync()
        finally:
            self.logger.apikey = good

    @rule(
        op=st.sampled_from(["cleardata", "insert", "expire", "ntp", "retry", "purge"]),
        stream=st.sampled_from(STREAMS),
    )
    def during_a_pass(self, op: str, stream: str) -> None:
        """Run ``op`` while a pass has a batch on the wire (held back by a delay)."""
        lg = self.logger
        before = self.backend.writes()
        self.backend.delay(DELAY)
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(lg.sync()), name="model-pass")
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while self.backend.writes() == before and thread.is_alive():
                assert time.monotonic() < deadline, "the pass sent nothing within 5 s"
                time.sleep(0.005)
            if op == "cleardata":
                self.sunk += lg.cleardata()
            elif op == "insert":
                lg.insert(stream, self.value(stream, False))
            elif op == "expire":
                lg.max_age = 0.001
                try:
                    lg.insert(stream, self.value(stream, False))
                finally:
                    lg.max_age = None
            elif op == "ntp" and self.ntp_mode:
                self.ntp.offset, self.ntp.silent = 30.0, False
                lg.sync_clock(timeout=2.0)
            elif op == "retry":
                self.retried |= {ident(d.d) for d in lg.deadletters()}
                lg.retry_deadletters()
            elif op == "purge":
                self.purge(None)
        finally:
            self.backend.delay(0)
            thread.join(30)
        assert not thread.is_alive(), "a pass did not end within 30 s"

    # -- the invariant ------------------------------------------------------------------

    @invariant()
    def every_datapoint_is_in_exactly_one_place(self) -> None:
        RUNS[type(self).__name__]["checks"] += 1
        if self.lg is None:
            return
        lg, kind = self.logger, self.backend.kind
        status = lg.status()
        cached: dict[str, list[tuple[int, float]]] = {s: [] for s in STREAMS}
        for point in lg.export():
            cached[point["stream"]].append((ident(point["d"]), point["t"]))
        letters = [ident(d.d) for d in lg.deadletters()]
        stored = {s: [ident(v) for v in self.backend.stored(s)] for s in STREAMS}

        c = {n for points in cached.values() for n, _ in points}
        d = set(letters)
        s_count = Counter(n for values in stored.values() for n in values)
        s = set(s_count)
        inserted = set(self.stream_of)

        # Each place holds only what was inserted, in its own stream, once.
        assert s <= inserted, f"the remote holds values never inserted: {sorted(s - inserted)}"
        for stream in STREAMS:
            assert all(self.stream_of[n] == stream for n in stored[stream]), "wrong stream"
            assert all(self.stream_of[n] == stream for n, _ in cached[stream]), "wrong stream"
        assert len(letters) == len(d), f"a dead letter twice: {sorted(letters)}"
        assert sum(len(p) for p in cached.values()) == len(c), "a datapoint cached twice"
        assert status.cached == len(c), f"status().cached {status.cached} != exported {len(c)}"
        assert not c & d, f"cached and a dead letter at once: {sorted(c & d)}"
        assert d <= self.poison, f"dead letters the remote never refused: {sorted(d - self.poison)}"
        if kind in ("ordered", "idempotent"):
            twice = sorted(n for n, k in s_count.items() if k > 1)
            assert not twice, f"stored more than once on an {kind} remote: {twice}"
            assert not s & d, f"stored and a dead letter at once: {sorted(s & d)}"
        if kind == "ordered" and not self.unresolved:
            assert not c & s, f"stored yet still cached after reconciliation: {sorted(c & s)}"

        # Counted once: what left every place is exactly what the counters say left.
        now = c | d | s
        came_back = sorted(now & self.gone)
        assert not came_back, f"counted dropped/expired/cleared/purged, yet present: {came_back}"
        vanished = (self.present | (inserted - self.present - self.gone)) - now
        # At least once, a refused resend of a delivered datapoint is a dead letter too:
        # purging that letter leaves the delivered copy.
        sunk = self.sunk - (len(self.purged & s) if kind == "at_least_once" else 0)
        counted = (status.dropped - self.dropped) + (status.expired - self.expired) + sunk
        assert len(vanished) == counted, (
            f"{len(vanished)} datapoints left every place ({sorted(vanished)}) but "
            f"{counted} were counted (dropped +{status.dropped - self.dropped}, "
            f"expired +{status.expired - self.expired}, cleared or purged {sunk})"
        )
        self.gone |= vanished
        self.present = now
        self.dropped, self.expired, self.sunk = status.dropped, status.expired, 0
        self.purged = set()

        # Order: per stream, cached timestamps strictly increase, and what was not requeued
        # out of order is cached and stored in insertion order.
        for stream in STREAMS:
            times = [t for _, t in cached[stream]]
            assert times == sorted(set(times)), f"stream {stream!r}: cached t not increasing"
            in_order = [n for n, _ in cached[stream] if n not in self.retried]
            assert in_order == sorted(in_order), f"stream {stream!r}: cache out of order"
            firsts = [n for n in dict.fromkeys(stored[stream]) if n not in self.retried]
            assert firsts == sorted(firsts), f"stream {stream!r}: stored out of order {firsts}"

        # A pass that reported no error delivered everything cached when it began.
        if self.clean_pass:
            assert not c, f"a clean pass left datapoints cached: {sorted(c)}"
        self.clean_pass = None


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def ntp() -> Iterator[NTPServer]:
    server = NTPServer().start()
    server.silent = True
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ordered() -> Iterator[Backend]:
    backend = OrderedBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def at_least_once() -> Iterator[Backend]:
    backend = AtLeastOnceBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def idempotent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = IdempotentBackend(tmp_path_factory.mktemp("influxd"))
    try:
        yield backend
    finally:
        backend.close()


#: Per machine: examples started and invariant checks made (one after each step and one
#: after the start), for the figures ``make soak`` prints.
RUNS: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)


def run_model(name: str, backend: Backend, tmp_path: Path, ntp: NTPServer) -> None:
    machine = type(name, (DeliveryModel,), {"backend": backend, "tmpdir": tmp_path, "ntp": ntp})
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)  # type: ignore[arg-type]
    finally:
        runs = RUNS[name]
        steps = runs["checks"] - runs["examples"]
        print(f"\n{name}: {runs['examples']} examples, {steps} steps", file=sys.stderr)


@pytest.mark.slow
def test_model_ordered(ordered: Backend, tmp_path: Path, ntp: NTPServer, fast_backoff) -> None:
    run_model("OrderedModel", ordered, tmp_path, ntp)


@pytest.mark.slow
def test_model_idempotent(
    idempotent: Backend, tmp_path: Path, ntp: NTPServer, fast_backoff
) -> None:
    run_model("IdempotentModel", idempotent, tmp_path, ntp)


@pytest.mark.slow
def test_model_at_least_once(
    at_least_once: Backend, tmp_path: Path, ntp: NTPServer, fast_backoff
) -> None:
    run_model("AtLeastOnceModel", at_least_once, tmp_path, ntp)


def test_the_model_sees_a_lost_datapoint(ordered: Backend, tmp_path: Path) -> None:
    """The invariant is not vacuous: a datapoint that leaves the cache uncounted fails it."""
    ordered.new_example()
    path = str(tmp_path / "probe.db")
    machine = type(
        "Probe", (DeliveryModel,), {"backend": ordered, "tmpdir": tmp_path, "ntp": None}
    )()
    machine.options = {"batch_size": 2}
    machine.lg = ordered.logger(path, **machine.options)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        # Delete it behind the Logger's back: no counter says where it went.
        other = ordered.logger(path)
        other.cleardata()
        other.close()
        with pytest.raises(AssertionError, match="left every place"):
            machine.every_datapoint_is_in_exactly_one_place()
    finally:
        machine.lg.close()
