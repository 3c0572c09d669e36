"""Power-cut torture: the power goes at a random I/O operation; what was promised is kept.

Each cut point runs one phase of work (tests/helpers/powercut_workload.py: inserts with each
durability, group commits from several threads, sync passes to a loopback ConnectorDB
server, WAL checkpoints, the vacuum steps and TRUNCATE checkpoint that give space back after
a sync, migrations of a connectordb 0.3.5 and of a v1 cache, ``drop_oldest``, thinning, two
priorities in a full thinning cache, dead-letter retries, a failing disk (also in a capped
cache that drops its oldest), two remotes on one cache: tests/helpers/powercut_fanout.py, a
sealed cache (issue 19) inserting, syncing and retrying dead letters; ``connectorsync
rekey`` has a torture of its own below) in a child process whose disk keeps only what was
fsynced; the power goes at its N-th I/O operation (xWrite/xSync/xTruncate/xDelete), N drawn
from a seeded RNG over the phase's whole range (a run without a cut counts it first). What
the child did before is read from its stdout, not from the cache. Then the -shm file is
removed (shared memory does not survive a reboot), the cache is reopened by this (normal)
process and:

- ``PRAGMA integrity_check`` is ok;
- per stream, cached datapoints keep insertion order with strictly increasing timestamps;
- every datapoint whose ``insert()`` returned is there (``full``, group commits), or all but
  those returned within the last ``commit_interval`` + the longest commit + 1 s of slack for
  a loaded machine before the cut (``batched``); ``normal`` promises order only;
- nothing is missing in the middle: what the cache and the server hold together is each
  stream's values from the first on, but the oldest ones ``drop_oldest`` counted as dropped
  (phase ``thin``: the missing ones are anywhere but the first, and as many as were counted
  dropped and thinned; phase ``priority``, two streams of priorities 0 and 5 in a full
  thinning cache: the first too, once something was dropped; an insert refused to spare the
  higher priority is never stored);
- a sync of the reopened cache to the same server leaves it with every datapoint that was
  cached or delivered before, each exactly once (ConnectorDB is "ordered"), and no dead letter.

With several remotes (phases ``fanout``, ``fanout_give_up``; each remote delivers into a device
of its own), right after the cut each remote's position is in order and holds every promised
datapoint its server lacks (a remote with a fallback: the two together), and every cached
datapoint is held by some remote (``powercut_fanout.check_positions``); then each remote is
synced to the end and the checks above hold per remote: each remote that routes the streams,
with its fallback, has every promised datapoint exactly once (on one of the two: nothing
reaches both), the fallback as many as were counted handed over, and the cache is empty.

``make test`` runs :data:`CUTS` = 48 cut points; ``make soak``
(``CONNECTORSYNC_SOAK=1``) runs 1,000; ``POWERCUT_CUTS=n`` sets any number, ``POWERCUT_SEED=s``
the seed. Each run prints a one-line summary (cut points by phase, datapoints checked).

A new phase is one line of ``PHASES`` in tests/helpers/powercut_workload.py; the checks here
need nothing new (a new remote of a fan-out phase: one line of ``powercut_fanout.ROWS``).

Replaying a failure: its message names the seed, the cut's number, the phase and N, e.g.
``POWERCUT_REPLAY=sync_full:137 pytest tests/test_powercut.py`` runs that one cut point again
(exactly, for single-threaded phases; threads and commit timers make the others approximate),
and ``POWERCUT_SEED=s POWERCUT_CUTS=n`` replays the whole sequence.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest

from connectorsync import ConfigurationError, Logger
from connectorsync.cache.rekey import rekey
from connectorsync.cache.routing import HANDED_OVER
from connectorsync.keysource import read_key_file
from connectorsync.testing import ConnectorDBServer
from connectorsync.testing.groupcommit import GroupCommitProbe
from connectorsync.testing.probe import CacheProbe

from .conftest import PYTHON, ROOT, child_env, wait_for
from .helpers.powercut import CUT_EXIT
from .helpers.powercut_fanout import check_positions, groups, sync_remote
from .helpers.powercut_workload import (
    NEW,
    OLD_POINTS,
    PHASES,
    REFUSE,
    SEALED,
    Phase,
    build_template,
)

SOAK = os.environ.get("CONNECTORSYNC_SOAK") == "1"
#: ``POWERCUT_PHASES=name,name``: cut only these phases (a fix's own phases, run long).
_ONLY = {w.strip() for w in os.environ.get("POWERCUT_PHASES", "").split(",") if w.strip()}
ENABLED = sorted(name for name in PHASES if not _ONLY or name in _ONLY)
CUTS = int(os.environ.get("POWERCUT_CUTS", "1000" if SOAK else "48"))
SEED = int(os.environ.get("POWERCUT_SEED", "20261124"))
REPLAY = os.environ.get("POWERCUT_REPLAY")  # "PHASE:N": that one cut point only
SLACK = 1.0  # seconds of scheduling delay on a loaded machine, for the batched bound
MAX_FAILURES = 5  # stop after this many failed cut points: the first ones tell the story


@dataclass
class Outcome:
    """What the child reported before its power went."""

    returned: dict[str, list[tuple[int, float]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    syncs: int = 0
    raised: dict[str, set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    unknown: dict[str, set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    failing: list[tuple[float, float]] = field(default_factory=list)  # (F, R or inf)
    flushed: float = float("-inf")  # the last flush() that returned
    ops: int = 0  # the operation the power went at, or how many the phase made in all
    at: float = 0.0  # when (the child's time.monotonic())
    latency: float = 0.0  # the longest recent batched commit
    cut: bool = False  # False: the phase ended first (and the power went after it)


def run_child(path: str, phase: str, cut_at: int, apikeys: dict[str, str], url: str) -> Outcome:
    others = [f"{name}={key}" for name, key in apikeys.items() if name != "default"]
    args = [path, phase, str(cut_at), apikeys["default"], url, *others]
    proc = subprocess.run(
        [PYTHON, "-m", "tests.helpers.powercut_workload", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        timeout=120,
    )
    out = proc.stdout.decode()
    assert proc.returncode in (0, CUT_EXIT), (
        f"the child failed ({proc.returncode}):\n" + (proc.stderr.decode()[-3000:])
    )
    outcome = Outcome()
    for line in out.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line cut short by the power: its event is not known to have happened
        kind, *words = line.split()
        if kind == "i":
            outcome.returned[words[0]].append((int(words[1]), float(words[2])))
        elif kind == "s":
            outcome.syncs += 1
        elif kind == "x":
            outcome.raised[words[0]].add(int(words[1]))
        elif kind == "u":
            outcome.unknown[words[0]].add(int(words[1]))
        elif kind == "F":
            outcome.failing.append((float(words[0]), float("inf")))
        elif kind == "R":
            outcome.failing[-1] = (outcome.failing[-1][0], float(words[0]))
        elif kind == "f":
            outcome.flushed = float(words[0])
        elif kind == "r":
            pass
        else:
            assert kind in ("cut", "end"), line
            outcome.cut = kind == "cut"
            outcome.ops, outcome.at, outcome.latency = int(words[0]), *map(float, words[1:])
    assert outcome.ops, f"the child said neither cut nor end:\n{out[-2000:]}"
    assert outcome.cut == (proc.returncode == CUT_EXIT), out[-2000:]
    return outcome


class Torture:
    """The server, the template caches, the phases' ranges and the running tally."""

    def __init__(self, tmp: Path, server: ConnectorDBServer) -> None:
        self.tmp = tmp
        self.server = server
        # (template, streams, remotes, priorities) -> the template's cache file
        self.templates: dict[tuple[object, ...], str] = {}
        self.ranges: dict[str, int] = {}
        self.devices = itertools.count()
        self.by_phase: collections.Counter[str] = collections.Counter()
        self.ended = 0  # cut points past the phase's end: the power went after it
        self.checked = 0  # datapoints found on the server where they belong, over all cuts

    def fresh_cache(self, phase: Phase, name: str) -> str:
        key = (phase.template, tuple(phase.streams), phase.remotes, phase.priorities)
        if key not in self.templates:
            folder = self.tmp / f"template-{len(self.templates)}"
            folder.mkdir()
            self.templates[key] = str(folder / "cache.db")
            build_template(
                self.templates[key], phase.template, phase.streams, phase.remotes, phase.priorities
            )
        path = str(self.tmp / f"{name}.db")
        for suffix in ("", "-wal", "-journal"):
            if os.path.exists(self.templates[key] + suffix):
                shutil.copy2(self.templates[key] + suffix, path + suffix)
        return path

    def range_of(self, name: str) -> int:
        """How many I/O operations the phase makes when the power stays on."""
        if name not in self.ranges:
            self.ranges[name] = self.cut(name, 0)
        return self.ranges[name]

    def cut(self, name: str, cut_at: int) -> int:
        """Run phase ``name`` until operation ``cut_at`` (0: its end), check what is left;
        return how many operations the child counted."""
        phase = PHASES[name]
        device = f"{'dl' if phase.refuse else 'cut'}{next(self.devices)}"
        # Each remote delivers into a device of its own: default into `device`.
        devices = {"default": device, **{r: f"{device}{r}" for r in phase.remotes}}
        keys = {r: self.server.add_device("alice", d) for r, d in devices.items()}
        path = self.fresh_cache(phase, device)
        outcome = run_child(path, name, cut_at, keys, self.server.url)
        self.check(phase, path, devices, keys, outcome)
        for leftover in glob.glob(glob.escape(path) + "*"):  # with the migrations' backups
            os.remove(leftover)
        return outcome.ops

    def remote(self, device: str, stream: str) -> list[tuple[float, int]]:
        try:
            points = self.server.datapoints(f"alice/{device}/{stream}")
        except KeyError:
            return []
        return [(p["t"], p["d"]) for p in points]

    def check(
        self,
        phase: Phase,
        path: str,
        devices: dict[str, str],
        keys: dict[str, str],
        out: Outcome,
    ) -> None:
        """The checks of the module docstring, per remote (``devices``: remote -> device)."""
        if os.path.exists(path + "-shm"):
            os.remove(path + "-shm")  # shared memory does not survive a reboot
        before = {r: {s: self.remote(d, s) for s in phase.streams} for r, d in devices.items()}
        stored = {r: {s: {d for _, d in pts} for s, pts in b.items()} for r, b in before.items()}
        conn = apsw.Connection(path)
        try:
            assert list(conn.execute("PRAGMA integrity_check")) == [("ok",)]
            if phase.remotes:
                check_positions(
                    conn,
                    {s: {v for v, _ in out.returned.get(s, [])} for s in phase.streams},
                    stored,
                )
        finally:
            conn.close()
        sealed = {"key_file": phase.options["key_file"]} if "key_file" in phase.options else {}
        with Logger(path, apikey=keys["default"], serverurl=self.server.url, **sealed) as lg:
            cached = {s: [(p["t"], p["d"]) for p in lg.export(s)] for s in phase.streams}
            status = lg.status()
            # Thinning (phase thin) removes from the middle, drop_oldest from the start.
            dropped, thinned = status.dropped, status.thinned
            report = lg.sync()
            assert report.ok, f"the sync after the cut failed: {report.errors}"
            for name in phase.remotes:
                report = sync_remote(path, name, self.server.url, keys[name])
                assert report.ok, f"the sync of remote {name!r} after the cut failed: {report}"
            dead = [(d.stream, d.d, d.reason) for d in lg.deadletters()]
            left = len(lg)
        with CacheProbe(path) as probe:
            counted = probe.settings()
        if not phase.refuse:
            assert not dead, f"dead letters after the cut: {dead[:5]}"
        refused = [d for _, d, _ in dead if d % REFUSE != 2]
        assert not refused, f"dead letters the server never refused: {refused[:5]}"
        assert left == 0, f"{left} datapoints left in the cache after a sync"
        # Each remote that routes the streams, with its fallback (what it gave up goes there):
        # together they got every datapoint once.
        for group in groups(phase.remotes):
            where = "" if group == ["default"] else f"remote {' + '.join(group)}: "
            letters = dead if group == ["default"] else []  # the refuse phases have one remote
            mine = [devices[name] for name in group]
            was = {
                s: sorted(itertools.chain(*(before[r][s] for r in group))) for s in before[group[0]]
            }
            holes = self.check_remote(
                phase, out, mine, cached, was, letters, where, first_may_go=dropped > 0
            )
            assert holes == dropped + thinned, (
                f"{where}{holes} missing, {dropped} dropped and {thinned} thinned"
            )
            if len(group) > 1:
                handed = sum(len(self.remote(mine[1], s)) for s in phase.streams)
                key = f"{HANDED_OVER}{group[0]}"
                assert counted.get(key, 0) == handed, (
                    f"{where}{handed} on the fallback, {counted.get(key, 0)} counted handed over"
                )

    def check_remote(
        self,
        phase: Phase,
        out: Outcome,
        devices: list[str],
        cached: dict[str, list[tuple[float, int]]],
        before: dict[str, list[tuple[float, int]]],
        dead: list[tuple[str, int, str]],
        where: str,
        *,
        first_may_go: bool = False,
    ) -> int:
        """Each stream of one remote's ``devices`` (its own, and its fallback's) after the sync,
        against what was cached and on them ``before``; returns how many are missing at the
        start (``drop_oldest``), or anywhere (thinning; a stream's first only when
        ``first_may_go``: something was dropped after thinning went as far as it goes). What
        reached two of them is a duplicate."""
        holes_total = 0
        for stream in phase.streams:
            label = f"{where}{stream}"
            mine = cached[stream]
            after = sorted(itertools.chain(*(self.remote(d, stream) for d in devices)))
            letters = {d for s, d, _ in dead if s == stream}
            if phase.refuse:  # a retried dead letter goes after the newest: t order only
                assert_times(mine, f"{label} in the cache")
                assert_times(after, f"{label} on the server")
            else:
                assert_increasing(mine, f"{label} in the cache")
                assert_increasing(after, f"{label} on the server")  # also: no duplicate
            assert after[: len(before[stream])] == before[stream], f"{label}: server lost some"
            kept = {d for _, d in after}
            assert not kept & letters, f"{label}: delivered and a dead letter: {kept & letters}"
            present = kept | letters
            assert {d for _, d in mine} <= present, f"{label}: cached, then not delivered"
            raised, unknown = out.raised.get(stream, set()), out.unknown.get(stream, set())
            assert not raised & present, f"{label}: insert() raised, yet stored: {raised}"
            old = phase.template not in (NEW, SEALED)  # a migrated template's points first
            start = -OLD_POINTS if stream == "s0" and old else 0
            # Each stream's values from the first on, but those whose insert raised (never
            # stored) or was interrupted (either way): only the oldest may be missing, the
            # ones drop_oldest counted.
            returned_values = {v for v, _ in out.returned.get(stream, [])}
            # With priorities, making room for a higher one may take a lower one's newest
            # too (counted dropped): its values go up to the last one returned.
            top = max(present | (returned_values if phase.priorities else set()), default=start - 1)
            expected = [v for v in range(start, top + 1) if v not in raised and v not in unknown]
            holes = [v for v in expected if v not in present]
            if phase.options.get("on_full", "").startswith("thin"):
                # Thinning removes from the middle (each counted: see check), never a
                # stream's first (nor its newest).
                # Once thinning went as far as it goes, the oldest is dropped (phase
                # priority: the lower priority's first of all).
                assert first_may_go or not holes or holes[0] != expected[0], (
                    f"{label}: thinned its first"
                )
            else:
                assert holes == expected[: len(holes)], (
                    f"{label}: missing in the middle: {holes[:10]} (of them, insert() returned "
                    f"for {sorted(returned_values & set(holes))[:10]})"
                )
            holes_total += len(holes)
            # Returned, not delivered, and not among the oldest that drop_oldest counted.
            gone = set(holes)
            returned = out.returned.get(stream, [])
            lost = [(v, at) for v, at in returned if v not in present and v not in gone]
            if phase.durability == "full":
                assert not lost, f"{label}: returned, then lost: {lost[:5]}"
            elif phase.durability == "batched":
                bound = phase.options["commit_interval"] + out.latency + SLACK
                early = [(v, at) for v, at in lost if not batched_may_lose(out, at, bound)]
                assert not early, (
                    f"{label}: lost though returned more than {bound:.3f} s before the cut "
                    f"at {out.at} (or before a flush() that returned, at {out.flushed}; disk "
                    f"failing {out.failing}): {early[:5]}"
                )
            self.checked += len(after)
        return holes_total


