"""The command line's key: ``--key-file`` for the commands that open a cache.

A command's key is chosen once, before it runs (:func:`run_with_key`): ``--key-file``, else
the systemd credential (:mod:`connectorsync.keysource`), else none; every way the command
opens the cache (:func:`open_sealed`, :func:`logger_keys`) uses it. The key never appears in
an output or an error (``test_seal.py::test_cli_takes_key_file``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO

from .keysource import SecretKey, find_key


class _Chosen:
    """The key of the command being run (one command per run of ``main``)."""

    key: SecretKey | None = None


def keyed_parser() -> argparse.ArgumentParser:
    """The ``--key-file`` flag, a parent of each command that opens a cache."""
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument(
        "--key-file",
        metavar="FILE",
        help="the key of a sealed cache (default: $CREDENTIALS_DIRECTORY/connectorsync.key "
        "if it exists)",
    )
    return keyed


def run_with_key(args: argparse.Namespace, run: Callable[..., Any], out: TextIO) -> Any:
    """Run the command ``run(args, out)`` with its key chosen."""
    _Chosen.key = find_key(None, getattr(args, "key_file", None))
    try:
        return run(args, out)
    finally:
        _Chosen.key = None


def open_sealed(path: str) -> Any:
    """A read-only :class:`~connectorsync.cache.Cache` on ``path``, its key checked (a
    sealed cache without it, or with another, is refused saying how).

    :raises ConnectorSyncError: as ``Cache.open_readonly``, or the key does not fit
    """
    from .cache import Cache, sealing

    cache = Cache.open_readonly(path)
    try:
        sealing.bind(cache, _Chosen.key, created=False)
    except BaseException:
        cache.close()
        raise
    return cache


def logger_keys() -> dict[str, Any]:
    """The keyword arguments a Logger the CLI opens takes for the key."""
    return {} if _Chosen.key is None else {"key": _Chosen.key}
