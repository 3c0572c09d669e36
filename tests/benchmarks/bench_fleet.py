"""What a fleet of Loggers does to one server through an outage, from ONE run of this script.

``--loggers`` Loggers (200), spread over ``--processes`` child processes (4), each with a cache
file of its own under a temporary directory on disk and one number stream fed ``--rate``
datapoints/s (1), sync to ONE :class:`connectorsync.testing.ConnectorDBServer` on 127.0.0.1
(in this process, data in memory; a device and apikey per Logger) every ``--syncperiod``
seconds (5). Per configuration:

1. every Logger is closed and opened again, and all start syncing at the same instant (a
   fleet rebooted at once): the busiest second of their first passes shows ``sync_jitter``;
2. after half a period, ``--steady`` periods (4) of steady state: the server's mean
   requests/s (the reference) and its busiest second;
3. the server stops (listening socket and connections closed) for ``--outage`` seconds (60)
   and starts again on the same port with the same storage;
4. the busiest 1-second bucket of the first ``--after`` seconds (10) after it listens again,
   and the drain: seconds until every Logger has delivered everything it had inserted when
   the server came back (inserted minus still cached, checked every 0.2 s in each child);
5. inserting stops, the Loggers close (a last pass each), and the server must hold every
   datapoint inserted so far with every cache empty; otherwise the script fails.

The configurations: ``sync_jitter`` at its default (10% of syncperiod) or 0, and the syncer's
backoff with its full jitter (:func:`connectorsync.schedule.full_jitter`: uniform in
[0, 1 s x 2^n], capped at syncperiod) or the same exponential ceiling without the jitter
(:func:`~connectorsync.schedule.backoff_ceiling`), chosen in each child through
:data:`connectorsync.schedule.BACKOFF`, the one place the policy is chosen. The server
counts every request it reads (:meth:`ConnectorDBServer.request_times`); a request refused
during the outage never reaches it. A pass makes two requests (``GET ?q=this``, then one
``POST .../data``: a pass's backlog here is one batch). After an outage a Logger makes three
or four: the retry that succeeds, then at once the next periodic pass, whose time went by
while it retried (a ``GET`` to reconcile comes first if a batch was on the wire when the
server stopped).

Reading the figures: a busiest second is bounded by what this machine serves (the server and
the children share its cores), so a burst that asks for more (every Logger at once) shows as
the machine's capacity spread over the next seconds; the per-second series after the outage is
printed below the table for that reason. ``sync_jitter`` spreads passes over at most 10% of
the period, so a fleet started together stays bunched in steady state too: compare the steady
state's busiest second with its mean.

Why a syncperiod of 5 s: what matters is the outage and the backoff cap measured in periods
(60 s = 12 periods: the backoff reaches its cap, syncperiod, after 3 attempts, as a long
outage does with the default 600 s), and 200 Loggers at 5 s give the server ~80 requests/s,
well within what the in-process test server answers on a small machine, so the figures are
the fleet's and not the server's limit. The Loggers use ``durability="normal"``
(``--durability``): 200 fsyncs a second would measure the disk, not the wire.

Usage: python tests/benchmarks/bench_fleet.py [--loggers 200] [--processes 4] [--outage 60]
        [--syncperiod 5] [--rate 1] [--steady 4] [--after 10] [--configs a,b,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)

from connectorsync.testing import ConnectorDBServer  # noqa: E402

USER, STREAM, SCHEMA = "fleet", "reading", {"type": "number"}
TARGET_RATIO = 3.0  # peak requests/s after the outage <= 3x the steady state's mean
DRAIN_LIMIT = 300.0  # seconds; a fleet that has not drained by then is reported as not drained
REPLY_TIMEOUT = 120.0  # seconds a child may take to answer a command

# name -> (sync_jitter at its default, backoff with full jitter)
CONFIGS = {
    "defaults": (True, True),
    "no-sync-jitter": (False, True),
    "no-backoff-jitter": (True, False),
    "no-jitter": (False, False),
}


# --------------------------------------------------------------------------- children


class Fleet:
    """One child's Loggers, driven by JSON commands on stdin, one JSON reply per line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = [
            os.path.join(args.workdir, f"cache-{i:03d}.db")
            for i in range(args.first, args.first + args.count)
        ]
        self.inserted = [0] * args.count
        self.loggers: list[Any] = []
        self.halt = threading.Event()
        self.inserter: threading.Thread | None = None
        self.out_lock = threading.Lock()

    def reply(self, **message: Any) -> None:
        with self.out_lock:
            print(json.dumps(message), flush=True)

    def open(self, keys: list[Any], sync_jitter: bool, backoff_jitter: bool) -> None:
        """Open every Logger (not syncing yet); on the first open, one sync each creates the
        stream on the server, so that every configuration's first passes are alike. A key is
        an apikey for the test server, or a remote's configuration (a ``to_config()`` dict,
        ``bench_fleet_engines.py``): each Logger then delivers to that remote, its own."""
        from connectorsync import Logger, schedule
        from connectorsync.remotes import remote_from_config

        # For every Logger of this child (a process of the benchmark's own): Retry-After
        # still wins over either policy.
        schedule.BACKOFF = schedule.full_jitter if backoff_jitter else schedule.backoff_ceiling
        created = not os.path.exists(self.paths[0])
        options = {
            "serverurl": self.args.url,
            "syncperiod": self.args.syncperiod,
            "sync_jitter": None if sync_jitter else 0,
            "durability": self.args.durability,
        }
        self.loggers = []
        for path, key in zip(self.paths, keys, strict=True):
            if isinstance(key, dict):
                remote = remote_from_config(key)
                lg = Logger(path, remote=remote, syncraise=True, **options)
            else:
                lg = Logger(path, apikey=key, syncraise=True, **options)
            if created:
                lg.addStream_force(STREAM, SCHEMA)
                lg.sync()
            self.loggers.append(lg)
        self.reply(opened=len(self.loggers))

    def go(self, at: float) -> None:
        """At ``at`` (time.monotonic()), start every Logger's syncer and the inserts."""
        time.sleep(max(0.0, at - time.monotonic()))
        for lg in self.loggers:
            lg.start()
        self.halt.clear()
        self.inserter = threading.Thread(target=self.insert_loop, args=(at,), daemon=True)
        self.inserter.start()
        self.reply(started=time.monotonic())

    def insert_loop(self, at: float) -> None:
        tick, value = at, 0.0
        while not self.halt.wait(max(0.0, tick - time.monotonic())):
            for i, lg in enumerate(self.loggers):
                lg.insert(STREAM, value)
                self.inserted[i] += 1
            value += 1.0
            tick += 1.0 / self.args.rate

    def watch_drain(self, deadline: float) -> None:
        """Reply with the time.monotonic() at which every Logger had delivered all it had
        inserted when the command came (None: not by ``deadline`` seconds)."""
        owed = list(self.inserted)
        limit = time.monotonic() + deadline
        waiting = set(range(len(self.loggers)))
        while waiting and time.monotonic() < limit:
            for i in list(waiting):
                inserted = self.inserted[i]  # read before the cache: never overstates
                if inserted - len(self.loggers[i]) >= owed[i]:
                    waiting.discard(i)
            if waiting:
                time.sleep(0.2)
        self.reply(drained=None if waiting else time.monotonic())

    def stop(self) -> None:
        """Stop inserting, close every Logger (each makes a last pass), count what is left."""
        import apsw

        self.halt.set()
        if self.inserter is not None:
            self.inserter.join()
        for lg in self.loggers:
            lg.close()
        left = []
        for path in self.paths:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            left.append(list(conn.execute("SELECT count(*) FROM datapoints"))[0][0])
            conn.close()
        self.reply(inserted=self.inserted, left=left)

    def serve(self) -> None:
        for line in sys.stdin:
            command = json.loads(line)
            what = command.pop("cmd")
            if what == "exit":
                return
            if what == "drain":  # answered later, while the next commands are served
                threading.Thread(target=self.watch_drain, kwargs=command, daemon=True).start()
                continue
            getattr(self, what)(**command)


