"""When a courier's next pass comes: ``syncperiod`` plus a random jitter, so that a fleet
started together (or back after an outage) spreads its passes; after a failed pass, a
backoff with full jitter, or what the remote asked for (``Retry-After``).

Guarantees (each proved by the test named, in ``tests/``):

- Periodic passes are jittered, so a fleet restarted together does not sync in step: the
  first pass after ``start()`` waits a uniform random ``[0, sync_jitter]`` seconds, and
  each next one comes ``syncperiod`` plus a uniform random ``[0, sync_jitter]`` after the
  last began (never sooner than ``syncperiod``). Passes asked for (``sync()``, a wake,
  ``sync_threshold``, close's drain) and retries are not delayed by it
  (``test_jitter.py::test_a_fleet_started_together_spreads_its_first_passes``,
  ``test_jitter.py::test_the_wait_is_syncperiod_plus_up_to_sync_jitter``,
  ``test_jitter.py::test_asked_for_passes_are_not_delayed_by_sync_jitter``).
- Transient failures back off exponentially with full jitter (capped at ``syncperiod``) and
  honour ``Retry-After`` (``test_faults.py::test_stop_returns_at_once_during_a_long_backoff``,
  ``test_lanes.py::test_retry_after_pauses_every_stream_of_the_remote``): the wait before
  retry ``n`` is uniform in ``[0, backoff_ceiling(n, syncperiod)]``, the same draw as
  tenacity's ``wait_random_exponential`` made
  (``test_jitter.py::test_full_jitter_is_uniform_up_to_the_doubling_ceiling``,
  ``test_jitter.py::test_full_jitter_draws_as_tenacity_did``).
- The backoff policy is chosen in one place, :data:`BACKOFF`, read by every courier at each
  retry; a benchmark comparing policies (``tests/benchmarks/bench_fleet.py``) sets it to
  :func:`backoff_ceiling`, the same ceilings without the jitter
  (``test_jitter.py::test_couriers_retry_with_the_backoff_chosen_in_schedule``); a
  ``Retry-After`` still wins over either
  (``test_jitter.py::test_retry_after_wins_over_the_backoff_policy``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TypeAlias

import tenacity

from .errors import ConnectorSyncError
from .report import SyncReport, retry_after, worth_retrying

#: First backoff ceiling in seconds; it doubles per failed attempt up to ``syncperiod``.
BACKOFF_BASE = 1.0
#: A ``Retry-After`` longer than this is not believed.
MAX_RETRY_AFTER = 3600.0


def jittered(
    base: float, jitter: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """``base`` plus a uniform random ``[0, jitter]`` seconds (exactly ``base`` when ``jitter``
    is 0): the wait before a periodic pass (``base`` is ``syncperiod``, or 0 for the first).

    Added rather than centred on ``base`` so that ``syncperiod`` stays a floor between periodic
    passes (a metered link or a server quota sized for it holds); the mean period is
    ``syncperiod + jitter / 2``, 5% longer with the default jitter.

    :param uniform: the random source, ``uniform(a, b)`` as :func:`random.uniform`
    """
    return (base + uniform(0.0, jitter)) if jitter > 0 else base


def quiet_for(asked: float) -> float:
    """How long to leave a remote alone that asked for ``asked`` seconds (``Retry-After``)."""
    return min(float(asked), MAX_RETRY_AFTER)


#: A backoff policy: the wait in seconds before retry ``attempt`` (1 for the first) of a
#: failed pass, given ``syncperiod``.
Backoff: TypeAlias = Callable[[int, float], float]


def backoff_ceiling(attempt: int, syncperiod: float) -> float:
    """The most a courier waits before retry ``attempt`` (1 for the first) of a failed pass:
    ``BACKOFF_BASE`` doubled per attempt after the first (1, 2, 4 s...), capped at
    ``max(BACKOFF_BASE, syncperiod)``. As a policy (:data:`BACKOFF`): the backoff without
    jitter, so a fleet that failed together retries in step (to compare with, never the
    default)."""
    cap = max(BACKOFF_BASE, syncperiod)
    exponent = min(max(attempt - 1, 0), 1023)  # 2.0**1024 overflows; the cap comes far sooner
    return min(BACKOFF_BASE * 2.0**exponent, cap)


def full_jitter(
    attempt: int, syncperiod: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """The default policy: uniform in ``[0, backoff_ceiling(attempt, syncperiod)]`` ("full
    jitter"), so a fleet that failed together (an outage) spreads its retries.

    :param uniform: the random source, ``uniform(a, b)`` as :func:`random.uniform`
    """
    return uniform(0.0, backoff_ceiling(attempt, syncperiod))


#: The backoff policy every courier retries with, looked up at each retry: the one place it is
#: chosen, for the whole process. :func:`full_jitter` unless a benchmark comparing policies
#: sets another (``schedule.BACKOFF = schedule.backoff_ceiling``) before its Loggers start.
BACKOFF: Backoff = full_jitter


def backoff(state: tenacity.RetryCallState, syncperiod: float) -> float:
    """The wait before retrying a failed pass (tenacity's ``wait``): what the remote asked
    for, else what the policy :data:`BACKOFF` says for this attempt."""
    asked = retry_after(failure(state))
    if asked is not None:  # for the whole remote: every stream of the pass stopped
        return quiet_for(asked)
    return BACKOFF(state.attempt_number, syncperiod)


def retries(
    stop: threading.Event,
    syncperiod: Callable[[], float],
    before_sleep: Callable[[tenacity.RetryCallState], None],
) -> tenacity.Retrying:
    """A courier's retries of a failed background pass: again while its report is worth it
    (:func:`~connectorsync.report.worth_retrying`), after :func:`backoff` (``syncperiod()``
    read at each retry: it may change meanwhile), every wait ending at once when ``stop`` is
    set; stopped while retrying, the last report stands and the data waits in the cache.

    :param before_sleep: called with the state before each wait (to say when the next is)
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(worth_retrying),
        wait=lambda state: backoff(state, syncperiod()),
        sleep=tenacity.sleep_using_event(stop),
        stop=tenacity.stop_when_event_set(stop),
        before_sleep=before_sleep,
        retry_error_callback=last_report,
    )


def last_report(state: tenacity.RetryCallState) -> SyncReport:
    """The report of the last attempt, when the retries stop (tenacity's retry_error_callback)."""
    return state.outcome.result() if state.outcome else SyncReport()


def failure(state: tenacity.RetryCallState) -> ConnectorSyncError | None:
    """The error of the last attempt's report (the retries decide by the report, so an
    attempt's outcome is a report, never an exception)."""
    return last_report(state).exception
