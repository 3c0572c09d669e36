"""What ``Logger.status()`` reports: a snapshot of a cache, its syncer and its clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from .cache import Cache, StreamStats
from .cache.schema import BACKUP_SETTING
from .devicetime import DeviceTime
from .remotes._http import hide_password
from .synclock import SyncState, read_lease


@dataclass(frozen=True)
class RemoteStatus:
    """One remote's part of ``status()`` (:attr:`Status.remotes`).

    :ivar held: cached datapoints not delivered to it yet, all streams together
    :ivar deadletters: dead letters it refused (at rest)
    :ivar released: datapoints it gave up (``give_up_after``, no fallback), ever
    :ivar handed_over: datapoints it handed to its fallback, ever
    :ivar failing_since: when its passes began to fail (None: the last one went well)
    :ivar last_error: why its last pass failed, or None; ``next_attempt``, ``paused``: as
        :class:`Status` has them, for this remote (as the syncing process last recorded)
    """

    held: int
    deadletters: int = 0
    released: int = 0
    handed_over: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    next_attempt: float | None = None
    paused: bool = False


@dataclass(frozen=True)
class Status:
    """A snapshot of the Logger's state (``Logger.status()``).

    :ivar streams: per stream: ``cached``, ``oldest`` and ``newest`` cached timestamp,
        ``deadletters``, ``priority`` and ``thinned`` (removed by ``on_full="thin"``, ever)
    :ivar last_sync: when the last complete sync finished (``lastsynctime``), or None
    :ivar last_error: the message of the last failed sync, or None after a good one
    :ivar next_attempt: when the background syncer tries next, or None when it is not running
    :ivar paused: True while syncing is paused (refused credentials: ``last_error`` says so);
        it resumes when ``apikey`` changes, or at the next period
    :ivar dropped: datapoints dropped to make room (``on_full="drop_oldest"``), ever
    :ivar expired: datapoints expired by ``max_age``, ever
    :ivar thinned: datapoints removed by thinning to make room (``on_full="thin"``,
        ``add_stream(thin=True)``), ever, all streams together
    :ivar clock_offset: what the system clock was off by at the last NTP answer of this boot
        (seconds), or None before one
    :ivar clock_measured: when that answer came (seconds since the epoch), or None
    :ivar untrusted: cached datapoints of this boot stamped before NTP answered
    :ivar syncer: who syncs this cache when it is another process (``"pid N on host"``), or
        None; ``last_error``, ``next_attempt`` and ``paused`` are then that process's
    :ivar commit_latency: with ``durability="batched"``, the longest of the recent commits of
        the queue (seconds): what a power cut can lose is the datapoints of the last
        ``commit_interval`` plus this; None otherwise
    :ivar commit_error: with ``durability="batched"``, why commits fail, while they do (an
        I/O error, a read-only or full disk): ``insert()`` then raises ``CacheError`` and
        stores nothing, until a commit succeeds again; None when they work
    :ivar uncommitted: with ``durability="batched"``, datapoints ``insert()`` accepted that
        wait in memory for their commit: what a crash now would lose (0 otherwise). While
        commits fail they are not in ``streams``
    :ivar remote: where this cache's datapoints go, as recorded in the cache by the last
        Logger given a remote or the last sync pass (the remote's repr, which shows no
        credentials), or None before either
    :ivar bytes_sent: per registered stream, the bytes of request bodies its datapoints took
        on the wire, ever (after compression; headers not counted; retries and refused
        requests included): what the link costs. Kept in the cache file; 0 for a stream
        never sent, or sent to a remote that does not count
        (:class:`~connectorsync.remotes.base.Metered`)
    :ivar remotes: each remote of the cache by name (one, ``default``, unless the Logger was
        given several): what it holds, gave up and refused, and how its syncing goes
    :ivar migration_backup: where the copy of this cache file made before it was last
        migrated (from an older connectorsync, or from connectordb 0.3.5) is, or None when it
        never was: delete it once the migrated cache works
    """

    streams: dict[str, StreamStats]
    last_sync: float | None
    last_error: str | None
    next_attempt: float | None
    paused: bool
    dropped: int = 0
    expired: int = 0
    thinned: int = 0
    clock_offset: float | None = None
    clock_measured: float | None = None
    untrusted: int = 0
    syncer: str | None = None
    remote: str | None = None
    commit_latency: float | None = None
    commit_error: str | None = None
    uncommitted: int = 0
    bytes_sent: dict[str, int] = field(default_factory=dict)
    remotes: dict[str, RemoteStatus] = field(default_factory=dict)
    migration_backup: str | None = None

    @property
    def cached(self) -> int:
        """Datapoints cached, all streams together."""
        return sum(s.cached for s in self.streams.values())


def bytes_sent(cache: Cache, streams: dict[str, StreamStats]) -> dict[str, int]:
    """:attr:`Status.bytes_sent`: the cache's counters of the registered ``streams``, every
    remote's added up."""
    totals = dict.fromkeys(streams, 0)
    for name in cache.remotes().all():
        for stream, sent in cache.outbox(name).bytes_sent().items():
            if stream in totals:
                totals[stream] += sent
    return totals


def collect_status(cache: Cache, sync: SyncState, time: DeviceTime) -> Status:
    """``Logger.status()``: the cache's counts, the syncer's state and the clock's."""
    counters = cache.statistics()
    anchor = time.clock.anchor
    streams = cache.stream_stats()
    return Status(
        streams=streams,
        last_sync=cache.get_setting("lastsynctime", 0) or None,
        last_error=None if sync.last_error is None else hide_password(sync.last_error),
        next_attempt=sync.next_attempt,
        paused=sync.paused,
        dropped=counters["dropped"],
        expired=counters["expired"],
        thinned=counters["thinned"],
        clock_offset=None if anchor is None else anchor.offset,
        clock_measured=None if anchor is None else anchor.true_time,
        untrusted=time.untrusted_count(),
        syncer=sync.elsewhere,
        # An older connectorsync recorded some passwords unhidden: hide them as shown.
        remote=None if (remote := cache.get_setting("remote")) is None else hide_password(remote),
        commit_latency=cache.commit_latency(),
        commit_error=cache.commit_error(),
        uncommitted=cache.uncommitted(),
        bytes_sent=bytes_sent(cache, streams),
        remotes=remote_statuses(cache),
        migration_backup=cache.get_setting(BACKUP_SETTING),
    )


def remote_statuses(cache: Cache) -> dict[str, RemoteStatus]:
    """:attr:`Status.remotes`: the cache's side of each remote, and how its courier goes as
    the lease records it (this process's, or the one that syncs)."""
    states = read_lease(cache).get("remotes") or {}
    statuses = {}
    for name, side in cache.remotes().summary().items():
        state = states.get(name) or {}
        error = state.get("last_error")
        statuses[name] = RemoteStatus(
            held=side.held,
            deadletters=side.deadletters,
            released=side.released,
            handed_over=side.handed_over,
            failing_since=side.failing_since,
            last_error=None if error is None else hide_password(error),
            next_attempt=state.get("next_attempt"),
            paused=bool(state.get("paused")),
        )
    return statuses