def batched_may_lose(out: Outcome, at: float, bound: float) -> bool:
    """Whether a batched datapoint whose insert() returned at ``at`` may be lost by the cut:
    never once a later flush() returned; else if it returned within ``bound`` of the cut,
    or of the start of a disk failure that had not been over for ``bound`` at the cut (its
    commits failed: it is durable once a later commit succeeds)."""
    if at <= out.flushed:
        return False
    if at > out.at - bound:
        return True
    return any(
        began <= out.at < ended + bound and at > began - bound for began, ended in out.failing
    )


def assert_times(points: list[tuple[float, int]], what: str) -> None:
    for (t0, d0), (t1, d1) in itertools.pairwise(points):
        assert t0 < t1, f"{what}: ({t0}, {d0}) before ({t1}, {d1})"
    values = [d for _, d in points]
    assert len(values) == len(set(values)), f"{what}: a value twice: {sorted(values)}"


def assert_increasing(points: list[tuple[float, int]], what: str) -> None:
    for (t0, d0), (t1, d1) in itertools.pairwise(points):
        assert t0 < t1 and d0 < d1, f"{what}: ({t0}, {d0}) before ({t1}, {d1})"


def schedule(rng: random.Random, cuts: int) -> list[str]:
    """Which phase each cut point cuts: every phase in turn, in a shuffled order."""
    names = list(itertools.islice(itertools.cycle(ENABLED), cuts))
    rng.shuffle(names)
    return names


