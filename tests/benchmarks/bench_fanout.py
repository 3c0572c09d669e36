"""What several remotes cost (issue 17, point 6), from ONE run of this script.

Insert: ``--inserts`` calls of ``Logger.insert`` (``durability="normal"``; a tenth as many
with ``"full"``, whose every call waits for an fsync) and one ``insert_many`` of ``--count``
values, into a Logger with one remote and into one with three (``remotes=``, never started),
the same data. Nothing is done per remote at insert time, so three cost what one costs: the
ratio is the seconds per datapoint with three over those with one (target <= 1.1x).
``--insert-rounds`` rounds (7), the order swapped each round, the median counts.

Drain: a backlog of N datapoints of one number stream (as ``bench_sync.py`` makes it: values
20.0 + i % 10, timestamps 1 ms apart) waits in a cache file, filled in one child process and
drained in a fresh one by the Logger's background couriers (``start()``, ``syncperiod`` long
enough for one pass to drain it all, no jitter) into ConnectorDB test servers (``python -m
connectorsync serve``, each its own process, 127.0.0.1, in memory), started afresh for each
drain:

- to remote A alone, then to remote B alone (``remotes={"a": A}``, ``{"b": B}``);
- to both at once (``remotes={"a": A, "b": B}``): each courier drains in its own thread,
  and a datapoint leaves the cache once both have it.

A remote's rate is N over the time from ``start()`` until its server holds all N (this
process polls the servers' lengths every 10 ms); the ratio is each remote's rate together
over its rate alone (target >= 0.8x: their passes overlap). Each drain runs on loopback
(latency 0: the client's CPU is the limit, and two couriers share one interpreter) and with
each push waiting ``--latencies`` seconds more, as a round trip across a network would
(:class:`DistantRemote`). ``--rounds`` rounds (3), the order rotated each round, the median
round counts. Memory is the draining process's peak RSS growth (``VmHWM`` after the drain -
RSS before it, the mark reset first), with one remote and with two, at N / 4 and at N:
O(batch) per remote means it does not grow with N.

Afterwards every server must hold exactly the backlog, each datapoint once and in order
(read back and compared), and the cache file must be empty; otherwise the script fails.

Usage: python tests/benchmarks/bench_fanout.py [--count N] [--inserts M] [--rounds R]
                                               [--insert-rounds R] [--latencies S,S...]
                                               [--parts inserts,drains]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import apsw

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

# bench_sync's backlog, its test server and its RSS probes: the same data, measured alike.
from bench_sync import SCHEMA, Server, point, rss_kib  # noqa: E402

from connectorsync import ConnectorDBRemote, HTTPRemote, Logger  # noqa: E402
from connectorsync.batch import Datapoint  # noqa: E402

STREAM = "temperature"
APIKEYS_ENV = "BENCH_FANOUT_APIKEYS"  # the apikeys reach the children here, not on argv
CHILD_TIMEOUT = 900.0  # seconds; a child (or a drain) that takes longer has hung
POLL = 0.01  # seconds between two looks at the servers' lengths
TARGET_INSERT = 1.1  # three remotes' cost over one's, at most
TARGET_DRAIN = 0.8  # a remote's rate together over its rate alone, at least

# name -> the remotes its Logger delivers to
DRAINS = {"a": ("a",), "b": ("b",), "a+b": ("a", "b")}


# --------------------------------------------------------------------------- insert


def never_started(count: int) -> dict[str, HTTPRemote]:
    """``count`` remotes for a Logger that is never started (nothing listens there)."""
    names = ["cloud", "gateway", "alarms"][:count]
    return {name: HTTPRemote(f"http://127.0.0.1:9/{name}/{{stream}}") for name in names}


def insert_seconds(workdir: str, remotes: int, durability: str, count: int, *, many: bool) -> float:
    """Seconds for ``count`` inserts (one ``insert_many`` with ``many``) into a new Logger
    with ``remotes`` remotes."""
    path = os.path.join(workdir, f"insert-{remotes}-{durability}-{time.time_ns()}.db")
    lg = Logger(path, remotes=never_started(remotes), durability=durability)
    lg.addStream(STREAM, SCHEMA)
    values = [20.0 + i % 10 for i in range(count)]
    start = time.perf_counter()
    if many:
        lg.insert_many(STREAM, values)
    else:
        for value in values:
            lg.insert(STREAM, value)
    seconds = time.perf_counter() - start
    if len(lg) != count:
        raise SystemExit(f"FAILED: {len(lg)} datapoints cached after {count} inserts")
    lg.close()
    return seconds


INSERTS = {  # name -> (label, durability, many)
    "insert-normal": ("Logger.insert", "normal", False),
    "insert-full": ("Logger.insert", "full", False),
    "many-normal": ("Logger.insert_many", "normal", True),
}


def measure_inserts(workdir: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per measurement: datapoints, the median seconds with one remote and with three."""
    counts = {
        "insert-normal": args.inserts,
        "insert-full": max(1, args.inserts // 10),
        "many-normal": args.count,
    }
    runs: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.insert_rounds):
        order = (1, 3) if round_ % 2 == 0 else (3, 1)
        for name, (_, durability, many) in INSERTS.items():
            for remotes in order:
                seconds = insert_seconds(workdir, remotes, durability, counts[name], many=many)
                runs.setdefault((name, remotes), []).append(seconds)
    results = {}
    for name in INSERTS:
        one = statistics.median(runs[(name, 1)])
        three = statistics.median(runs[(name, 3)])
        results[name] = {"count": counts[name], "one": one, "three": three}
        print(
            f"{name}: {counts[name]:,} datapoints, one remote {counts[name] / one:,.0f}/s, "
            f"three {counts[name] / three:,.0f}/s",
            file=sys.stderr,
        )
    return results


