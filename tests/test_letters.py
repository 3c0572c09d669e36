"""Dead letters across a Logger's remotes (``connectorsync/letters.py``): each refused
datapoint is a letter of the remote that refused it, and ``retry_deadletters`` sends it
back to that remote only, with its own time or (``restamp``) with a new one. Real files, a
real loopback HTTP receiver, one path per remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectorsync import HTTPRemote, Logger
from connectorsync.testing.receiver import HTTPReceiver


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    rcv = HTTPReceiver().start()
    try:
        yield rcv
    finally:
        rcv.stop()


def arrived(receiver: HTTPReceiver, name: str) -> list[int]:
    return [item["d"] for item in receiver.items(f"/{name}/s")]


@pytest.mark.parametrize("restamp", [False, True])
def test_a_letter_is_retried_only_to_the_remote_that_refused_it(
    tmp_path: Path, receiver: HTTPReceiver, restamp: bool
) -> None:
    receiver.reject(lambda path, item: path.startswith("/b/") and item["d"] == 3)
    remotes = {
        name: HTTPRemote(receiver.url + f"/{name}/{{stream}}", timeout=5) for name in ("a", "b")
    }
    with Logger(str(tmp_path / "cache.db"), remotes=remotes) as lg:
        lg.addStream_force("s", {"type": "integer"})
        lg.insert_many("s", list(range(5)))
        report = lg.sync()
        assert report.remotes["b"].deadlettered == {"s": 1}
        assert [letter.d for letter in lg.deadletters()] == [3]
        assert len(lg) == 0  # settled everywhere: delivered to a, a letter of b
        receiver.reject(None)
        assert lg.retry_deadletters(restamp=restamp) == 1
        if restamp:  # queued again, for b alone
            assert len(lg) == 1 and lg.status().remotes["a"].held == 0
            assert lg.sync().sent == {"s": 1}
        assert lg.deadletters() == [] and len(lg) == 0
    assert arrived(receiver, "a") == list(range(5))
    assert sorted(arrived(receiver, "b")) == list(range(5))