def test_power_cuts_keep_what_was_promised(tmp_path: Path) -> None:
    server = ConnectorDBServer().start()
    # The devices of the refuse phases (dl<n>) refuse v % REFUSE == 2: dead letters.
    server.reject(
        lambda path, point: (
            path.split("/")[1].startswith("dl") and point["d"] >= 0 and point["d"] % REFUSE == 2
        )
    )
    torture = Torture(tmp_path, server)
    started = time.monotonic()
    failures: list[str] = []
    try:
        if REPLAY:
            name, _, n = REPLAY.partition(":")
            plan = [(name, int(n))]
        else:
            rng = random.Random(SEED)
            plan, broken = [], set()
            for name in schedule(rng, CUTS):
                if name in broken:
                    continue
                try:  # a phase that fails even without a cut is reported once, then left out
                    plan.append((name, rng.randint(1, torture.range_of(name))))
                except AssertionError as exc:
                    broken.add(name)
                    failures.append(
                        f"seed {SEED}: phase {name} fails without a power cut "
                        f"(replay: POWERCUT_REPLAY={name}:0): {exc}"
                    )
        for number, (name, n) in enumerate(plan):
            try:
                ops = torture.cut(name, n)
            except AssertionError as exc:
                failures.append(
                    f"seed {SEED}, cut point #{number}: phase {name}, power cut at I/O "
                    f"operation {n} (replay: POWERCUT_REPLAY={name}:{n}): {exc}"
                )
                if len(failures) >= MAX_FAILURES:
                    break
                continue
            torture.by_phase[name] += 1
            torture.ended += ops < n
    finally:
        server.close()
    phases = ", ".join(f"{name} {count}" for name, count in sorted(torture.by_phase.items()))
    print(
        f"\npower cuts: {sum(torture.by_phase.values())} cut points (seed {SEED}; {phases}; "
        f"{torture.ended} after the phase's end), {torture.checked} datapoints checked, "
        f"{len(failures)} failed, in {time.monotonic() - started:.0f} s"
    )
    assert not failures, "\n".join(failures)


