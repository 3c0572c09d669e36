"""SerialSource: read lines from a serial port (pyserial) and insert them into a Logger.

A sensor on a serial line (an Arduino, a USB-serial adapter, an RS-232 instrument) usually
prints one reading per line: a bare number, or a JSON object with one key per quantity.
:class:`SerialSource` reads those lines in a background thread and inserts each reading into
a :class:`~connectorsync.Logger`, so the rest of the program only opens the Logger and the
source and waits.

Guarantees (``tests/test_serial.py``):

- A bad line never stops the source: a line that cannot be parsed is counted in
  ``malformed``, a datapoint the Logger refuses (unknown stream, schema mismatch, full
  cache) in ``rejected``; both are logged to ``connectorsync.serial`` and reading goes on
  (``test_bad_lines_are_counted_and_reading_goes_on``).
- An unplugged device does not stop it either: the port is closed and opened again with
  exponential backoff, from 0.1 s doubling up to ``reopen_max``; lines that arrive after it
  is back are inserted (``test_reopens_when_the_device_comes_back``).
- ``stop()`` is bounded: every backoff wait ends the moment it is called, and a read under
  way is cancelled where pyserial can (POSIX ports, ``loop://``) and otherwise ends within
  the read ``timeout`` (``test_stop_is_prompt_while_waiting_to_reopen``,
  ``test_stop_is_prompt_while_reading``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from ..errors import ClosedError, ConfigurationError, ConnectorSyncError

log = logging.getLogger(__name__)

#: The first wait (seconds) before opening a lost or missing port again; it doubles after
#: each failed attempt, up to the source's ``reopen_max``.
BACKOFF_START = 0.1
#: A line longer than this (bytes) is malformed: a device sending binary or a wrong baud
#: rate would otherwise grow the buffer without end.
MAX_LINE = 64 * 1024
#: Malformed and rejected lines are logged at most this many times per period (seconds), so
#: a misconfigured device cannot flood the log; the counters still count every one.
LOG_BURST = 10
_LOG_PERIOD = 60.0
# How much of a bad line a log message quotes.
_QUOTE = 80

# A number as a sensor prints it: optional sign, digits with an optional point, optional
# exponent. Stricter than float(), which also takes "nan", "inf", "1_000" and "١٢".
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def parse_line(line: str) -> Any:
    """The default parser of :class:`SerialSource`: a number, or a JSON object.

    - ``21.5``, ``-3``, ``1e3``: the number (int or float), for the source's ``stream``;
    - ``{"temperature": 21.5, "humidity": 40}``: the dict, one stream per key.

    Use it from your own ``parse`` to handle a few special lines and leave the rest to it.

    :raises ValueError: anything else, NaN and infinity included (say why, for the log)
    """
    text = line.strip()
    if _NUMBER.fullmatch(text):
        if _INTEGER.fullmatch(text):
            return int(text)
        number = float(text)
        if not math.isfinite(number):  # 1e999
            raise ValueError(f"{text} is too large for a float")
        return number
    if text.startswith("{"):
        try:
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(value, dict):
            return value
    raise ValueError(
        "not a number or a JSON object; give SerialSource a parse= function for other formats"
    )


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which JSON (and the Logger) do not.
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a float")
    return number


class _Stopping(Exception):
    """Raised inside the reader thread to end it (the Logger is closed, or a bug)."""


class _Throttle:
    """At most ``burst`` messages per ``period`` seconds; says how many it held back."""

    def __init__(self, burst: int = LOG_BURST, period: float = _LOG_PERIOD):
        self.burst = burst
        self.period = period
        self._window = -math.inf
        self._count = 0
        self._held = 0

    def __call__(self) -> int | None:
        """None: do not log this one. Otherwise: log it, and say that many were held back."""
        now = time.monotonic()
        if now - self._window >= self.period:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > self.burst:
            self._held += 1
            return None
        held, self._held = self._held, 0
        return held


class SerialSource:
    """Read lines from a serial port in a background thread and insert them into a Logger.

    ::

        logger = Logger("cache.db")
        logger.add_stream("temperature", {"type": "number"})
        logger.add_stream("humidity", {"type": "number"})
        with SerialSource(logger, "/dev/ttyUSB0", 115200):
            ...  # lines like {"temperature": 21.5, "humidity": 40} arrive in the cache

    A line ends with ``\\n``; a ``\\r`` before it is dropped, and it must be UTF-8. Blank
    lines are skipped. Then ``parse(line)`` (default :func:`parse_line`) says what to insert:

    - a dict: ``{stream: value}``, each value into the stream of that name, in the dict's
      order, in one transaction with one timestamp (when the Logger refuses one of them, the
      others are inserted one by one: their timestamps may then differ by microseconds);
    - None: skip the line (counted in ``skipped``, not an error);
    - anything else: one value for ``stream``.

    Timestamps come from the Logger's clock as each line is inserted (right after it was
    read), so NTP correction and increasing timestamps per stream apply as for any insert.

    Counters (read them any time, or all at once with :meth:`stats`):

    :ivar lines: complete lines read
    :ivar inserted: datapoints inserted
    :ivar malformed: lines that could not be parsed (not UTF-8, too long, not a number or a
        JSON object, NaN, ``parse`` raised, a value with no ``stream`` to go to), and partial
        lines cut off when the port was lost
    :ivar skipped: blank lines, and lines ``parse`` returned None (or ``{}``) for
    :ivar rejected: datapoints the Logger refused with a connectorsync error (unknown stream,
        schema mismatch, full cache...)
    :ivar reconnects: how many times the port was opened again after it had been lost
    :ivar connected: whether the port is open now
    :ivar last_error: the last failure to open or read the port, or why the source stopped
        by itself; None until one happens

    :param logger: the :class:`~connectorsync.Logger` to insert into
    :param port: a device path (``/dev/ttyUSB0``) or any pyserial URL (``rfc2217://host:port``,
        ``socket://host:port``, ``loop://``...)
    :param baudrate: bits per second
    :param parse: ``parse(line: str) -> dict | value | None``; an exception from it makes the
        line malformed
    :param stream: the stream for lines that parse to a single value
    :param timeout: the read timeout (seconds): how long a read waits for data; it bounds
        ``stop()`` where pyserial cannot cancel a read
    :param reopen_max: the longest wait (seconds) between attempts to open the port again
    :param serial_kwargs: more settings for ``serial.serial_for_url`` (``bytesize``,
        ``parity``, ``rtscts``, ``exclusive``...)
    :raises ConfigurationError: a bad argument, or settings pyserial refuses
    """

    def __init__(  # noqa: PLR0913 - pyserial's settings, keyword-only past the baud rate
        self,
        logger: Any,
        port: str,
        baudrate: int = 9600,
        *,
        parse: Callable[[str], Any] | None = None,
        stream: str | None = None,
        timeout: float = 1.0,
        reopen_max: float = 30.0,
        **serial_kwargs: Any,
    ):
        if not isinstance(port, str) or not port:
            raise ConfigurationError(f"port must be a device path or a pyserial URL; got {port!r}")
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
            raise ConfigurationError(f"baudrate must be a positive integer; got {baudrate!r}")
        if parse is not None and not callable(parse):
            raise ConfigurationError(f"parse must be a function of the line; got {parse!r}")
        if stream is not None and not isinstance(stream, str):
            raise ConfigurationError(f"stream must be a stream name; got {stream!r}")
        # A read without a timeout could block stop() forever; 0 would spin.
        timeout = _positive("timeout", timeout)
        reopen_max = _positive("reopen_max", reopen_max)
        serial_kwargs.pop("do_not_open", None)  # the source opens the port itself
        try:
            # Let pyserial check the settings and URL now, in the caller's thread, rather
            # than in the background where nobody would see the error.
            serial.serial_for_url(
                port, baudrate=baudrate, timeout=timeout, do_not_open=True, **serial_kwargs
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"serial port {port!r}: {exc}") from exc

        self.logger = logger
        self.port = port
        self.baudrate = baudrate
        self.parse = parse if parse is not None else parse_line
        self.stream = stream
        self.timeout = timeout
        self.reopen_max = reopen_max
        self.serial_kwargs = serial_kwargs

        self.lines = 0
        self.inserted = 0
        self.malformed = 0
        self.skipped = 0
        self.rejected = 0
        self.reconnects = 0
        self.connected = False
        self.last_error: str | None = None

        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        # Guards _port between the reader thread (which opens and closes it) and stop()
        # (which cancels a read on it): cancelling after close would write to a file
        # descriptor number that may already belong to someone else.
        self._port_lock = threading.Lock()
        self._port: Any = None
        self._thread: threading.Thread | None = None
        self._got_data = False
        self._malformed_log = _Throttle()
        self._rejected_log = _Throttle()

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start reading in a background thread; returns at once (the port is opened in the
        thread, and a missing port is retried there). Calling it while running does nothing;
        after :meth:`stop` it starts again, keeping the counters."""
        with self._start_lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                if not self._stop.is_set():
                    return
                # A stop is under way: it ends within the read timeout.
                thread.join()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"connectorsync-serial:{self.port}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and close the port. Safe to call twice, and from ``parse``.

        Returns as soon as the thread has ended: at once during a backoff wait, at once
        during a read where pyserial can cancel it, otherwise within the read timeout;
        never later than ``timeout`` seconds (the thread then ends by itself shortly after).
        """
        self._stop.set()
        with self._port_lock:
            if self._port is not None:
                # Some pyserial classes have no cancel_read (or a placeholder that raises).
                cancel = getattr(self._port, "cancel_read", None)
                if cancel is not None:
                    try:
                        cancel()
                    except Exception as exc:  # the read timeout still ends the read
                        log.debug("serial %s: cancel_read failed: %s", self.port, exc)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("serial %s: the reader thread did not end within %s s", self.port, timeout)

    @property
    def running(self) -> bool:
        """Whether the reader thread runs (False once stopped, or stopped by itself)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def __enter__(self) -> SerialSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """The counters and state, as a dict (a snapshot)."""
        return {
            "lines": self.lines,
            "inserted": self.inserted,
            "malformed": self.malformed,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "reconnects": self.reconnects,
            "connected": self.connected,
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        state = "connected" if self.connected else "running" if self.running else "stopped"
        return f"<SerialSource {self.port!r} {state} lines={self.lines} inserted={self.inserted}>"

    # ----------------------------------------------------------------------- the thread

    def _run(self) -> None:
        delay = BACKOFF_START
        was_connected = False
        # One warning per outage: the first failure says what happened, the retries that
        # follow (every few seconds, for hours maybe) go to debug.
        warned = False
        try:
            while not self._stop.is_set():
                port = self._open(warn=not warned)
                if port is None:
                    warned = True
                else:
                    if was_connected:
                        self.reconnects += 1
                        log.info("serial %s: open again (after: %s)", self.port, self.last_error)
                    was_connected, warned = True, False
                    self.connected = True
                    self._got_data = False
                    try:
                        self._pump(port)
                    except (serial.SerialException, OSError) as exc:
                        self._failed(f"lost: {exc}", warn=True)
                        warned = True
                    finally:
                        self._close()
                    if self._got_data:
                        # It worked for a while: a new outage backs off from the start. A
                        # port that opens but fails before any data keeps doubling instead.
                        delay = BACKOFF_START
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.reopen_max)
        except _Stopping:
            pass
        except Exception as exc:
            self.last_error = f"stopped: {type(exc).__name__}: {exc}"
            log.exception("serial %s: stopped by an unexpected error", self.port)
        finally:
            self._close()
            self._stop.set()

    def _open(self, warn: bool) -> Any:
        """The open port, or None when it cannot be opened now (logged, to retry later)."""
        try:
            port = serial.serial_for_url(
                self.port, baudrate=self.baudrate, timeout=self.timeout, **self.serial_kwargs
            )
        except (serial.SerialException, OSError) as exc:
            self._failed(f"cannot open: {exc}", warn=warn)
            return None
        with self._port_lock:
            if self._stop.is_set():
                port.close()
                return None
            self._port = port
        return port

    def _close(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
            self.connected = False
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # an unplugged device may fail to close: it is gone anyway
                log.debug("serial %s: close failed: %s", self.port, exc)

    def _failed(self, message: str, warn: bool) -> None:
        self.last_error = message
        if warn:
            log.warning(
                "serial %s: %s; opening it again every %g s, doubling up to %g s",
                self.port,
                message,
                BACKOFF_START,
                self.reopen_max,
            )
        else:
            log.debug("serial %s: %s", self.port, message)

    def _pump(self, port: Any) -> None:
        """Read and handle lines until stop() (returns) or a port failure (raises)."""
        buffer = bytearray()
        too_long = False  # dropping the rest of an overlong line, up to its newline
        try:
            while not self._stop.is_set():
                # Block for the first byte (up to the timeout), then take all that waits.
                chunk = port.read(port.in_waiting or 1)
                if not chunk:
                    continue
                self._got_data = True
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line = bytes(buffer[start:end])
                    start = end + 1
                    if too_long:
                        too_long = False
                        continue
                    self._line(line)
                del buffer[:start]
                if len(buffer) > MAX_LINE:
                    if not too_long:
                        self.lines += 1
                        self._malformed(bytes(buffer[:_QUOTE]), f"longer than {MAX_LINE} bytes")
                    buffer.clear()
                    too_long = True
        except (serial.SerialException, OSError):
            if buffer and not too_long:
                # Its end will never come: the next connection starts a new line.
                self.lines += 1
                self._malformed(bytes(buffer), "cut off when the port was lost")
            raise

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._malformed(raw, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            return
        if not line.strip():
            self.skipped += 1
            return
        try:
            result = self.parse(line)
        except Exception as exc:
            # The default parser says why in a ValueError; a user's parse may raise anything.
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._malformed(line, reason or type(exc).__name__)
            return
        if result is None or (isinstance(result, dict) and not result):
            self.skipped += 1
            return
        if not isinstance(result, dict):
            if self.stream is None:
                self._malformed(
                    line, "a single value, but the SerialSource has no stream= to insert it into"
                )
                return
            result = {self.stream: result}
        self._insert(result)

    def _insert(self, points: dict[Any, Any]) -> None:
        if len(points) > 1 and not any(_looks_like_datapoint(v) for v in points.values()):
            # One transaction: one fsync and one timestamp for the whole line. (A value that
            # is itself {"t": ..., "d": ...} would be read as a datapoint by insert_many.)
            try:
                self.inserted += self.logger.insert_many({k: [v] for k, v in points.items()})
                return
            except ClosedError as exc:
                self._stopping(exc)
            except ConnectorSyncError:
                pass  # find out which ones, below; the others still go in
            except Exception as exc:
                self._stopping(exc)
        for name, value in points.items():
            try:
                self.logger.insert(name, value)
            except ClosedError as exc:
                self._stopping(exc)
            except ConnectorSyncError as exc:
                self.rejected += 1
                held = self._rejected_log()
                if held is not None:
                    log.warning(
                        "serial %s: %s not inserted into %r: %s%s",
                        self.port,
                        _quote(value),
                        name,
                        exc,
                        _held(held),
                    )
            except Exception as exc:
                self._stopping(exc)
            else:
                self.inserted += 1

    def _malformed(self, line: str | bytes, reason: str) -> None:
        self.malformed += 1
        held = self._malformed_log()
        if held is not None:
            log.warning(
                "serial %s: malformed line %s: %s%s", self.port, _quote(line), reason, _held(held)
            )

    def _stopping(self, exc: Exception) -> Any:
        """End the thread after an insert failed for a reason other than the datapoint: the
        Logger is closed (expected at shutdown), or an error that is not ours (a bug)."""
        self.last_error = f"stopped: {type(exc).__name__}: {exc}"
        if isinstance(exc, ClosedError):
            log.warning("serial %s: stopped, the Logger is closed: %s", self.port, exc)
        else:
            log.error("serial %s: stopped by an unexpected insert error", self.port, exc_info=exc)
        raise _Stopping() from exc


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds; got {value!r}")
    return float(value)


def _looks_like_datapoint(value: Any) -> bool:
    return type(value) is dict and value.keys() == {"t", "d"}


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."


def _held(count: int) -> str:
    return f" ({count} similar messages were not logged)" if count else ""
