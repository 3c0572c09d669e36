"""SerialSource on real pseudo-terminals: parsing, bad lines, reconnecting, bounded stop.

The source opens the slave side of a pty exactly as it opens a USB serial adapter; the test
plays the device by writing to the master side.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectorsync import ConfigurationError, Logger
from connectorsync.cache import Cache
from connectorsync.sources import SerialSource, parse_line
from connectorsync.sources import serial as serial_module

from .conftest import wait_for


class FakeDevice:
    """A pseudo-terminal pair: ``path`` is the device to open, ``write`` sends to it."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw mode: no echo back to the master, no newline translation.
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a pty takes a few KiB at a time; the reader makes room
            view = view[os.write(self.master, view) :]

    def unread(self) -> int:
        """Bytes sent that the reader has not taken yet (the slave's input queue)."""
        return struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0]

    def close(self) -> None:
        """Unplug: the source's reads fail, and the path stops opening."""
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    try:
        yield dev
    finally:
        dev.close()


@pytest.fixture
def lg(cache_path: str) -> Iterator[Logger]:
    with Logger(cache_path, durability="normal") as lg:
        lg.add_stream("temperature", {"type": "number"})
        lg.add_stream("humidity", {"type": "number", "minimum": 0, "maximum": 100})
        lg.addStream_force("status")
        yield lg


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes what it opened: file descriptors, and its reader threads."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    assert not [t.name for t in threading.enumerate() if t.name.startswith("connectorsync-serial")]
    # listdir's own descriptor to /proc/self/fd is in both lists, at the same number.
    assert set(os.listdir("/proc/self/fd")) <= before


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reopen from 10 ms instead of 100 ms."""
    monkeypatch.setattr(serial_module, "BACKOFF_START", 0.01)


def rows(lg: Logger, stream: str) -> list[tuple[int, float, Any]]:
    """The cached datapoints of a stream as (id, t, value); ids are global insertion order."""
    cache = Cache.connect(lg.path)
    try:
        stream_id = cache.streams()[stream].id
        return [(i, t, json.loads(d)) for i, t, d in cache.batch(stream_id, 0, 1000)]
    finally:
        cache.close()


def values(lg: Logger, stream: str) -> list[Any]:
    return [d for _, _, d in rows(lg, stream)]


def started(source: SerialSource) -> SerialSource:
    """Start the source and wait until the port is open: pyserial flushes the input when it
    opens a port, so whatever the device sent before is lost (as with a real device)."""
    source.start()
    try:
        wait_for(lambda: source.connected, what=f"{source.port} to open")
    except BaseException:
        source.stop()
        raise
    return source


# ----------------------------------------------------------------------------- parsing


def test_numbers_go_into_the_stream(lg: Logger, device: FakeDevice) -> None:
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"21.5\r\n20\n  -3e1 \r\n.5\n")
        wait_for(lambda: source.inserted == 4, what="4 inserts")
    assert values(lg, "temperature") == [21.5, 20, -30.0, 0.5]
    times = [t for _, t, _ in rows(lg, "temperature")]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60
    assert source.stats() == {
        "lines": 4,
        "inserted": 4,
        "malformed": 0,
        "skipped": 0,
        "rejected": 0,
        "reconnects": 0,
        "connected": False,
        "last_error": None,
    }


def test_a_json_object_fans_out_with_one_timestamp(lg: Logger, device: FakeDevice) -> None:
    with started(SerialSource(lg, device.path, 115200)) as source:
        device.write(b'{"temperature": 21.5, "humidity": 40}\n')
        device.write(b'{"humidity": 41, "status": {"fan": "on"}, "temperature": 22}\r\n')
        wait_for(lambda: source.inserted == 5, what="5 inserts")
    temperature, humidity, status = (rows(lg, s) for s in ("temperature", "humidity", "status"))
    assert [d for _, _, d in temperature] == [21.5, 22]
    assert [d for _, _, d in humidity] == [40, 41]
    assert [d for _, _, d in status] == [{"fan": "on"}]
    # One timestamp per line, whatever the stream...
    assert temperature[0][1] == humidity[0][1]
    assert temperature[1][1] == humidity[1][1] == status[0][1] > temperature[0][1]
    # ...and inserted in the line's order of keys.
    assert temperature[0][0] < humidity[0][0]
    assert humidity[1][0] < status[0][0] < temperature[1][0]
    assert (source.lines, source.malformed, source.rejected) == (2, 0, 0)


def test_custom_parse(lg: Logger, device: FakeDevice) -> None:
    def parse(line: str) -> Any:
        if line.startswith("#"):
            return None  # a comment: skipped
        if line.startswith("T="):
            celsius, _, humidity = line[2:].partition(",H=")
            return {"temperature": float(celsius), "humidity": float(humidity)}
        if line.startswith("F="):
            return (float(line[2:]) - 32) / 1.8  # a single value: into stream=
        return parse_line(line)  # everything else as by default

    source = SerialSource(lg, device.path, parse=parse, stream="temperature")
    with started(source):
        device.write(b"# sensor v2 booting\nT=21.0,H=40\nF=212\nT=oops\n7\n\n")
        wait_for(lambda: source.lines == 6, what="6 lines")
        wait_for(lambda: source.inserted == 4, what="4 inserts")
    assert values(lg, "temperature") == [21.0, 100.0, 7]
    assert values(lg, "humidity") == [40.0]
    assert (source.skipped, source.malformed, source.rejected) == (2, 1, 0)  # comment, blank


BAD_LINES = [
    # (line, counter, words the warning must contain)
    (b"hello world", "malformed", ["'hello world'", "not a number or a JSON object"]),
    (b"nan", "malformed", ["'nan'", "not a number"]),
    (b"-inf", "malformed", ["'-inf'"]),
    (b"1e999", "malformed", ["too large"]),
    (b"\xff\xfe21.5", "malformed", ["not UTF-8", "byte 0"]),
    (b'{"temperature": NaN}', "malformed", ["NaN is not a finite number"]),
    (b'{"temperature": 21.5', "malformed", ["not valid JSON"]),
    (b"[21.5, 40]", "malformed", ["not a number or a JSON object"]),
    (b'{"pressure": 1013}', "rejected", ["'pressure'", "not registered"]),
    (b'{"humidity": 140}', "rejected", ["'humidity'", "140", "maximum"]),
    (b'{"temperature": "hot"}', "rejected", ["'temperature'", "'hot'", "number"]),
]


@pytest.mark.parametrize(("line", "counter", "words"), BAD_LINES)
def test_bad_lines_are_counted_and_reading_goes_on(
    lg: Logger, device: FakeDevice, caplog: pytest.LogCaptureFixture, line, counter, words
) -> None:
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"1\n" + line + b"\r\n2\n")
        wait_for(lambda: source.lines == 3, what="3 lines")
        wait_for(lambda: source.inserted == 2, what="the good lines")
        assert source.running and source.connected
    assert values(lg, "temperature") == [1, 2]
    assert getattr(source, counter) == 1
    assert source.malformed + source.rejected == 1
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "connectorsync.sources.serial" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    for word in words:
        assert word in warnings[0], warnings[0]


def test_a_refused_key_does_not_lose_the_others(lg: Logger, device: FakeDevice) -> None:
    with started(SerialSource(lg, device.path)) as source:
        device.write(b'{"temperature": 21.5, "pressure": 1013, "humidity": 400, "status": 1}\n')
        wait_for(lambda: source.inserted + source.rejected == 4, what="4 datapoints handled")
    assert (source.inserted, source.rejected, source.malformed) == (2, 2, 0)
    assert values(lg, "temperature") == [21.5] and values(lg, "status") == [1]


def test_a_number_needs_a_stream(lg: Logger, device: FakeDevice, caplog) -> None:
    with started(SerialSource(lg, device.path)) as source:
        device.write(b'21.5\n{"temperature": 22}\n')
        wait_for(lambda: source.lines == 2 and source.inserted == 1, what="2 lines")
    assert source.malformed == 1 and values(lg, "temperature") == [22]
    assert "no stream=" in caplog.text


def test_an_overlong_line_is_dropped_up_to_its_end(lg: Logger, device: FakeDevice) -> None:
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"1\n" + b"9" * (serial_module.MAX_LINE * 2) + b"\n2\n")
        wait_for(lambda: source.inserted == 2, what="the lines around it")
    assert values(lg, "temperature") == [1, 2]
    assert (source.lines, source.malformed) == (3, 1)


def test_bad_log_lines_are_rate_limited(
    lg: Logger, device: FakeDevice, caplog: pytest.LogCaptureFixture
) -> None:
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"garbage\n" * 50 + b"1\n")
        wait_for(lambda: source.inserted == 1, what="the good line")
    assert source.malformed == 50
    assert caplog.text.count("malformed line") == serial_module.LOG_BURST


# ----------------------------------------------------------------------------- lifecycle


def test_reopens_when_the_device_comes_back(
    lg: Logger, tmp_path: Path, fast_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "ttyUSB0"  # what udev would keep pointing at the adapter
    first = FakeDevice()
    second = None
    try:
        link.symlink_to(first.path)
        with started(SerialSource(lg, str(link), stream="temperature")) as source:
            first.write(b"1\n2\n3")  # "3" has no newline yet when the cable is pulled
            wait_for(lambda: source.inserted == 2, what="the first lines")
            wait_for(lambda: first.unread() == 0, what="the source to read the '3'")
            threads = [t.name for t in threading.enumerate()]
            assert f"connectorsync-serial:{link}" in threads

            first.close()  # unplugged
            wait_for(lambda: source.last_error is not None, what="the loss")
            second = FakeDevice()  # plugged in again, maybe under another pts number
            new_link = tmp_path / "ttyUSB0.new"
            new_link.symlink_to(second.path)
            os.replace(new_link, link)

            wait_for(lambda: source.reconnects >= 1 and source.connected, what="the reopen")
            second.write(b"4\n5\n")
            wait_for(lambda: source.inserted == 4, what="the lines after the reopen")
            assert source.running
    finally:
        first.close()
        if second is not None:
            second.close()
    assert values(lg, "temperature") == [1, 2, 4, 5]
    assert source.malformed == 1  # the cut-off "3"
    assert "lost" in caplog.text and "cut off" in caplog.text


def test_stop_is_prompt_while_waiting_to_reopen(
    lg: Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serial_module, "BACKOFF_START", 30.0)
    source = SerialSource(lg, str(tmp_path / "ttyUSB9"), reopen_max=300)
    source.start()
    try:
        source.start()  # twice is harmless
        wait_for(lambda: source.last_error is not None, what="the first failed open")
        assert "cannot open" in (source.last_error or "") and not source.connected
        assert source.running
        began = time.monotonic()
    finally:
        source.stop()
    assert time.monotonic() - began < 1.0
    assert not source.running
    source.stop()  # twice is safe


def test_stop_is_prompt_while_reading(lg: Logger, device: FakeDevice) -> None:
    # A read that would wait a minute for data is cancelled by stop().
    source = started(SerialSource(lg, device.path, stream="temperature", timeout=60))
    began = time.monotonic()
    source.stop()
    assert time.monotonic() - began < 1.0
    assert not source.running and not source.connected


def test_a_missing_port_at_start_is_waited_for(lg: Logger, tmp_path: Path, fast_backoff) -> None:
    link = tmp_path / "ttyACM0"
    with SerialSource(lg, str(link), stream="temperature") as source:
        wait_for(lambda: source.last_error is not None, what="the first failed open")
        with FakeDevice() as dev:
            link.symlink_to(dev.path)
            wait_for(lambda: source.connected, what="the port to appear")
            dev.write(b"7\n")
            wait_for(lambda: source.inserted == 1, what="the line")
            source.stop()
    assert source.reconnects == 0  # it was never lost, only late


def test_restart_after_stop_keeps_counting(lg: Logger, device: FakeDevice) -> None:
    source = SerialSource(lg, device.path, stream="temperature")
    for count in (1, 2):
        with started(source):
            device.write(f"{count}\n".encode())
            wait_for(lambda: source.lines == count, what="the line")  # noqa: B023
    assert source.inserted == 2 and values(lg, "temperature") == [1, 2]


def test_a_closed_logger_stops_the_source(cache_path: str, device: FakeDevice, caplog) -> None:
    lg = Logger(cache_path, durability="normal")
    lg.add_stream("temperature", {"type": "number"})
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"1\n")
        wait_for(lambda: source.inserted == 1, what="the first line")
        lg.close()
        device.write(b"2\n")
        wait_for(lambda: not source.running, what="the source to stop")
        assert not source.connected
    assert "ClosedError" in (source.last_error or "")
    assert "the Logger is closed" in caplog.text
    assert source.inserted == 1 and source.rejected == 0


def test_an_unexpected_insert_error_stops_the_source(
    lg: Logger, device: FakeDevice, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken(stream: str, value: Any, timestamp: float | None = None) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(lg, "insert", broken)
    with started(SerialSource(lg, device.path, stream="temperature")) as source:
        device.write(b"1\n")
        wait_for(lambda: not source.running, what="the source to stop")
    assert source.last_error == "stopped: RuntimeError: disk on fire"
    assert "unexpected insert error" in caplog.text


def test_a_parse_that_raises_only_makes_the_line_malformed(lg: Logger, device) -> None:
    def parse(line: str) -> Any:
        return {"temperature": 1 / int(line)}

    with started(SerialSource(lg, device.path, parse=parse)) as source:
        device.write(b"0\n4\n")
        wait_for(lambda: source.lines == 2 and source.inserted == 1, what="2 lines")
    assert source.malformed == 1 and values(lg, "temperature") == [0.25]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"timeout": None}, ["timeout", "positive"]),
        ({"timeout": 0}, ["timeout"]),
        ({"reopen_max": -1}, ["reopen_max"]),
        ({"baudrate": 0}, ["baudrate"]),
        ({"port": "nosuch://x"}, ["'nosuch://x'", "nosuch"]),
        ({"bytesize": 9}, ["byte size", "9"]),
        ({"parse": "json"}, ["parse"]),
        ({"stream": 3}, ["stream"]),
    ],
)
def test_bad_settings_fail_at_construction(lg: Logger, kwargs: dict[str, Any], words) -> None:
    port = kwargs.pop("port", "/dev/ttyUSB0")
    with pytest.raises(ConfigurationError) as info:
        SerialSource(lg, port, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_parse_line() -> None:
    assert parse_line(" 42 ") == 42 and isinstance(parse_line("42"), int)
    assert parse_line("+1.5e2") == 150.0
    assert parse_line('{"a": 1, "b": [1.5]}') == {"a": 1, "b": [1.5]}
    for bad in ("", "0x10", "1_000", "Infinity", "١٢", '"text"', "true", "{}x"):
        with pytest.raises(ValueError):
            parse_line(bad)
