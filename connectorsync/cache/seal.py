"""Sealing at rest: one job, turning a stored text into a sealed blob and back.

A sealed cache (``Logger(path, key=...)``, see :mod:`connectorsync.keysource`) keeps every
stored reading (``datapoints.d``, ``deadletters.d``, ``streams.last_d``) and every stored
credential (the settings in :data:`SEALED_SETTINGS`, ``remotes.config``) as a blob sealed
with AES-256-GCM (``cryptography``), never as text. A plain cache keeps them as text: which
one a value is, is told by its SQLite type (TEXT or BLOB), so a value needs no flag.

A blob is ``b"S" + generation (4 bytes) + nonce (12 random bytes, fresh per seal) +
ciphertext and tag``. The associated data binds the value to what it is and where it
belongs: its kind (a reading, a setting, a remote's configuration, the key check), the name
it is filed under (the stream, the setting's key, the remote's name) and the key generation.
A value moved to another stream, setting or remote, or with its generation changed, does
not open. A reading is not bound to its table or its time: it moves between the datapoints,
the dead letters and ``streams.last_d`` in SQL, and re-timing (NTP) and dead-letter retries
change its time, all without opening it (said in docs/storage.rst).

Guarantees (each proved by the test named):

- A value changed in the file (one byte), or sealed under another key, does not open: a
  :class:`~connectorsync.errors.SealedRowError` names the row
  (``test_seal.py::test_a_tampered_row_is_named_and_every_other_row_syncs``).
- Neither the key nor a value appears in a repr or an error
  (``test_seal.py::test_the_key_never_shows``).
- The seal travels with the connection: every module of the cache that holds an apsw
  connection finds its sealer with :func:`of`, so no function signature changes with it.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable
from typing import Any

import apsw

from ..errors import ConfigurationError, SealedRowError

#: What a value is, bound into its seal.
READING, SETTING, REMOTE, CHECK = b"reading", b"setting", b"remote", b"check"
#: The settings holding credentials or your own data, sealed in a sealed cache.
SEALED_SETTINGS = frozenset({"apikey", "serverurl", "data", "remote", "remote.config"})

_MAGIC = b"S"
_HEADER = 1 + 4 + 12
#: How many bytes a sealed value has more than its text: the header and the 16-byte tag.
OVERHEAD = _HEADER + 16
_DOMAIN = b"connectorsync seal 1\0"
#: The known text the key check seals (settings ``seal.key.<generation>``).
CHECK_TEXT = "connectorsync key check"


def _cipher_class() -> Any:
    """AESGCM, imported only when a cache is sealed (the ``seal`` extra)."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigurationError(
            "a sealed cache needs the 'cryptography' package: pip install 'connectorsync[seal]'"
        ) from exc
    return AESGCM


def generation_of(blob: bytes) -> int:
    """The key generation a sealed blob says it was sealed under (-1: not a sealed blob)."""
    if len(blob) < _HEADER + 16 or blob[:1] != _MAGIC:
        return -1
    return int.from_bytes(blob[1:5], "big")


class Sealer:
    """Seals and opens values with the keys of some generations (one; two during a rekey).

    :param keys: the 32-byte key of each generation it may open
    :param generation: the one new values are sealed under (0: new values stay plain, the
        target of a rekey to plain)
    """

    __slots__ = ("_ciphers", "generation")

    def __init__(self, keys: dict[int, bytes], generation: int):
        aesgcm = _cipher_class()
        self._ciphers = {gen: aesgcm(key) for gen, key in keys.items()}
        self.generation = generation

    def __repr__(self) -> str:
        return f"<Sealer generations {sorted(self._ciphers)}, sealing under {self.generation}>"

    def seal(self, kind: bytes, name: str, text: str, generation: int | None = None) -> bytes:
        """``text`` sealed under ``generation`` (default: :attr:`generation`)."""
        gen = self.generation if generation is None else generation
        header = _MAGIC + gen.to_bytes(4, "big") + os.urandom(12)
        sealed = self._ciphers[gen].encrypt(
            header[5:], text.encode(), _associated(kind, name, header[:5])
        )
        return header + bytes(sealed)

    def opens(self, kind: bytes, name: str, blob: bytes) -> str | None:
        """The text sealed in ``blob``, or None: changed, another key, or another place."""
        return self.opener(kind, name)(blob)

    def opener(self, kind: bytes, name: str) -> Callable[[bytes], str | None]:
        """:meth:`opens` for many values of one ``kind`` and ``name`` (a batch of one stream):
        what is the same for all of them is worked out once, which halves the cost per value
        on a drain (``tests/benchmarks/_full_seal.py``)."""
        prefix = _associated(kind, name, b"")
        ciphers = {gen.to_bytes(4, "big"): c.decrypt for gen, c in self._ciphers.items()}

        def open_one(blob: bytes) -> str | None:
            decrypt = ciphers.get(blob[1:5])
            if decrypt is None or blob[:1] != _MAGIC or len(blob) < _HEADER + 16:
                return None
            try:
                plain: bytes = decrypt(blob[5:_HEADER], blob[_HEADER:], prefix + blob[:5])
            except Exception:  # cryptography's InvalidTag: the only way a wrong blob fails
                return None
            return plain.decode()

        return open_one

    def open_rows(
        self, kind: bytes, name: str, rows: list[tuple[int, float, Any]]
    ) -> list[tuple[int, float, str]] | None:
        """Rows ``(id, t, blob)`` of one ``kind`` and ``name`` with every blob opened, or
        None when any of them does not open as :meth:`opener` would open it (then the caller
        opens them one by one, to set aside and name the ones that do not).

        The drain's way: one expression for a whole batch, about a third cheaper per value
        than :meth:`opener` (``tests/benchmarks/_full_seal.py``). It accepts exactly what
        :meth:`opener` accepts: the associated data is taken from each blob's own header, so
        a changed magic byte or generation fails as it does there, and a blob of another
        generation, a short blob or a text fails the whole call."""
        if not rows or type(rows[0][2]) is not bytes:
            return None if rows else []
        cipher = self._ciphers.get(generation_of(rows[0][2]))
        if cipher is None:
            return None
        decrypt, prefix = cipher.decrypt, _associated(kind, name, b"")
        try:
            return [
                (point_id, t, decrypt(blob[5:_HEADER], blob[_HEADER:], prefix + blob[:5]).decode())
                for point_id, t, blob in rows
            ]
        except Exception:  # InvalidTag, or a value that is not a sealed blob at all
            return None


