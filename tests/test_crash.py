"""Crash test: nothing lost, nothing duplicated, order kept, through kills and faults.

A child inserts into two streams at a steady rate with background sync. The parent SIGKILLs
it at random moments (:data:`KILLS` times), while restarting the server and injecting every
fault the test server has: 5xx with Retry-After, delays, connections dropped before
processing and after committing (lost acknowledgements), and a rejection rule (poison). At the
end the server holds every committed datapoint exactly once, in order, and the refused ones
are dead letters.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import defaultdict

from connectorsync import Logger
from connectorsync.testing import ConnectorDBServer

from .conftest import PYTHON, ROOT, child_env

#: ``make test``: 18 kills (about 10 s), enough that a lost answer, a refusal and a retry are
#: each met (asserted below, for seeds 1-5 and the default one); ``make soak``
#: (``CONNECTORSYNC_SOAK=1``): 36, under six seeds.
KILLS = 36 if os.environ.get("CONNECTORSYNC_SOAK") == "1" else 18


def poison(value: int) -> bool:
    return value % 50 == 7


def test_kill_9_with_faults_loses_and_duplicates_nothing(tmp_path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261123")))
    server = ConnectorDBServer(path=str(tmp_path / "server.db")).start()
    apikey = server.add_device("alice", "sensor")
    server.reject(lambda stream, point: poison(point["d"]))
    cache = str(tmp_path / "cache.db")
    printed: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    logs = []
    faults = [
        lambda: server.fail_next(
            rng.randint(1, 4),
            status=rng.choice([500, 503, 429]),
            retry_after=rng.choice([None, "0.05"]),
        ),
        lambda: server.delay(0.1, n=rng.randint(1, 3)),
        lambda: server.drop_before(rng.randint(1, 2)),
        lambda: server.drop_after_commit(rng.randint(1, 2)),
        lambda: (server.stop(), server.start()),
    ]
    try:
        for run in range(KILLS):
            proc = subprocess.Popen(
                [PYTHON, "-m", "tests.helpers.crash_inserter", cache, server.url, apikey, str(run)],
                cwd=ROOT,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline() == "ready\n"
                lines = rng.randint(10, 120)
                fault_at = rng.randint(0, lines)
                for n in range(lines):
                    if n == fault_at:
                        rng.choice(faults)()
                    stream, value = proc.stdout.readline().split()
                    printed[stream][run].append(int(value))
            finally:
                proc.kill()
                proc.wait()
            for line in proc.stdout.read().splitlines():  # printed before it died
                stream, value = line.split()
                printed[stream][run].append(int(value))
            proc.stdout.close()
            err = proc.stderr.read()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
            assert "Traceback" not in err, err
            logs.append(err)

        # Drain what is left, without faults but with the poison rule still there.
        server.clear_faults()
        server.reject(lambda stream, point: poison(point["d"]))
        with Logger(cache) as lg:
            for _ in range(5):
                if len(lg) == 0:
                    break
                lg.sync()
            assert len(lg) == 0
            dead = defaultdict(list)
            for letter in lg.deadletters():
                dead[letter.stream].append(letter.d)

        # The faults were met, not dodged: lost answers reconciled, poison refused, retries.
        children = "".join(logs)
        assert "had arrived despite a lost answer" in children
        assert "refused" in children
        assert "next attempt in" in children

        for stream in ("a", "b"):
            stored = [p["d"] for p in server.datapoints(f"alice/sensor/{stream}")]
            assert len(stored) == len(set(stored)), "duplicates on the server"
            assert stored == sorted(stored), "per-stream order broken"
            assert not any(poison(v) for v in stored)
            assert all(poison(v) for v in dead[stream])
            delivered = set(stored) | set(dead[stream])
            assert len(delivered) == len(stored) + len(dead[stream])
            for run, values in printed[stream].items():
                mine = sorted(v for v in delivered if v // 10**6 == run)
                # Every printed value arrived; at most one more (committed, killed before
                # it was printed), and nothing else.
                assert mine[: len(values)] == values, f"lost in run {run}"
                assert len(mine) - len(values) in (0, 1)
                assert mine == list(range(run * 10**6, run * 10**6 + len(mine)))
    finally:
        server.stop()
