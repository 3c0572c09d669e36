"""The ``connectorsync`` command line (also ``python -m connectorsync``).

For the person operating a device: what waits in a cache, what failed and why, and the means
to act on it. Subcommands mirror Logger methods (``status``, ``sync``, ``export``,
``deadletters``, ``metrics``). Exit codes: 0 done; 1 the work failed (a sync error, say, or
``status --check`` found something wrong); 2 bad usage, or a cache file that is missing or
not a connectorsync cache; 130 stopped by Ctrl-C (one line, no traceback). The commands
that only look (``status``, ``metrics``, ``export``, ``deadletters list``) open the cache
read-only: they never write to it nor migrate it (an older one exits 2, saying how to
migrate); ``migrate`` does, after a backup copy. No output shows a password in a url. The
library installs no signal handlers; the commands that run until stopped handle
SIGTERM/SIGINT themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from . import __version__
from .cli_fanout import (
    UsageError,
    delivering,
    letters_of,
    open_logger,
    recorded_remotes,
    refuse_skipped,
    skipped,
)
from .cli_keys import keyed_parser, open_sealed, run_with_key
from .cli_seal import add_rekey
from .cli_status import (
    connectordb_cache,
    migrate_hint,
    read_status,
    table,
    when,
    write_check,
    write_connectordb_status,
    write_status_json,
    write_status_text,
)
from .cli_sync import INTERRUPTED, sync_until_interrupted, write_report
from .errors import ConnectorSyncError
from .reading import unopened
from .remotes._http import hide_password

# ----------------------------------------------------------------------------- helpers


@contextmanager
def log_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """connectorsync's log on stderr while a command runs: WARNING and up by default, INFO
    with ``-v``, DEBUG with ``-vv``, errors only with ``-q``. Put back as it was after."""
    verbose = getattr(args, "verbose", 0) or 0
    level = logging.ERROR if getattr(args, "quiet", False) else logging.WARNING
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger("connectorsync")
    before = root.level
    root.setLevel(level)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


class _NotFrom(logging.Filter):
    """Drops the records a function logs itself (the CLI prints what they say)."""

    def __init__(self, function: str):
        super().__init__()
        self.function = function

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != self.function


@contextmanager
def said_here(function: str) -> Iterator[None]:
    """While the CLI says it on stdout, the Logger's own record of ``function`` (its
    ``purge_deadletters`` warns "purged N dead letters") is not shown a second time."""
    quiet = _NotFrom(function)
    library = logging.getLogger("connectorsync.logger")  # the Logger logs there
    library.addFilter(quiet)
    try:
        yield
    finally:
        library.removeFilter(quiet)


@contextmanager
def open_cache(path: str, remote: Any = None) -> Iterator[Any]:
    """A Logger on an existing cache file (syncing to ``remote``, if given); never creates
    one."""
    logger = open_logger(path, remote)
    try:
        yield logger
    finally:
        logger.close(timeout=0)


@contextmanager
def look_into(path: str) -> Iterator[Any]:
    """A read-only :class:`~connectorsync.cache.Cache` on an existing, current cache file, for
    the commands that only look: they never write to the file nor migrate it (an older or a
    connectordb 0.3.5 cache is refused, with how to migrate it), even while a program uses it.
    A sealed cache opens with the command's key (``--key-file``).
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such cache file")
    try:
        cache = open_sealed(path)
    except ConnectorSyncError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    try:
        yield cache
    finally:
        cache.close()


# ----------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    if args.max_lag is not None and not args.check:
        raise UsageError("--max-lag goes with --check")
    legacy = connectordb_cache(args.cache)
    if legacy is not None and args.check:
        out.write(f"connectordb 0.3.5 cache, {migrate_hint(args.cache)}\n")
        return 1
    if legacy is not None:
        write_connectordb_status(legacy, args.cache, out, as_json=args.json)
        return 0
    with look_into(args.cache) as cache:
        status = read_status(cache)
    if args.check:
        return write_check(status, args.cache, args.max_lag, out)
    if args.json:
        write_status_json(status, args.cache, out)
    else:
        write_status_text(status, args.cache, out)
    return 0


def cmd_metrics(args: argparse.Namespace, out: TextIO) -> int:
    from .metrics import cache_metrics

    with look_into(args.cache) as cache:
        status = read_status(cache)
    out.write(cache_metrics(status, args.cache, openmetrics=args.openmetrics))
    return 0


