"""Test helpers for connectorsync: an in-process ConnectorDB v0.3 server.

``ConnectorDBServer`` is loaded on first use, so that ``python -m
connectorsync.testing.server`` does not import its own module twice.

The other public modules: servers for each remote (:mod:`.server`, :mod:`.influx`,
:mod:`.receiver`, :mod:`.mosquitto`, :mod:`.nats`, :mod:`.postgres`, :mod:`.ntp`) and the
parts they are built from (:mod:`.loopback`); a disk that keeps only what was fsynced
(:mod:`.powercut`); and the probes tests use instead of private names: :mod:`.probe` (the
cache file, read-only), :mod:`.live` (hooks on a running Logger), :mod:`.groupcommit` and
:mod:`.interrupt`. Modules whose name starts with ``_`` are their insides, and
:mod:`.internals` is the one door those hooks take into a Logger: tests use neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import ConnectorDBServer

__all__ = ["ConnectorDBServer"]


def __getattr__(name: str) -> Any:
    if name == "ConnectorDBServer":
        from .server import ConnectorDBServer

        return ConnectorDBServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
