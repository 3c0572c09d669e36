"""Sealed at rest (issue 19, point 3): ``connectorsync/cache/seal.py``, ``sealing.py``,
``connectorsync/keysource.py``.

Real cache files, a real loopback ConnectorDB server, raw apsw to look into (and tamper with)
the file. The file, its WAL and its backup copies must hold no stored value or credential in
any encoding; a wrong key, a missing key, a key for a plain cache are refused and change
nothing; a tampered row is named and every other row still syncs and exports.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from connectorsync import (
    ConfigurationError,
    ConnectorSyncError,
    HTTPRemote,
    Logger,
    SchemaError,
    SealedRowError,
)
from connectorsync.cache.backup import make_backup
from connectorsync.cli import main
from connectorsync.testing import ConnectorDBServer

STREAM = "alice/sensor/temperature"
T0 = 1_700_000_000.0
#: Values nobody would find in a file by chance.
SECRET_VALUES = [987654.125, 876543.0625, 765432.5]
SECRET_TEXT = "pelican-quartz-7781"
PASSWORD = "hunter2-sealed-pw-4411"


def key_file(directory: Path, name: str = "cache.key", form: str = "raw") -> str:
    raw = hashlib.sha256(name.encode()).digest()
    path = directory / name
    content = {
        "raw": raw,
        "hex": raw.hex().encode() + b"\n",
        "base64": base64.b64encode(raw) + b"\n",
    }[form]
    path.write_bytes(content)
    path.chmod(0o600)
    return str(path)


def snapshot(path: str) -> dict[str, bytes]:
    """The bytes of the cache file and the files beside it."""
    return {
        suffix: Path(path + suffix).read_bytes()
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(path + suffix)
    }


def encodings(text: str) -> list[bytes]:
    """Every way a text might sit in a file."""
    raw = text.encode()
    dumped = json.dumps(text).encode()
    forms = [
        raw,
        dumped,
        text.encode("utf-16-le"),
        text.encode("utf-16-be"),
        raw.hex().encode(),
        raw.hex().upper().encode(),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    ]
    return [f for f in forms if len(f) >= 6]


def assert_nowhere(blobs: dict[str, bytes], secrets: list[str]) -> None:
    for where, data in blobs.items():
        unzipped = [data]
        for start in range(len(data)):  # a gzip stream anywhere in it
            if data[start : start + 2] == b"\x1f\x8b":
                try:
                    unzipped.append(gzip.decompress(data[start:]))
                except (OSError, EOFError):
                    pass
        for secret in secrets:
            for form in encodings(secret):
                for body in unzipped:
                    assert form not in body, f"{secret!r} found in {where} as {form!r}"


@pytest.fixture
def sealed_path(tmp_path: Path, server: ConnectorDBServer) -> Iterator[tuple[str, str]]:
    path, key = str(tmp_path / "cache.db"), key_file(tmp_path)

    def init(lg: Logger) -> None:
        lg.apikey = server.apikey  # type: ignore[attr-defined]
        lg.serverurl = server.url
        lg.addStream("temperature", {"type": "number"})
        lg.addStream("note", {"type": "string"})

    Logger(path, on_create=init, key_file=key).close()
    yield path, key


def test_file_wal_and_backups_hold_no_value_or_credential(
    sealed_path: tuple[str, str], server: ConnectorDBServer, tmp_path: Path
) -> None:
    """After inserts, dead letters, latest values (delivered), a remote with a password,
    and after a checkpoint: neither the file, nor its WAL, nor a backup copy holds a value
    or a credential, in plain, JSON, UTF-16, hex or base64, or gzip'd."""
    path, key = sealed_path
    apikey = server.apikey  # type: ignore[attr-defined]
    server.reject(lambda stream, point: point["d"] == SECRET_VALUES[1])
    remote = HTTPRemote(
        "http://127.0.0.1:9/ingest", headers={"Authorization": f"Bearer {PASSWORD}"}
    )
    with Logger(path, key_file=key, durability="normal") as lg:
        lg.add_remote("web", remote, streams=["note"])
        lg.insert_many("temperature", [{"t": T0 + i, "d": d} for i, d in enumerate(SECRET_VALUES)])
        lg.insert("note", SECRET_TEXT)
        lg.data = {"site": "secret-site-name-551"}
        lg.sync()
        # Delivered: the first is the stream's latest now (streams.last_d); refused: a letter.
        assert [d.d for d in lg.deadletters()] == [SECRET_VALUES[1]]
        assert lg.latest("temperature") == {"t": T0 + 2, "d": SECRET_VALUES[2]}
        lg.insert("temperature", SECRET_VALUES[0] + 1)
        secrets = [*(repr(v) for v in SECRET_VALUES), SECRET_TEXT, apikey, PASSWORD]
        secrets += ["secret-site-name-551", repr(SECRET_VALUES[0] + 1)]
        assert_nowhere(snapshot(path), secrets)  # the WAL, before any checkpoint
        backup = str(tmp_path / "copy.db")
        apsw.Connection(backup).backup("main", apsw.Connection(path), "main").step(-1)
    assert_nowhere(snapshot(path), secrets)  # checkpointed at close
    assert_nowhere(snapshot(backup), secrets)
    # The copy a migration makes first (cache/backup.py), as it makes it.
    conn = apsw.Connection(path)
    conn.execute("BEGIN IMMEDIATE")
    made = make_backup(conn, path, "v6")
    conn.execute("ROLLBACK")
    conn.close()
    assert_nowhere(snapshot(made), secrets)
    # The values are all there, with the key.
    with Logger(path, key_file=key) as lg:
        assert lg.data == {"site": "secret-site-name-551"}
        assert lg.apikey == apikey
        assert [p["d"] for p in lg.export("note")] == [SECRET_TEXT]


