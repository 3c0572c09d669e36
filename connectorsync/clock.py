"""Clock: the timestamps of inserts, trustworthy on a device without a real-time clock.

Without ``ntp_server`` the system clock is trusted as it is. With it, the system clock is
trusted only once an NTP server has answered during the current boot: from then on a
timestamp is the NTP time of that answer plus the boot clock (``CLOCK_BOOTTIME``) elapsed
since, so a wall clock that is stepped later changes nothing. Datapoints stamped before that
answer keep the boot they were stamped in and the boot clock at the time; when the answer
comes, their times are fixed exactly (``Cache.reanchor``), not guessed.

Guarantees (``tests/test_clock.py``): re-anchoring is exact to the millisecond; a wall
clock jumping backwards never makes an insert fail or reorder a stream.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import ntplib

from .errors import ConfigurationError, TimestampError, TransientRemoteError
from .remotes.base import MAX_SECONDS

log = logging.getLogger(__name__)

# Later than 5138-11-16 in seconds: surely milliseconds or microseconds given by mistake.
MAX_PLAUSIBLE_TIMESTAMP = 1e11
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_PROCESS_BOOT = f"process-{uuid.uuid4()}"


def boot_id() -> str:
    """This boot's id (Linux); elsewhere an id for this process, which is stricter."""
    try:
        with open(_BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return _PROCESS_BOOT


def boot_clock() -> float:
    """Seconds on a clock that only moves forward, suspend included, whatever the wall clock."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


@dataclass(frozen=True)
class Anchor:
    """An NTP answer: the true time at a boot-clock reading, in one boot.

    :ivar boot_id: the boot it holds for
    :ivar true_time: the NTP time (seconds since the epoch) when it was measured
    :ivar boot_clock: :func:`boot_clock` at that moment
    :ivar offset: NTP time minus system time then (what the system clock was off by)
    """

    boot_id: str
    true_time: float
    boot_clock: float
    offset: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Anchor | None:
        try:
            return cls(**data)
        except TypeError:
            return None


class Clock:
    """Timestamps for inserts.

    :param anchor: the last NTP answer (kept in the cache); ignored unless from this boot
    :param ntp: whether NTP is configured (if not, the system clock is trusted)
    """

    def __init__(self, anchor: Anchor | None, ntp: bool):
        self.boot_id = boot_id()
        self.ntp = ntp
        self.anchor: Anchor | None = None
        self.set_anchor(anchor)

    def set_anchor(self, anchor: Anchor | None) -> None:
        if anchor is not None and anchor.boot_id == self.boot_id:
            self.anchor = anchor

    @property
    def trusted(self) -> bool:
        """True when timestamps need no fixing later."""
        return self.anchor is not None or not self.ntp

    def now(self) -> float:
        """The current time, as well as this device knows it."""
        anchor = self.anchor
        if anchor is not None:
            return anchor.true_time + (boot_clock() - anchor.boot_clock)
        return time.time()

    def measure(self, server: str, port: int = 123, timeout: float = 5.0) -> Anchor:
        """Ask ``server`` for the time; returns the new :class:`Anchor` (not yet applied).

        :raises TransientRemoteError: no answer, or a bad one
        :raises ConfigurationError: no server given
        """
        if not server:
            raise ConfigurationError("no NTP server: set ntp_server or pass server=")
        if not 0 < timeout <= MAX_SECONDS:  # a socket cannot wait that long (or NaN)
            raise ConfigurationError(
                f"NTP timeout must be a number of seconds > 0 and at most {MAX_SECONDS:g}; "
                f"got {timeout!r}"
            )
        try:
            answer = ntplib.NTPClient().request(server, version=3, port=port, timeout=timeout)
        except (ntplib.NTPException, OSError) as exc:
            raise TransientRemoteError(f"NTP server {server}:{port}: {exc}") from exc
        # Read both clocks back to back: the anchor is the pair.
        true_time = time.time() + answer.offset
        anchor = Anchor(self.boot_id, true_time, boot_clock(), answer.offset)
        log.info("NTP %s:%s: system clock off by %+.3f s", server, port, answer.offset)
        return anchor


def check_timestamp(stream: str, timestamp: Any) -> float:
    """An explicit timestamp as seconds since the epoch (a number, or an aware datetime).

    :raises TimestampError: not a number, not finite, or implausibly large (milliseconds?)
    """
    if isinstance(timestamp, datetime.datetime):
        if timestamp.tzinfo is None:
            raise TimestampError(
                f"stream {stream!r}: a datetime timestamp needs a timezone; got {timestamp!r}"
            )
        timestamp = timestamp.timestamp()
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise TimestampError(
            f"stream {stream!r} expects a timestamp in seconds since the epoch; "
            f"got {timestamp!r} ({type(timestamp).__name__})"
        )
    try:
        t = float(timestamp)
    except OverflowError:  # an int beyond any float: far too large, and too long to show
        raise TimestampError(
            f"stream {stream!r}: timestamp (an int of {int(timestamp).bit_length()} bits) is too "
            "large for seconds since the epoch"
        ) from None
    if not math.isfinite(t):
        raise TimestampError(f"stream {stream!r}: timestamp must be finite; got {timestamp!r}")
    if abs(t) > MAX_PLAUSIBLE_TIMESTAMP:
        raise TimestampError(
            f"stream {stream!r}: timestamp {timestamp!r} is too large for seconds since the "
            "epoch (milliseconds? divide by 1000)"
        )
    return t


def too_old(stream: str, t: float, newest: float) -> TimestampError:
    """The error for an explicit timestamp older than the stream's newest."""
    return TimestampError(
        f"stream {stream!r}: timestamp {t!r} is older than the stream's newest ({newest!r}); "
        "timestamps must increase per stream, or add the stream with out_of_order='restamp'"
    )
