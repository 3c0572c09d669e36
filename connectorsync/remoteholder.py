"""Which remote a :class:`~connectorsync.Logger` syncs to: the one it was given, or a
:class:`~connectorsync.remotes.connectordb.ConnectorDBRemote` built from its persisted
settings (and built anew when they change); also the connectordb package's client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import _checks as check
from .cache import Cache
from .errors import ConfigurationError, RemoteError
from .options import Settings
from .remotes._http import hide_password
from .remotes.base import Remote
from .remotes.config import record_config
from .remotes.connectordb import ConnectorDBRemote


class RemoteHolder:
    """The remote a Logger syncs to: the one it was given, or a :class:`ConnectorDBRemote`
    built from the persisted ``serverurl``, ``apikey`` and ``http_timeout`` (built anew when
    they change)."""

    def __init__(self, given: Remote | None):
        check.remote("Logger()", "remote", given)  # checked already: for other callers
        self._given = given
        self._built: ConnectorDBRemote | None = None
        self._client: Any = None  # connectordb.ConnectorDB, built by client()
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Remote:
        if self._given is not None:
            return self._given
        with self._lock:
            if self._built is None:
                self._built = ConnectorDBRemote.from_config(default_config(settings))
            return self._built

    def before(self, then: Callable[[Cache], object]) -> Callable[[Cache], object]:
        """The pass's ``before`` hook: record how to build its remote again (the pass records
        the remote's repr), then ``then(cache)``."""

        def before_pass(cache: Cache) -> object:
            record_config(cache, self._given)
            return then(cache)

        return before_pass

    def client(self, settings: Settings) -> Any:
        """The connectordb package's client for the settings, built once.

        :raises ConfigurationError: the package is not installed
        :raises RemoteError: the client could not connect
        """
        with self._lock:
            if self._client is None:
                try:
                    from connectordb import ConnectorDB  # an extra: imported when asked for
                except ImportError:
                    raise ConfigurationError(
                        "Logger.connectordb needs the connectordb package: "
                        "pip install 'connectorsync[connectordb]'"
                    ) from None
                url = settings.get("serverurl")
                try:
                    self._client = ConnectorDB(settings.get("apikey"), url=url)
                except Exception as exc:  # the package's own errors, or requests'
                    where = hide_password(url)
                    raise RemoteError(f"connectordb client for {where}: {exc!r}") from exc
            return self._client

    def rebuilt(self, settings: Settings) -> Remote:
        """The remote after its settings changed."""
        self.close()
        return self.get(settings)

    def close(self) -> None:
        with self._lock:
            self._client = None
            if self._built is not None:
                self._built.close()
                self._built = None


def default_config(settings: Settings) -> dict[str, Any]:
    """The configuration of a Logger's default remote: the ConnectorDB server its persisted
    ``serverurl``, ``apikey`` and ``http_timeout`` describe. Built, like every remote made
    from data, by the class's ``from_config`` (:mod:`connectorsync.remotes.config`)."""
    return {
        "kind": ConnectorDBRemote.kind,
        "serverurl": settings.get("serverurl"),
        "apikey": settings.get("apikey"),
        "timeout": settings.options.http_timeout,
    }
