"""A remote described as data, so that another process can build it again.

The Logger records in its cache file where the datapoints go (the remote's repr, shown by
``connectorsync status``) and, beside it, how to build that remote again: the remote's
``to_config()`` (its kind and its constructor's arguments, credentials included). So
``connectorsync sync CACHE`` delivers to the remote the cache's own program delivers to, never
elsewhere. Credentials are kept only in the cache file, which is owner-only (0600); no
command, log line, error message or repr shows them.

``to_config()`` and the classmethod ``from_config()`` (:class:`.base.Describable`) are the
only way a remote becomes data and back; the registry (:func:`.base.register_remote`) says
which class builds each kind. Every remote connectorsync ships registers itself, and so can a
remote class of your own: its configuration is then recorded with the module that defines
it, which ``connectorsync sync`` imports to build it again.

A remote that cannot be built in another process (an unregistered class, a subclass of a
registered one included; one defined in the program's script, ``__main__``; an
:class:`HTTPRemote` with an ``encode`` function of your own) is recorded as ``{"kind":
"custom", "what": ...}``, and ``connectorsync sync`` refuses it (exit 2), naming it. Sync such
a cache from its program (``Logger.sync()``).

Each other remote of a cache (``remotes=``, ``add_remote``) is recorded the same way in the
cache's ``remotes`` table (:func:`routed_config`, its module beside its configuration), and
``connectorsync sync`` builds every one of them again (:func:`remote_from_routed`).

The default remote's record, one JSON setting (:data:`CONFIG_SETTING`): ``{"remote": repr, "config":
config}``, plus ``"module"`` for a class outside connectorsync. Caches written before the
registry hold the same entries without ``"module"``, and build the same remotes
(``tests/test_cli_remotes.py::test_configs_recorded_before_the_registry_build_the_same``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ArgumentTypeError, ConfigurationError, ConnectorSyncError
from ._http import hide_password
from .base import Describable, Remote, registered_remotes

#: The cache setting beside ``remote``: ``{"remote": repr, "config": config}`` (and
#: ``"module"``), or null for the Logger's default remote (the ConnectorDB server its
#: settings describe).
CONFIG_SETTING = "remote.config"
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def remote_config(remote: Remote) -> dict[str, Any]:
    """How to build ``remote`` again, as JSON data: its ``to_config()`` when its class is
    registered (exactly it: a subclass would be built again as its base class) for the kind
    that gives; else ``{"kind": "custom", "what": ...}``, which names it. Never raises."""
    cls: type = type(remote)
    what = f"a remote of your own ({cls.__module__}.{cls.__qualname__})"
    if cls not in registered_remotes().values() or not isinstance(remote, Describable):
        return {"kind": "custom", "what": what}
    if cls.__module__ == "__main__":  # another process cannot import the program's script
        return {"kind": "custom", "what": f"{what}, defined in the program's script"}
    try:
        config = json.loads(json.dumps(remote.to_config(), allow_nan=False))
    except (TypeError, ValueError):  # an argument that is not data (a PathLike verify=)
        return {"kind": "custom", "what": f"{remote!r}, whose settings are not all JSON"}
    except Exception as exc:  # a to_config of your own failed: the pass goes on all the same
        return {
            "kind": "custom",
            "what": f"{what}, whose to_config() failed ({type(exc).__name__})",
        }
    if not isinstance(config, dict):
        return {"kind": "custom", "what": f"{what}, whose to_config() is not a dict"}
    kind = config.get("kind")
    if kind != "custom" and registered_remotes().get(str(kind)) is not cls:
        return {"kind": "custom", "what": f"{what}, whose to_config() gives another kind"}
    return config


def remote_from_config(config: Mapping[str, Any], *, module: str | None = None) -> Remote:
    """The remote that ``config`` (a remote's ``to_config()``) describes, built again by the
    class registered for its kind (its ``from_config``).

    :param module: the module that registers the kind, imported when the kind is not known
        yet (a remote class of your own, recorded with its module)
    :raises ConfigurationError: a custom remote (it names it), an unknown kind (it names the
        kinds known), a module that cannot be imported, or arguments this version does not
        take (the message names no argument's value)
    """
    if not isinstance(config, Mapping):
        raise ArgumentTypeError(
            f"remote_from_config(): config must be a dict (a remote's to_config()); "
            f"got {type(config).__name__}"
        )
    kind = config.get("kind")
    if kind == "custom":
        raise ConfigurationError(
            f"{config.get('what', 'a remote of your own')}, which connectorsync cannot build "
            "in another process"
        )
    if isinstance(kind, str) and kind not in registered_remotes() and module is not None:
        _import(module, kind)
    cls = registered_remotes().get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigurationError(
            f"unknown remote kind {kind!r} (recorded by a newer connectorsync, or a remote "
            f"class of your own not registered here); known kinds: "
            f"{', '.join(registered_remotes())}"
        )
    return cls.from_config(config)


def _import(module: str, kind: object) -> None:
    """Import the module recorded as registering ``kind``."""
    if not isinstance(module, str) or not _MODULE.fullmatch(module):
        raise ConfigurationError(f"remote kind {kind!r}: {module!r} is not a module name")
    try:
        importlib.import_module(module)
    except Exception as exc:  # the module's own code: whatever it raises, the kind is unknown
        # An ImportError says which module is missing; another error's text is the user's
        # code's and might hold anything: only its type is said.
        why = f"{type(exc).__name__}: {exc}" if isinstance(exc, ImportError) else type(exc).__name__
        raise ConfigurationError(
            f"remote kind {kind!r} is registered by module {module!r}, which cannot be "
            f"imported here ({why})"
        ) from None


def remote_entry(remote: Remote) -> dict[str, Any]:
    """What the cache records of ``remote``: ``{"remote": repr, "config": config}``, and the
    module of a class outside connectorsync (``connectorsync sync`` imports it)."""
    entry: dict[str, Any] = {"remote": repr(remote), "config": remote_config(remote)}
    module = type(remote).__module__
    if entry["config"]["kind"] != "custom" and module.split(".")[0] != "connectorsync":
        entry["module"] = module
    return entry


#: What a remote's record in the cache's ``remotes`` table (a remote added with ``remotes=``
#: or ``add_remote``) adds to its configuration: the module of a class outside connectorsync.
ROUTED_MODULE = "connectorsync.module"


def routed_config(remote: Remote) -> dict[str, Any]:
    """What the cache's ``remotes`` table records of ``remote``: :func:`remote_config`, and
    under :data:`ROUTED_MODULE` the module of a class outside connectorsync (``connectorsync
    sync`` imports it: :func:`remote_from_routed`). Never raises."""
    entry = remote_entry(remote)
    config = dict(entry["config"])
    if "module" in entry:
        config[ROUTED_MODULE] = entry["module"]
    return config


def remote_from_routed(config: Mapping[str, Any]) -> Remote:
    """The remote a :func:`routed_config` describes, built again (its module imported first
    when its kind is not known yet).

    :raises ConfigurationError: as :func:`remote_from_config`
    """
    config = dict(config)
    module = config.pop(ROUTED_MODULE, None)
    return remote_from_config(config, module=module if isinstance(module, str) else None)


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
    entry = None if given is None else remote_entry(given)
    with contextlib.suppress(ConnectorSyncError):
        if entry is not None and _another_remotes(cache, entry):
            return
        if cache.get_setting(CONFIG_SETTING) != entry:
            cache.set_setting(CONFIG_SETTING, entry)


def _another_remotes(cache: Any, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` is a remote other than the cache's ``default`` one: the Logger's
    first remote is another (``Logger(path, remotes={"cloud": ...})``, or ``connectorsync
    sync --remote cloud``) when its configuration is a named remote's and its repr is not the
    one the default remote's passes recorded. The setting is the default remote's: another's
    entry there would make the command line build the wrong one for it
    (``tests/test_cli_fanout.py::test_sync_of_one_remote_keeps_the_default_s_record``)."""
    recorded = cache.get_setting("remote")
    if recorded is not None and hide_password(recorded) == entry["remote"]:
        return False
    config = dict(
        entry["config"], **({ROUTED_MODULE: entry["module"]} if "module" in entry else {})
    )
    return any(
        name != "default" and row.config == config for name, row in cache.remotes().all().items()
    )


def recorded_entry(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """From a cache's settings: what is recorded to build its recorded remote again, or None
    (its default remote, or a cache an older connectorsync wrote: none recorded)."""
    recorded, entry = settings.get("remote"), settings.get(CONFIG_SETTING)
    if recorded is None or not isinstance(entry, dict):
        return None
    if hide_password(str(entry.get("remote"))) != hide_password(recorded):
        return None  # recorded for another remote (a pass ended before it recorded its own)
    return entry if isinstance(entry.get("config"), dict) else None


def recorded_remote(settings: Mapping[str, Any]) -> Remote | None:
    """From a cache's settings: its recorded remote, built again; None when no configuration
    is recorded for it (see :func:`recorded_entry`).

    :raises ConfigurationError: it cannot be built here (:func:`remote_from_config`)
    """
    entry = recorded_entry(settings)
    if entry is None:
        return None
    module = entry.get("module")
    return remote_from_config(entry["config"], module=module if isinstance(module, str) else None)
