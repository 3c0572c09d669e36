"""Sources: read sensors and insert what they read into a :class:`~connectorsync.Logger`.

Each source runs in its own thread, turns what it reads into datapoints, and inserts them
with the Logger's public API only, so everything the Logger guarantees (committed before
``insert`` returns, validated, timestamps increasing per stream) holds for them too.
"""

from .serial import SerialSource, parse_line

__all__ = ["SerialSource", "parse_line"]