# --------------------------------------------------------------------------- children


def peak_rss_kib() -> int:
    """The high-water mark of this process's RSS, in KiB: ``VmHWM``, which (unlike
    ``ru_maxrss``) starts afresh at exec, so it never holds the parent's RSS at the fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise SystemExit("FAILED: /proc/self/status has no VmHWM")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> None:
    """Bring the high-water mark down to the RSS now (Linux 4.0+; else it stays where it is,
    and the parent is warned when it lies above the RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class DistantRemote(ConnectorDBRemote):
    """A ConnectorDB remote across a network: each batch's round trip takes ``latency``
    seconds more (half before the request, half after the answer), waited as a socket waits,
    without the GIL. The test server's own delay would hold back this script's polls too."""

    def __init__(self, serverurl: str, apikey: str, latency: float):
        super().__init__(serverurl, apikey)
        self.latency = latency

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        time.sleep(self.latency / 2)
        super().push(stream, batch)
        time.sleep(self.latency / 2)


def remotes_for(args: argparse.Namespace) -> dict[str, ConnectorDBRemote]:
    """The remotes of a drain, by name, from ``--urls`` and the apikeys in the environment."""
    keys = json.loads(os.environ[APIKEYS_ENV])
    urls = json.loads(args.urls)
    if not args.latency:
        return {name: ConnectorDBRemote(urls[name], keys[name]) for name in urls}
    return {name: DistantRemote(urls[name], keys[name], args.latency) for name in urls}


def child_fill(args: argparse.Namespace) -> None:
    lg = Logger(args.path, remotes=remotes_for(args), durability="normal")
    lg.addStream(args.stream, SCHEMA)
    chunk = 100_000  # the fill is not measured; chunks keep this process small anyway
    start = time.perf_counter()
    for first in range(0, args.count, chunk):
        points = [
            {"t": t, "d": d}
            for t, d in (point(i, args.t0) for i in range(first, min(args.count, first + chunk)))
        ]
        lg.insert_many(args.stream, points)
    stored = len(lg)
    lg.close()
    if stored != args.count:
        raise SystemExit(f"the fill cached {stored} datapoints, not {args.count}")
    print(json.dumps({"fill_seconds": time.perf_counter() - start}), flush=True)


def child_drain(args: argparse.Namespace) -> None:
    """Start the couriers, say when (one JSON line), wait for the parent's word that every
    server holds the backlog, then for the cache to empty; report RSS (one JSON line)."""
    # A pass's backlog gets syncperiod seconds at most: one pass drains it all.
    lg = Logger(
        args.path, remotes=remotes_for(args), durability="normal", syncperiod=3600, sync_jitter=0
    )
    reset_peak_rss()
    rss_before, maxrss_before = rss_kib(), peak_rss_kib()
    cpu_before = cpu_seconds(os.getpid())
    started = time.monotonic()
    lg.start()
    print(json.dumps({"started": started}), flush=True)
    sys.stdin.readline()  # every server holds the backlog (or the parent gave up)
    cpu = cpu_seconds(os.getpid()) - cpu_before
    deadline = time.monotonic() + 60
    while len(lg) and time.monotonic() < deadline:  # the last batch's deletion
        time.sleep(0.05)
    maxrss_after = peak_rss_kib()
    left = len(lg)
    lg.close()
    result = {"rss_before_kib": rss_before, "maxrss_before_kib": maxrss_before}
    result.update(maxrss_after_kib=maxrss_after, left_in_cache=left, cpu=cpu)
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class Drain:
    """What one drain measurement is: the backlog's size and start, each push's latency."""

    count: int
    t0: float
    latency: float


def child_command(
    step: str, path: str, servers: dict[str, Server], drain: Drain
) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, os.path.abspath(__file__), "--child", step, "--path", path]
    command += ["--urls", json.dumps({name: s.url for name, s in servers.items()})]
    command += ["--stream", STREAM, "--count", str(drain.count), "--t0", repr(drain.t0)]
    command += ["--latency", repr(drain.latency)]
    env = dict(os.environ)
    env[APIKEYS_ENV] = json.dumps({name: s.apikey for name, s in servers.items()})
    return command, env


