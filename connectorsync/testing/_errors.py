"""What the test ConnectorDB server's modules share: the request failure and the name rule."""

from __future__ import annotations

import re

_NAME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")  # fullmatch: "$" would allow "a\n"


class ApiError(Exception):
    """A request failure with the HTTP status and message to answer with."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


def valid_name(name: str) -> bool:
    """ConnectorDB's rule for user, device and stream names."""
    return len(name) < 30 and _NAME_RE.fullmatch(name) is not None
