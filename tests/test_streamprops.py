"""A stream's own policy, ``add_stream(priority=, thin=)``: checked, kept in the cache across
reopening, shown in ``status()``, and never sent to the remote as a ConnectorDB property."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from connectorsync import Logger, StreamError
from connectorsync.remotes import ConnectorDBRemote
from connectorsync.testing import ConnectorDBServer
from tests.conftest import dump


def test_priority_and_thin_are_kept_and_shown(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        lg.addStream_force("alarm", {"type": "boolean"}, priority=9, thin=False)
        lg.addStream_force("temp", {"type": "number"})
        lg.insert("alarm", True)
        stats = lg.status().streams
        assert (stats["alarm"].priority, stats["temp"].priority) == (9, 0)
        assert stats["alarm"].thinned == stats["temp"].thinned == 0
    with Logger(cache_path) as lg:
        assert lg.status().streams["alarm"].priority == 9
        lg.addStream_force("alarm", {"type": "boolean"}, priority=2)  # changed: data stays
        assert lg.status().streams["alarm"].priority == 2
        assert len(lg) == 1


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"priority": "high"}, "priority must be an integer.*'high' \\(str\\)"),
        ({"priority": True}, "priority must be an integer.*True \\(bool\\)"),
        ({"priority": 1.5}, "priority must be an integer.*1.5 \\(float\\)"),
        ({"priority": 10**9}, "priority must be from -1000000 to 1000000; got 1000000000"),
        ({"thin": "yes"}, "thin must be True, False or None.*'yes' \\(str\\)"),
        ({"thin": 1}, "thin must be True, False or None.*1 \\(int\\)"),
        ({"urgency": 3}, "unknown property 'urgency'.*priority, thin"),
    ],
)
def test_a_bad_policy_names_the_stream_and_value_and_changes_nothing(
    cache_path: str, props: dict[str, object], expected: str
) -> None:
    with Logger(cache_path) as lg:
        lg.addStream_force("temp", {"type": "number"}, priority=1)
        lg.insert("temp", 1.0)
    before = dump(cache_path)
    with Logger(cache_path) as lg:
        with pytest.raises(StreamError, match=f"stream 'temp': {expected}"):
            lg.addStream_force("temp", {"type": "number"}, **props)
        assert lg.status().streams["temp"].priority == 1
    assert dump(cache_path) == before


class _Recording(ConnectorDBRemote):
    """The real ConnectorDB remote, noting the properties each stream is created with."""

    created: ClassVar[dict[str, dict[str, Any]]] = {}

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        self.created[stream] = dict(properties or {})
        return super().ensure_stream(stream, schema, properties)


def test_the_policy_never_reaches_the_remote(cache_path: str, server: ConnectorDBServer) -> None:
    remote = _Recording(server.url, server.apikey)  # type: ignore[attr-defined]
    with Logger(cache_path, remote=remote) as lg:
        lg.addStream("alarm", {"type": "boolean"}, priority=9, thin=False, nickname="Alarm")
        lg.insert("alarm", True)
        lg.sync()
        assert len(lg) == 0
    assert _Recording.created == {"alarm": {"nickname": "Alarm"}}
    assert [p["d"] for p in server.datapoints("alice/sensor/alarm")] == [True]
