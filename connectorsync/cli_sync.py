"""``connectorsync sync``'s pass: a progress bar on a terminal, and Ctrl-C.

The pass runs in a thread of its own while the main thread waits, so Ctrl-C (raised in the
main thread only) never lands inside a transaction or a request of the pass.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .errors import ConnectorSyncError
from .remotes._http import hide_password

#: The exit code of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


def sync_until_interrupted(logger: Any) -> Any:
    """:func:`sync_showing_progress` in a thread of its own, while this (main) thread waits
    for it or for Ctrl-C: then one line on stderr (delivered so far, still cached) and None.

    The pass is left running, not interrupted: Ctrl-C (KeyboardInterrupt) is raised only in
    the main thread, never inside a transaction or a request of the pass, and the process
    ends under it. What was sent and not acknowledged stays cached, in flight: the next pass
    settles it by the remote's delivery kind, so nothing is lost or sent twice where the
    remote can tell (``tests/test_cli.py::test_ctrl_c_in_sync_says_one_line_and_exits_130``).
    """
    sent = [0]
    result: list[Any] = []

    def count(stream: str, delivered: int) -> None:
        sent[0] += delivered

    def run() -> None:
        try:
            result.append(sync_showing_progress(logger, count))
        except BaseException as exc:  # handed to the main thread, raised there
            result.append(exc)

    worker = threading.Thread(target=run, name="connectorsync-cli-sync", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        cached = "the rest"
        with contextlib.suppress(ConnectorSyncError):
            cached = f"{len(logger):,}"
        print(
            f"connectorsync sync: interrupted: sent {sent[0]:,} datapoints, "
            f"{cached} still cached (sent by the next sync)",
            file=sys.stderr,
            flush=True,
        )
        return None
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def sync_showing_progress(logger: Any, progress: Callable[[str, int], None]) -> Any:
    """One pass, with a progress bar (delivered of cached, rate, ETA) on stderr when it is
    a terminal (``disable=None``); log lines go around the bar, not through it. ``progress``
    is called as the bar moves."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    def moved(stream: str, count: int) -> None:
        progress(stream, count)
        bar.update(count)

    bar = tqdm(total=len(logger), unit=" datapoints", disable=None, file=sys.stderr)
    with bar, logging_redirect_tqdm([logging.getLogger("connectorsync")], tqdm_class=tqdm):
        return logger.sync(progress=moved)


def write_report(report: Any, names: list[str], path: str, out: TextIO) -> int:
    """What a pass of ``connectorsync sync`` did: sent and refused in all, then each remote's
    line when it delivered to several, then each error (``remote: stream: message`` with
    several). Only the remotes of ``names``: a ``default`` that came along with nothing to
    deliver is not shown. Returns the exit code: 1 when anything was not delivered (an
    error, or datapoints refused in this pass: not delivered either), else 0."""
    reports = {name: report.remotes[name] for name in names} if report.remotes else {}
    if len(reports) == 1:
        report, reports = next(iter(reports.values())), {}
    parts = list(reports.values()) or [report]
    sent = sum(sum(r.sent.values()) for r in parts)
    dead = sum(sum(r.deadlettered.values()) for r in parts)
    out.write(f"sent {sent:,} datapoints{refused(dead, path)}\n")
    for name, one in reports.items():
        out.write(f"  {name}: sent {sum(one.sent.values()):,}")
        out.write(f"{refused(sum(one.deadlettered.values()), path, name)}\n")
    errors = report.errors
    if reports:
        errors = {
            f"{n}: {where}": text
            for n, one in reports.items()
            for where, text in one.errors.items()
        }
    for where, message in sorted(errors.items()):
        where = "" if where == "*" else f"{where.removesuffix(': *')}: "
        out.write(f"error: {where}{hide_password(message)}\n")
    ok = all(r.ok for r in parts)
    return 0 if ok and not dead else 1


def refused(count: int, path: str, remote: str | None = None) -> str:
    """``, 3 refused (see: connectorsync deadletters CACHE list)``, or nothing for none."""
    if not count:
        return ""
    only = "" if remote is None else f" --remote {remote}"
    return f", {count:,} refused (see: connectorsync deadletters {path} list{only})"
