"""``connectorsync status``: how another process reads a cache's status, and how it is
shown (text, JSON, or ``--check``'s one line for monitoring)."""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import time
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConnectorSyncError
from .remotes._http import hide_password

if TYPE_CHECKING:
    from .cache.legacy import ConnectorDBSnapshot
    from .status import Status


def read_status(cache: Any) -> Status:
    """``Logger.status()`` of a cache opened with ``cli.look_into``, as another process sees it:
    read only, nothing recorded (not even this boot)."""
    from .clock import Anchor, Clock
    from .options import Configurable
    from .status import Status, bytes_sent, remote_statuses
    from .synclock import SyncLock

    settings = cache.settings()
    clock = Clock(
        Anchor.from_json(settings.get("clock.anchor")),
        ntp=settings.get(Configurable.ntp_server.key) is not None,
    )
    untrusted = 0
    if not clock.trusted and (boot := cache.find_boot(clock.boot_id)) is not None:
        untrusted = cache.untrusted_count(boot)
    counters = cache.statistics()
    # Every pass records how it went, a manual one too: its error stays true after that
    # process is gone; when it tries next, and a pause, only while a syncer runs.
    state = settings.get("sync.state") or {}
    last_error = state.get("paused") or state.get("last_error")
    next_attempt, paused, elsewhere = None, False, None
    remotes = remote_statuses(cache)
    if syncer_holds(SyncLock(cache.path).path):
        elsewhere = f"pid {state.get('pid')} on {state.get('host')}"
        next_attempt, paused = state.get("next_attempt"), bool(state.get("paused"))
    else:  # when each tries next, and a pause, hold only while a syncer runs
        remotes = {
            name: dataclasses.replace(r, next_attempt=None, paused=False)
            for name, r in remotes.items()
        }
    anchor = clock.anchor
    streams = cache.stream_stats()
    return Status(
        streams=streams,
        last_sync=settings.get("lastsynctime", 0) or None,
        last_error=last_error,
        next_attempt=next_attempt,
        paused=paused,
        dropped=counters["dropped"],
        expired=counters["expired"],
        thinned=counters["thinned"],
        clock_offset=None if anchor is None else anchor.offset,
        clock_measured=None if anchor is None else anchor.true_time,
        untrusted=untrusted,
        syncer=elsewhere,
        remote=settings.get("remote"),
        bytes_sent=bytes_sent(cache, streams),
        remotes=remotes,
    )


def syncer_holds(lock_path: str) -> bool:
    """True when a syncer (any process) holds the sync lock file now; creates nothing."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the shared lock at once
    return False


def when(t: float | None, now: float | None = None) -> str:
    """``2026-11-23 19:40:01 UTC (12 min ago)``, or ``-``."""
    if not t:
        return "-"
    now = time.time() if now is None else now
    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC ({age(now - t)})"


def age(seconds: float) -> str:
    """A short human duration: ``in 5 s``, ``3 min ago``, ``2 h 5 min ago``, ``4 d ago``."""
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        text = f"{seconds:.0f} s"
    elif seconds < 3600:
        text = f"{seconds // 60:.0f} min"
    elif seconds < 86400:
        text = f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    else:
        text = f"{seconds // 86400:.0f} d"
    return f"in {text}" if ahead else f"{text} ago"


def size(count: int) -> str:
    """Bytes, short: ``950 B``, ``12.3 kB``, ``4.6 MB`` (powers of 1000)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} TB"