def cmd_sync(args: argparse.Namespace, out: TextIO) -> int:
    found = recorded_remotes(args.cache, args.remote)
    for name, why in found.skipped.items():
        if found.built:  # else delivering() refuses, saying why
            print(f"connectorsync sync: skipped {skipped(name, why)}", file=sys.stderr)
    refuse_skipped(args.cache, found)
    logger = None
    with contextlib.ExitStack() as stack:
        logger = stack.enter_context(delivering(args.cache, found))
        logging.getLogger(__name__).info("syncing %s to %s", args.cache, ", ".join(found.built))
        report = sync_until_interrupted(logger)
        if report is None:  # Ctrl-C: the pass still runs, the process ends under it
            stack.pop_all()
            return INTERRUPTED
    code = write_report(report, list(found.built), args.cache, out)
    return 2 if found.skipped else code


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with look_into(args.cache) as cache:
        streams = cache.streams()
        if args.stream is not None and args.stream not in streams:
            raise UsageError(f"{args.cache}: no stream {args.stream!r}")
        names = [args.stream] if args.stream is not None else sorted(streams)
        points = cached_points(cache, [(name, streams[name].id) for name in names])
        target = open(args.output, "w", newline="") if args.output else out  # noqa: SIM115
        try:
            count = write_points(points, args.format, target)
        finally:
            if args.output:
                target.close()
    if args.output:
        print(f"exported {count:,} datapoints to {args.output}", file=sys.stderr)
    return 0


