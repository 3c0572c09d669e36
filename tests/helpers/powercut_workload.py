"""The power-cut torture's child: one phase of work on a cache, until the power goes.

A phase is one line of :data:`PHASES`: a durability, Logger options, which cache file it
starts from (:data:`TEMPLATES`: a new one, a connectordb 0.3.5 one, an older connectorsync
one), how many threads, the remotes it has besides ``default`` (fan-out phases), and a
script of steps (:data:`STEPS`: ``insert*N``, ``sync``, ``checkpoint``, ``fill*N`` for
``insert_many``, ``pass_NAME`` for a pass to one remote, ``pass_all`` for one to each at
once...) that each thread runs in turn. A new phase is one more line there, plus one entry
in :data:`STEPS` if it needs a step of its own.

The child runs its phase under :class:`~tests.helpers.powercut.PowerCutVFS` with ``cut_at``:
at that I/O operation the power goes (``os._exit`` inside the VFS call, every unsynced write
lost). What happened before travels on stdout, one line each, written with ``os.write`` the
moment it happened, so that it survives the cut (the cache does not tell it):

- ``i STREAM VALUE TIME``: ``insert(STREAM, VALUE)`` returned at ``TIME`` (time.monotonic())
- ``s TIME``: a sync pass returned (in a fan-out phase: a pass to one remote)
- ``x STREAM VALUE``: ``insert(STREAM, VALUE)`` raised a ``ConnectorSyncError`` (the disk
  was failing): it must never be stored
- ``u STREAM VALUE``: a ``KeyboardInterrupt`` landed while inserting VALUE: its fate is
  unknown (stored or not, once)
- ``F TIME`` / ``R TIME``: the disk started failing (``fail_eio``, ``fail_readonly``) /
  works again (``recover``)
- ``f TIME``: ``flush()`` returned: everything returned before it is durable
- ``r TIME``: ``retry_deadletters()`` returned
- ``cut OPS TIME LATENCY``: the power went at I/O operation ``OPS``; ``LATENCY`` is the
  longest recent batched commit (0 if none)
- ``end OPS TIME LATENCY``: the phase ran to its end after ``OPS`` I/O operations; then the
  power goes anyway (no close: whatever is unsynced is lost)

Stream ``s{k}`` of thread ``t`` (``k = t * per_thread + j``) gets the values 0, 1, 2... in
order; the templates hold older datapoints with negative values before them.

Usage: python -m tests.helpers.powercut_workload CACHE PHASE CUT_AT APIKEY URL [NAME=APIKEY...]
(CUT_AT 0: never cut; the ``end`` line then says how many operations the phase makes;
NAME=APIKEY: the device of each remote besides ``default``, in a fan-out phase).
"""

from __future__ import annotations

import _thread
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

from connectorsync import Logger
from connectorsync.cache import MIGRATIONS
from connectorsync.errors import CacheFullError, ConnectorSyncError
from connectorsync.testing.live import commit_latency

from .powercut import PowerCutVFS
from .powercut_fanout import Passes, add_remotes

# The templates: what the cache file holds before the phase starts (built by the parent).
NEW, CONNECTORDB, V1, SEALED = "new", "connectordb-0.3.5", "v1", "sealed"
TEMPLATES = (NEW, CONNECTORDB, V1, SEALED)
#: The key of the sealed phases' caches (a test key, in this directory).
SEAL_KEY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "powercut_seal.key")
SEALED_OPTIONS = {"key_file": SEAL_KEY}
OLD_POINTS = 20  # datapoints -20..-1 of s0 in an old (connectordb, v1) template


@dataclass(frozen=True)
class Phase:
    """One kind of work the power may cut (see the module docstring)."""

    durability: str
    script: str
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    per_thread: int = 2  # streams per thread
    template: str = NEW
    pace: float = 0.0  # seconds between inserts
    #: KeyboardInterrupts land in the main thread (thread 0) while it inserts
    interrupt: bool = False
    #: the server refuses this phase's values v with v % REFUSE == 2 (dead letters)
    refuse: bool = False
    #: remotes besides ``default``, added to the template with backfill; the steps
    #: ``pass_NAME`` run a pass to one of them (tests/helpers/powercut_fanout.py)
    remotes: tuple[str, ...] = ()
    #: ``add_stream(priority=)`` of each stream, in order (empty: all 0)
    priorities: tuple[int, ...] = ()

    @property
    def streams(self) -> list[str]:
        return [f"s{k}" for k in range(self.threads * self.per_thread)]


