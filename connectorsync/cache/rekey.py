"""Changing a cache's key: from one key to another, from plain to sealed, or back.

``connectorsync rekey PATH [--key-file OLD] (--new-key-file NEW | --plain)`` calls
:func:`rekey`. It re-seals every sealed value (readings, dead letters, latest values, the
credentials in the settings and the remotes) in bounded steps, :data:`STEP` rows per
transaction, each a transaction of its own that a power cut either keeps or undoes.

How it survives a cut: the first transaction records the new key's check (as the next key
generation) next to the old one, and ``seal.rekey`` = ``{"from": old, "to": new}``
(generation 0: plain). Each value carries the generation it is sealed under, so a step
only touches values not yet under the new one: running it again resumes where it stopped
(and re-reads what was done, which is cheap). The last transaction drops the old key's
check and ``seal.rekey``. Meanwhile a Logger (or the CLI) is refused with how to finish.
Nothing is inserted or deleted: every datapoint and dead letter is there exactly once at
every moment (``test_powercut.py::test_power_cut_torture_rekey``).

Old contents do not linger: the connection sets ``secure_delete`` (SQLite overwrites what
it frees with zeros), the file is rebuilt (``VACUUM``: a page can keep a moved cell's old
bytes in its unused space) and the WAL is checkpointed and cut to 0 bytes at the end
(``test_rekey.py::test_plain_to_sealed_leaves_no_value_in_the_file``).

Guarantees (each proved by the test named):

- Refused while another process has the file open, and changes nothing then
  (``test_rekey.py::test_rekey_refuses_while_another_process_has_the_cache_open``).
- After it, every datapoint and dead letter is there, the new key opens the cache and the
  old one is refused (``test_rekey.py::test_rekey_then_reopen_with_the_new_key``).
- A value that does not open with the old key (changed in the file) is left as it is and
  named in the report; every other one is re-sealed
  (``test_rekey.py::test_a_tampered_row_is_named_by_rekey_and_left``).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw

from ..errors import ConfigurationError
from . import schema, space
from .backup import holders
from .base import wrapped
from .seal import READING, REMOTE, SEALED_SETTINGS, SETTING, Sealer, generation_of
from .sealing import CHECK_PREFIX, REKEY, SecretKey, check_entry, opens_check

log = logging.getLogger(__name__)

#: Rows re-sealed per transaction.
STEP = 1000

# Each place a sealed value lives: (table, column, kind, the query of its rows after an id:
# id, the name the value is sealed under, the value).
_PLACES = (
    (
        "datapoints",
        "d",
        READING,
        "SELECT d.id, s.name, d.d FROM datapoints AS d JOIN streams AS s ON s.id = d.stream "
        "WHERE d.id > ? ORDER BY d.id LIMIT ?",
    ),
    (
        "deadletters",
        "d",
        READING,
        "SELECT id, stream, d FROM deadletters WHERE id > ? ORDER BY id LIMIT ?",
    ),
    (
        "streams",
        "last_d",
        READING,
        "SELECT id, name, last_d FROM streams WHERE id > ? AND last_d IS NOT NULL "
        "ORDER BY id LIMIT ?",
    ),
    (
        "remotes",
        "config",
        REMOTE,
        "SELECT id, name, config FROM remotes WHERE id > ? AND config IS NOT NULL "
        "ORDER BY id LIMIT ?",
    ),
)


@dataclass
class RekeyReport:
    """What :func:`rekey` did.

    :ivar resealed: values re-sealed (or opened to plain) by this run
    :ivar generation: the key generation the cache is sealed under now (0: plain)
    :ivar unopenable: each value that did not open with the old key (left as it was)
    """

    resealed: int = 0
    generation: int = 0
    unopenable: list[str] = field(default_factory=list)


def rekey(
    path: str,
    old: SecretKey | None,
    new: SecretKey | None,
    *,
    step: int = STEP,
    progress: Callable[[int], object] | None = None,
) -> RekeyReport:
    """Re-seal the cache at ``path`` from ``old`` (None: it is plain) to ``new`` (None: make
    it plain); resumes a rekey that was cut short (give the same keys).

    :raises ConfigurationError: another process has the file open, a key that is not the
        cache's, or another rekey under way; nothing was changed
    """
    others = holders(path)
    if others:
        pids = ", ".join(f"pid {pid}" for pid in others)
        raise ConfigurationError(
            f"cache file {path!r} is open in another process ({pids}): stop it, then run "
            "rekey again; nothing was changed"
        )
    conn = schema.connect(path, "full")
    try:
        with wrapped(f"rekey cache file {path!r}"):
            version = next(conn.execute("PRAGMA user_version"))[0]
        if version != schema.SCHEMA_VERSION:
            raise ConfigurationError(
                f"cache file {path!r} has schema version {version}, not this connectorsync's "
                f"({schema.SCHEMA_VERSION}): migrate it first (connectorsync migrate); "
                "nothing was changed"
            )
        with wrapped(f"rekey cache file {path!r}"):
            conn.execute("PRAGMA secure_delete=ON").fetchall()
        sealer, target = _begin(conn, path, old, new)
        report = RekeyReport(generation=target)
        for place in _PLACES:
            _reseal_place(conn, sealer, target, place, step, report, progress)
        _reseal_settings(conn, sealer, target, report)
        # What a page kept of the old values (a cell moved, unused space) goes: the file is
        # rebuilt from what it holds now. Before the rekey is called done, so that a cut
        # here is resumed (and rebuilds again).
        with wrapped(f"rebuild {path!r} without the old values"):
            conn.execute("VACUUM").fetchall()
        with wrapped(f"finish the rekey of {path!r}"), _transaction(conn):
            conn.execute(
                "DELETE FROM settings WHERE substr(key, 1, ?) = ? AND key != ?",
                (len(CHECK_PREFIX), CHECK_PREFIX, f"{CHECK_PREFIX}{target}"),
            )
            conn.execute("DELETE FROM settings WHERE key = ?", (REKEY,))
        with wrapped(f"checkpoint {path!r}"):
            space.checkpoint(conn, schema.BUSY_TIMEOUT_MS)
    finally:
        conn.close()
    log.info("cache %s: rekey done, %d values re-sealed", path, report.resealed)
    return report


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception) on a raw connection."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn

    def __enter__(self) -> apsw.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


def _checks(conn: apsw.Connection) -> dict[int, bytes]:
    rows = conn.execute(
        "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ?",
        (len(CHECK_PREFIX), CHECK_PREFIX),
    )
    return {int(k[len(CHECK_PREFIX) :]): base64.b64decode(json.loads(v)) for k, v in rows}


def _begin(
    conn: apsw.Connection, path: str, old: SecretKey | None, new: SecretKey | None
) -> tuple[Sealer, int]:
    """Check the keys, record the rekey (or find the one under way); the sealer that opens
    the old generation and seals the new, and the new generation (0: plain)."""
    with wrapped(f"rekey cache file {path!r}"), _transaction(conn):
        checks = _checks(conn)
        state = next(conn.execute("SELECT value FROM settings WHERE key = ?", (REKEY,)), None)
        if state is not None:
            under_way = json.loads(state[0])
            source, target = int(under_way["from"]), int(under_way["to"])
        else:
            source = max(checks) if checks else 0
            target = (max(checks) if checks else 0) + 1 if new is not None else 0
        _check_key(path, "--key-file", old, source, checks, fresh=state is None)
        if state is not None:
            _check_key(path, "--new-key-file", new, target, checks, fresh=False)
        elif new is None and source == 0:
            raise ConfigurationError(f"cache file {path!r} is plain already: nothing to do")
        elif new is not None and old is not None and new == old:
            raise ConfigurationError("the new key is the old one: nothing to do")
        if state is None:
            if new is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?)",
                    (f"{CHECK_PREFIX}{target}", check_entry(new, target)),
                )
            conn.execute(
                "INSERT INTO settings VALUES (?, ?)",
                (REKEY, json.dumps({"from": source, "to": target})),
            )
    keys = {gen: key.raw for gen, key in ((source, old), (target, new)) if gen and key}
    return Sealer(keys, target), target


def _check_key(  # noqa: PLR0913 - the key, what it is for, and the cache's checks
    path: str,
    flag: str,
    key: SecretKey | None,
    generation: int,
    checks: dict[int, bytes],
    *,
    fresh: bool,
) -> None:
    if generation == 0:
        if key is not None and fresh:
            raise ConfigurationError(
                f"cache file {path!r} is not sealed: run rekey without {flag} (and with "
                "--new-key-file NEW to seal it); nothing was changed"
            )
        return
    if key is None:
        raise ConfigurationError(
            f"cache file {path!r} is sealed (or being rekeyed): give its key with {flag}; "
            "nothing was changed"
        )
    if not opens_check(key, generation, checks[generation]):
        raise ConfigurationError(
            f"{flag} ({key.source}, key id {key.key_id}) is not the key cache file {path!r} "
            f"expects there{'' if fresh else ' for the rekey under way (give the same keys)'};"
            " nothing was changed"
        )


def _in_target(value: object, target: int) -> bool:
    if target == 0:
        return isinstance(value, str)
    return isinstance(value, bytes) and generation_of(value) == target


def _reseal_place(  # noqa: PLR0913 - one place, the run's sealer and report
    conn: apsw.Connection,
    sealer: Sealer,
    target: int,
    place: tuple[str, str, bytes, str],
    step: int,
    report: RekeyReport,
    progress: Callable[[int], object] | None,
) -> None:
    table, column, kind, query = place
    after = 0
    while True:
        with wrapped(f"re-seal {table}"), _transaction(conn):
            rows = list(conn.execute(query, (after, step)))
            for row_id, name, value in rows:
                if _in_target(value, target):
                    continue
                text = _opened(sealer, kind, name, value)
                if text is None:
                    report.unopenable.append(f"{table} row {row_id} ({name!r})")
                    continue
                stored = sealer.seal(kind, name, text) if target else text
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (stored, row_id))
                report.resealed += 1
        if progress is not None:
            progress(report.resealed)
        if len(rows) < step:
            return
        after = rows[-1][0]


def _reseal_settings(
    conn: apsw.Connection, sealer: Sealer, target: int, report: RekeyReport
) -> None:
    with wrapped("re-seal the settings"), _transaction(conn):
        for key in sorted(SEALED_SETTINGS):
            row = next(conn.execute("SELECT value FROM settings WHERE key = ?", (key,)), None)
            if row is None or _in_target(row[0], target):
                continue
            text = _opened(sealer, SETTING, key, row[0])
            if text is None:
                report.unopenable.append(f"setting {key!r}")
                continue
            stored = sealer.seal(SETTING, key, text) if target else text
            conn.execute("UPDATE settings SET value = ? WHERE key = ?", (stored, key))
            report.resealed += 1


def _opened(sealer: Sealer, kind: bytes, name: str, value: object) -> str | None:
    if isinstance(value, bytes):
        return sealer.opens(kind, name, value)
    return None if value is None else str(value)