def table(rows: list[list[str]], out: TextIO) -> None:
    """Print rows as left-aligned columns, the first row a header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def write_status_json(status: Status, path: str, out: TextIO) -> None:
    remote, last_error = shown(status)
    data = {
        "cache": path,
        "cached": status.cached,
        "streams": {
            name: {
                "cached": s.cached,
                "oldest": s.oldest,
                "newest": s.newest,
                "deadletters": s.deadletters,
                "thinned": s.thinned,
            }
            for name, s in status.streams.items()
        },
        "last_sync": status.last_sync,
        "last_error": last_error,
        "next_attempt": status.next_attempt,
        "paused": status.paused,
        "syncer": status.syncer,
        "remote": remote,
        "dropped": status.dropped,
        "expired": status.expired,
        "thinned": status.thinned,
        "clock_offset": status.clock_offset,
        "untrusted": status.untrusted,
        "bytes_sent": status.bytes_sent,
        "remotes": {name: dataclasses.asdict(r) for name, r in status.remotes.items()},
    }
    out.write(json.dumps(data, indent=2) + "\n")


def write_status_text(status: Status, path: str, out: TextIO) -> None:
    remote, last_error = shown(status)
    now = time.time()
    out.write(f"{path}: {status.cached:,} datapoints cached in {len(status.streams)} streams\n\n")
    if status.streams:
        rows = [["stream", "cached", "oldest", "dead letters", "sent (bytes on the wire)"]]
        for name, s in sorted(status.streams.items()):
            oldest = age(now - s.oldest) if s.oldest is not None else "-"
            sent = size(status.bytes_sent.get(name, 0))
            rows.append([name, f"{s.cached:,}", oldest, f"{s.deadletters:,}", sent])
        table(rows, out)
        out.write("\n")
    out.write(f"remote:        {remote or '-'}\n")
    out.write(f"last sync:     {when(status.last_sync, now)}\n")
    out.write(f"last error:    {last_error or '-'}\n")
    out.write(f"next attempt:  {when(status.next_attempt, now)}\n")
    syncer = status.syncer or "none running"
    out.write(f"syncer:        {syncer}{' (paused)' if status.paused else ''}\n")
    out.write(
        f"dropped:       {status.dropped:,}   expired: {status.expired:,}"
        f"   thinned: {status.thinned:,}\n"
    )
    if status.clock_offset is not None or status.untrusted:
        offset = "-" if status.clock_offset is None else f"{status.clock_offset:+.3f} s"
        out.write(f"clock offset:  {offset}   waiting for NTP: {status.untrusted:,}\n")
    if set(status.remotes) - {"default"}:  # several, or one of another name
        out.write("\n")
        write_remotes(status, now, out)


def write_remotes(status: Status, now: float, out: TextIO) -> None:
    """A line per remote: what it holds, refused and gave up, and how its syncing goes."""
    header = ["remote", "held", "dead letters", "released", "handed over", "failing since"]
    rows = [[*header, "last error"]]
    for name, r in status.remotes.items():
        failing = "-" if r.failing_since is None else age(now - r.failing_since)
        error = "-" if r.last_error is None else " ".join(hide_password(r.last_error).split())
        if r.paused:
            error = f"(paused) {error}"
        rows.append(
            [
                name,
                f"{r.held:,}",
                f"{r.deadletters:,}",
                f"{r.released:,}",
                f"{r.handed_over:,}",
                failing,
                error if len(error) <= 60 else error[:57] + "...",
            ]
        )
    table(rows, out)


def shown(status: Status) -> tuple[str | None, str | None]:
    """The remote and the last error as shown: recorded by the program that logs, and an
    older version recorded passwords in urls too."""
    remote = None if status.remote is None else hide_password(status.remote)
    last_error = None if status.last_error is None else hide_password(status.last_error)
    return remote, last_error


def write_check(status: Status, path: str, max_lag: float | None, out: TextIO) -> int:
    """``status --check``, for monitoring scripts and systemd: ``ok`` and 0, or what is
    wrong on one line and 1."""
    found = problems(status, path, max_lag, time.time())
    out.write(("; ".join(found) if found else "ok") + "\n")
    return 1 if found else 0


def problems(status: Status, path: str, max_lag: float | None, now: float) -> list[str]:
    """What is wrong: syncing paused or failing (an error the last pass recorded), dead
    letters, or (given ``max_lag``) a cached datapoint older than that."""
    found = []
    last_error = shown(status)[1]
    if last_error:
        reason = " ".join(last_error.split())  # one line, whatever the remote said
        found.append(f"syncing {'paused' if status.paused else 'fails'}: {reason}")
    for name, r in status.remotes.items():
        if name != "default" and r.last_error and r.last_error != status.last_error:
            reason = " ".join(hide_password(r.last_error).split())
            found.append(f"syncing to {name!r} {'paused' if r.paused else 'fails'}: {reason}")
    dead = sum(s.deadletters for s in status.streams.values())
    if dead:
        found.append(f"{dead:,} dead letters (see: connectorsync deadletters {path} list)")
    oldest = [(s.oldest, name) for name, s in status.streams.items() if s.oldest is not None]
    if max_lag is not None and oldest and now - min(oldest)[0] > max_lag:
        t, name = min(oldest)
        lag = age(now - t).removesuffix(" ago")
        found.append(f"oldest cached datapoint ({name}, {lag} old) more than {max_lag:g} s old")
    return found


def migrate_hint(path: str) -> str:
    return (
        f"not migrated yet: to sync it with connectorsync, stop the connectordb program, then "
        f"run `connectorsync migrate {path}` (a backup copy is kept)"
    )


def write_connectordb_status(
    snapshot: ConnectorDBSnapshot, path: str, out: TextIO, *, as_json: bool
) -> None:
    """``status`` of a connectordb 0.3.5 cache: its streams and cached counts, where it
    syncs, and how to migrate it; read as it is, the file left alone
    (:func:`connectorsync.cache.legacy.connectordb_snapshot`)."""
    remote = None if snapshot.serverurl is None else hide_password(snapshot.serverurl)
    if as_json:
        data = {
            "cache": path,
            "format": "connectordb 0.3.5",
            "cached": snapshot.cached,
            "streams": {
                name: {"cached": s.cached, "oldest": s.oldest, "newest": s.newest}
                for name, s in snapshot.streams.items()
            },
            "last_sync": snapshot.lastsynctime,
            "syncperiod": snapshot.syncperiod,
            "remote": remote,
            "migrate": migrate_hint(path),
        }
        out.write(json.dumps(data, indent=2) + "\n")
        return
    now = time.time()
    out.write(
        f"{path}: a connectordb 0.3.5 cache, {snapshot.cached:,} datapoints cached in "
        f"{len(snapshot.streams)} streams\n\n"
    )
    if snapshot.streams:
        rows = [["stream", "cached", "oldest", "newest"]]
        for name, s in snapshot.streams.items():
            oldest = age(now - s.oldest) if s.oldest is not None else "-"
            newest = age(now - s.newest) if s.newest is not None else "-"
            rows.append([name, f"{s.cached:,}", oldest, newest])
        table(rows, out)
        out.write("\n")
    out.write(f"remote:        {remote or '-'}\n")
    out.write(f"last sync:     {when(snapshot.lastsynctime, now)}\n")
    out.write(f"\n{migrate_hint(path)}\n")


def connectordb_cache(path: str) -> Any:
    """What a connectordb 0.3.5 cache at ``path`` holds, read as it is; None for any other
    file (:func:`look_into` says what it is)."""
    from .cache.legacy import connectordb_snapshot

    if not os.path.exists(path):
        return None
    try:
        return connectordb_snapshot(path)
    except ConnectorSyncError:
        return None