BATCHED = {"commit_interval": 0.05}
REFUSE = 5  # refuse phases: the server refuses v % REFUSE == 2
#: While the disk fails, inserts go on until this many raised; they must start raising
#: within commit_interval + one commit attempt; FAIL_WITHIN bounds a hang, not a speed.
FAIL_RAISES = 3
FAIL_WITHIN = 10.0
HANG = 30.0  # a phase that has not ended by then hangs: the child says so and fails

PHASES: dict[str, Phase] = {
    "insert_full": Phase("full", "insert*25"),
    "insert_normal": Phase("normal", "insert*25"),
    "insert_batched": Phase("batched", "insert*60", BATCHED, pace=0.002),
    "group_commit": Phase("full", "insert*15", threads=4, per_thread=1),
    "sync_full": Phase("full", "insert*12 sync insert*8 sync insert*4 sync", {"batch_size": 5}),
    "sync_batched": Phase("batched", "insert*12 sync insert*8 sync", {**BATCHED, "batch_size": 5}),
    "sync_normal": Phase("normal", "insert*12 sync insert*8 sync", {"batch_size": 5}),
    "checkpoint": Phase(
        "full", "insert*10 checkpoint insert*10 sync checkpoint insert*5 checkpoint"
    ),
    "checkpoint_normal": Phase("normal", "insert*10 checkpoint insert*10 sync checkpoint"),
    "migrate_connectordb": Phase("full", "insert*4 sync insert*4", template=CONNECTORDB),
    "migrate_v1": Phase("full", "insert*4 sync insert*4", template=V1),
    # A sync that empties pages: vacuum steps and a TRUNCATE checkpoint give them back.
    "vacuum": Phase("full", "fill*1500 sync insert*3 sync", {"batch_size": 500}),
    "drop_oldest": Phase(
        "full", "insert*45", {"max_cached": 15, "on_full": "drop_oldest"}, per_thread=1
    ),
    # A full cache that thins (issue 19): removals in the middle, each counted as thinned.
    "thin": Phase(
        "full",
        "insert*30 sync insert*30",
        {"max_cached": 15, "on_full": "thin", "batch_size": 5},
    ),
    # A full cache that thins, its streams of two priorities (issue 19): room is made from the
    # lower one first, and a low-priority insert that would displace the higher one is
    # refused (``offer``: reported raised, never stored).
    "priority": Phase(
        "full",
        "offer*30 sync offer*30",
        {"max_cached": 12, "on_full": "thin", "batch_size": 5},
        priorities=(0, 5),
    ),
    # A fan of durations: commits rarer than inserts, and commits as often as inserts.
    "batched_slow": Phase("batched", "insert*30", {"commit_interval": 0.3}, pace=0.01),
    "batched_fast": Phase("batched", "insert*60", {"commit_interval": 0.005}),
    "batched_flush": Phase("batched", "insert*10 flush insert*10 flush insert*5", BATCHED),
    # A failing disk, then recovery: inserts raise (and store nothing), and work again.
    "eio_full": Phase("full", "insert*8 fail_eio recover insert*8 sync insert*4"),
    "readonly_full": Phase("full", "insert*8 fail_readonly recover insert*8"),
    "eio_batched": Phase(
        "batched", "insert*10 fail_eio recover insert*10 flush insert*5", BATCHED, pace=0.002
    ),
    "readonly_batched": Phase(
        "batched", "insert*10 fail_readonly recover insert*10 flush insert*5", BATCHED
    ),
    # The same in a capped cache that drops its oldest: the one-statement insert that fits,
    # and the transaction that makes room, each meet the failing disk.
    "eio_limited": Phase(
        "full",
        "insert*10 fail_eio recover insert*10 sync insert*6",
        {"max_cached": 12, "on_full": "drop_oldest"},
    ),
    "readonly_limited": Phase(
        "full",
        "insert*10 fail_readonly recover insert*10",
        {"max_cached": 12, "on_full": "drop_oldest"},
    ),
    # Ctrl-C in the thread leading a group commit (thread 0 runs in the main thread).
    "group_commit_interrupt": Phase("full", "insert*20", threads=3, per_thread=1, interrupt=True),
    # Sealed at rest (issue 19): inserts, syncs and dead letters of a sealed cache.
    "sealed_sync": Phase(
        "full",
        "insert*12 sync insert*8 sync insert*4 sync",
        {"batch_size": 5, **SEALED_OPTIONS},
        template=SEALED,
    ),
    "sealed_batched": Phase(
        "batched",
        "insert*12 sync insert*8 sync",
        {**BATCHED, "batch_size": 5, **SEALED_OPTIONS},
        template=SEALED,
    ),
    "sealed_deadletters": Phase(
        "full",
        "insert*10 sync retry sync insert*5 retry sync",
        {"batch_size": 4, **SEALED_OPTIONS},
        template=SEALED,
        refuse=True,
    ),
    # Dead letters, retried (and refused again) while the power may go.
    "deadletter_retry": Phase(
        "full",
        "insert*10 sync retry sync insert*5 retry sync",
        {"batch_size": 4},
        refuse=True,
    ),
    # Two remotes, each with its position per stream, passes interleaved, answers lost now
    # and then (powercut_fanout.LOSSES): the cut lands in inserts, either remote's acks and
    # reconciliations, the deletes once both have a datapoint, the positions' updates.
    "fanout": Phase(
        "full",
        "insert*6 pass_b insert*5 pass_default pass_b insert*4 pass_all insert*3 pass_b "
        "pass_default insert*3 pass_all pass_default insert*2",
        remotes=("b",),
    ),
    # Remote g goes down; once it has failed GIVE_UP seconds it hands what it holds that is
    # older to its fallback c (which routes nothing of its own); it comes back. The cut lands
    # in the hand-overs too; default, and g and c together, get every datapoint once.
    "fanout_give_up": Phase(
        "full",
        "insert*5 pass_all insert*4 down_g insert*3 pass_all give_up_g insert*3 pass_all "
        "insert*2 give_up_g pass_c up_g insert*2 pass_all insert*2",
        remotes=("c", "g"),
    ),
}


