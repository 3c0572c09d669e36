"""Sync speed and memory of connectorsync against connectordb 0.3.5, from ONE run of this script.

A backlog of N datapoints of one number stream (values 20.0 + i % 10, timestamps 1 ms
apart; the same data for every contender) waits in a cache file and one ``Logger.sync()``
drains it into a local ConnectorDB test server (``python -m connectorsync serve``, its own
process, data in memory). For each contender it measures datapoints/s of that ``sync()`` and
the client's peak RSS growth during it:

- connectorsync ``Logger.sync`` with ``durability="normal"`` and with the default ``"full"``,
  default ``batch_size``;
- ``connectordb`` 0.3.5 ``Logger.sync`` (its cache table filled directly with apsw, as its
  ``insert_many`` is broken).

Then the same backlog goes into a real InfluxDB 1.x (``influxd``, started on 127.0.0.1 in a
temporary directory by :class:`connectorsync.testing.influx.InfluxDBServer`; skipped with a
message when it is not installed):

- connectorsync ``Logger.sync`` with an ``InfluxDBRemote``, ``"normal"`` and ``"full"``, with
  plain bodies as the loop sends them, and ``"normal"`` with gzip (the remote's default);
- the ceiling: a plain loop over the same points that builds the same line protocol and POSTs
  it in batches of the same size with one ``requests.Session``, with no cache behind it.

influxd compacts in the background what one contender wrote while the next one runs, so the
three run ``--rounds`` times (3), the order rotated each round, and the median round counts.

Each contender drains into a stream (or database) of its own on the same server. Its cache
is filled in one child process and synced in a fresh one, so that the RSS figures are per
contender and not disturbed by the fill. Afterwards the server must hold exactly N points
(the last one as generated) and the cache must be empty; otherwise the script fails.

Usage: python tests/benchmarks/bench_sync.py [--count N] [--cdb-count M] [--no-influxdb]
                                             [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

USER, DEVICE = "bench", "sync"
DEVICE_PATH = f"{USER}/{DEVICE}"
SCHEMA = {"type": "number"}
STEP = 0.001  # seconds between consecutive timestamps of the backlog
APIKEY_ENV = "BENCH_SYNC_APIKEY"  # the apikey reaches the children here, not on argv
CHILD_TIMEOUT = 900.0  # seconds; a child that takes longer has hung

TARGET_RATIO = 1.5
TARGET_RATE = 50_000
TARGET_RSS_MB = 50.0
TARGET_INFLUX_RATIO = 0.7  # of the plain requests loop into the same influxd
BATCH_SIZE = 5000  # connectorsync's default batch_size, used by the requests loop too

# name -> (label in the table, durability column)
CONTENDERS = {
    "cs-normal": ("connectorsync Logger.sync", "normal"),
    "cs-full": ("connectorsync Logger.sync", "full"),
    "cdb": ("connectordb 0.3.5 Logger.sync", "its own (rollback journal, FULL)"),
    "influx-normal": ("connectorsync Logger.sync, InfluxDBRemote", "normal"),
    "influx-full": ("connectorsync Logger.sync, InfluxDBRemote", "full"),
    "influx-gzip-normal": ("connectorsync Logger.sync, InfluxDBRemote, gzip", "normal"),
    "influx-requests": ("plain requests loop, line protocol", "(no cache)"),
}


def point(i: int, t0: float) -> tuple[float, float]:
    """Datapoint ``i`` of the backlog: (t, value)."""
    return t0 + i * STEP, 20.0 + i % 10


def backlog(count: int, t0: float) -> Iterator[tuple[float, float]]:
    """The datapoints every contender syncs, timestamps strictly increasing."""
    return (point(i, t0) for i in range(count))


# --------------------------------------------------------------------------- children


def rss_kib() -> int:
    """The current resident set size of this process, in KiB (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def max_rss_kib() -> int:
    """The high-water mark of this process's RSS so far, in KiB (Linux's unit)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def durability_of(contender: str) -> str:
    return contender.rsplit("-", 1)[1]


def fill_connectorsync(args: argparse.Namespace, apikey: str) -> None:
    from connectorsync import Logger

    lg = Logger(args.path, durability=durability_of(args.contender))
    if args.contender.startswith("cs-"):  # the ConnectorDB remote reads these from the cache
        lg.apikey = apikey
        lg.serverurl = args.url
    lg.addStream(args.stream, SCHEMA)
    points = [{"t": t, "d": d} for t, d in backlog(args.count, args.t0)]
    stored = lg.insert_many(args.stream, points)
    lg.close()
    assert stored == args.count, stored


def fill_connectordb(args: argparse.Namespace, apikey: str) -> None:
    from connectordb.logger import Logger as OldLogger

    def init(lg: Any) -> None:
        lg.apikey = apikey
        lg.serverurl = args.url
        lg.addStream_force(args.stream, SCHEMA)

    OldLogger(args.path, on_create=init).close()
    # Its insert_many cannot commit (``c.exectute``): fill its table as it would have.
    conn = apsw.Connection(args.path)
    with conn:
        conn.executemany(
            "INSERT INTO cache (stream, timestamp, jsondata) VALUES (?, ?, ?)",
            ((args.stream, t, json.dumps(d)) for t, d in backlog(args.count, args.t0)),
        )
    conn.close()


Steps = tuple[Callable[[], object], Callable[[], int]]


def open_connectorsync(args: argparse.Namespace) -> Steps:
    """Open the filled cache; return (sync, close returning how many points are left)."""
    from connectorsync import InfluxDBRemote, Logger

    remote = None
    if args.contender.startswith("influx-"):
        # Plain bodies, as the requests loop sends them; gzip (the default) has a row of its own.
        gzip = "gzip" if "-gzip-" in args.contender else None
        remote = InfluxDBRemote(args.url, args.db, compression=gzip)
    lg = Logger(args.path, durability=durability_of(args.contender), remote=remote)

    def run() -> None:
        report = lg.sync()
        if not report.ok or report.sent != {args.stream: args.count}:
            raise SystemExit(f"connectorsync sync failed: {report!r}")

    def close() -> int:
        left = len(lg)
        lg.close()
        return left

    return run, close


def open_connectordb(args: argparse.Namespace) -> Steps:
    """Open the filled cache; return (sync, close returning how many points are left)."""
    from connectordb.logger import Logger as OldLogger

    lg = OldLogger(args.path, syncraise=True)  # else a failed sync() is silent

    def close() -> int:
        left = len(lg)
        lg.close()
        return left

    return lg.sync, close


def line_protocol_loop(args: argparse.Namespace) -> Steps:
    """The ceiling: the backlog's points, as line protocol, POSTed in batches of BATCH_SIZE."""
    session = requests.Session()
    url = f"{args.url}/write"
    params = {"db": args.db, "precision": "ns"}

    def run() -> None:
        lines: list[str] = []
        for t, d in backlog(args.count, args.t0):
            lines.append(f"{args.stream} value={d!r} {round(t * 1e9)}")
            if len(lines) == BATCH_SIZE:
                session.post(
                    url, params=params, data="\n".join(lines), timeout=60
                ).raise_for_status()
                lines.clear()
        if lines:
            session.post(url, params=params, data="\n".join(lines), timeout=60).raise_for_status()

    def close() -> int:
        session.close()
        return 0

    return run, close


def child(args: argparse.Namespace) -> None:
    """One step of one contender; the last line of stdout is a JSON object for the parent."""
    apikey = os.environ.get(APIKEY_ENV, "")
    cdb = args.contender == "cdb"
    if args.child == "fill":
        start = time.perf_counter()
        (fill_connectordb if cdb else fill_connectorsync)(args, apikey)
        print(json.dumps({"fill_seconds": time.perf_counter() - start}))
        return

    if cdb:
        run, close = open_connectordb(args)
    elif args.contender == "influx-requests":
        run, close = line_protocol_loop(args)
    else:
        run, close = open_connectorsync(args)
    # Peak RSS growth = ru_maxrss after the sync - RSS right before it. This process never
    # held the backlog in Python objects (another process filled the cache), so its
    # high-water mark before the sync is its RSS before the sync, and ru_maxrss after it is
    # the exact peak reached during the sync (the kernel tracks every page, however short
    # lived). Filling in this process would have left a higher fill-time mark that hides the
    # sync's peak, and freed-but-resident fill memory that the sync reuses without growing
    # RSS, so a 10 ms /proc sampler would understate it too. ``maxrss_before_kib`` is
    # reported so the parent can check that the mark was not already above the RSS.
    rss_before = rss_kib()
    maxrss_before = max_rss_kib()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    maxrss_after = max_rss_kib()
    left = close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_kib": rss_before,
                "maxrss_before_kib": maxrss_before,
                "maxrss_after_kib": maxrss_after,
                "left_in_cache": left,
            }
        )
    )


