"""Test helpers for connectorsync: an in-process ConnectorDB v0.3 server.

``ConnectorDBServer`` is loaded on first use, so that ``python -m
connectorsync.testing.server`` does not import its own module twice.
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
