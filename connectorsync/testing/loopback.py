"""The parts the test servers are built from, for a loopback server or proxy of your own
(the delivery model builds an InfluxDB proxy that loses answers from them).

- :class:`Faults`: pending injected faults (fail the next requests, drop a connection before
  or after the request is handled, delays, refusals); every method is thread-safe.
- :class:`LoopbackHTTPServer` and :class:`LoopbackHandler`: an HTTP server on 127.0.0.1
  only, one thread per connection, every connection tracked so that stopping it cuts the
  ones still open.
- :class:`LoopbackProxy` and :func:`shut`: a TCP proxy on 127.0.0.1 in front of a server,
  the base of proxies that inject faults a server cannot; :class:`AnswerLosingProxy`, one
  that loses the answers to the next requests it recognises (the server stored them).
"""

from __future__ import annotations

from ._faults import Faults
from ._httpd import LoopbackHandler, LoopbackHTTPServer
from ._proxy import AnswerLosingProxy, LoopbackProxy, shut

__all__ = [
    "AnswerLosingProxy",
    "Faults",
    "LoopbackHTTPServer",
    "LoopbackHandler",
    "LoopbackProxy",
    "shut",
]
