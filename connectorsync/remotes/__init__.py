"""Remotes: where the syncer delivers datapoints. See :mod:`connectorsync.remotes.base`."""

from .base import Datapoint, DeliveryKind, Remote
from .config import remote_from_config
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
    "remote_from_config",
    "thingsboard",
]