class Child:
    """The state of a running phase: its Logger, the values each stream has had, the output."""

    def __init__(
        self, lg: Logger, path: str, phase: Phase, vfs: PowerCutVFS, passes: Passes | None = None
    ) -> None:
        self.lg = lg
        self.passes = passes  # the phase's passes to each remote (fan-out phases)
        self.vfs = vfs
        self.interruptible = threading.Event()
        self.path = path
        self.phase = phase
        self.next_value = dict.fromkeys(phase.streams, 0)
        self.checkpoints = 0
        self._out = threading.Lock()

    def report(self, *words: object) -> None:
        line = " ".join(map(str, words)) + "\n"
        with self._out:
            os.write(1, line.encode())

    def latency(self) -> float:
        try:
            return commit_latency(self.lg) or 0.0
        except RuntimeError:  # its deque changed under us: the cut came mid-commit
            return 0.0


def insert(child: Child, streams: list[str], count: int) -> None:
    interruptible = child.phase.interrupt and threading.current_thread() is threading.main_thread()
    for _ in range(count):
        for stream in streams:
            value = child.next_value[stream]
            child.next_value[stream] = value + 1
            if interruptible:
                insert_interrupted(child, stream, value)
                continue
            child.lg.insert(stream, value)
            child.report("i", stream, value, time.monotonic())
            if child.phase.pace:
                time.sleep(child.phase.pace)


def offer(child: Child, streams: list[str], count: int) -> None:
    """Like ``insert``, in a full cache whose streams have priorities: an insert refused
    with ``CacheFullError`` (only higher priorities are left to make room from) is reported
    as raised: it must never be stored."""
    for _ in range(count):
        for stream in streams:
            insert_or_raised(child, stream, CacheFullError)


def insert_or_raised(child: Child, stream: str, raises: type[Exception]) -> bool:
    """Insert ``stream``'s next value and report it returned, or, when it raised ``raises``,
    report it raised (never to be stored); False then."""
    value = child.next_value[stream]
    child.next_value[stream] = value + 1
    try:
        child.lg.insert(stream, value)
    except raises:
        child.report("x", stream, value)
        return False
    child.report("i", stream, value, time.monotonic())
    return True


def insert_interrupted(child: Child, stream: str, value: int) -> None:
    """One insert while the interrupter may raise KeyboardInterrupt in this (main) thread."""
    try:
        child.interruptible.set()
        try:
            child.lg.insert(stream, value)
        finally:
            child.interruptible.clear()
        child.report("i", stream, value, time.monotonic())
    except KeyboardInterrupt:
        child.report("u", stream, value)


def interrupter(child: Child, done: threading.Event) -> None:
    """Ctrl-C, over and over, while the main thread inserts (it may lead a group commit)."""
    while not done.wait(0.003):
        if child.interruptible.is_set():
            _thread.interrupt_main()


