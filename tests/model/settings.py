"""How long the model runs, and which of its rules wait for a known defect's fix.

``make test`` runs a few derandomized examples per variant; ``make soak`` sets
``CONNECTORSYNC_SOAK=1`` and runs rounds of examples until each variant made at least
:data:`SOAK_MIN_STEPS` steps. Knobs: ``CONNECTORSYNC_SOAK_MIN_STEPS`` (default 5,000),
``CONNECTORSYNC_SOAK_EXAMPLES`` (examples per round) and ``CONNECTORSYNC_SOAK_STEPS`` (steps
per example); ``CONNECTORSYNC_MODEL_EXAMPLES`` and ``CONNECTORSYNC_MODEL_STEPS`` for the
bounded run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

SOAK = os.environ.get("CONNECTORSYNC_SOAK") == "1"

#: Rules of the model that find a defect of b064757 being fixed on another branch (issue 16):
#: while a name is here its rule does nothing (its precondition is false). The lead empties
#: this set once the fixes are merged; ``CONNECTORSYNC_MODEL_ENABLE=name,name`` (or ``all``)
#: turns rules back on without editing it.
#:
#: - ``batched_failing_commits``: with ``durability="batched"`` inserts go on returning while
#:   every commit fails (h1: an insert raises within commit_interval + one attempt); the rule
#:   runs with ``durability="full"`` whatever this says
#: - ``batched_fork``: a child forked from a process with an open batched Logger inserts
#:   through it; its insert returns and is never committed (h1); with "full" it always runs
#: - ``retry_keeps_t``: ``retry_deadletters(ids, restamp=False)`` (h2)
#: - ``retry_within_limits``: retried dead letters pass ``max_cached`` (h2; at h2 327ea8f
#:   still so for letters of two streams retried with restamp=True into max_cached=1)
#: - ``inflight_exact``: after a live batch's answer was lost, the in-flight mark covers the
#:   whole backlog below it, which cleardata() (and drop_oldest, max_age) then skip (h4)
#: - ``mqtt_oversized``: a datapoint over the broker's packet limit blocks its stream (h3)
KNOWN_BROKEN: set[str] = {
    "batched_failing_commits",
    "batched_fork",
    "retry_keeps_t",
    "retry_within_limits",
    "mqtt_oversized",
    "inflight_exact",
}


def enabled(name: str) -> bool:
    """Whether the rule ``name`` runs (see :data:`KNOWN_BROKEN`)."""
    wanted = {w.strip() for w in os.environ.get("CONNECTORSYNC_MODEL_ENABLE", "").split(",")}
    return name not in KNOWN_BROKEN or name in wanted or "all" in wanted


SOAK_MIN_STEPS = int(os.environ.get("CONNECTORSYNC_SOAK_MIN_STEPS", "5000"))
_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much]

if SOAK:
    STEPS = int(os.environ.get("CONNECTORSYNC_SOAK_STEPS", "40"))
    # Per round: tests/test_model.py runs rounds until a variant made SOAK_MIN_STEPS steps.
    EXAMPLES = int(os.environ.get("CONNECTORSYNC_SOAK_EXAMPLES", "100"))
    SETTINGS = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=_HEALTH,
        print_blob=True,
    )
else:  # `make test`: bounded and the same every run, so CI is stable
    SETTINGS = settings(
        max_examples=int(os.environ.get("CONNECTORSYNC_MODEL_EXAMPLES", "8")),
        stateful_step_count=int(os.environ.get("CONNECTORSYNC_MODEL_STEPS", "20")),
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking here: it would take longer than the per-test timeout, and a failure
        # prints its steps either way; `make soak` shrinks to the minimal example.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=_HEALTH,
    )
