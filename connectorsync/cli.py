"""The ``connectorsync`` command line (also ``python -m connectorsync``).

Subcommands mirror what a person operating a device needs. The library itself installs no
signal handlers; the commands that run until stopped handle SIGTERM/SIGINT here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__


def _serve(argv: list[str]) -> int:
    from .testing.server import main as serve_main

    return serve_main(argv)


# name -> (one-line help, function taking the remaining arguments)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "serve": ("run a ConnectorDB v0.3 test server on 127.0.0.1", _serve),
}


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="connectorsync",
        description="Offline-first sync of sensor data: tools for a device's cache.",
    )
    parser.add_argument("--version", action="version", version=f"connectorsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, _) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    args, _ = parser.parse_known_args(argv[:1])
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][1](argv[1:])
