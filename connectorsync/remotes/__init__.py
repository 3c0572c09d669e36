"""Remotes: where the syncer delivers datapoints. See :mod:`connectorsync.remotes.base`."""

from .base import Datapoint, DeliveryKind, Remote
from .connectordb import ConnectorDBRemote
from .http import HTTPRemote, thingsboard
from .influxdb import InfluxDBRemote

__all__ = [
    "ConnectorDBRemote",
    "Datapoint",
    "DeliveryKind",
    "HTTPRemote",
    "InfluxDBRemote",
    "Remote",
    "thingsboard",
]