# --------------------------------------------------------------------------- parent


class Server:
    """``python -m connectorsync serve`` in its own process, on 127.0.0.1."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connectorsync",
                "serve",
                "--port",
                "0",
                "--device",
                DEVICE_PATH,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        out = self.proc.stdout
        assert out is not None
        # readline() cannot time out: read in a thread, so a server that never speaks is caught.
        reader = threading.Thread(
            target=lambda: lines.extend(out.readline().strip() for _ in range(2)), daemon=True
        )
        reader.start()
        reader.join(30)
        if len(lines) != 2 or not lines[0].startswith("http://127.0.0.1:") or not lines[1]:
            self.stop()
            raise SystemExit(f"FAILED: the test server did not start (it said {lines!r})")
        self.url, self.apikey = lines
        self.http = requests.Session()
        self.http.auth = ("", self.apikey)

    def stream_url(self, stream: str) -> str:
        return f"{self.url}/api/v1/crud/{USER}/{DEVICE}/{stream}"

    def create_stream(self, stream: str) -> None:
        body = json.dumps({"schema": json.dumps(SCHEMA)})
        self.http.post(self.stream_url(stream), data=body, timeout=30).raise_for_status()

    def length(self, stream: str) -> int:
        response = self.http.get(self.stream_url(stream) + "/data", params={"q": "length"})
        response.raise_for_status()
        return int(response.text)

    def last(self, stream: str) -> dict[str, Any] | None:
        response = self.http.get(self.stream_url(stream) + "/data", params={"i1": -1, "i2": 0})
        response.raise_for_status()
        points = response.json()
        return points[-1] if points else None

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def run_child(
    step: str,
    contender: str,
    path: str,
    url: str,
    stream: str,
    count: int,
    t0: float,
    *,
    apikey: str = "",
    db: str = "",
) -> dict[str, Any]:
    env = dict(os.environ)
    env[APIKEY_ENV] = apikey
    command = [sys.executable, os.path.abspath(__file__), "--child", step]
    command += ["--contender", contender, "--path", path, "--url", url, "--db", db]
    command += ["--stream", stream, "--count", str(count), "--t0", repr(t0)]
    done = subprocess.run(
        command, env=env, cwd=os.getcwd(), capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"FAILED: {step} of {contender} exited with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cache_left(contender: str, path: str) -> int:
    """Datapoints still in a contender's cache file, counted independently of the child."""
    table = "cache" if contender == "cdb" else "datapoints"
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(f"SELECT count(*) FROM {table}"))[0][0]
    finally:
        conn.close()