def failing(mode: str) -> Callable[[Child, list[str], int], None]:
    def step(child: Child, streams: list[str], count: int) -> None:
        """The disk fails (``mode``); insert until FAIL_RAISES inserts raised."""
        child.vfs.failing = mode
        child.report("F", time.monotonic())
        raised, deadline = 0, time.monotonic() + FAIL_WITHIN
        while raised < FAIL_RAISES:
            for stream in streams:
                if not insert_or_raised(child, stream, ConnectorSyncError):
                    raised += 1
                    continue
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"inserts kept returning for {FAIL_WITHIN} s while the disk failed "
                        f"({mode}, durability={child.phase.durability!r})"
                    )
                time.sleep(0.005)

    return step


def recover(child: Child, streams: list[str], count: int) -> None:
    """The disk works again; flush() until a commit succeeded (inserts may raise until the
    writer has committed again), then everything returned so far is durable."""
    child.vfs.failing = None
    child.report("R", time.monotonic())
    deadline = time.monotonic() + FAIL_WITHIN
    while True:
        try:
            child.lg.flush()
        except ConnectorSyncError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        child.report("f", time.monotonic())
        return


def flush(child: Child, streams: list[str], count: int) -> None:
    child.lg.flush()
    child.report("f", time.monotonic())


def retry(child: Child, streams: list[str], count: int) -> None:
    child.lg.retry_deadletters()
    child.report("r", time.monotonic())


def fill(child: Child, streams: list[str], count: int) -> None:
    """``insert_many`` of ``count`` values per stream, in one transaction: pages enough
    that the sync after it leaves free pages for the vacuum steps to give back."""
    for stream in streams:
        first = child.next_value[stream]
        child.next_value[stream] = first + count
        child.lg.insert_many(stream, list(range(first, first + count)))
        now = time.monotonic()
        for value in range(first, first + count):
            child.report("i", stream, value, now)


def sync(child: Child, streams: list[str], count: int) -> None:
    for _ in range(count):
        report = child.lg.sync()
        if not report.ok:
            raise AssertionError(f"a sync pass failed before the cut: {report.errors}")
        child.report("s", time.monotonic())


CHECKPOINT_MODES = ("PASSIVE", "RESTART", "TRUNCATE", "FULL")


def checkpoint(child: Child, streams: list[str], count: int) -> None:
    """A WAL checkpoint from a connection of its own (the modes in turn), as another program
    or SQLite's auto-checkpoint would run it."""
    conn = apsw.Connection(child.path)
    try:
        conn.setbusytimeout(10_000)
        for _ in range(count):
            mode = CHECKPOINT_MODES[child.checkpoints % len(CHECKPOINT_MODES)]
            child.checkpoints += 1
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
    finally:
        conn.close()


def pass_to(name: str) -> Callable[[Child, list[str], int], None]:
    def step(child: Child, streams: list[str], count: int) -> None:
        """A pass to the remote ``name`` through its outbox (a lost answer may fail it)."""
        assert child.passes is not None, f"phase without remotes: no pass to {name!r}"
        for _ in range(count):
            child.passes.run(name)
            child.report("s", time.monotonic())

    return step


def set_down(name: str, down: bool) -> Callable[[Child, list[str], int], None]:
    def step(child: Child, streams: list[str], count: int) -> None:
        """The remote ``name`` goes down (every push fails), or comes back."""
        assert child.passes is not None, f"phase without remotes: no remote {name!r}"
        child.passes.remotes[name].down = down

    return step


def give_up(name: str) -> Callable[[Child, list[str], int], None]:
    def step(child: Child, streams: list[str], count: int) -> None:
        """``give_up_after`` for the remote ``name`` (handed to its fallback)."""
        assert child.passes is not None, f"phase without remotes: no remote {name!r}"
        child.passes.give_up(name)

    return step


def pass_all(child: Child, streams: list[str], count: int) -> None:
    """A pass to every remote at once, each in a thread (a lost answer may fail them)."""
    assert child.passes is not None, "phase without remotes: no passes to run"
    for _ in range(count):
        child.passes.run_all()
        child.report("s", time.monotonic())


