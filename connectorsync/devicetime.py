"""Device time: timestamps a device without a real-time clock can stand behind.

:class:`DeviceTime` stamps clock-stamped inserts (marking them untrusted until NTP answered
in this boot), asks NTP (:meth:`DeviceTime.sync_clock`, and before a pass once the last
answer is an hour old), re-times what was stamped before the answer (``Cache.reanchor``:
exact, and never a batch in flight), holds untrusted datapoints back from the remote with
``hold_unsynced``, and expires datapoints older than ``max_age``.

Guarantees (``tests/test_clock.py``, ``tests/test_inflight.py``): re-timing is exact to the
millisecond; a batch in flight is re-timed only once its outcome is settled; with
``hold_unsynced`` nothing stamped by an untrusted clock in the last ``max_hold`` seconds
reaches the remote; expiry never touches a batch in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .cache import Cache, Untrusted
from .clock import Anchor, Clock, boot_clock
from .errors import TransientRemoteError
from .options import Options

log = logging.getLogger(__name__)

#: With ntp_server, a pass asks again once the last answer is this old (seconds).
NTP_REFRESH = 3600.0
# How often (seconds) an untrusted clock looks for an NTP answer another process got, and how
# often inserts expire datapoints older than max_age.
_CLOCK_RELOAD = 10.0
_EXPIRY_EVERY = 60.0


@dataclass(frozen=True)
class ClockSync:
    """An NTP answer applied: what the system clock was off by, and how many cached
    datapoints were re-timed by it now."""

    offset: float
    retimed: int


class DeviceTime:
    """The clock of one Logger, and what follows from it for the cache.

    :param cache: the Logger's cache connection (inserts and ``sync_clock`` use it; a pass
        hands its own to :meth:`before_pass`)
    :param options: the Logger's options (``ntp_server``, ``hold_unsynced``, ``max_hold``,
        ``max_age``, ``http_timeout``)
    """

    def __init__(self, cache: Cache, options: Options):
        self._cache = cache
        self._options = options
        self.clock = Clock(
            Anchor.from_json(cache.get_setting("clock.anchor")),
            ntp=options.ntp_server is not None,
        )
        self._boot: int | None = None
        self._next_clock_reload = 0.0
        self._next_expiry = 0.0

    def options_changed(self) -> None:
        """``ntp_server`` may have changed: without one the system clock is trusted."""
        self.clock.ntp = self._options.ntp_server is not None

    # ----------------------------------------------------------------------- stamping

    def now(self) -> float:
        """The current time, as well as this device knows it."""
        return self.clock.now()

    def stamp(self) -> tuple[float, Untrusted | None]:
        """The time for a clock-stamped insert, and what marks it untrusted (None: trusted):
        ``(boot, boot clock)``, from which its true time follows once NTP answers. Picks up,
        now and then, an answer another process got."""
        t = self.clock.now()
        if self.clock.trusted:
            return t, None
        now = boot_clock()
        if now >= self._next_clock_reload:
            self._next_clock_reload = now + _CLOCK_RELOAD
            self.clock.set_anchor(Anchor.from_json(self._cache.get_setting("clock.anchor")))
            if self.clock.trusted:
                return self.clock.now(), None
        return t, (self._boot_key(self._cache), now)

    def _boot_key(self, cache: Cache) -> int:
        if self._boot is None:
            self._boot = cache.boot_key(self.clock.boot_id)
        return self._boot

    # ----------------------------------------------------------------------- NTP

    def sync_clock(
        self, server: str | None, port: int | None, timeout: float, cache: Cache | None = None
    ) -> ClockSync:
        """Ask an NTP server (default ``ntp_server``) and re-time what this boot stamped
        before: see ``Logger.sync_clock``. ``cache``: the connection to write with (a pass's
        own), default the Logger's.

        :raises TransientRemoteError: no answer within ``timeout``
        :raises ConfigurationError: no server
        """
        cache = cache or self._cache
        host, default_port = ntp_address(server or self._options.ntp_server or "")
        anchor = self.clock.measure(host, port or default_port, timeout)
        cache.set_setting("clock.anchor", anchor.to_json())
        self.clock.set_anchor(anchor)
        retimed = cache.reanchor(self._boot_key(cache), anchor.true_time, anchor.boot_clock)
        log.info("NTP: re-timed %d datapoints stamped before it answered", retimed)
        if self._options.ntp_server is None:
            log.warning(
                "NTP: ntp_server is not set, so the system clock was trusted: datapoints it "
                "stamped keep their times, only later timestamps use this answer (set "
                "ntp_server to have them re-timed)"
            )
        return ClockSync(anchor.offset, retimed)

    def hold(self) -> Untrusted | None:
        """For a pass: hold datapoints of this boot stamped in the last ``max_hold`` seconds
        before NTP answered (with ``hold_unsynced``); None: hold nothing."""
        if not self._options.hold_unsynced or self.clock.trusted:
            return None
        return (self._boot_key(self._cache), boot_clock() - self._options.max_hold)

    def untrusted_count(self) -> int:
        """Cached datapoints of this boot stamped before NTP answered."""
        if self.clock.trusted:
            return 0
        return self._cache.untrusted_count(self._boot_key(self._cache))

    # ----------------------------------------------------------------------- passes, expiry

    def before_pass(self, cache: Cache) -> None:
        """Before every pass, on the pass's connection: expire old datapoints, and ask NTP
        again when it is time (bounded: a silent NTP server never stalls the sync)."""
        self.expire(cache)
        anchor = self.clock.anchor
        ntp_due = anchor is None or boot_clock() - anchor.boot_clock > NTP_REFRESH
        if self._options.ntp_server is not None and ntp_due:
            try:
                self.sync_clock(None, None, min(5.0, self._options.http_timeout), cache)
            except TransientRemoteError as exc:
                log.warning("NTP: %s (timestamps stay as they are; trying again next pass)", exc)

    def expire_now_and_then(self) -> None:
        """After an insert, with ``max_age``: expire old datapoints once a minute at most."""
        now = boot_clock()
        if now >= self._next_expiry:
            self._next_expiry = now + _EXPIRY_EVERY
            self.expire(self._cache)

    def expire(self, cache: Cache) -> None:
        """Delete (and count) cached datapoints older than ``max_age``, batches in flight
        excepted."""
        max_age = self._options.max_age
        if max_age is not None:
            cache.expire(self.clock.now() - max_age)


def ntp_address(target: str) -> tuple[str, int]:
    """``"host"`` or ``"host:port"`` (an IPv6 address has more colons: no port then)."""
    host, colon, port = target.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return target, 123
