"""``connectorsync rekey``: change the key of a sealed cache, seal a plain one, or unseal
one (:mod:`connectorsync.cache.rekey` does it)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from .cli_fanout import UsageError
from .errors import ConnectorSyncError
from .keysource import read_key_file


def add_rekey(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rekey",
        parents=[common],
        help="change the key of a sealed cache, or seal or unseal one",
        description="Re-seal every stored value and credential of the cache under a new "
        "key (--new-key-file), or store them in plain (--plain); a plain cache is sealed by "
        "giving no --key-file. Works in steps of 1,000 rows, each its own transaction: "
        "cut short (a power cut, Ctrl-C), the cache is refused until rekey is run again "
        "with the same keys, which resumes. Refused while another process has the cache "
        "open: stop it first.",
    )
    p.add_argument("cache", help="the cache file")
    p.add_argument("--key-file", metavar="FILE", help="its key now (none: it is plain)")
    new = p.add_mutually_exclusive_group(required=True)
    new.add_argument("--new-key-file", metavar="FILE", help="the key to seal it with")
    new.add_argument("--plain", action="store_true", help="store every value in plain")
    p.set_defaults(run=cmd_rekey)


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:

    from .cache.rekey import rekey

    if not os.path.exists(args.cache):
        raise UsageError(f"{args.cache}: no such cache file")
    try:
        old = None if args.key_file is None else read_key_file(args.key_file)
        new = None if args.plain else read_key_file(args.new_key_file)
        report = rekey(args.cache, old, new)
    except ConnectorSyncError as exc:
        raise UsageError(f"{args.cache}: {exc}") from exc
    sealed = f"sealed with key id {new.key_id}" if new is not None else "plain"
    out.write(f"{args.cache}: {report.resealed:,} values re-sealed; the cache is {sealed}\n")
    for row in report.unopenable:
        print(f"connectorsync rekey: {row} did not open with the old key: left", file=sys.stderr)
    return 1 if report.unopenable else 0
