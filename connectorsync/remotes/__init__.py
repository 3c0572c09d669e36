"""Remotes: where the syncer delivers datapoints. See :mod:`connectorsync.remotes.base`."""

from .base import Datapoint, Remote
from .connectordb import ConnectorDBRemote

__all__ = ["ConnectorDBRemote", "Datapoint", "Remote"]
