"""Remotes: where the syncer delivers datapoints. See :mod:`connectorsync.remotes.base`.

Importing this package imports every remote connectorsync ships, each of which registers
itself (:func:`~connectorsync.remotes.base.register_remote`); every one is exported here and
from :mod:`connectorsync` (``tests/test_remote_contract.py::
test_every_shipped_remote_is_exported``). For remotes of your own, two helpers the built-in
ones use: :class:`Prepared` (request bodies made ahead, for ``prepare``) and
:func:`short_reason` (a remote's answer as a one-line reason for an error).
"""

from ._http import Prepared, short_reason
from .base import (
    Datapoint,
    DeliveryKind,
    Describable,
    Remote,
    register_remote,
    registered_remotes,
)
from .config import remote_from_config
from .connectordb import ConnectorDBRemote
from .http import HTTPRemote, thingsboard
from .influxdb import InfluxDBRemote
from .mqtt import MQTTRemote, thingsboard_mqtt
from .nats import NATSRemote
from .postgres import PostgresRemote

__all__ = [
    "ConnectorDBRemote",
    "Datapoint",
    "DeliveryKind",
    "Describable",
    "HTTPRemote",
    "InfluxDBRemote",
    "MQTTRemote",
    "NATSRemote",
    "PostgresRemote",
    "Prepared",
    "Remote",
    "register_remote",
    "registered_remotes",
    "remote_from_config",
    "short_reason",
    "thingsboard",
    "thingsboard_mqtt",
]
