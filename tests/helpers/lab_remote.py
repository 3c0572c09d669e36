"""A remote class of a user's own, registered, so that ``connectorsync sync CACHE`` builds it
again from the configuration its cache records (``tests/test_cli_remotes.py``). It appends
each datapoint it is given to a JSON-lines file, as ``{"stream", "t", "d"}``.

Written as a user would, from the documented contract only: the public names of
``connectorsync.remotes`` and nothing private.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from connectorsync.remotes import Datapoint, DeliveryKind, register_remote


@register_remote
class LabRemote:
    """Appends datapoints to ``path``; ``label`` names it in its repr."""

    delivery_kind = DeliveryKind.AT_LEAST_ONCE
    kind: ClassVar[str] = "tests.lab"

    def __init__(self, path: str, *, label: str = "lab") -> None:
        self.path, self.label = path, label

    def __repr__(self) -> str:
        return f"LabRemote({self.label!r})"

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "label": self.label}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LabRemote:
        return cls(**{name: value for name, value in config.items() if name != "kind"})

    def ping(self) -> str:
        return self.label

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        return {}

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            for _, t, d in batch:
                out.write(json.dumps({"stream": stream, "t": t, "d": json.loads(d)}) + "\n")

    def reconcile(self, stream: str) -> float | None:
        return None

    def close(self) -> None:
        pass


def received(path: str) -> list[dict[str, Any]]:
    """What a LabRemote appended to ``path`` (nothing when the file is missing)."""
    try:
        with open(path, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]
    except FileNotFoundError:
        return []