class _HoldSync(apsw.VFS):
    """The process's default VFS while a test runs: holds the WAL's next fsync when armed."""

    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]
        super().__init__("holdsync-powercut", base=self.base, makedefault=True)
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        if flags[0] & apsw.SQLITE_OPEN_WAL:
            return _HeldSyncFile(self, name, flags)
        return super().xOpen(name, flags)


class _HeldSyncFile(apsw.VFSFile):
    def __init__(self, vfs: _HoldSync, name: Any, flags: list[int]):
        super().__init__(vfs.base, name, flags)
        self.vfs = vfs

    def xSync(self, flags: int) -> None:
        if self.vfs.hold is not None:
            held, self.vfs.hold = self.vfs.hold, None
            self.vfs.holding.set()
            assert held.wait(10), "the held fsync was never released"
        super().xSync(flags)


def test_a_group_commit_returns_no_insert_before_its_commit_is_durable(cache_path: str) -> None:
    """Found by the power-cut torture (phase group_commit): a thread whose datapoint is in a
    group returned from insert() while the group's COMMIT was still waiting for its fsync, so
    a power cut then lost a datapoint whose insert had returned. The leader wrote each
    waiter's result before the COMMIT; a waiter that wakes meanwhile (as one woken by the
    previous leader's notify_all does when another thread takes the lead first) saw it and
    returned. Here the group's fsync is held and the waiters are woken."""
    vfs = _HoldSync()
    first, second = threading.Event(), threading.Event()
    lg = Logger(cache_path, on_create=lambda lg: lg.addStream("n", {"type": "integer"}))
    try:
        group = GroupCommitProbe(lg)
        returned: list[int] = []
        lg.insert("n", -1)  # the first insert of a stream may commit more than once

        def insert(value: int) -> None:
            lg.insert("n", value)
            returned.append(value)

        vfs.hold = first
        threads = [threading.Thread(target=insert, args=(0,))]
        threads[0].start()
        wait_for(vfs.holding.is_set, what="the first commit's fsync")
        threads += [threading.Thread(target=insert, args=(v,)) for v in (1, 2)]
        for thread in threads[1:]:
            thread.start()
        wait_for(lambda: group.waiting() == 2, what="two inserts waiting behind the first")
        vfs.holding.clear()
        vfs.hold = second
        first.set()
        wait_for(vfs.holding.is_set, what="the group's fsync")
        wait_for(lambda: 0 in returned, what="the first insert to return")
        group.wake_followers()  # the follower wakes while its group's fsync is held
        # It either returns (its datapoint not durable yet) or waits again.
        wait_for(lambda: len(returned) > 1 or group.followers_waiting() == 1, what="the follower")
        assert returned == [0], "insert() returned before its group's commit was durable"
        second.set()
        for thread in threads:
            thread.join(10)
        assert sorted(returned) == [0, 1, 2]
    finally:
        first.set()
        second.set()
        lg.close()
        del vfs