STEPS: dict[str, Callable[[Child, list[str], int], None]] = {
    "insert": insert,
    "offer": offer,
    "fill": fill,
    "sync": sync,
    "checkpoint": checkpoint,
    "fail_eio": failing("eio"),
    "fail_readonly": failing("readonly"),
    "recover": recover,
    "flush": flush,
    "retry": retry,
    "pass_default": pass_to("default"),
    "pass_b": pass_to("b"),
    "pass_c": pass_to("c"),
    "pass_all": pass_all,
    "down_g": set_down("g", True),
    "up_g": set_down("g", False),
    "give_up_g": give_up("g"),
}


def run_script(child: Child, streams: list[str]) -> None:
    for word in child.phase.script.split():
        name, _, times = word.partition("*")
        STEPS[name](child, streams, int(times or 1))


def build_template(
    path: str,
    template: str,
    streams: list[str],
    remotes: tuple[str, ...] = (),
    priorities: tuple[int, ...] = (),
) -> None:
    """The cache file a phase starts from, with its streams (integers) registered, at
    ``priorities`` (a new template only), and the ``remotes`` besides ``default`` added
    (with backfill)."""
    if template in (NEW, SEALED):

        def init(lg: Logger) -> None:
            for name, priority in itertools.zip_longest(streams, priorities, fillvalue=0):
                lg.add_stream(name, {"type": "integer"}, priority=priority)

        Logger(path, on_create=init, **(SEALED_OPTIONS if template == SEALED else {})).close()
    elif template == CONNECTORDB:
        import connectordb.logger

        def old_init(lg: Any) -> None:
            for name in streams:
                lg.addStream_force(name, {"type": "integer"})

        old = connectordb.logger.Logger(path, on_create=old_init)
        for value in range(-OLD_POINTS, 0):
            old.insert("s0", value)
        old.database.close()
    elif template == V1:
        conn = apsw.Connection(path)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        MIGRATIONS[0][1](conn)
        conn.execute("PRAGMA user_version=1")
        for name in streams:
            conn.execute(
                'INSERT INTO streams (name, schema) VALUES (?, \'{"type":"integer"}\')', (name,)
            )
        now = time.time() - 60
        for value in range(-OLD_POINTS, 0):
            conn.execute(
                "INSERT INTO datapoints (stream, t, d) VALUES (1, ?, ?)", (now + value, str(value))
            )
        conn.close()
    else:
        raise ValueError(f"unknown template {template!r}; known: {TEMPLATES}")
    add_remotes(path, remotes)
    os.chmod(path, 0o600)


def main() -> None:
    path, name, cut_at, apikey, url = sys.argv[1:6]
    # NAME=APIKEY for each remote besides default, in its own device
    apikeys = {"default": apikey, **dict(word.split("=", 1) for word in sys.argv[6:])}
    phase = PHASES[name]
    child: Child | None = None

    def on_cut(ops: int) -> None:
        if child is not None:
            child.report("cut", ops, time.monotonic(), child.latency())
        else:
            os.write(1, f"cut {ops} {time.monotonic()} 0\n".encode())

    vfs = PowerCutVFS(cut_at=int(cut_at) or None, on_cut=on_cut)
    lg = Logger(path, apikey=apikey, serverurl=url, durability=phase.durability, **phase.options)
    passes = Passes(path, phase.durability, url, apikeys) if phase.remotes else None
    child = Child(lg, path, phase, vfs, passes)
    failed: list[BaseException] = []

    def work(t: int) -> None:
        mine = phase.streams[t * phase.per_thread : (t + 1) * phase.per_thread]
        try:
            run_script(child, mine)
        except BaseException as exc:  # the parent reports it, with the traceback
            failed.append(exc)
            raise

    def watchdog() -> None:
        time.sleep(HANG)
        os.write(2, f"the phase hangs: not ended after {HANG} s\n".encode())
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    # With interrupts, thread 0 is the main thread: KeyboardInterrupt lands only there.
    first = 1 if phase.interrupt else 0
    workers = [threading.Thread(target=work, args=(t,)) for t in range(first, phase.threads)]
    done = threading.Event()
    for worker in workers:
        worker.start()
    if phase.interrupt:
        ctrl_c = threading.Thread(target=interrupter, args=(child, done), daemon=True)
        ctrl_c.start()
        try:
            work(0)
        except BaseException:  # reported through `failed` already
            pass
        finally:
            done.set()
            ctrl_c.join()
    for worker in workers:
        worker.join()
    if failed:
        os._exit(1)
    child.report("end", vfs.ops, time.monotonic(), child.latency())
    os._exit(0)  # the power goes at the end anyway: no close, unsynced writes are lost


if __name__ == "__main__":
    main()
