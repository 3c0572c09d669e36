"""InfluxDB line protocol: how a datapoint becomes a point. Pure: no I/O, no state.

Part of :class:`~connectorsync.remotes.influxdb.InfluxDBRemote`, which sends what
:func:`encode_batch` makes (``docs/remotes.rst`` says the same for users):

- The stream name is the measurement; the remote's tags are added to every point.
- A JSON number is the float field ``value``; a string, boolean or list likewise sits under
  ``value`` (a list as ``value.0``, ``value.1``...). An object gives one field per key, nested
  keys joined with ``.`` (``{"a": {"b": 1}}`` is field ``a.b``), lists as ``key.0``, ``key.1``...
  Flattening keeps numbers inside objects and lists queryable, which a JSON string would not.
- Every JSON number is written as a float, integers too: InfluxDB fixes a field's type per
  measurement (per shard) at its first write, and JSON does not tell ``21`` from ``21.0``, so
  a sensor sending ``21`` and then ``21.5`` would have its second point refused if integers
  were written as integers. The one exception is a stream the remote names as an integer
  stream (``encode_batch(..., integers=True)``): its value is the integer field ``value``
  (``21i``), a whole float (``21.0``) included; anything else (``21.5``, a number outside
  InfluxDB's 64-bit integers, a string) is refused like any point InfluxDB cannot store
  (``tests/test_influx_tags.py::test_an_integer_stream_refuses_what_is_not_a_whole_number``).
- ``null`` (at any depth) is skipped. A datapoint left with no field at all (``null``, ``{}``,
  ``[]``) cannot be stored by InfluxDB: the batch is refused
  (:class:`~connectorsync.errors.RejectedError`) before anything is sent, so the syncer's
  bisection makes that one datapoint a dead letter with the reason, instead of dropping it
  silently. So does a field key that appears twice after flattening, or one that line
  protocol cannot write (see :func:`encode_line`).
- The timestamp is ``round(t * 1e9)`` nanoseconds, computed exactly (:func:`seconds_to_ns`).
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from ..errors import ConfigurationError, RejectedError, RemoteError
from .base import Datapoint

#: The range of InfluxDB timestamps, in nanoseconds since the epoch.
MIN_NS = -9223372036854775806
MAX_NS = 9223372036854775806

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.I
)
_SECONDS_EXACT_FROM, _SECONDS_EXACT_TO = 2.0**20, 2.0**62  # see seconds_to_ns
# Times that take encode_batch()'s fast path: exact nanoseconds, within InfluxDB's range.
_FAST_FROM, _FAST_TO = _SECONDS_EXACT_FROM, 9.2e9
_NUMBER_START = frozenset("-0123456789")  # the first character of a JSON number
_DIGITS = frozenset("0123456789")  # its last
_MEASUREMENT_SPECIALS = ", "
_KEY_SPECIALS = ",= "
# InfluxDB's integers are signed 64-bit.
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1
_WHOLE = re.compile(r"-?[0-9]{1,18}")  # digits that always fit an InfluxDB integer
# Tag keys InfluxDB keeps for itself: 1.x's "time"; 2.x's columns of every row (a tag named
# so would hide or break them in Flux).
_RESERVED_TAG_KEYS = frozenset(
    {"time", "_measurement", "_field", "_value", "_time", "_start", "_stop"}
)


class _BadPoint(Exception):
    """A datapoint that cannot be written as line protocol; the message says why."""


def encode_batch(
    stream: str, tags: str, batch: Sequence[Datapoint], *, integers: bool = False
) -> str:
    """The line-protocol body for ``batch``, one line per datapoint.

    :param tags: the escaped tag set every point carries (:func:`tag_text`)
    :param integers: ``stream`` is an integer stream: each value is the integer field
        ``value``, and one that is not a whole number is refused
    :raises RejectedError: a datapoint cannot be a point (the message says which and why)
    :raises ConfigurationError: ``stream`` cannot be a measurement name
    """
    prefix = measurement(stream) + tags
    if integers:
        return _encode_integers(stream, prefix, batch)
    number_prefix = prefix + " value="
    lines: list[str] = []
    append = lines.append
    for _, t, d in batch:
        # Fast path for the usual sensor reading, a JSON number at a time after 1970-01-13:
        # the float field "value", the number's text as it is (line protocol reads every
        # JSON number form as a float; the cache holds finite floats as repr() and whole
        # numbers as digits, and 24 characters keep digits within a float's range).
        # Anything else takes encode_line, which refuses what InfluxDB cannot hold.
        if (
            d[0] in _NUMBER_START
            and d[-1] in _DIGITS  # not "-Infinity" (a connectordb 0.3.5 cache may hold it)
            and len(d) <= 24
            and _FAST_FROM <= t <= _FAST_TO
        ):
            whole = int(t)  # seconds_to_ns(t), inlined: this loop is the hot path
            append(f"{number_prefix}{d} {whole * 1_000_000_000 + round((t - whole) * 1e9)}")
            continue
        try:
            append(encode_line(prefix, t, json.loads(d)))
        except RecursionError:  # a value from before inserts were limited in depth
            reason = "the value is nested too deeply to flatten into fields"
        except _BadPoint as exc:
            reason = str(exc)
        else:
            continue
        raise _refused(stream, t, reason)
    return "\n".join(lines)


def _encode_integers(stream: str, prefix: str, batch: Sequence[Datapoint]) -> str:
    """:func:`encode_batch` of an integer stream: ``value=<n>i`` each."""
    number_prefix = prefix + " value="
    lines: list[str] = []
    for _, t, d in batch:
        try:
            if _WHOLE.fullmatch(d) and _FAST_FROM <= t <= _FAST_TO:
                number = d  # the cache keeps an int as its digits: no decoding needed
            else:
                number = str(_whole_number(json.loads(d)))
            ns = seconds_to_ns(t) if math.isfinite(t) else MAX_NS + 1
            if not MIN_NS <= ns <= MAX_NS:
                raise _BadPoint(f"t={t!r} is outside InfluxDB's time range (years 1677 to 2262)")
        except _BadPoint as exc:
            raise _refused(stream, t, str(exc)) from None
        except (ValueError, RecursionError):
            raise _refused(stream, t, "the cached value is not JSON") from None
        lines.append(f"{number_prefix}{number}i {ns}")
    return "\n".join(lines)


def _whole_number(value: Any) -> int:
    """``value`` as an InfluxDB integer. :raises _BadPoint: it is not one"""
    whole: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        whole = value
    elif isinstance(value, float) and value.is_integer():
        whole = int(value)
    if whole is None or not _MIN_INT <= whole <= _MAX_INT:
        raise _BadPoint(
            f"the stream is written as InfluxDB integers; {_short(value)} is not a whole "
            f"number from {_MIN_INT} to {_MAX_INT}"
        )
    return whole


def _refused(stream: str, t: float, reason: str) -> RejectedError:
    return RejectedError(
        f"stream {stream!r}: the datapoint at t={t!r} cannot be written: {reason}",
        body=reason,
    )


def encode_line(prefix: str, t: float, value: Any) -> str:
    """One line: ``prefix`` (escaped measurement and tags), the fields of ``value``, the time.

    Line protocol escapes commas and spaces in measurements; commas, equals signs and spaces
    in tag keys, tag values and field keys; double quotes and backslashes in string field
    values. A backslash before one of those characters, or at the end, of a name cannot be
    written unambiguously (InfluxDB 1.x reads backslashes there as escapes), nor can a line
    break: such a name is refused.

    :raises _BadPoint: the value has no field left, a field key appears twice or cannot be
        written, a number does not fit a float, or the time is outside InfluxDB's range
    """
    fields: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(str(key), item, fields)
    else:
        _flatten("value", value, fields)
    if not fields:
        raise _BadPoint(
            f"no field to store: the value {_short(value)} holds no non-null scalar "
            "(InfluxDB stores no point without fields)"
        )
    seen: set[str] = set()
    parts = []
    for key, item in fields:
        if key in seen:
            raise _BadPoint(f"the field {key!r} appears twice once nested keys are joined with '.'")
        seen.add(key)
        problem = _name_problem(key)
        if problem:
            raise _BadPoint(f"field key {key!r} {problem}")
        parts.append(f"{_escape(key, _KEY_SPECIALS)}={_field_value(key, item)}")
    ns = seconds_to_ns(t) if math.isfinite(t) else MAX_NS + 1
    if not MIN_NS <= ns <= MAX_NS:
        raise _BadPoint(f"t={t!r} is outside InfluxDB's time range (years 1677 to 2262)")
    return f"{prefix} {','.join(parts)} {ns}"


def _flatten(key: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for sub, item in value.items():
            _flatten(f"{key}.{sub}", item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{key}.{index}", item, out)
    else:
        out.append((key, value))


def _field_value(key: str, value: Any) -> str:
    if isinstance(value, bool):  # before numbers: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise _BadPoint(f"field {key!r}: {value} does not fit a float") from None
        if not math.isfinite(number):
            raise _BadPoint(f"field {key!r}: {value!r} is not a finite number")
        return repr(number)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise _BadPoint(f"field {key!r}: {type(value).__name__} is not a JSON scalar")


def measurement(stream: str) -> str:
    """``stream`` escaped as a measurement.

    :raises ConfigurationError: it cannot be one
    """
    problem = _name_problem(stream)
    if problem is None and stream.startswith("#"):
        problem = "starts with '#' (a comment line in line protocol)"
    if problem:
        raise ConfigurationError(
            f"stream {stream!r} cannot be an InfluxDB measurement: it {problem}"
        )
    return _escape(stream, _MEASUREMENT_SPECIALS)


def tag_text(tags: Mapping[str, str], where: str = "InfluxDB tags") -> str:
    """``,k=v`` for every tag, escaped, sorted by key (InfluxDB's preferred order).

    :param where: whose tags, for the error message (``"stream 'x': tags"``)
    :raises ConfigurationError: a tag that line protocol cannot write, or a key InfluxDB
        keeps for itself (``time``; 2.x's ``_measurement``, ``_field``, ``_value``,
        ``_time``, ``_start``, ``_stop``); the message names it and says what is expected
    """
    if not isinstance(tags, Mapping):
        raise ConfigurationError(f"{where} must be a dict of str to str; got {type(tags).__name__}")
    out = []
    for key, value in sorted(tags.items(), key=lambda item: str(item[0])):
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(
                f"{where}: tag keys and values are non-empty strings; got {key!r}: {value!r}"
            )
        for what, text in (("key", key), ("value", value)):
            problem = _name_problem(text)
            if problem:
                raise ConfigurationError(
                    f"{where}: tag {what} {text!r} {problem}; a tag {what} is a non-empty str "
                    "without line breaks, and without a backslash at its end or before "
                    "',', '=' or ' '"
                )
        if key in _RESERVED_TAG_KEYS:
            raise ConfigurationError(
                f"{where}: tag key {key!r} is InfluxDB's own; reserved: "
                f"{', '.join(sorted(_RESERVED_TAG_KEYS))}"
            )
        out.append(f",{_escape(key, _KEY_SPECIALS)}={_escape(value, _KEY_SPECIALS)}")
    return "".join(out)


def _name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a name in line protocol, or None."""
    if not text:
        return "is empty"
    if "\n" in text or "\r" in text:
        return "holds a line break"
    if text.endswith("\\") or re.search(r"\\[,= ]", text):
        return "holds a backslash at its end or before ',', '=' or ' '"
    return None


def _escape(text: str, specials: str) -> str:
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- time


def seconds_to_ns(t: float) -> int:
    """``t`` seconds as whole nanoseconds: ``round(t * 1e9)`` computed exactly (half to even).

    ``t * 1e9`` in floats moves in steps of 256 ns at today's timestamps, coarser than the
    float ``t`` itself (about 238 ns), so two neighbouring timestamps could land on one
    nanosecond and overwrite each other in InfluxDB. The float's exact ratio cannot.
    """
    if _SECONDS_EXACT_FROM <= t <= _SECONDS_EXACT_TO:
        # Today's timestamps, fast and still exact: t's fraction (t - whole) is exact, and at
        # t >= 2**20 it is a multiple k of t's unit in the last place, 2**-32 or coarser, with
        # k < 2**32; so fraction * 1e9 = k * 5**9 * 2**(9 - 32 or more) needs under 53 bits
        # and the float product is exact too; round() then rounds it half to even.
        whole = int(t)
        return whole * 1_000_000_000 + round((t - whole) * 1e9)
    numerator, denominator = t.as_integer_ratio()
    ns, rest = divmod(numerator * 1_000_000_000, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and ns % 2):
        ns += 1
    return ns


def ns_to_seconds(ns: int) -> float:
    """The largest float ``s`` with ``seconds_to_ns(s) <= ns``.

    Every ``t`` written at or below ``ns`` is at or below ``s``, and every ``t`` written above
    it is above ``s``: comparing floats in seconds gives the same answer as comparing
    InfluxDB's nanoseconds.
    """
    # The boundary between ns and ns + 1 is exactly (ns + 1/2) / 1e9; a tie there rounds to
    # the even one. float() of a Fraction is correctly rounded, so one step down at most.
    boundary = Fraction(2 * ns + 1, 2_000_000_000)
    s = float(boundary)
    if Fraction(s) > boundary or (Fraction(s) == boundary and ns % 2):
        s = math.nextafter(s, -math.inf)
    return s


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fractional digits."""
    found = _RFC3339.fullmatch(text.strip())
    if not found:
        raise RemoteError(f"cannot read the time {text!r}")
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = found.group(8).upper()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((found.group(7) or "").ljust(9, "0"))