def test_the_batched_bound_excuses_only_what_it_may() -> None:
    """The batched check is not vacuous: a loss is excused within the bound of the cut or of
    a disk failure that was not over, never before a flush() that returned."""
    out = Outcome(at=100.0, flushed=50.0)
    assert not batched_may_lose(out, 49.0, 1.0)  # before a flush that returned
    assert batched_may_lose(out, 99.5, 1.0)  # within the bound of the cut
    assert not batched_may_lose(out, 90.0, 1.0)
    out.failing = [(80.0, float("inf"))]  # failing at the cut: commits since 80 failed
    assert batched_may_lose(out, 90.0, 1.0)
    assert batched_may_lose(out, 79.5, 1.0)
    assert not batched_may_lose(out, 70.0, 1.0)
    out.failing = [(80.0, 85.0)]  # recovered long before the cut: committed since
    assert not batched_may_lose(out, 90.0, 1.0)


def test_the_positions_check_finds_what_a_remote_lost(tmp_path: Path) -> None:
    """The fan-out phase's check of the positions is not vacuous: a promised datapoint gone
    while a remote held it, and a cached one that no remote holds, are found."""
    path = str(tmp_path / "cache.db")
    build_template(path, NEW, ["s0"], ("b",))
    with Logger(path) as lg:
        lg.insert_many("s0", [0, 1, 2])
    promised, nowhere = {"s0": {0, 1, 2}}, {"default": {}, "b": {}}
    everywhere = {"default": promised, "b": promised}
    conn = apsw.Connection(path)
    try:
        check_positions(conn, promised, nowhere)  # cached, held by both
        conn.execute("DELETE FROM datapoints WHERE d = '1'")  # gone while both held it
        with pytest.raises(AssertionError, match=r"remote 'default', stream 's0'.*\[1\]"):
            check_positions(conn, promised, nowhere)
        with pytest.raises(AssertionError, match=r"remote 'b', stream 's0'.*\[1\]"):
            check_positions(conn, promised, {"default": {"s0": {1}}, "b": {}})
        check_positions(conn, promised, {"default": {"s0": {1}}, "b": {"s0": {1}}})
        conn.execute("UPDATE positions SET done = (SELECT max(id) FROM datapoints)")
        with pytest.raises(AssertionError, match=r"held by no remote: \[0, 2\]"):
            check_positions(conn, promised, everywhere)
    finally:
        conn.close()