def fill(path: str, servers: dict[str, Server], drain: Drain) -> float:
    command, env = child_command("fill", path, servers, drain)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"FAILED: the fill exited with status {done.returncode}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["fill_seconds"])


def read_line(proc: subprocess.Popen[str], timeout: float, errors: IO[str]) -> str:
    """The child's next line of stdout; fail when it says nothing for ``timeout`` seconds."""
    out = proc.stdout
    assert out is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0]:
        proc.kill()
        proc.wait()
        errors.seek(0)
        sys.stderr.write(errors.read())
        raise SystemExit("FAILED: the draining child stopped talking")
    return lines[0]


def drain(path: str, servers: dict[str, Server], setup: Drain) -> dict[str, Any]:
    """Drain the filled cache at ``path`` into ``servers``; per remote its rate, and the
    child's RSS figures."""
    count = setup.count
    command, env = child_command("drain", path, servers, setup)
    # Its stderr goes to a file: a pipe nobody reads while it drains could fill and stall it.
    errors = open(path + ".stderr", "w+")  # noqa: SIM115 - closed below, after the child
    proc = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
    )
    started = json.loads(read_line(proc, CHILD_TIMEOUT, errors))["started"]
    servers_cpu = sum(cpu_seconds(s.proc.pid) for s in servers.values())
    finished: dict[str, float] = {}
    deadline = time.monotonic() + CHILD_TIMEOUT
    while len(finished) < len(servers) and time.monotonic() < deadline:
        for name, server in servers.items():
            if name not in finished and server.length(STREAM) >= count:
                finished[name] = time.monotonic()
        time.sleep(POLL)
    servers_cpu = sum(cpu_seconds(s.proc.pid) for s in servers.values()) - servers_cpu
    assert proc.stdin is not None
    proc.stdin.write("go on\n")
    proc.stdin.flush()
    result = json.loads(read_line(proc, CHILD_TIMEOUT, errors))
    proc.communicate(timeout=CHILD_TIMEOUT)
    errors.seek(0)
    sys.stderr.write(errors.read())  # the child's warnings, if any
    errors.close()
    if proc.returncode != 0 or len(finished) < len(servers):
        raise SystemExit(f"FAILED: the drain ended with status {proc.returncode}, {finished}")
    result["rates"] = {name: count / (at - started) for name, at in finished.items()}
    # CPU per datapoint delivered (to any remote), microseconds: the client, the servers.
    delivered = count * len(servers)
    result["cpu_us"] = (1e6 * result["cpu"] / delivered, 1e6 * servers_cpu / delivered)
    result["growth_mb"] = (result["maxrss_after_kib"] - result["rss_before_kib"]) / 1024
    if result["maxrss_before_kib"] > result["rss_before_kib"] + 2048:
        print(
            "warning: the RSS high-water mark was above the RSS before the drain", file=sys.stderr
        )
    return result


