"""How long the model runs.

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
        # 5 examples of 20 steps per variant (86 s for all of them on the 2-core CI machine;
        # 8 took 115 s): every variant and its faults still run on every commit, and `make soak`
        # searches (at least SOAK_MIN_STEPS steps per variant).
        max_examples=int(os.environ.get("CONNECTORSYNC_MODEL_EXAMPLES", "5")),
        stateful_step_count=int(os.environ.get("CONNECTORSYNC_MODEL_STEPS", "20")),
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking here: it would take longer than the per-test timeout, and a failure
        # prints its steps either way; `make soak` shrinks to the minimal example.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=_HEALTH,
    )
