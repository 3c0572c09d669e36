"""connectorsync: an offline-first sync client for sensor data.

A :class:`Logger` stores every datapoint in a local SQLite cache before ``insert`` returns,
and a syncer delivers the cache to a remote database, deleting each datapoint only after the
remote acknowledged it. It is a drop-in successor of ``connectordb.logger.Logger``::

    from connectorsync import Logger

    def init(l):
        l.apikey = "..."
        l.addStream("temperature", {"type": "number"})

    l = Logger("cache.db", on_create=init)
    l.insert("temperature", 21.5)
    l.sync()
"""

import logging

from ._checks import TEXT, TOKEN, checked
from .cache import DeadLetter, StreamStats
from .delivery import SyncReport
from .errors import (
    AmbiguousRemoteError,
    ArgumentTypeError,
    AuthError,
    CacheError,
    CacheFullError,
    ClosedError,
    ConfigurationError,
    ConnectorSyncError,
    RejectedError,
    RemoteError,
    SchemaError,
    SealedRowError,
    StreamError,
    StreamTypeError,
    TimestampError,
    TimestampTypeError,
    TransientRemoteError,
    UnknownStreamError,
    ValidationError,
)
from .logger import Logger
from .remotes import (
    ConnectorDBRemote,
    DeliveryKind,
    HTTPRemote,
    InfluxDBRemote,
    MQTTRemote,
    NATSRemote,
    PostgresRemote,
    Remote,
    thingsboard,
    thingsboard_mqtt,
)
from .status import RemoteStatus, Status

# The top-level functions check their arguments' types as Logger's methods do (invariant 15).
thingsboard = checked(url=TEXT, token=TOKEN)(thingsboard)
thingsboard_mqtt = checked(host=TEXT, token=TOKEN)(thingsboard_mqtt)

__version__ = "0.1.0"

# A library configures no logging: without the application's own configuration nothing of
# connectorsync's is printed (the loggers are named after the modules, see docs/logging.rst).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AmbiguousRemoteError",
    "ArgumentTypeError",
    "AuthError",
    "CacheError",
    "CacheFullError",
    "ClosedError",
    "ConfigurationError",
    "ConnectorDBRemote",
    "ConnectorSyncError",
    "DeadLetter",
    "DeliveryKind",
    "HTTPRemote",
    "InfluxDBRemote",
    "Logger",
    "MQTTRemote",
    "NATSRemote",
    "PostgresRemote",
    "RejectedError",
    "Remote",
    "RemoteError",
    "RemoteStatus",
    "SchemaError",
    "SealedRowError",
    "Status",
    "StreamError",
    "StreamStats",
    "StreamTypeError",
    "SyncReport",
    "TimestampError",
    "TimestampTypeError",
    "TransientRemoteError",
    "UnknownStreamError",
    "ValidationError",
    "__version__",
    "thingsboard",
    "thingsboard_mqtt",
]