def _associated(kind: bytes, name: str, header: bytes) -> bytes:
    return b"%s%s\0%s\0%s" % (_DOMAIN, kind, name.encode(), header)


# --------------------------------------------------------------------------- per connection

_SEALERS: weakref.WeakKeyDictionary[apsw.Connection, Sealer] = weakref.WeakKeyDictionary()


def attach(conn: apsw.Connection, sealer: Sealer | None) -> None:
    """From now on values read or written through ``conn`` are opened or sealed by
    ``sealer`` (None: the cache is plain)."""
    if sealer is None:
        _SEALERS.pop(conn, None)
    else:
        _SEALERS[conn] = sealer


def of(conn: apsw.Connection) -> Sealer | None:
    """The sealer attached to ``conn``, or None (plain)."""
    return _SEALERS.get(conn)


def store(conn: apsw.Connection, kind: bytes, name: str, text: str) -> str | bytes:
    """What to store for ``text``: sealed when ``conn`` has a sealer, else the text."""
    sealer = _SEALERS.get(conn)
    if sealer is None or not sealer.generation:
        return text
    return sealer.seal(kind, name, text)


def load(conn: apsw.Connection, kind: bytes, name: str, value: Any, row: str) -> str:
    """The text stored as ``value`` (a blob is opened); ``row`` names it for the error.

    :raises SealedRowError: a blob that does not open (changed, another key, no key), or a
        text where the cache seals (written by someone else than connectorsync)
    """
    sealer = _SEALERS.get(conn)
    if isinstance(value, bytes):
        text = None if sealer is None else sealer.opens(kind, name, value)
        if text is None:
            raise SealedRowError(
                f"{row}: its sealed value does not open: it was changed in the file, or "
                + (
                    "sealed under another key"
                    if sealer is not None
                    else "the cache is sealed and no key was given"
                )
            )
        return text
    if sealer is not None and sealer.generation:
        raise SealedRowError(f"{row}: stored in plain text in a sealed cache (not written by us)")
    return str(value)


def setting_in(conn: apsw.Connection, key: str, text: str) -> str | bytes:
    """What to store for the setting ``key`` (JSON ``text``): credentials are sealed."""
    return store(conn, SETTING, key, text) if key in SEALED_SETTINGS else text


def setting_out(conn: apsw.Connection, key: str, value: Any) -> str:
    """The JSON text of the setting ``key`` stored as ``value``."""
    if key in SEALED_SETTINGS or isinstance(value, bytes):
        return load(conn, SETTING, key, value, f"setting {key!r}")
    return str(value)


def all_settings(conn: apsw.Connection, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Every setting of ``rows`` (key, stored value), decoded from JSON."""
    return {key: json.loads(setting_out(conn, key, value)) for key, value in rows}


def open_points(
    conn: apsw.Connection, stream: str, rows: list[Any]
) -> tuple[list[tuple[int, float, str]], list[str]]:
    """The datapoint rows ``(id, t, d)`` of ``stream`` with their values opened, and a
    message naming each row that does not open (left out of the first list)."""
    sealer = _SEALERS.get(conn)
    if sealer is None and not any(type(row[2]) is bytes for row in rows):
        return rows, []
    if sealer is not None:  # every row opens, as a rule: in one go
        every = sealer.open_rows(READING, stream, rows)
        if every is not None:
            return every, []
    opened, failed = [], []
    for point_id, t, data in rows:
        name = f"datapoints row {point_id} (stream {stream!r}, t={t})"
        try:
            opened.append((point_id, t, load(conn, READING, stream, data, name)))
        except SealedRowError as exc:
            failed.append(str(exc))
    return opened, failed
