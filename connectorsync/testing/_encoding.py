"""Request bodies sent with ``Content-Encoding: gzip``, as the test servers read them.

A server that limits its bodies must limit what it decompresses too, or a small body (a
"gzip bomb": 10 kB that decompress to 10 GB) takes all its memory. :func:`decoded` never
holds more than the limit and one byte of output, however large the body would decompress
(``tests/test_compression.py::test_a_gzip_bomb_is_refused_without_decompressing_it``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

#: ``refuse(status, message)``: the exception a server raises to answer with that status.
Refuse = Callable[[int, str], Exception]


def decoded(body: bytes, encoding: str | None, limit: int, refuse: Refuse) -> bytes:
    """``body``, which arrived with Content-Encoding ``encoding``, as it was before encoding.

    :raises Exception: ``refuse(status, message)``: 415 for an encoding other than gzip (or
        none, ``identity``), 413 when it decompresses to more than ``limit`` bytes (found out
        by decompressing at most ``limit + 1`` bytes), 400 for a body that is not gzip
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name != "gzip":
        raise refuse(415, f"Content-Encoding {encoding!r} is not supported (gzip is)")
    unpacker = zlib.decompressobj(wbits=31)  # 31: the gzip format
    out = bytearray()
    data = body
    try:
        while not unpacker.eof:
            # Never more output than the limit allows: the rest stays compressed, unread.
            chunk = unpacker.decompress(data, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise refuse(413, f"The decompressed request body is larger than {limit} bytes")
            data = unpacker.unconsumed_tail
            if not chunk and not data:
                raise refuse(400, "The gzip body is cut short")
    except zlib.error as exc:
        raise refuse(400, f"The body is not valid gzip: {exc}") from None
    if unpacker.unused_data:
        raise refuse(400, "The gzip body has data after its end")
    return bytes(out)
