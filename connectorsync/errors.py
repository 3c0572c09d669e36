"""The errors connectorsync raises.

Callers only ever need to catch these: apsw, requests and jsonschema exceptions are
wrapped where they enter our code (``raise CacheError(...) from exc``), so the original
is still there as ``__cause__`` for debugging.

::

    ConnectorSyncError
      ConfigurationError        a bad option, a foreign cache file, no remote configured
        ArgumentTypeError       an argument of the wrong type (also a TypeError)
      StreamError               a bad stream name
        StreamTypeError         a stream name that is not a string (also a TypeError)
        UnknownStreamError      the stream is not registered (or not on the server)
        SchemaError             the stream's JSON schema is not a valid schema
      ValidationError           a value does not match the stream's schema, or is not JSON
      TimestampError            not a finite number, or older than the stream's newest
        TimestampTypeError      not a number or a datetime at all (also a TypeError)
      CacheError                the SQLite cache failed (wraps apsw errors)
        CacheFullError          the disk or the cache is full: nothing was written
        SealedRowError          a sealed row does not open (changed, or another key)
      RemoteError               the remote failed; .status and .body say how
        TransientRemoteError    network trouble, timeouts, 408/429/5xx: retry later
        AmbiguousRemoteError    the request was sent but no answer came back
        RejectedError           the remote refused these datapoints (4xx on the data)
        AuthError               the credentials were refused: syncing pauses, data is kept
      ClosedError               the Logger was used after close()
"""

from __future__ import annotations


class ConnectorSyncError(Exception):
    """Base class of every error connectorsync raises."""


class ConfigurationError(ConnectorSyncError):
    """An option, a setting or a cache file is not usable as given."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument of a public function has the wrong type; the message names the function,
    the argument, what it got and what it expects (invariant 15)."""


class StreamError(ConnectorSyncError):
    """A stream name or definition is not acceptable."""


class StreamTypeError(StreamError, ArgumentTypeError):
    """A stream name that is not a string (a :class:`StreamError` and a ``TypeError``)."""


class UnknownStreamError(StreamError):
    """The stream is not registered with the Logger (or not found on the server)."""


class SchemaError(StreamError):
    """A stream's JSON schema is not a valid JSON schema."""


class ValidationError(ConnectorSyncError):
    """A value does not match its stream's schema, or cannot be stored as JSON.

    :ivar stream: the stream name
    :ivar value: the rejected value
    :ivar reason: why, in jsonschema's words where it was a schema mismatch
    """

    def __init__(self, message: str, *, stream: str = "", value: object = None, reason: str = ""):
        super().__init__(message)
        self.stream = stream
        self.value = value
        self.reason = reason


class TimestampError(ConnectorSyncError):
    """A timestamp is not a finite number, or would break the stream's increasing order."""


class TimestampTypeError(TimestampError, ArgumentTypeError):
    """A timestamp that is neither a number nor a datetime (also a ``TypeError``)."""


class CacheError(ConnectorSyncError):
    """The SQLite cache failed; the original apsw error is the ``__cause__``."""


class CacheFullError(CacheError):
    """The disk or the cache limit is full. Nothing of the failed call was written."""


class SealedRowError(CacheError):
    """A row of a sealed cache does not open: it was changed in the file, or sealed under
    another key. The message names the row (table, stream, id or time); the other rows are
    not affected."""


class RemoteError(ConnectorSyncError):
    """The remote database failed.

    :ivar status: the HTTP status, or None when no answer came back
    :ivar body: the remote's answer (its message), or ``""``
    """

    def __init__(self, message: str, *, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class TransientRemoteError(RemoteError):
    """A failure worth retrying later: network trouble, a timeout, 408, 429 or 5xx.

    :ivar retry_after: seconds the remote asked us to wait (``Retry-After``), or None
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class AmbiguousRemoteError(RemoteError):
    """The request went out but no answer came back: the remote may or may not have stored it."""


class RejectedError(RemoteError):
    """The remote refused the datapoints themselves (schema, order, size): retrying won't help."""


class AuthError(RemoteError):
    """The remote refused the credentials. Syncing pauses; no data is touched."""


class ClosedError(ConnectorSyncError):
    """The Logger (or one of its parts) was used after ``close()``."""