def measure(contender: str, server: Server, workdir: str, count: int, t0: float) -> dict[str, Any]:
    stream = contender.replace("-", "_")
    path = os.path.join(workdir, f"{contender}.db")
    server.create_stream(stream)
    key = server.apikey
    fill = run_child("fill", contender, path, server.url, stream, count, t0, apikey=key)
    result = run_child("sync", contender, path, server.url, stream, count, t0, apikey=key)
    result.update(fill, count=count)

    problems = []
    stored = server.length(stream)
    if stored != count:
        problems.append(f"the server holds {stored:,} datapoints, not {count:,}")
    last = server.last(stream)
    t, d = point(count - 1, t0)
    expected = {"t": t, "d": d}
    if last != expected:
        problems.append(f"the server's last datapoint is {last!r}, not {expected!r}")
    left = cache_left(contender, path)
    if left or result["left_in_cache"]:
        problems.append(f"{left:,} datapoints are still in the cache")
    return finish(contender, result, problems)


def finish(contender: str, result: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Fail on ``problems``; add the rate and the peak RSS growth to ``result``."""
    if problems:
        raise SystemExit(f"FAILED: {contender}: " + "; ".join(problems))
    if result["maxrss_before_kib"] > result["rss_before_kib"] + 2048:
        print(
            f"warning: {contender}: RSS high-water mark before the sync was "
            f"{result['maxrss_before_kib'] - result['rss_before_kib']} KiB above the RSS: "
            "the peak RSS growth may be understated by up to that",
            file=sys.stderr,
        )
    result["rate"] = result["count"] / result["seconds"]
    result["growth_mb"] = (result["maxrss_after_kib"] - result["rss_before_kib"]) / 1024
    return result


def measure_influx(
    contender: str, influxd: Any, workdir: str, count: int, t0: float, round_: int
) -> dict[str, Any]:
    """One InfluxDB contender into a database of its own; influxd must then hold the backlog."""
    measurement = "reading"
    db = f"{contender.replace('-', '_')}_{round_}"
    path = os.path.join(workdir, f"{contender}-{round_}.db")
    influxd.create_database(db)
    result: dict[str, Any] = {"fill_seconds": 0.0}
    if contender != "influx-requests":
        result = run_child("fill", contender, path, influxd.url, measurement, count, t0, db=db)
    result.update(
        run_child("sync", contender, path, influxd.url, measurement, count, t0, db=db),
        count=count,
    )

    problems = []
    answer = influxd.query(f'SELECT count("value"), last("value") FROM "{measurement}"', db)
    series = answer["results"][0].get("series") or [{"values": [[0, 0, None]]}]
    _, stored, last_value = series[0]["values"][0]
    if stored != count:
        problems.append(f"influxd holds {stored:,} points, not {count:,}")
    newest = influxd.query(f'SELECT * FROM "{measurement}" ORDER BY time DESC LIMIT 1', db)
    newest_ns = newest["results"][0]["series"][0]["values"][0][0]
    t, d = point(count - 1, t0)
    if last_value != d or abs(newest_ns - t * 1e9) > 1000:
        problems.append(f"the newest point is {newest_ns} ns = {last_value!r}, not {t!r} s = {d!r}")
    if contender != "influx-requests":
        left = cache_left(contender, path)
        if left or result["left_in_cache"]:
            problems.append(f"{left:,} datapoints are still in the cache")
    return finish(contender, result, problems)


INFLUX_CONTENDERS = ["influx-requests", "influx-normal", "influx-full", "influx-gzip-normal"]


def measure_influx_rounds(
    influxd: Any, workdir: str, args: argparse.Namespace, t0: float
) -> dict[str, dict[str, Any]]:
    """Every InfluxDB contender ``args.rounds`` times, the order rotated each round (influxd
    compacts in the background what the previous contender wrote, which slows whoever comes
    next); per contender the round with the median rate, and the largest RSS growth."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in INFLUX_CONTENDERS}
    for round_ in range(args.rounds):
        shift = round_ % len(INFLUX_CONTENDERS)
        for name in INFLUX_CONTENDERS[shift:] + INFLUX_CONTENDERS[:shift]:
            result = measure_influx(name, influxd, workdir, args.count, t0, round_)
            report(f"{name} (round {round_ + 1})", result)
            runs[name].append(result)
    medians = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["rate"])
        median = dict(ordered[len(ordered) // 2])
        median["growth_mb"] = max(r["growth_mb"] for r in results)
        median["rates"] = [r["rate"] for r in results]
        medians[name] = median
    return medians


def start_influxd(workdir: str) -> Any:
    """A started influxd in ``workdir``, or None (with a message) when it is not installed."""
    from connectorsync.testing.influx import InfluxDBServer, find_influxd

    if find_influxd() is None:
        print(
            "influxd (InfluxDB 1.x) is not installed: no InfluxDB rows "
            "(`apt-get install influxdb` to measure them)",
            file=sys.stderr,
        )
        return None
    return InfluxDBServer(os.path.join(workdir, "influxd")).start()


def connectordb_installed() -> bool:
    try:
        import connectordb.logger  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(results: dict[str, dict[str, Any]], seconds: float) -> None:
    cdb = results.get("cdb")
    print(
        f"sync benchmark: one Logger.sync() of a backlog of N datapoints of one number stream "
        f"into the test server (its own process, in memory, 127.0.0.1); fill and sync each in a "
        f"fresh child process; peak RSS growth = ru_maxrss after sync - RSS before sync; "
        f"default batch_size; one run ({seconds:.0f} s) on {os.uname().machine}, "
        f"{os.cpu_count()} cores, apsw {apsw.apsw_version()}"
    )
    print()
    print(
        "| measurement | durability | N | datapoints/s | peak RSS growth | reference "
        "| datapoints/s | ratio | target |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    for name, result in results.items():
        if name.startswith("influx-"):
            continue
        label, durability = CONTENDERS[name]
        figures = f"{result['count']:,} | {result['rate']:,.0f} | {result['growth_mb']:.1f} MB"
        if name == "cdb":
            print(f"| {label} | {durability} | {figures} | (the reference) | | | |")
            continue
        missed = []
        if result["rate"] < TARGET_RATE:
            missed.append("rate")
        if result["growth_mb"] >= TARGET_RSS_MB:
            missed.append("RSS")
        if cdb:
            ratio = result["rate"] / cdb["rate"]
            if ratio < TARGET_RATIO:
                missed.append("ratio")
            reference = f"connectordb 0.3.5 sync (N={cdb['count']:,}) | {cdb['rate']:,.0f}"
            ratio_text = f"{ratio:.2f}x"
        else:
            reference, ratio_text = "connectordb not installed | ", ""
        target = f">= {TARGET_RATIO}x, >= {TARGET_RATE:,}/s, < {TARGET_RSS_MB:.0f} MB: " + (
            "met" if not missed else "MISSED " + ", ".join(missed)
        )
        print(f"| {label} | {durability} | {figures} | {reference} | {ratio_text} | {target} |")

    ceiling = results.get("influx-requests")
    if ceiling is None:
        return
    print()
    print(
        f"into influxd {influxd_version()} (its own process, 127.0.0.1, a temporary data "
        f"directory): N points of one measurement, a database per contender and round, "
        f"batches of {BATCH_SIZE:,}; {len(ceiling['rates'])} rounds, the order rotated each "
        f"round; datapoints/s is the median round (all rounds in brackets), RSS the largest"
    )
    print()
    print(
        "| measurement | durability | N | datapoints/s | peak RSS growth | reference "
        "| datapoints/s | ratio | target |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    for name, result in results.items():
        if not name.startswith("influx-"):
            continue
        label, durability = CONTENDERS[name]
        rates = ", ".join(f"{r:,.0f}" for r in result["rates"])
        figures = (
            f"{result['count']:,} | {result['rate']:,.0f} ({rates}) | {result['growth_mb']:.1f} MB"
        )
        if result is ceiling:
            print(f"| {label} | {durability} | {figures} | (the ceiling) | | | |")
            continue
        ratio = result["rate"] / ceiling["rate"]
        verdict = "met" if ratio >= TARGET_INFLUX_RATIO else "MISSED"
        print(
            f"| {label} | {durability} | {figures} | plain requests loop | "
            f"{ceiling['rate']:,.0f} | {ratio:.2f}x | >= {TARGET_INFLUX_RATIO}x: {verdict} |"
        )


def influxd_version() -> str:
    from connectorsync.testing.influx import find_influxd

    binary = find_influxd()
    if binary is None:
        return "(not installed)"
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("InfluxDB ").split(" ")[0]


def report(name: str, r: dict[str, Any]) -> None:
    """One contender's figures on stderr, as they come."""
    print(
        f"{name}: N={r['count']:,} filled in {r['fill_seconds']:.1f} s, synced in "
        f"{r['seconds']:.1f} s ({r['rate']:,.0f}/s), peak RSS growth {r['growth_mb']:.1f} MB",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="datapoints in the backlog")
    parser.add_argument(
        "--cdb-count",
        type=int,
        help="backlog for connectordb 0.3.5 (default: --count); its sync holds the whole "
        "backlog in memory",
    )
    # The hidden arguments of a child run.
    parser.add_argument(
        "--no-influxdb", action="store_true", help="leave out the InfluxDB measurements"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the InfluxDB measurements (median)"
    )
    for name in ("--child", "--contender", "--path", "--url", "--stream", "--db"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 1 or (args.cdb_count is not None and args.cdb_count < 1):
        parser.error("counts must be >= 1")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.child:
        child(args)
        return

    started = time.perf_counter()
    # The same timestamps for every contender, all in the past (from a day ago).
    t0 = float(int(time.time()) - 86_400)
    contenders = ["cs-normal", "cs-full"]
    if connectordb_installed():
        contenders.append("cdb")
    else:
        print("connectordb is not installed: no reference row", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    workdir = tempfile.mkdtemp(prefix="bench-sync-", dir=os.getcwd())
    try:
        server = Server()
        try:
            for name in contenders:
                count = (args.cdb_count or args.count) if name == "cdb" else args.count
                results[name] = measure(name, server, workdir, count, t0)
                report(name, results[name])
        finally:
            status = server.stop()
            if status != 0:
                print(f"warning: the test server exited with status {status}", file=sys.stderr)
        influxd = None if args.no_influxdb else start_influxd(workdir)
        if influxd is not None:
            try:
                results.update(measure_influx_rounds(influxd, workdir, args, t0))
            finally:
                influxd.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, time.perf_counter() - started)


if __name__ == "__main__":
    main()