def cached_points(cache: Any, streams: list[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """``Logger.export()`` from a cache opened with :func:`look_into`: stream by stream,
    oldest first, read in pages."""
    failed: list[str] = []
    for name, stream_id in streams:
        after = 0
        while rows := cache.batch(stream_id, after, 1000):
            opened, bad = cache.opened_points(name, rows)
            failed += bad
            for _, t, data in opened:
                yield {"stream": name, "t": t, "d": json.loads(data)}
            after = rows[-1][0]
    if failed:
        raise unopened(failed)


def write_points(points: Iterator[dict[str, Any]], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["stream", "t", "d"])
        for p in points:
            writer.writerow([p["stream"], repr(p["t"]), json.dumps(p["d"], ensure_ascii=False)])
            count += 1
    else:
        for p in points:
            out.write(json.dumps(p, ensure_ascii=False) + "\n")
            count += 1
    return count


DEADLETTER_ACTIONS = ("list", "retry", "purge")


def cmd_deadletters(args: argparse.Namespace, out: TextIO) -> int:
    if args.second in DEADLETTER_ACTIONS:
        args.cache, args.action = args.first, args.second
    elif args.first in DEADLETTER_ACTIONS:
        args.action, args.cache = args.first, args.second
    else:
        raise UsageError("say what to do with the dead letters: list, retry or purge")
    if args.action == "list":
        return list_deadletters(args, out)
    ids = args.ids or None
    if ids is None and not args.all:
        raise UsageError(f"deadletters {args.action}: give ids, or --all")
    if args.remote is not None:  # only that remote's letters
        ids = remote_letters(args.cache, args.remote, ids)
        if not ids:
            out.write(f"no dead letters of remote {args.remote!r}\n")
            return 0
    if args.action == "retry" and not args.restamp:
        return retry_deadletters(args, ids, out)
    with open_cache(args.cache) as logger:
        if args.action == "retry":
            count = logger.retry_deadletters(ids, restamp=True)
            out.write(f"queued {count:,} dead letters to be sent again, with new timestamps\n")
        else:
            with said_here("purge_deadletters"):
                count = logger.purge_deadletters(ids)
            out.write(f"purged {count:,} dead letters\n")
    return 0


def list_deadletters(args: argparse.Namespace, out: TextIO) -> int:
    """``deadletters CACHE list``: each letter with the remote that refused it (``--remote``:
    that one's only), read without writing the file."""
    with look_into(args.cache) as cache:
        letters = cache.deadletters(args.stream)
    remotes = letters_of(args.cache, args.remote)
    shown = [(d, remotes[d.id]) for d in letters if d.id in remotes]
    if args.json:
        data = [{**dataclasses.asdict(d), "remote": remote} for d, remote in shown]
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    if not shown:
        out.write("no dead letters\n")
        return 0
    rows = [["id", "remote", "stream", "time", "attempts", "value", "reason"]]
    for d, remote in shown:
        value = json.dumps(d.d, ensure_ascii=False)
        rows.append(
            [
                str(d.id),
                remote,
                d.stream,
                when(d.t).split(" (")[0],
                str(d.attempts),
                value if len(value) <= 30 else value[:27] + "...",
                d.reason,
            ]
        )
    table(rows, out)
    return 0


def remote_letters(path: str, remote: str, ids: list[int] | None) -> list[int]:
    """The ids of the dead letters ``remote`` refused (of ``ids`` only, if given).

    :raises UsageError: an id given is not a letter of that remote
    """
    theirs = letters_of(path, remote)
    if ids is None:
        return sorted(theirs)
    others = [i for i in ids if i not in theirs]
    if others:
        raise UsageError(
            f"dead letter(s) {', '.join(map(str, others))} are not remote {remote!r}'s "
            f"(see: connectorsync deadletters {path} list)"
        )
    return ids


def retry_deadletters(args: argparse.Namespace, ids: list[int] | None, out: TextIO) -> int:
    """``deadletters retry``: each letter sent again to the remote that refused it, every
    remote built again as ``sync`` builds them; a remote that cannot be is named (exit 2),
    its letters stay."""
    found = recorded_remotes(args.cache, args.remote)
    for name, why in found.skipped.items():
        if found.built:
            print(f"connectorsync deadletters: skipped {skipped(name, why)}", file=sys.stderr)
    with delivering(args.cache, found) as logger:
        count = logger.retry_deadletters(ids)
        out.write(f"sent {count:,} dead letters again, with their own timestamps\n")
        stay = [d for d in logger.deadletters() if ids is None or d.id in ids]
        if stay:
            out.write(
                f"{len(stay):,} stay, with the reason"
                f" (see: connectorsync deadletters {args.cache} list)\n"
            )
    return 2 if found.skipped else 0


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from .cache import schema
    from .errors import ConfigurationError

    if not os.path.exists(args.cache):
        raise UsageError(f"{args.cache}: no such cache file")
    try:
        backup = schema.migrate(args.cache)
    except ConfigurationError as exc:  # not a cache, or the old program still has it open
        raise UsageError(f"{args.cache}: {exc}") from exc
    if backup is None:
        out.write(f"{args.cache}: nothing to migrate (schema version {schema.SCHEMA_VERSION})\n")
        return 0
    out.write(f"backup: {backup}\n")
    out.write(f"{args.cache}: migrated to schema version {schema.SCHEMA_VERSION}\n")
    return 0


def reader_gone(out: TextIO) -> int:
    """The reader of our output went away (``connectorsync export CACHE | head -1``): it has
    what it wanted, so end quietly (exit 0). Python flushes stdout once more at exit: what is
    left in its buffer goes to /dev/null, not into a second BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):  # not a file (a StringIO in tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    return 0


def cmd_serve(argv: list[str]) -> int:
    from .testing.server import main as serve_main

    return serve_main(argv)


def cmd_demo(argv: list[str]) -> int:
    from .demo import main as demo_main

    argparse.ArgumentParser(
        prog="connectorsync demo",
        description="The temperature-logger demo: a few seconds, against an embedded test "
        "server that goes away for a while.",
    ).parse_args(argv)
    return demo_main()


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connectorsync",
        description="Offline-first sync of sensor data: look into and act on a device's cache.",
    )
    parser.add_argument("--version", action="version", version=f"connectorsync {__version__}")
    verbosity(parser, 0)
    # Accepted after the command too; given there, it wins over the same flag before it.
    common = argparse.ArgumentParser(add_help=False)
    verbosity(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    keyed = keyed_parser()  # --key-file: a sealed cache's key

    p = sub.add_parser(
        "status",
        parents=[common, keyed],
        help="what waits in a cache, and how syncing goes",
        description="Per stream: datapoints cached, age of the oldest, dead "
        "letters; then last sync, last error, next attempt.",
    )
    p.add_argument("cache", help="the cache file")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="machine-readable output")
    how.add_argument(
        "--check",
        action="store_true",
        help="exit 1 saying what is wrong (syncing failing or paused, dead letters, "
        "a datapoint older than --max-lag), or print ok",
    )
    p.add_argument(
        "--max-lag",
        type=seconds,
        metavar="SECONDS",
        help="with --check: the oldest cached datapoint may be this old",
    )
    p.set_defaults(run=cmd_status)

    p = sub.add_parser(
        "metrics",
        parents=[common, keyed],
        help="a cache's metrics for Prometheus (node_exporter's textfile collector)",
        description="What the cache holds (per stream cached, oldest age, dead letters; "
        "dropped, expired, last sync, clock offset, file and WAL size) in the Prometheus "
        "text format that node_exporter's textfile collector reads. Only looks: the cache "
        "is never written. What exists only in the memory of the program that logs "
        "(delivered counts, commit latencies) is not there: serve it with metrics_port.",
    )
    p.add_argument("cache", help="the cache file")
    p.add_argument(
        "--openmetrics", action="store_true", help="OpenMetrics text instead (as Logger.metrics())"
    )
    p.set_defaults(run=cmd_metrics)

    p = sub.add_parser(
        "sync",
        parents=[common, keyed],
        help="deliver a cache's backlog now",
        description="One sync pass to each remote the cache's program syncs to (recorded "
        "in the cache, each with its configuration; --remote: to that one only). A remote "
        "of your own, which only its program can build, is named and skipped (exit 2). "
        "with a progress bar on a terminal. "
        "Exit code 1 if anything could not be delivered: an error, or datapoints "
        "the remote refused (dead-lettered) in this pass.",
    )
    p.add_argument("cache", help="the cache file")
    p.add_argument("--remote", metavar="NAME", help="deliver to this remote only")
    p.set_defaults(run=cmd_sync)

    p = sub.add_parser(
        "export",
        parents=[common, keyed],
        help="write the cached datapoints as CSV or JSON lines",
        description="Cached (not yet delivered) datapoints, oldest first.",
    )
    p.add_argument("cache", help="the cache file")
    p.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="output format (default jsonl)"
    )
    p.add_argument("--stream", help="only this stream")
    p.add_argument("--output", "-o", help="write to this file instead of standard output")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "deadletters",
        parents=[common, keyed],
        help="list, retry or purge refused datapoints",
        description="Datapoints a remote refused, kept with its reason; each is sent again "
        "to the remote that refused it.",
    )
    # Either order: `deadletters CACHE list` and `deadletters list CACHE`.
    p.add_argument("first", metavar="CACHE", help="the cache file (or the action)")
    p.add_argument(
        "second", metavar="ACTION", help="list, retry or purge (or the cache file, after it)"
    )
    p.add_argument("ids", nargs="*", type=int, help="dead letter ids (retry, purge)")
    p.add_argument("--all", action="store_true", help="every dead letter (retry, purge)")
    p.add_argument(
        "--restamp",
        action="store_true",
        help="retry: queue them with new timestamps (after the stream's newest) instead of"
        " sending them with their own; a second copy where one had arrived",
    )
    p.add_argument("--stream", help="only this stream (list)")
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.add_argument(
        "--remote", metavar="NAME", help="only the letters this remote refused (list, retry, purge)"
    )
    p.set_defaults(run=cmd_deadletters)

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="migrate a connectordb 0.3.5 or older cache, after a backup copy",
        description="Copy the cache file next to it (owner-only; an existing backup is never "
        "overwritten), then migrate it to this version. Refused while another process has "
        "the file open: stop the old program first. A current cache is left as it is.",
    )
    p.add_argument("cache", help="the cache file")
    p.set_defaults(run=cmd_migrate)
    add_rekey(sub, common)

    # These two take their own arguments.
    sub.add_parser("serve", help="run a ConnectorDB v0.3 test server on 127.0.0.1", add_help=False)
    sub.add_parser("demo", help="run the temperature-logger demo (a few seconds)", add_help=False)
    return parser


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text}: not a number of seconds above 0")
    return value


def verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log what connectorsync does on stderr (INFO; -vv: DEBUG)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="log only errors",
    )


PASS_THROUGH: dict[str, Callable[[list[str]], int]] = {"serve": cmd_serve, "demo": cmd_demo}


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run a subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout if out is None else out
    parser = build_parser()
    flags = 0  # -v/-q before a command that takes its own arguments
    while flags < len(argv) and re.fullmatch(r"-v+|--verbose|-q|--quiet", argv[flags]):
        flags += 1
    if argv[flags:] and argv[flags] in PASS_THROUGH:
        with log_to_stderr(parser.parse_args(argv[:flags])):
            return PASS_THROUGH[argv[flags]](argv[flags + 1 :])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(out)
        return 2
    with log_to_stderr(args):
        return run_command(args, out)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    try:
        code = int(run_with_key(args, args.run, out))
        out.flush()  # here, where a reader gone is caught, not at exit
        return code
    except BrokenPipeError:
        return reader_gone(out)
    except KeyboardInterrupt:  # Ctrl-C outside a sync pass: nothing was under way
        print(f"connectorsync {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except UsageError as exc:
        print(f"connectorsync {args.command}: {hide_password(str(exc))}", file=sys.stderr)
        return 2
    except ConnectorSyncError as exc:
        print(f"connectorsync {args.command}: {hide_password(str(exc))}", file=sys.stderr)
        return 1