class Child:
    """A child process running a :class:`Fleet`, with its replies read by a thread."""

    def __init__(self, args: argparse.Namespace, first: int, keys: list[str], url: str) -> None:
        self.keys, self.first = keys, first
        self.stderr_path = os.path.join(args.workdir, f"child-{first}.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        command = [sys.executable, os.path.abspath(__file__), "--child", "--workdir", args.workdir]
        command += ["--first", str(first), "--count", str(len(keys)), "--url", url]
        command += ["--syncperiod", repr(args.syncperiod), "--rate", repr(args.rate)]
        command += ["--durability", args.durability]
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True,
            )  # fmt: skip
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            self.replies.put(json.loads(line))
        self.replies.put(None)  # the child ended

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next reply, which must hold ``key``; a child that says otherwise, or nothing
        in ``timeout`` seconds, fails the run (its stderr shown)."""
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            message = None
        if message is None or key not in message:
            self.proc.kill()
            with open(self.stderr_path) as err:
                sys.stderr.write(err.read()[-5000:])
            raise SystemExit(f"FAILED: child {self.first} did not answer {key!r} ({message!r})")
        return message

    def exit(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- parent


def buckets(times: list[float], start: float, seconds: float) -> list[int]:
    """Requests per 1-second bucket of [start, start + seconds)."""
    counts = [0] * max(1, math.ceil(seconds))
    for t in times:
        if start <= t < start + seconds:
            counts[int(t - start)] += 1
    return counts


def run_config(
    name: str, srv: ConnectorDBServer, children: list[Child], args: argparse.Namespace
) -> dict[str, Any]:
    sync_jitter, backoff_jitter = CONFIGS[name]
    period = args.syncperiod
    for child in children:
        child.send("open", keys=child.keys, sync_jitter=sync_jitter, backoff_jitter=backoff_jitter)
    for child in children:
        child.expect("opened")
    go = time.monotonic() + 0.5  # every child has its Loggers open: they start together
    for child in children:
        child.send("go", at=go)
    for child in children:
        child.expect("started")
    steady_from = go + period / 2
    outage_at = steady_from + args.steady * period
    time.sleep(max(0.0, outage_at - time.monotonic()))
    srv.stop()
    time.sleep(args.outage)
    srv.start()
    back = time.monotonic()
    for child in children:
        child.send("drain", deadline=DRAIN_LIMIT)
    drained = [child.expect("drained", DRAIN_LIMIT + 30)["drained"] for child in children]
    time.sleep(max(0.0, back + args.after - time.monotonic()))
    for child in children:
        child.send("stop")
    finals = [(child, child.expect("inserted")) for child in children]
    check(srv, finals, name)

    times = srv.request_times()
    steady = buckets(times, steady_from, args.steady * period)
    after = buckets(times, back, args.after)
    mean = sum(steady) / (args.steady * period)
    return {
        "name": name,
        "sync_jitter": sync_jitter,
        "backoff_jitter": backoff_jitter,
        "first": max(buckets(times, go, period / 2)),
        "mean": mean,
        "steady_peak": max(steady),
        "after": after,
        "peak": max(after),
        "drain": None if None in drained else max(drained) - back,
    }


def check(srv: ConnectorDBServer, finals: list[tuple[Child, dict[str, Any]]], name: str) -> None:
    """The server holds every datapoint inserted so far, and every cache is empty."""
    problems = []
    for child, final in finals:
        for offset, (count, rest) in enumerate(zip(final["inserted"], final["left"], strict=True)):
            stream = f"{USER}/d{child.first + offset:03d}/{STREAM}"
            stored = len(srv.datapoints(stream))
            if stored != count or rest:
                problems.append(f"{stream}: {count} inserted, {stored} stored, {rest} cached")
    if problems:
        raise SystemExit(f"FAILED: {name}: " + "; ".join(problems[:10]))


def print_table(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    default_jitter = 0.1 * args.syncperiod
    print(
        f"fleet benchmark: {args.loggers} Loggers in {args.processes} processes, one cache file "
        f"each (durability={args.durability}), one number stream at {args.rate:g} datapoint/s "
        f"each, syncing every {args.syncperiod:g} s to one test server (127.0.0.1, in memory); "
        f"all Loggers restarted together, {args.steady} periods of steady state from half a "
        f"period on, then a {args.outage:g} s outage; 1-second buckets; one run "
        f"({seconds:.0f} s) on {os.uname().machine}, {os.cpu_count()} cores"
    )
    print()
    print(
        "| configuration | sync_jitter | backoff | first passes: peak req/s | steady: mean "
        f"req/s | steady: peak req/s | after outage: peak req/s (first {args.after:g} s) "
        "| peak / steady mean | drain |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        jitter = f"{default_jitter:g} s (default)" if r["sync_jitter"] else "0"
        backoff = "full jitter" if r["backoff_jitter"] else "no jitter"
        ratio = r["peak"] / r["mean"] if r["mean"] else math.inf
        verdict = f"<= {TARGET_RATIO:g}x: " + ("met" if ratio <= TARGET_RATIO else "MISSED")
        target = f" ({verdict})" if r["sync_jitter"] else ""
        drain = f"{r['drain']:.1f} s" if r["drain"] is not None else f"> {DRAIN_LIMIT:.0f} s"
        print(
            f"| {r['name']} | {jitter} | {backoff} | {r['first']} | {r['mean']:.1f} | "
            f"{r['steady_peak']} | {r['peak']} | {ratio:.1f}x{target} | {drain} |"
        )
    print()
    print(f"requests per second after the server returned (first {args.after:g} s):")
    for r in results:
        print(f"  {r['name']}: {' '.join(str(n) for n in r['after'])}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loggers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the server is down")
    parser.add_argument("--syncperiod", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1.0, help="datapoints/s per Logger")
    parser.add_argument("--steady", type=int, default=4, help="periods of steady state")
    parser.add_argument("--after", type=float, default=10.0, help="seconds watched after")
    parser.add_argument("--durability", default="normal", choices=["full", "batched", "normal"])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
    )
    # The hidden arguments of a child.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--workdir", "--url"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--first", "--count"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if not 1 <= args.processes <= args.loggers:
        parser.error("need 1 <= --processes <= --loggers")
    if min(args.outage, args.syncperiod, args.rate, args.after) <= 0 or args.steady < 1:
        parser.error("--outage, --syncperiod, --rate, --after and --steady must be > 0")
    return args


def main() -> None:
    args = parse()
    if args.child:
        Fleet(args).serve()
        return
    started = time.perf_counter()
    args.workdir = tempfile.mkdtemp(prefix="bench-fleet-")
    srv = ConnectorDBServer().start()
    children: list[Child] = []
    try:
        keys = [srv.add_device(USER, f"d{i:03d}") for i in range(args.loggers)]
        share = math.ceil(args.loggers / args.processes)
        for first in range(0, args.loggers, share):
            children.append(Child(args, first, keys[first : first + share], srv.url))
        results = []
        for name in args.configs:
            results.append(run_config(name, srv, children, args))
            r = results[-1]
            print(
                f"{name}: steady {r['mean']:.1f} req/s, peak after the outage {r['peak']} "
                f"req/s, after: {r['after']}, drained in {r['drain'] or math.inf:.1f} s",
                file=sys.stderr,
            )
    finally:
        for child in children:
            child.exit()
        srv.close()
        shutil.rmtree(args.workdir, ignore_errors=True)
    print_table(results, args, time.perf_counter() - started)


if __name__ == "__main__":
    main()
