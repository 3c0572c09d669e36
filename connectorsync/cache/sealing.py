"""A cache's key: checked on open, recorded when a cache is created sealed.

The cache records, for each key generation it holds values of, a key check: the known text
:data:`~.seal.CHECK_TEXT` sealed under that key (setting ``seal.key.<generation>``). One
generation normally; two while ``connectorsync rekey`` is under way (:mod:`.rekey`), which
also records ``seal.rekey`` = ``{"from": old, "to": new}`` (0: plain).

Guarantees (each proved by the test named):

- Opening a sealed cache without a key, a plain cache with a key, or a sealed one with the
  wrong key is refused with a :class:`~connectorsync.ConfigurationError` that names the
  file and says what to do, and changes nothing (``test_seal.py::test_key_source_changes``).
- A key given for an older or a connectordb 0.3.5 cache (plain: those never were sealed) is
  refused before it is migrated or backed up: the file is left as it was
  (``test_seal.py::test_a_key_for_a_cache_that_needs_migrating_changes_nothing``).
- A cache whose rekey was cut short is refused until the rekey is run again (it resumes)
  (``test_rekey.py::test_a_cut_rekey_refuses_opening_until_resumed``).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Protocol

import apsw

from ..errors import ConfigurationError
from . import schema
from .base import wrapped
from .seal import CHECK, CHECK_TEXT, Sealer

#: Settings: the key check of generation N is under ``seal.key.N``; ``seal.rekey`` says a
#: rekey is under way.
CHECK_PREFIX = "seal.key."
REKEY = "seal.rekey"


class SecretKey(Protocol):
    """A key as :mod:`connectorsync.keysource` gives it (the cache does not read files)."""

    @property
    def raw(self) -> bytes: ...

    @property
    def source(self) -> str: ...

    @property
    def key_id(self) -> str: ...


class Keyed(Protocol):
    """What binding needs of a cache connection (``Cache``)."""

    path: str

    def read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]: ...

    def set_setting(self, key: str, value: Any) -> None: ...

    def attach_sealer(self, sealer: Sealer | None) -> None: ...


def key_checks(cache: Keyed) -> dict[int, bytes]:
    """The key check of each generation the cache records ({}: a plain cache)."""
    rows = cache.read(
        "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ?",
        (len(CHECK_PREFIX), CHECK_PREFIX),
    )
    return {int(k[len(CHECK_PREFIX) :]): base64.b64decode(json.loads(v)) for k, v in rows}


def rekey_under_way(cache: Keyed) -> dict[str, int] | None:
    """``{"from": generation, "to": generation}`` while a rekey is under way, else None."""
    rows = cache.read("SELECT value FROM settings WHERE key = ?", (REKEY,))
    return dict(json.loads(rows[0][0])) if rows else None


def check_entry(key: SecretKey, generation: int) -> str:
    """The setting value of ``key``'s check as generation ``generation``."""
    blob = Sealer({generation: key.raw}, generation).seal(CHECK, "", CHECK_TEXT)
    return json.dumps(base64.b64encode(blob).decode())


def opens_check(key: SecretKey, generation: int, check: bytes) -> bool:
    """Whether ``key`` is the key of ``generation`` (its ``check`` opens)."""
    return Sealer({generation: key.raw}, generation).opens(CHECK, "", check) == CHECK_TEXT


def how_to_give(path: str) -> str:
    return (
        f"give its key: Logger({path!r}, key_file=...) (or key=, or the systemd credential "
        "connectorsync.key in $CREDENTIALS_DIRECTORY); the CLI takes --key-file"
    )


def bind(cache: Keyed, key: SecretKey | None, *, created: bool) -> None:
    """Check ``key`` against the cache and attach its sealer to the connection; a cache
    just ``created`` (its creating transaction still open) is made sealed with it.

    :raises ConfigurationError: a sealed cache and no key or the wrong key, a plain cache
        and a key, or a rekey under way; nothing was changed
    """
    path = cache.path
    if created:
        if key is not None:
            cache.set_setting(CHECK_PREFIX + "1", json.loads(check_entry(key, 1)))
            cache.attach_sealer(Sealer({1: key.raw}, 1))
        return
    under_way = rekey_under_way(cache)
    if under_way is not None:
        raise ConfigurationError(
            f"cache file {path!r}: a rekey is under way and was not finished; run it again "
            f"(it resumes where it stopped): connectorsync rekey {path} --key-file OLD "
            "--new-key-file NEW (or --plain); nothing was changed"
        )
    checks = key_checks(cache)
    if not checks:
        if key is not None:
            raise ConfigurationError(
                f"cache file {path!r} is not sealed, but a key was given ({key.source}, key id "
                f"{key.key_id}); nothing was changed. To seal what it holds: stop every "
                f"program using it, then: connectorsync rekey {path} --new-key-file FILE; or "
                "open it without a key"
            )
        cache.attach_sealer(None)
        return
    generation = max(checks)
    if key is None:
        raise ConfigurationError(
            f"cache file {path!r} is sealed: {how_to_give(path)}; nothing was changed"
        )
    if not opens_check(key, generation, checks[generation]):
        raise ConfigurationError(
            f"cache file {path!r} is sealed under another key than the one given "
            f"({key.source}, key id {key.key_id}); nothing was changed: give the key it was "
            f"sealed with (after a rekey, the new one)"
        )
    cache.attach_sealer(Sealer({generation: key.raw}, generation))


def refuse_before_migrating(path: str, key: SecretKey | None) -> None:
    """Before a cache is opened (and maybe migrated): with a key, an existing file that
    needs migrating and holds no key check (plain: a connectordb 0.3.5 cache, or one of an
    older connectorsync) is refused, as :func:`bind` would refuse it once migrated, so that
    nothing is changed (no migration, no backup). A sealed one migrates, then is checked.

    :raises ConfigurationError: a key, and a plain file of an older schema
    """
    if key is None or not os.path.exists(path) or os.path.getsize(path) < 100:
        return
    with open(path, "rb") as f:  # the header says the schema version (user_version)
        header = f.read(100)
    version = int.from_bytes(header[60:64], "big")
    if not header.startswith(b"SQLite format 3\0") or version >= schema.SCHEMA_VERSION:
        return  # not a cache, a newer one, or a current one: opening says what it is
    # Only looking (no journal mode set, no write): the file stays as it is.
    with wrapped(f"read cache file {path!r}"):
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.setbusytimeout(schema.BUSY_TIMEOUT_MS)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            sealed = (
                "settings" in tables
                and next(
                    conn.execute(
                        "SELECT count(*) FROM settings WHERE substr(key, 1, ?) = ?",
                        (len(CHECK_PREFIX), CHECK_PREFIX),
                    )
                )[0]
            )
        finally:
            conn.close()
    if not sealed:
        raise ConfigurationError(
            f"cache file {path!r} needs migrating and is not sealed, but a key was given "
            f"({key.source}, key id {key.key_id}); nothing was changed. Open it once without "
            f"a key (it migrates), then seal it: connectorsync rekey {path} --new-key-file FILE"
        )
