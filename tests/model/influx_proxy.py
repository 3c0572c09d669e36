"""A loopback HTTP proxy to influxd with the test servers' faults (for the model's
``idempotent`` backend)."""

from __future__ import annotations

import http.client
import threading
import time

from connectorsync.testing.loopback import Faults, LoopbackHandler, LoopbackHTTPServer


class _ProxyServer(LoopbackHTTPServer):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(0, _ProxyHandler, "fault-proxy-conn")


class _ProxyHandler(LoopbackHandler):
    """Relays one request to influxd, unless a fault says otherwise."""

    server: _ProxyServer
    _HOP = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date"}
    )

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        is_write = self.command == "POST" and self.path.startswith("/write")
        if is_write:
            proxy.count_write()
        time.sleep(proxy.faults.take_delay())
        failure = proxy.faults.take_failure(self.command, self.path)
        if failure is not None:
            status, retry_after = failure
            headers = None if retry_after is None else {"Retry-After": str(retry_after)}
            self.respond(status, "application/json", b'{"error":"injected"}', headers)
            return
        if is_write and proxy.faults.take_drop(after=False):
            self.abort()
            return
        conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in self._HOP}
        finally:
            conn.close()
        if is_write and proxy.faults.take_drop(after=True):
            self.abort()  # influxd has answered: whatever it stored stays stored
            return
        content_type = kept.pop("Content-Type", "")
        self.respond(response.status, content_type, answer, kept)

    do_GET = do_POST = do_HEAD = _dispatch


class FaultProxy:
    """A loopback HTTP proxy to influxd with the test servers' faults: failures with a status
    (and Retry-After), writes dropped before they reach influxd or after it answered, and
    delays."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.writes = 0
        self._lock = threading.Lock()
        self._httpd = _ProxyServer(self)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="fault-proxy", daemon=True
        )
        self._thread.start()

    def count_write(self) -> None:
        with self._lock:
            self.writes += 1

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join()