def test_the_key_never_shows(
    sealed_path: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Not in a repr, the status, a log line, an error, nor the option's value."""
    path, key = sealed_path
    raw = Path(key).read_bytes()
    forms = [raw, raw.hex().encode(), base64.b64encode(raw)]
    caplog.set_level(logging.DEBUG)
    with Logger(path, key_file=key) as lg:
        lg.insert("temperature", 1.0)
        shown = [repr(lg), str(lg.status()), repr(lg.key), repr(lg.key_file)]
        try:
            lg.key = raw
        except ConfigurationError as exc:
            shown.append(str(exc))
        else:
            pytest.fail("changing the key of an open logger must be refused")
    try:
        Logger(path, key=raw[::-1])
    except ConfigurationError as exc:
        shown.append(str(exc))
    shown += [r.getMessage() for r in caplog.records]
    text = "\n".join(shown).encode()
    for form in forms:
        assert form not in text
        assert repr(form) not in text.decode()


@pytest.mark.parametrize("form", ["raw", "hex", "base64"])
def test_key_file_forms(tmp_path: Path, form: str) -> None:
    """A key file of 32 raw bytes, 64 hex digits or base64 opens the same cache."""
    path = str(tmp_path / "c.db")
    with Logger(path, key_file=key_file(tmp_path, "k", form)) as lg:
        lg.add_stream("x", {"type": "number"})
        lg.insert("x", 1.5)
    raw = Path(key_file(tmp_path, "k", "raw")).read_bytes()
    with Logger(path, key=raw) as lg:
        assert [p["d"] for p in lg.export()] == [1.5]
    with Logger(path, key=raw.hex()) as lg:
        assert len(lg) == 1


def test_a_key_of_the_wrong_form_is_refused_with_what_is_expected(tmp_path: Path) -> None:
    bad = tmp_path / "short.key"
    bad.write_bytes(b"0123456789")
    path = str(tmp_path / "c.db")
    with pytest.raises(ConfigurationError, match=r"key file .*short.key.* 32 raw bytes"):
        Logger(path, key_file=str(bad))
    with pytest.raises(ConfigurationError, match="key= holds 5 characters"):
        Logger(path, key="hello")
    with pytest.raises(TypeError, match="key must be"):
        Logger(path, key=12)
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        Logger(path, key_file=str(tmp_path / "missing.key"))
    with pytest.raises(ConfigurationError, match="not both"):
        Logger(path, key=b"k" * 32, key_file=str(bad))
    assert not os.path.exists(path)


def test_systemd_credential_is_the_key_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without key=/key_file=, $CREDENTIALS_DIRECTORY/connectorsync.key is the key."""
    creds = tmp_path / "creds"
    creds.mkdir()
    key = key_file(creds, "connectorsync.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = str(tmp_path / "c.db")
    with Logger(path) as lg:
        lg.add_stream("x", {"type": "number"})
        lg.insert("x", SECRET_VALUES[0])
    assert_nowhere(snapshot(path), [repr(SECRET_VALUES[0])])
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigurationError, match="is sealed"):
        Logger(path)
    with Logger(path, key_file=key) as lg:
        assert len(lg) == 1


def test_key_source_changes(sealed_path: tuple[str, str], tmp_path: Path) -> None:
    """A sealed cache without a key, with another key; a plain cache with a key: each
    refused with what to do, and the file is left byte for byte as it was."""
    path, key = sealed_path
    with Logger(path, key_file=key) as lg:
        lg.insert("temperature", 1.0)
    before = snapshot(path)
    with pytest.raises(ConfigurationError, match=r"is sealed: give its key.*nothing was changed"):
        Logger(path)
    other = key_file(tmp_path, "other.key")
    with pytest.raises(ConfigurationError, match=r"sealed under another key.*nothing was"):
        Logger(path, key_file=other)
    assert snapshot(path) == before
    plain = str(tmp_path / "plain.db")
    with Logger(plain) as lg:
        lg.add_stream("x", {"type": "number"})
        lg.insert("x", 2.0)
    before = snapshot(plain)
    with pytest.raises(ConfigurationError, match=r"not sealed.*connectorsync rekey"):
        Logger(plain, key_file=key)
    assert snapshot(plain) == before
    with Logger(plain) as lg, Logger(path, key_file=key) as sealed:
        assert [p["d"] for p in lg.export()] == [2.0]
        assert len(sealed) == 1


def flip_a_byte(path: str, table: str, row_id: int) -> None:
    """Change one byte of a sealed value, with raw apsw, as someone with the card could."""
    conn = apsw.Connection(path)
    (blob,) = next(conn.execute(f"SELECT d FROM {table} WHERE id = ?", (row_id,)))
    assert isinstance(blob, bytes)
    changed = bytearray(blob)
    changed[-5] ^= 0x01
    conn.execute(f"UPDATE {table} SET d = ? WHERE id = ?", (bytes(changed), row_id))
    conn.close()


def test_a_tampered_row_is_named_and_every_other_row_syncs(
    sealed_path: tuple[str, str], server: ConnectorDBServer, tmp_path: Path
) -> None:
    """One flipped byte in one datapoint: export names the row and gives every other one;
    a sync delivers every other one and moves that one to the dead letters with a reason
    naming it (counted in status, listed, never sent, never lost)."""
    path, key = sealed_path
    with Logger(path, key_file=key) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": float(i)} for i in range(5)])
    flip_a_byte(path, "datapoints", 3)
    with Logger(path, key_file=key) as lg:
        got: list[float] = []
        with pytest.raises(SealedRowError, match=r"datapoints row 3 \(stream 'temperature'"):
            got.extend(p["d"] for p in lg.export())
        assert got == [0.0, 1.0, 3.0, 4.0]
        out = io.StringIO()
        assert main(["export", path, "--key-file", key], out) == 1
        assert [json.loads(line)["d"] for line in out.getvalue().splitlines()] == got
        report = lg.sync()
        assert [p["d"] for p in server.datapoints(STREAM)] == got
        assert report.errors == {}
        (letter,) = lg.deadletters()
        assert (letter.stream, letter.t, letter.d) == ("temperature", T0 + 2, None)
        assert "datapoints row 3" in letter.reason and "does not open" in letter.reason
        assert lg.status().streams["temperature"].deadletters == 1
        assert len(lg) == 0
    # A dead letter tampered with: listed with why, the others still listed with values.
    with Logger(path, key_file=key) as lg:
        lg.insert("temperature", -1.0)
    server.reject(lambda stream, point: True)
    with Logger(path, key_file=key) as lg:
        lg.sync()
        assert len(lg.deadletters()) == 2
    flip_a_byte(path, "deadletters", 2)
    with Logger(path, key_file=key) as lg:
        first, second = lg.deadletters()
        assert first.d is None and second.d is None and "does not open" in second.reason
    # Sealed under another key (a row copied from another sealed cache) is named too.
    server.reject(None)


CHANGES = {
    "magic byte": lambda blob: bytes([blob[0] ^ 1]) + blob[1:],
    "generation": lambda blob: blob[:4] + bytes([blob[4] ^ 1]) + blob[5:],
    "nonce": lambda blob: blob[:9] + bytes([blob[9] ^ 1]) + blob[10:],
    "tag": lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]),
    "cut short": lambda blob: blob[:20],
    "a text instead": lambda blob: "21.5",
}


@pytest.mark.parametrize("row_id", [1, 3, 5])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_changed_part_of_a_sealed_value_is_set_aside_at_sync(
    sealed_path: tuple[str, str], server: ConnectorDBServer, change: str, row_id: int
) -> None:
    """A pass opens a batch in one go and, when any value of it does not open, value by
    value (``Sealer.open_rows``, then ``Sealer.opener``): whichever part of the value is
    changed, in the first, a middle or the last row of the batch, that row goes to the dead
    letters named and every other row is delivered once."""
    path, key = sealed_path
    with Logger(path, key_file=key) as lg:
        lg.insert_many("temperature", [{"t": T0 + i, "d": float(i)} for i in range(5)])
    conn = apsw.Connection(path)
    (blob,) = next(conn.execute("SELECT d FROM datapoints WHERE id = ?", (row_id,)))
    conn.execute("UPDATE datapoints SET d = ? WHERE id = ?", (CHANGES[change](blob), row_id))
    conn.close()
    with Logger(path, key_file=key) as lg:
        assert lg.sync().errors == {}
        kept = [float(i) for i in range(5) if i != row_id - 1]
        assert [p["d"] for p in server.datapoints(STREAM)] == kept
        (letter,) = lg.deadletters()
        assert letter.t == T0 + row_id - 1 and f"datapoints row {row_id}" in letter.reason
        assert len(lg) == 0


def test_a_row_sealed_under_another_key_is_named(tmp_path: Path) -> None:
    one, two = str(tmp_path / "one.db"), str(tmp_path / "two.db")
    for path, name in ((one, "k1"), (two, "k2")):
        with Logger(path, key_file=key_file(tmp_path, name)) as lg:
            lg.add_stream("x", {"type": "number"})
            lg.insert_many("x", [{"t": T0 + i, "d": float(i)} for i in range(3)])
    stolen = next(apsw.Connection(two).execute("SELECT d FROM datapoints WHERE id = 2"))[0]
    conn = apsw.Connection(one)
    conn.execute("UPDATE datapoints SET d = ? WHERE id = 2", (stolen,))
    conn.close()
    with (
        Logger(one, key_file=key_file(tmp_path, "k1")) as lg,
        pytest.raises(SealedRowError, match=r"row 2.*another key"),
    ):
        list(lg.export())


def test_a_value_moved_to_another_stream_does_not_open(tmp_path: Path) -> None:
    """The stream is bound into the seal: a value moved to another stream is refused."""
    path, key = str(tmp_path / "c.db"), key_file(tmp_path)
    with Logger(path, key_file=key) as lg:
        lg.add_stream("a", {"type": "number"})
        lg.add_stream("b", {"type": "number"})
        lg.insert("a", 1.0)
        lg.insert("b", 2.0)
    conn = apsw.Connection(path)
    conn.execute("UPDATE datapoints SET d = (SELECT d FROM datapoints WHERE id = 1) WHERE id = 2")
    conn.close()
    with Logger(path, key_file=key) as lg:
        assert [p["d"] for p in lg.export("a")] == [1.0]
        with pytest.raises(SealedRowError, match="row 2"):
            list(lg.export("b"))


def test_cli_takes_key_file(sealed_path: tuple[str, str]) -> None:
    """status, export and deadletters list take --key-file; without it they say how."""
    path, key = sealed_path
    with Logger(path, key_file=key) as lg:
        lg.insert("temperature", 21.5)
    for command in (["status", path], ["export", path], ["deadletters", path, "list"]):
        assert main(command, io.StringIO()) == 2, command
        assert main([*command, "--key-file", key], io.StringIO()) == 0, command
    out = io.StringIO()
    assert main(["export", path, "--key-file", key], out) == 0
    assert json.loads(out.getvalue())["d"] == 21.5


def test_a_copy_keeps_working_only_with_its_key(
    sealed_path: tuple[str, str], tmp_path: Path
) -> None:
    """A copy of the file (what a thief has) opens with the key only."""
    path, key = sealed_path
    with Logger(path, key_file=key) as lg:
        lg.insert("temperature", 5.0)
    copy = str(tmp_path / "stolen.db")
    shutil.copy(path, copy)
    with pytest.raises(ConnectorSyncError):
        Logger(copy)
    with Logger(copy, key_file=key) as lg:
        assert len(lg) == 1


def test_dead_letters_of_a_sealed_cache_are_retried_and_delivered(
    sealed_path: tuple[str, str], server: ConnectorDBServer
) -> None:
    """A dead letter moves between the tables sealed (never opened in SQL): retried with its
    own time, or queued again with a new one, it is delivered with its value."""
    path, key = sealed_path
    server.reject(lambda stream, point: point["d"] < 0)
    with Logger(path, key_file=key, durability="batched") as lg:
        lg.insert_many("temperature", [{"t": T0, "d": 1.0}, {"t": T0 + 1, "d": -1.0}])
        lg.insert_many("temperature", [{"t": T0 + 2, "d": -2.0}])
        assert lg.sync().deadlettered == {"temperature": 2}
        server.reject(None)
        (first, second) = lg.deadletters()
        assert (first.d, second.d) == (-1.0, -2.0)
        lg.retry_deadletters([first.id])  # with its own time (sent at once)
        lg.retry_deadletters([second.id], restamp=True)  # queued as a new datapoint
        lg.sync()
        assert [p["d"] for p in server.datapoints(STREAM)] == [1.0, -1.0, -2.0]
        assert lg.deadletters() == [] and len(lg) == 0
        assert lg.latest("temperature")["d"] == -2.0  # type: ignore[index]


def test_a_key_for_a_cache_that_needs_migrating_changes_nothing(
    tmp_path: Path, server: ConnectorDBServer
) -> None:
    """A connectordb 0.3.5 cache opened with a key: refused before the migration and its
    backup (plain caches are sealed by rekey, once migrated); the file stays as it was."""
    from .test_migration import make_connectordb_cache

    path = str(tmp_path / "old.db")
    make_connectordb_cache(path, "apikey", server.url)
    before = snapshot(path)
    with pytest.raises(ConfigurationError, match=r"needs migrating and is not sealed.*rekey"):
        Logger(path, key_file=key_file(tmp_path))
    assert snapshot(path) == before
    assert sorted(os.listdir(tmp_path)) == ["cache.key", "old.db"]


def test_a_schema_change_checks_the_sealed_values(tmp_path: Path) -> None:
    """A new schema is checked against the values the sealed cache holds, opened: one they
    fit is taken, one they do not fit is refused naming the value's time, nothing changed."""
    path, key = str(tmp_path / "cache.db"), key_file(tmp_path)
    with Logger(path, key_file=key) as lg:
        lg.addStream_force("temperature", {"type": "number"})
        lg.insert_many("temperature", [{"t": T0 + i, "d": v} for i, v in enumerate(SECRET_VALUES)])
        with pytest.raises(SchemaError, match=f"t={T0!r} does not fit"):
            lg.addStream_force("temperature", {"type": "number", "maximum": 100})
        lg.addStream_force("temperature", {"type": "number", "minimum": 0})  # they all fit
        assert [p["d"] for p in lg.export()] == SECRET_VALUES
