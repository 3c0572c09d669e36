"""A remote described as data, so that another process can build it again.

The Logger records in its cache file where the datapoints go (the remote's repr, shown by
``connectorsync status``) and, beside it, how to build that remote again: its kind and its
constructor's arguments, credentials included (``to_config()`` of each built-in remote). So
``connectorsync sync CACHE`` delivers to the remote the cache's own program delivers to, never
elsewhere. Credentials are kept only in the cache file, which is owner-only (0600); no
command, log line, error message or repr shows them.

A remote of your own (any class but the built-in four, a subclass of one included, or an
:class:`HTTPRemote` with an ``encode`` function of your own) cannot be built in another process:
it is recorded as ``{"kind": "custom", "what": ...}``, and ``connectorsync sync`` refuses it
(exit 2), naming it. Sync such a cache from its program (``Logger.sync()``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError, ConnectorSyncError
from ._http import hide_password
from .base import Remote
from .connectordb import ConnectorDBRemote
from .http import HTTPRemote, thingsboard
from .influxdb import InfluxDBRemote
from .mqtt import MQTTRemote, thingsboard_mqtt

#: The cache setting beside ``remote``: ``{"remote": repr, "config": config}``, or null for
#: the Logger's default remote (the ConnectorDB server its settings describe).
CONFIG_SETTING = "remote.config"
_BUILT_IN = (ConnectorDBRemote, HTTPRemote, InfluxDBRemote, MQTTRemote)


def remote_config(remote: Remote) -> dict[str, Any]:
    """``remote.to_config()`` for a built-in remote (exactly one of them, not a subclass: a
    subclass would be built again as its base class); else ``{"kind": "custom", ...}``."""
    kind = type(remote)
    if kind in _BUILT_IN:
        return remote.to_config()  # type: ignore[attr-defined, no-any-return]
    return {
        "kind": "custom",
        "what": f"a remote of your own ({kind.__module__}.{kind.__qualname__})",
    }


def remote_from_config(config: Mapping[str, Any]) -> Remote:
    """The remote that ``config`` (a remote's ``to_config()``) describes, built again.

    :raises ConfigurationError: a custom remote (it names it), an unknown kind, or arguments
        this version does not take (the message names no argument's value)
    """
    args = dict(config)
    kind = args.pop("kind", None)
    if kind == "custom":
        raise ConfigurationError(
            f"{args.get('what', 'a remote of your own')}, which connectorsync cannot build "
            "in another process"
        )
    build: Any = {
        "connectordb": ConnectorDBRemote,
        "influxdb": InfluxDBRemote,
        "http": HTTPRemote,
        "thingsboard": thingsboard,
        "mqtt": MQTTRemote,
        "thingsboard_mqtt": thingsboard_mqtt,
    }.get(kind)
    if build is None:
        raise ConfigurationError(
            f"unknown remote kind {kind!r} (recorded by a newer connectorsync?)"
        )
    try:
        remote: Remote = build(**args)
    except TypeError as exc:  # says which argument, never its value
        raise ConfigurationError(f"the recorded {kind} remote does not fit: {exc}") from None
    return remote


def record_remote(cache: Any, remote: Remote) -> None:
    """A Logger was given ``remote``: on a cache with no remote recorded yet, record it as
    the cache's remote; when it is the cache's remote, record how to build it again. Another
    program's remote stays the cache's until a pass here replaces it (:func:`record_config`).
    """
    recorded = cache.get_setting("remote")
    if recorded is None:
        cache.set_setting("remote", repr(remote))
    if recorded is None or hide_password(recorded) == repr(remote):
        record_config(cache, remote)


def record_config(cache: Any, given: Remote | None) -> None:
    """Before a pass records its remote's repr (as ``remote``): record how to build it again,
    ``given`` (the remote the Logger was given) or None (its default remote, which the
    settings describe). Written only when it changed; never raises (a pass goes on)."""
    entry = None
    if given is not None:
        entry = {"remote": repr(given), "config": remote_config(given)}
        try:
            entry = json.loads(json.dumps(entry, allow_nan=False))
        except (TypeError, ValueError):  # an argument that is not data (a PathLike verify=)
            what = f"{given!r}, whose settings are not all JSON"
            entry = {"remote": repr(given), "config": {"kind": "custom", "what": what}}
    with contextlib.suppress(ConnectorSyncError):
        if cache.get_setting(CONFIG_SETTING) != entry:
            cache.set_setting(CONFIG_SETTING, entry)


def recorded_config(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """From a cache's settings: the configuration recorded for its recorded remote, or None
    (its default remote, or a cache an older connectorsync wrote: none recorded)."""
    recorded, entry = settings.get("remote"), settings.get(CONFIG_SETTING)
    if recorded is None or not isinstance(entry, dict):
        return None
    if hide_password(str(entry.get("remote"))) != hide_password(recorded):
        return None  # recorded for another remote (a pass ended before it recorded its own)
    config = entry.get("config")
    return config if isinstance(config, dict) else None