def check_delivered(server: Server, count: int, t0: float) -> list[str]:
    """What is wrong with the server's copy of the backlog: every datapoint once, in order."""
    response = server.http.get(server.stream_url(STREAM) + "/data", params={"i1": 0, "i2": 0})
    response.raise_for_status()
    got = [(p["t"], p["d"]) for p in response.json()]
    expected = [point(i, t0) for i in range(count)]
    if got == expected:
        return []
    pairs = enumerate(zip(got, expected, strict=False))
    wrong = next((i for i, (g, e) in pairs if g != e), min(len(got), count))
    return [f"{server.url} holds {len(got):,} datapoints, not {count:,}; first wrong at {wrong}"]


def cache_left(path: str) -> int:
    """Datapoints still in the cache file, counted apart from the child."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(list(conn.execute("SELECT count(*) FROM datapoints"))[0][0])
    finally:
        conn.close()


def measure_drain(workdir: str, name: str, setup: Drain, tag: str) -> dict[str, Any]:
    """One drain: fresh servers, a fresh cache filled, drained, checked."""
    count, t0 = setup.count, setup.t0
    servers = {remote: Server() for remote in DRAINS[name]}
    try:
        for server in servers.values():
            server.create_stream(STREAM)
        path = os.path.join(workdir, f"{tag}-{name.replace('+', '')}.db")
        fill_seconds = fill(path, servers, setup)
        result = drain(path, servers, setup)
        problems = [p for server in servers.values() for p in check_delivered(server, count, t0)]
        left = cache_left(path)
        if left or result["left_in_cache"]:
            problems.append(f"{left:,} datapoints are still in the cache")
        if problems:
            raise SystemExit(f"FAILED: drain {name} (N={count:,}): " + "; ".join(problems))
    finally:
        for server in servers.values():
            server.stop()
    rates = ", ".join(f"{remote} {rate:,.0f}/s" for remote, rate in result["rates"].items())
    print(
        f"drain {name} ({tag}): N={count:,} filled in {fill_seconds:.1f} s; {rates}; "
        f"peak RSS growth {result['growth_mb']:.1f} MB; CPU per datapoint delivered: client "
        f"{result['cpu_us'][0]:.1f} us, servers {result['cpu_us'][1]:.1f} us",
        file=sys.stderr,
    )
    return result


def measure_drains(workdir: str, setup: Drain, rounds: int) -> dict[str, Any]:
    """Every drain ``rounds`` times, the order rotated; per drain and remote the median
    rate, and per drain the largest RSS growth."""
    tag = f"{setup.count}-{setup.latency * 1000:g}ms"
    names = list(DRAINS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(measure_drain(workdir, name, setup, f"{tag}-{round_}"))
    return {
        name: {
            "rates": {
                remote: statistics.median(r["rates"][remote] for r in results)
                for remote in DRAINS[name]
            },
            "all": {remote: [r["rates"][remote] for r in results] for remote in DRAINS[name]},
            "growth_mb": max(r["growth_mb"] for r in results),
            "cpu_us": tuple(statistics.median(r["cpu_us"][i] for r in results) for i in (0, 1)),
        }
        for name, results in runs.items()
    }


# --------------------------------------------------------------------------- the table


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_tables(
    inserts: dict[str, dict[str, Any]],
    drains: dict[Drain, dict[str, Any]],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    print(
        f"fan-out benchmark: one run ({seconds:.0f} s) on {os.uname().machine}, "
        f"{os.cpu_count()} cores, apsw {apsw.apsw_version()}; inserts: medians of "
        f"{args.insert_rounds} rounds; drains: medians of {args.rounds} rounds, by the "
        "background couriers into ConnectorDB test servers (each its own process, "
        "127.0.0.1), default batch_size"
    )
    if inserts:
        print_inserts(inserts)
    if drains:
        print_drains(drains)


def print_inserts(inserts: dict[str, dict[str, Any]]) -> None:
    print()
    print(
        "| measurement | durability | N | one remote: datapoints/s "
        "| three remotes: datapoints/s | cost ratio (three / one) | target |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for name, r in inserts.items():
        label, durability, _ = INSERTS[name]
        ratio = r["three"] / r["one"]
        print(
            f"| {label} | {durability} | {r['count']:,} | {r['count'] / r['one']:,.0f} | "
            f"{r['count'] / r['three']:,.0f} | {ratio:.2f}x | <= {TARGET_INSERT}x: "
            f"{verdict(ratio <= TARGET_INSERT)} |"
        )


def print_drains(drains: dict[Drain, dict[str, Any]]) -> None:
    print()
    print(
        "| drain | latency per batch | N | alone: datapoints/s "
        "| together: datapoints/s (rounds) | ratio (together / alone) | target "
        "| client CPU per datapoint delivered: alone / together |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for setup, results in drains.items():
        together = results["a+b"]
        for remote in ("a", "b"):
            alone = results[remote]["rates"][remote]
            both = together["rates"][remote]
            spread = ", ".join(f"{r:,.0f}" for r in together["all"][remote])
            ratio = both / alone
            print(
                f"| remote {remote.upper()} | {setup.latency * 1000:g} ms | {setup.count:,} | "
                f"{alone:,.0f} | {both:,.0f} ({spread}) | {ratio:.2f}x | >= {TARGET_DRAIN}x: "
                f"{verdict(ratio >= TARGET_DRAIN)} | {results[remote]['cpu_us'][0]:.1f} / "
                f"{together['cpu_us'][0]:.1f} us |"
            )
    print()
    columns = [f"N = {d.count:,}, {d.latency * 1000:g} ms" for d in drains]
    print("| draining process: peak RSS growth | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, label in (("a", "one remote (A)"), ("b", "one remote (B)"), ("a+b", "two remotes")):
        row = " | ".join(f"{results[name]['growth_mb']:.1f} MB" for results in drains.values())
        print(f"| {label} | {row} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--count", type=int, default=400_000, help="datapoints in the backlog (also at N / 4)"
    )
    parser.add_argument(
        "--inserts", type=int, default=20_000, help='Logger.insert calls ("full": a tenth)'
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the drains (median)")
    parser.add_argument(
        "--insert-rounds",
        type=int,
        default=7,
        help="rounds of the inserts (median; an insert takes a second, a drain many)",
    )
    parser.add_argument(
        "--parts", default="inserts,drains", help="what to measure: inserts, drains or both"
    )
    parser.add_argument(
        "--latencies",
        default="0,0.05,0.2",
        help="seconds each push waits as a round trip would, comma-separated (0: loopback)",
    )
    for name in ("--child", "--path", "--urls", "--stream"):  # a child's, hidden
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 4 or min(args.inserts, args.rounds, args.insert_rounds) < 1:
        parser.error("--count must be >= 4, --inserts and the rounds >= 1")
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"inserts", "drains"}:
        parser.error(f"--parts must be inserts, drains or inserts,drains; got {args.parts!r}")
    steps: dict[str, Callable[[argparse.Namespace], None]] = {
        "fill": child_fill,
        "drain": child_drain,
    }
    if args.child:
        steps[args.child](args)
        return
    try:
        latencies = [float(x) for x in args.latencies.split(",")]
    except ValueError:
        parser.error(f"--latencies must be seconds, comma-separated; got {args.latencies!r}")
    if any(not 0 <= x < 10 for x in latencies):
        parser.error("--latencies must each be at least 0 and less than 10 s")

    started = time.perf_counter()
    t0 = float(int(time.time()) - 86_400)  # the same timestamps for every drain, a day ago
    workdir = tempfile.mkdtemp(prefix="bench-fanout-", dir=os.getcwd())
    try:
        inserts = measure_inserts(workdir, args) if "inserts" in parts else {}
        setups = [Drain(n, t0, x) for x in latencies for n in (args.count // 4, args.count)]
        drains = {
            setup: measure_drains(workdir, setup, args.rounds)
            for setup in (setups if "drains" in parts else [])
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_tables(inserts, drains, args, time.perf_counter() - started)


if __name__ == "__main__":
    main()
