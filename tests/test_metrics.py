"""Metrics for operators: ``Logger.metrics()``, ``/metrics`` on 127.0.0.1 (``metrics_port``)
and ``connectorsync metrics CACHE``, parsed with prometheus_client's own parsers and checked
against a real workload synced to the loopback ConnectorDB server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from connectorsync import CacheError, ConfigurationError, HTTPRemote, Logger
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.receiver import HTTPReceiver

from .conftest import ROOT

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def samples(text: str, *, openmetrics: bool = True) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    parse = parse_openmetrics if openmetrics else parse_text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }


def one(found: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(url: str) -> str:
    answer = requests.get(url, headers={"Accept": OPENMETRICS}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    return answer.text


@pytest.fixture
def served(cache_path: str, server: ConnectorDBServer) -> Any:
    """A Logger serving /metrics on a free loopback port, pointed at ``server``."""

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})

    lg = Logger(cache_path, on_create=init, metrics_port=0)
    try:
        yield lg
    finally:
        lg.close()


def test_a_scrape_shows_the_workload(served: Logger, server: ConnectorDBServer) -> None:
    lg = served
    assert lg.metrics_url is not None and lg.metrics_url.startswith("http://127.0.0.1:")
    server.reject(lambda stream, point: point["d"] == 99.0)
    for value in (1.5, 2.5, 3.5, 99.0):
        lg.insert("temperature", value)
    report = lg.sync()
    assert report.sent == {"temperature": 3} and report.deadlettered == {"temperature": 1}
    server.fail_next(1, status=503)
    assert not lg.sync().ok  # a failed pass
    lg.max_cached, lg.on_full = 2, "drop_oldest"
    for value in (4.0, 5.0, 6.0):
        lg.insert("temperature", value)  # the third drops the oldest

    found = samples(scrape(lg.metrics_url))
    assert one(found, "connectorsync_cached_datapoints", stream="temperature") == 2
    assert one(found, "connectorsync_dead_letters", stream="temperature") == 1
    assert one(found, "connectorsync_dropped_datapoints_total") == 1
    assert one(found, "connectorsync_expired_datapoints_total") == 0
    assert one(found, "connectorsync_delivered_datapoints_total", stream="temperature") == 3
    # Bytes of the values delivered, as their JSON text: "1.5", "2.5", "3.5".
    assert one(found, "connectorsync_delivered_bytes_total", stream="temperature") == 9
    # The request bodies on the wire, as status() keeps them in the cache.
    sent = lg.status().bytes_sent["temperature"]
    assert sent > 9
    assert one(found, "connectorsync_sent_bytes_total", stream="temperature") == sent
    assert one(found, "connectorsync_sync_passes_total") == 2
    assert one(found, "connectorsync_failed_sync_passes_total") == 1
    assert one(found, "connectorsync_last_sync_timestamp_seconds") == pytest.approx(lg.lastsynctime)
    oldest = lg.status().streams["temperature"].oldest
    assert oldest is not None
    age = one(found, "connectorsync_oldest_cached_age_seconds", stream="temperature")
    assert 0 <= age < 3600
    assert one(found, "connectorsync_cache_size_bytes") == os.path.getsize(lg.path)
    assert one(found, "connectorsync_wal_size_bytes") >= 0
    # Every insert of this process committed (and fsynced, durability "full") once at least.
    commits = one(found, "connectorsync_commit_latency_seconds_count")
    assert commits >= 7
    assert one(found, "connectorsync_fsync_latency_seconds_count") == commits
    assert one(found, "connectorsync_commit_latency_seconds_bucket", le="+Inf") == commits
    assert ("connectorsync_clock_offset_seconds", ()) not in found  # no NTP answer yet


def test_metrics_text_is_openmetrics_of_the_same(served: Logger) -> None:
    served.insert("temperature", 20.0)
    text = served.metrics()
    assert text.endswith("# EOF\n")
    found = samples(text)
    assert one(found, "connectorsync_cached_datapoints", stream="temperature") == 1
    assert not any(name.startswith("connectorsync_delivered") for name, _ in found)  # none yet
    assert one(found, "connectorsync_commit_latency_seconds_count") >= 1


def test_the_histograms_time_grouped_and_batched_commits(cache_path: str) -> None:
    with Logger(cache_path, durability="batched", commit_interval=0.05) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        before = one(samples(lg.metrics()), "connectorsync_commit_latency_seconds_count")
        for value in range(50):
            lg.insert("temperature", float(value))
        lg.flush()
        found = samples(lg.metrics())
        # The queue's commits are fewer than the inserts, and each one is timed.
        after = one(found, "connectorsync_commit_latency_seconds_count")
        assert 1 <= after - before < 50
        assert one(found, "connectorsync_fsync_latency_seconds_count") == after


def test_the_server_listens_on_loopback_only_and_stops_on_close(cache_path: str) -> None:
    lg = Logger(cache_path, metrics_port=0)
    url = lg.metrics_url
    assert url is not None
    port = int(url.split(":")[2].split("/")[0])
    assert scrape(url)
    # Bound to 127.0.0.1, not to every address: 127.0.0.2 (loopback too on Linux) and the
    # machine's own address are refused.
    others = {"127.0.0.2", socket.gethostbyname(socket.gethostname())} - {"127.0.0.1"}
    for address in others:
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass
    lg.close()
    assert lg.metrics_url is None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # The port is free again: another server may take it at once.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        again.bind(("127.0.0.1", port))


def test_setting_metrics_port_starts_moves_and_stops_the_server(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        assert lg.metrics_url is None and lg.metrics_port is None
        lg.metrics_port = 0
        first = lg.metrics_url
        assert first is not None and scrape(first)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        lg.metrics_port = free
        assert lg.metrics_url == f"http://127.0.0.1:{free}/metrics" and scrape(lg.metrics_url)
        lg.metrics_port = None
        assert lg.metrics_url is None


def test_metrics_port_is_not_stored_in_the_cache(cache_path: str) -> None:
    """Another process opening the cache (``connectorsync sync``) must not take the port."""
    with Logger(cache_path, metrics_port=0) as lg:
        assert lg.metrics_port == 0
    with Logger(cache_path) as lg:
        assert lg.metrics_port is None and lg.metrics_url is None


def test_a_port_in_use_is_a_clear_error_and_leaves_no_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = str(tmp_path / "new.db")
        with pytest.raises(ConfigurationError, match=f"metrics_port {port}: cannot listen"):
            Logger(path, metrics_port=port)
    assert not os.path.exists(path)
    for bad in (-1, 65536, "9100", True, 1.5):
        with pytest.raises(ConfigurationError, match="metrics_port must be a TCP port"):
            Logger(str(tmp_path / "other.db"), metrics_port=bad)


def test_two_loggers_in_one_process_have_their_own_metrics(tmp_path: Path) -> None:
    with (
        Logger(str(tmp_path / "a.db"), metrics_port=0) as a,
        Logger(str(tmp_path / "b.db"), metrics_port=0) as b,
    ):
        a.addStream_force("temperature", {"type": "number"})
        b.addStream_force("humidity", {"type": "number"})
        a.insert("temperature", 1.0)
        for value in (1.0, 2.0, 3.0):
            b.insert("humidity", value)
        assert a.metrics_url != b.metrics_url
        found_a, found_b = samples(scrape(str(a.metrics_url))), samples(scrape(str(b.metrics_url)))
    assert one(found_a, "connectorsync_cached_datapoints", stream="temperature") == 1
    assert one(found_b, "connectorsync_cached_datapoints", stream="humidity") == 3
    assert ("connectorsync_cached_datapoints", (("stream", "humidity"),)) not in found_a
    assert one(found_a, "connectorsync_commit_latency_seconds_count") < one(
        found_b, "connectorsync_commit_latency_seconds_count"
    )


HOLDER = textwrap.dedent(
    """
    import sys
    from connectorsync import Logger

    lg = Logger(sys.argv[1], max_cached=3, on_full="drop_oldest")
    lg.addStream_force("temperature", {"type": "number"})
    for value in (1.0, 2.0, 3.0, 4.0):
        lg.insert("temperature", value)
    print("ready", flush=True)
    sys.stdin.read()  # holds the cache open until the test closes stdin
    lg.close()
    """
)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_cli_metrics_only_looks(cache_path: str) -> None:
    """``connectorsync metrics`` on a cache another process holds: the cache's metrics in the
    Prometheus text format, none of the holder's in-memory ones, and the file unchanged."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, cache_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        os.utime(cache_path, ns=(1_000_000_000, 1_000_000_000))  # any write would move it
        before = snapshot(cache_path)
        result = subprocess.run(
            [sys.executable, "-m", "connectorsync", "metrics", cache_path],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert snapshot(cache_path) == before
        found = samples(result.stdout, openmetrics=False)
        assert one(found, "connectorsync_cached_datapoints", stream="temperature") == 3
        assert one(found, "connectorsync_dropped_datapoints_total") == 1
        assert one(found, "connectorsync_dead_letters", stream="temperature") == 0
        assert one(found, "connectorsync_cache_size_bytes") == os.path.getsize(cache_path)
        assert one(found, "connectorsync_wal_size_bytes") > 0  # the holder's WAL
        assert not any(name.startswith("connectorsync_commit") for name, _ in found)
        assert not any(name.startswith("connectorsync_delivered") for name, _ in found)
        opened = subprocess.run(
            [sys.executable, "-m", "connectorsync", "metrics", cache_path, "--openmetrics"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert opened.returncode == 0 and opened.stdout.endswith("# EOF\n")
        assert samples(opened.stdout)[("connectorsync_dropped_datapoints_total", ())] == 1
        assert snapshot(cache_path) == before
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        holder.stdout.close()


def test_cli_metrics_of_a_missing_cache_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connectorsync", "metrics", str(tmp_path / "none.db")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no such cache file" in result.stderr
    assert not (tmp_path / "none.db").exists()


def snapshot(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        return f.read(), os.stat(path).st_mtime_ns


def test_last_sync_appears_after_a_good_pass(served: Logger) -> None:
    assert ("connectorsync_last_sync_timestamp_seconds", ()) not in samples(served.metrics())
    served.insert("temperature", 1.0)
    assert served.sync().ok
    found = samples(served.metrics())
    assert one(found, "connectorsync_last_sync_timestamp_seconds") == pytest.approx(
        served.lastsynctime
    )
    assert one(found, "connectorsync_cached_datapoints", stream="temperature") == 0


def metrics_threads() -> list[str]:
    """The threads serving /metrics connections (ours are named; socketserver's say
    ``process_request_thread``)."""
    import threading

    return [
        t.name
        for t in threading.enumerate()
        if "process_request_thread" in t.name or t.name.startswith("connectorsync-metrics")
    ]


def open_sockets() -> int:
    """Sockets this process has open now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def wait_for(condition: Any, seconds: float = 30.0) -> bool:
    import threading

    tick = threading.Event()
    for _ in range(int(seconds * 20)):
        if condition():
            return True
        tick.wait(0.05)
    return bool(condition())


def ended(client: socket.socket, seconds: float = 30.0) -> bool:
    """The server ended this connection: end of file, or reset (it had unread bytes)."""
    client.settimeout(seconds)
    try:
        return client.recv(100) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_are_bounded_and_gone_after_close(
    cache_path: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from connectorsync.metrics_server import MAX_CONNECTIONS

    sockets_before = open_sockets()
    lg = Logger(cache_path, metrics_port=0)
    url = lg.metrics_url
    assert url is not None
    port = int(url.split(":")[2].split("/")[0])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
    try:
        idle[0].sendall(b"GET /metr")  # half a request line, then nothing
        # Served at once: MAX_CONNECTIONS; the others were closed, without a thread.
        assert wait_for(lambda: len(metrics_threads()) == 1 + MAX_CONNECTIONS)
        lg.close()
        assert metrics_threads() == []
        for client in idle:  # every connection was ended by the server
            assert ended(client)
    finally:
        for client in idle:
            client.close()
    assert open_sockets() == sockets_before
    assert "Traceback" not in capfd.readouterr().err


def test_a_slow_client_does_not_block_a_scrape_and_is_cut(
    cache_path: str, capfd: pytest.CaptureFixture[str]
) -> None:
    import threading

    from connectorsync.metrics_server import REQUEST_DEADLINE

    with Logger(cache_path, metrics_port=0) as lg:
        url = lg.metrics_url
        assert url is not None
        port = int(url.split(":")[2].split("/")[0])
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        cut = threading.Event()

        def trickle() -> None:  # a header byte every 0.2 s: no single read ever times out
            with contextlib.suppress(OSError):
                slow.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                while not cut.wait(0.2):
                    slow.sendall(b"a")

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            assert "connectorsync_" in scrape(url)  # not held up by the slow one
            assert ended(slow, REQUEST_DEADLINE * 6)  # cut by the server, its deadline past
        finally:
            cut.set()
            sender.join(30)
            slow.close()
        assert "connectorsync_" in scrape(url)
    assert "Traceback" not in capfd.readouterr().err


def test_close_in_a_forked_child_returns_and_the_parent_serves(cache_path: str) -> None:
    """A child forked from a Logger that serves /metrics closes it (no serve loop runs in the
    child: close() waited for it for ever), and the parent's server and connections go on."""
    with Logger(cache_path, metrics_port=0) as lg:
        lg.add_stream("s", {"type": "number"})
        url = lg.metrics_url
        assert url is not None
        port = int(url.split(":")[2].split("/")[0])
        held = socket.create_connection(("127.0.0.1", port), timeout=30)
        held.sendall(b"GET /metrics HTTP/1.0\r\n")  # a request begun before the fork
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if close() returned
            code = 1
            try:
                import signal

                signal.alarm(30)  # a hung close() ends the child: not the test
                try:
                    lg.insert("s", 1.0)
                except CacheError:  # an inherited Logger refuses in the child (test_fork.py)
                    lg.close(timeout=1)
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        try:
            held.sendall(b"\r\n")  # the parent still serves the connection the child had too
            answer = b""
            while chunk := held.recv(65536):
                answer += chunk
        finally:
            held.close()
        assert answer.startswith(b"HTTP/1.0 200") and b"connectorsync_" in answer
        assert "connectorsync_" in scrape(url)


def test_a_port_in_use_set_on_a_serving_logger_changes_nothing(cache_path: str) -> None:
    """Refused, and nothing changes: the server goes on where it was, ``metrics_port`` keeps
    its value. The old server was stopped first, then the new port refused: nothing served
    any more, and ``metrics_port`` said the refused port."""
    with socket.socket() as busy, Logger(cache_path, metrics_port=0) as lg:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        url = lg.metrics_url
        assert url is not None
        with pytest.raises(ConfigurationError, match="in use"):
            lg.metrics_port = busy.getsockname()[1]
        assert lg.metrics_port == 0 and lg.metrics_url == url
        assert "connectorsync_" in scrape(url)
        lg.metrics_port = None
        assert lg.metrics_url is None


def test_each_remote_has_its_metrics_labelled_remote(cache_path: str) -> None:
    """Two remotes, one down: each its own held, up and failing-since; the metrics without
    a ``remote`` label stay as they were."""
    receiver = HTTPReceiver().start()
    try:
        receiver.fail_next(10**6, 503, path="/cloud/")
        remotes = {
            name: HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=5)
            for name in ("gateway", "cloud")
        }
        with Logger(cache_path, remotes=remotes) as lg:
            lg.addStream_force("s", {"type": "integer"})
            lg.insert_many("s", [1, 2, 3])
            assert not lg.sync().ok
            found = samples(lg.metrics())
    finally:
        receiver.stop()
    assert one(found, "connectorsync_remote_held_datapoints", remote="cloud") == 3
    assert one(found, "connectorsync_remote_held_datapoints", remote="gateway") == 0
    assert one(found, "connectorsync_remote_up", remote="cloud") == 0
    assert one(found, "connectorsync_remote_up", remote="gateway") == 1
    assert one(found, "connectorsync_remote_failing_since_timestamp_seconds", remote="cloud") > 0
    assert one(found, "connectorsync_remote_handed_over_datapoints_total", remote="cloud") == 0
    assert one(found, "connectorsync_cached_datapoints", stream="s") == 3
    assert one(found, "connectorsync_delivered_datapoints_total", stream="s") == 3
