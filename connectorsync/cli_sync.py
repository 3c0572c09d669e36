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
from typing import Any

from .errors import ConnectorSyncError

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
