"""When periodic passes come: ``syncperiod`` plus a random jitter, so that a fleet started
together (or back after an outage) spreads its passes (``tests/test_jitter.py``)."""

from __future__ import annotations

import random
from collections.abc import Callable


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
