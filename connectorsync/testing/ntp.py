"""NTPServer: a tiny NTP responder on 127.0.0.1 whose time is the system's plus an offset.

For tests of time handling: ``ntplib`` (and any NTP client) talks to it over real UDP and
measures ``offset``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_DELTA = 2208988800


def _to_ntp(t: float) -> bytes:
    t += NTP_DELTA
    seconds = int(t)
    return struct.pack("!II", seconds, int((t - seconds) * 2**32))


class NTPServer:
    """Answers NTP requests on 127.0.0.1 (port 0: a free one) with the time ``offset`` seconds
    off the system clock. ``requests`` counts the answers; ``offset`` may be changed live, and
    ``silent = True`` makes it ignore requests (a server that does not answer)."""

    def __init__(self, offset: float = 0.0, port: int = 0):
        self.offset = offset
        self.silent = False
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", port))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``"127.0.0.1:<port>"``, as ``ntp_server`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> NTPServer:
        self._thread = threading.Thread(target=self._serve, name="ntp-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> NTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, client = self._sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            received = time.time() + self.offset
            if len(request) < 48 or self.silent:
                continue
            version = (request[0] >> 3) & 0x7
            header = struct.pack("!BBbb", (version << 3) | 4, 1, 4, -20)  # server, stratum 1
            reply = (
                header
                + b"\0" * 8  # root delay, root dispersion
                + b"LOCL"  # reference id
                + _to_ntp(received)  # reference time
                + request[40:48]  # originate: the client's transmit time, echoed
                + _to_ntp(received)
                + _to_ntp(time.time() + self.offset)
            )
            self._sock.sendto(reply, client)
            self.requests += 1
