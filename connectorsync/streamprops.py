"""A stream's properties, checked before they are stored: ConnectorDB's (``nickname``,
``description``...: created with the stream on the remote) and the cache's own policy,
which never reaches a remote:

- ``priority``: an integer, higher first (default 0): each pass sends higher priorities
  first, and when the cache is full lower priorities make room first.
- ``thin``: whether the stream may be thinned when the cache is full; None (the default)
  leaves it to ``on_full``: ``"thin"`` thins the streams whose schema is a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .cache.records import Policy
from .errors import StreamError

#: ConnectorDB's stream properties (0.3.5's ``Stream.create(schema, **kwargs)``), their types.
PROPERTIES: dict[str, type] = {"nickname": str, "description": str, "icon": str}
PROPERTIES.update({"datatype": str, "ephemeral": bool, "downlink": bool})

#: The widest priority: an SQLite integer holds far more, a person reads this much.
PRIORITY_RANGE = range(-1_000_000, 1_000_001)


def check_properties(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """``properties`` as a dict; :raises StreamError: naming the stream, property, type."""
    for key, value in properties.items():
        if key not in PROPERTIES:
            known = ", ".join([*PROPERTIES, "priority", "thin"])
            raise StreamError(f"stream {name!r}: unknown property {key!r}; known: {known}")
        if not isinstance(value, PROPERTIES[key]):  # isinstance(1, bool) is False, as wanted
            raise StreamError(
                f"stream {name!r}: property {key!r} must be a {PROPERTIES[key].__name__}; "
                f"got {value!r} ({type(value).__name__})"
            )
    return dict(properties)


def take_policy(name: str, properties: dict[str, Any]) -> Policy:
    """Take ``priority`` and ``thin`` out of ``properties`` (the rest are ConnectorDB's).

    :raises StreamError: naming the stream, the value and what was expected; nothing taken
    """
    priority = properties.get("priority", 0)
    thin = properties.get("thin")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise StreamError(
            f"stream {name!r}: priority must be an integer (higher is sent first); "
            f"got {priority!r} ({type(priority).__name__})"
        )
    if priority not in PRIORITY_RANGE:
        raise StreamError(
            f"stream {name!r}: priority must be from {PRIORITY_RANGE.start} to "
            f"{PRIORITY_RANGE.stop - 1}; got {priority}"
        )
    if thin is not None and not isinstance(thin, bool):
        raise StreamError(
            f"stream {name!r}: thin must be True, False or None (as on_full decides); "
            f"got {thin!r} ({type(thin).__name__})"
        )
    properties.pop("priority", None)
    properties.pop("thin", None)
    return Policy(priority, thin)