# ----------------------------------------------------------------------------- rekey phase

#: Cut points of the rekey phase (``make soak``: 200).
REKEY_CUTS = int(os.environ.get("POWERCUT_REKEY_CUTS", "200" if SOAK else "12"))


def run_rekey_child(path: str, old: str, new: str, cut_at: int) -> tuple[bool, int]:
    """``connectorsync rekey`` (7 rows a step) in a child whose disk keeps only what was
    fsynced, its power cut at I/O operation ``cut_at`` (0: never). Returns (cut, ops)."""
    proc = subprocess.run(
        [PYTHON, "-m", "tests.helpers.powercut_rekey", path, old, new, str(cut_at), "7"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode in (0, CUT_EXIT), proc.stderr.decode()[-3000:]
    if proc.returncode == CUT_EXIT:
        return True, cut_at
    return False, int(proc.stdout.decode().split()[1])


def test_power_cut_torture_rekey(tmp_path: Path, server: ConnectorDBServer) -> None:
    """``connectorsync rekey`` from one key to another, its power cut at random I/O
    operations, sometimes twice (a cut resume): after each cut the file is sound, opening
    it says a rekey is under way (or it had not begun, or had ended), and resumed with the
    same keys it finishes with every datapoint and dead letter there exactly once, the new
    key opening it and the old one refused."""
    from .test_seal import key_file

    old, new = key_file(tmp_path, "old.key"), key_file(tmp_path, "new.key")
    template = str(tmp_path / "template.db")

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("s0", {"type": "number"})

    server.reject(lambda stream, point: point["d"] < 0)
    with Logger(template, on_create=init, key_file=old) as lg:
        lg.insert_many("s0", [1.0, -1.0, 2.0, -2.0])
        lg.sync()
        lg.insert_many("s0", [float(v) for v in range(40)])
    server.reject(None)

    def contents(path: str, key: str) -> tuple[list[object], list[object], object]:
        with Logger(path, key_file=key) as lg:
            points = [(p["t"], p["d"]) for p in lg.export()]
            letters = [(d.id, d.t, d.d, d.reason) for d in lg.deadletters()]
            return points, letters, lg.latest("s0")

    expected = contents(template, old)
    assert len(expected[0]) == 40 and len(expected[1]) == 2
    shutil.copy(template, tmp_path / "count.db")
    cut, ops = run_rekey_child(str(tmp_path / "count.db"), old, new, 0)
    assert not cut and ops > 20
    rng = random.Random(SEED)
    states: collections.Counter[str] = collections.Counter()
    for n in range(REKEY_CUTS):
        path = str(tmp_path / f"cut{n}.db")
        shutil.copy(template, path)
        for _ in range(rng.choice((1, 1, 2))):  # a cut, or a cut then a cut resume
            cut_at = rng.randint(1, ops)
            run_rekey_child(path, old, new, cut_at)
            for suffix in ("-shm",):  # shared memory does not survive a reboot
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path + suffix)
        conn = apsw.Connection(path)
        assert next(conn.execute("PRAGMA integrity_check"))[0] == "ok", (n, cut_at)
        conn.close()
        try:
            now = contents(path, new)
            states["finished"] += 1
        except ConfigurationError as exc:
            if "under way" in str(exc):
                states["under way"] += 1
            else:  # not begun: the old key still opens it
                assert contents(path, old) == expected, (n, cut_at)
                states["not begun"] += 1
            rekey(path, read_key_file(old), read_key_file(new))
            now = contents(path, new)
        assert now == expected, (n, cut_at)
        with pytest.raises(ConfigurationError, match="another key"):
            Logger(path, key_file=old)
    print(f"rekey power cuts: {REKEY_CUTS} ({dict(states)}), {ops} I/O operations a run")
