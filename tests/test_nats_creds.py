"""NATSRemote's ``credentials=`` (a ``.creds`` file: a user JWT and its nkey seed) against a
real nats-server in operator mode (:class:`~connectorsync.testing.nats.NATSOperator`: an
operator, a system account and a JetStream account whose JWTs the test writes and signs, no
``nsc``). A good user delivers into JetStream, counted on the server; a user the server
refuses (signed by an unknown account, expired, revoked) pauses syncing and keeps the data;
the file's contents (the seed, the JWT) are never shown; a file that is missing or is not a
``.creds`` file is a ConfigurationError naming the path, and one that goes bad later an
error naming it, never a hang (nats-py loops for ever on a file without a JWT).

Skipped without nats-server, nats-py or nkeys, failed instead under
CONNECTORSYNC_REQUIRE_NATS=1 or CI=true (``conftest.require_nats``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectorsync import Logger, NATSRemote
from connectorsync.errors import AuthError, ConfigurationError, TransientRemoteError
from connectorsync.testing.nats import NATSOperator, NATSServer

from .conftest import REQUIRE_NATS, require_nats, start_nats, wait_for, within

STREAM = "SENSORS"
T0 = 1_700_000_000.0


def require_nkeys() -> None:
    """nats-py signs with the nkeys package (the ``nats`` extra has it): skip without it,
    saying how to install it, or fail where the NATS tests are required."""
    require_nats()
    try:
        import nkeys  # noqa: F401 - only whether it is there
    except ImportError:
        message = "nkeys is not installed: `pip install 'connectorsync[nats]'` to run them"
        if os.environ.get(REQUIRE_NATS) == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"{message} ({REQUIRE_NATS}=1 or CI=true requires it)")
        pytest.skip(message)


@pytest.fixture
def operator() -> NATSOperator:
    require_nkeys()
    return NATSOperator()


@pytest.fixture
def server(tmp_path: Path, operator: NATSOperator) -> Iterator[NATSServer]:
    """nats-server in operator mode, the stream SENSORS on ``sensors.>`` in its account."""
    made = start_nats(tmp_path / "nats", operator=operator)
    try:
        made.add_stream(STREAM, ["sensors.>"])
        yield made
    finally:
        made.stop()


def logger(path: str, remote: NATSRemote) -> Logger:
    # No jitter: the background loop's first pass comes at once (the pause waits on it).
    return Logger(
        path,
        remote=remote,
        sync_jitter=0,
        on_create=lambda lg: lg.add_stream("temperature", {}),
    )


def secrets_of(creds: str) -> list[str]:
    """The seed and the JWT a .creds file holds (the lines after their markers), and the
    JWT's signature: none may ever be shown."""
    lines = Path(creds).read_text().splitlines()
    jwt = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
    seed = lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1]
    return [seed, jwt, jwt.rsplit(".", 1)[1], seed[:20]]


def test_a_good_creds_file_delivers_into_jetstream(
    server: NATSServer,
    operator: NATSOperator,
    tmp_path: Path,
    cache_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = operator.user_creds(tmp_path / "device.creds")
    remote = NATSRemote(server.url, credentials=creds, timeout=5)
    caplog.set_level(logging.DEBUG)
    try:
        assert remote.ping() == f"creds:device.creds@127.0.0.1:{server.port}"
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(20)])
            assert lg.sync().sent == {"temperature": 20}
            assert len(lg) == 0
            shown = repr(lg.status()) + repr(remote) + caplog.text
        assert sorted(m.json()["d"] for m in server.stream_messages(STREAM)) == list(range(20))
    finally:
        remote.close()
    for secret in secrets_of(creds):
        assert secret not in shown


def bad_seed_creds(operator: NATSOperator, path: Path) -> str:
    """A good user's .creds file with its seed made invalid (cut short: no nkey seed)."""
    creds = operator.user_creds(path)
    lines = Path(creds).read_text().splitlines()
    at = lines.index("-----BEGIN USER NKEY SEED-----") + 1
    lines[at] = lines[at][:20]
    Path(creds).write_text("\n".join(lines) + "\n")
    return creds


@pytest.mark.parametrize("refused", ["foreign", "expired", "revoked", "bad_seed"])
def test_refused_creds_pause_syncing_and_are_never_shown(
    server: NATSServer,
    operator: NATSOperator,
    tmp_path: Path,
    cache_path: str,
    caplog: pytest.LogCaptureFixture,
    refused: str,
) -> None:
    """Signed by an account the server does not know, expired, or revoked by its account:
    the server refuses the user; the Logger pauses, keeps every datapoint, dead-letters
    none, and no error, status or log line shows the seed or the JWT."""
    make = {
        "foreign": operator.foreign_creds,
        "expired": operator.expired_creds,
        "revoked": operator.revoked_creds,
        "bad_seed": lambda path: bad_seed_creds(operator, path),
    }[refused]
    creds = make(tmp_path / f"{refused}.creds")
    remote = NATSRemote(server.url, credentials=creds, timeout=5)
    caplog.set_level(logging.DEBUG)
    try:
        with logger(cache_path, remote) as lg:
            lg.insert_many("temperature", [{"t": T0 + i, "d": i} for i in range(3)])
            report = lg.sync()
            assert isinstance(report.exception, AuthError), report
            said = "nkey seed is not valid" if refused == "bad_seed" else "credentials refused"
            assert said in str(report.exception)
            lg.start()
            wait_for(lambda: lg.status().paused, what="syncing to pause")
            assert len(lg) == 3 and lg.deadletters() == []
            assert "syncing paused" in caplog.text  # the log the secrets must stay out of
            shown = str(report.exception) + repr(lg.status()) + repr(remote) + caplog.text
        assert server.count(STREAM) == 0
    finally:
        remote.close()
    for secret in secrets_of(creds):
        assert secret not in shown


def test_a_missing_or_bad_creds_file_is_a_configuration_error_naming_the_path(
    tmp_path: Path, operator: NATSOperator
) -> None:
    missing = str(tmp_path / "nowhere.creds")
    with pytest.raises(ConfigurationError, match=r"nowhere\.creds"):
        NATSRemote("nats://127.0.0.1:4222", credentials=missing)
    with pytest.raises(ConfigurationError, match=r"a \.creds file's path"):
        NATSRemote("nats://127.0.0.1:4222", credentials=str(tmp_path))  # a directory
    good = operator.user_creds(tmp_path / "good.creds")
    text = Path(good).read_text()
    # The seed alone (no JWT), or the JWT alone (no seed): not a .creds file.
    for name, cut in (("seed-only", "-----BEGIN USER NKEY SEED-----"), ("jwt-only", "\n\n")):
        path = tmp_path / f"{name}.creds"
        part = text[text.index(cut) :] if name == "seed-only" else text[: text.index(cut)]
        path.write_text(part)
        with pytest.raises(ConfigurationError, match=rf"{name}\.creds") as caught:
            NATSRemote("nats://127.0.0.1:4222", credentials=str(path))
        for secret in secrets_of(good):
            assert secret not in str(caught.value)


def test_a_creds_file_that_goes_bad_later_is_an_error_naming_it_not_a_hang(
    server: NATSServer, operator: NATSOperator, tmp_path: Path
) -> None:
    """Removed, or overwritten with a seed and no JWT (on which nats-py 2.16 loops for ever)
    after the remote was built: each connect fails at once, naming the file; the file
    restored, it logs in."""
    creds = operator.user_creds(tmp_path / "device.creds")
    good, secrets = Path(creds).read_text(), secrets_of(creds)
    remote = NATSRemote(server.url, credentials=creds, timeout=5, identity="a" * 32)
    try:
        os.remove(creds)
        with pytest.raises(TransientRemoteError, match=r"device\.creds.*cannot be read"):
            within(20, remote.push, "temperature", [(1, T0, "1")])
        Path(creds).write_text(good[good.index("-----BEGIN USER NKEY SEED-----") :])
        with pytest.raises(TransientRemoteError, match=r"device\.creds.*no user JWT") as caught:
            within(20, remote.push, "temperature", [(1, T0, "1")])
        for secret in secrets:
            assert secret not in str(caught.value)
        Path(creds).write_text(good)
        within(20, remote.push, "temperature", [(1, T0, "1")])
        assert server.count(STREAM) == 1
    finally:
        remote.close()


def test_without_nkeys_a_creds_file_is_a_configuration_error_saying_so(
    tmp_path: Path, operator: NATSOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = operator.user_creds(tmp_path / "device.creds")
    monkeypatch.setitem(sys.modules, "nkeys", None)  # import nkeys now raises ImportError
    with pytest.raises(ConfigurationError, match="needs the nkeys package: pip install"):
        NATSRemote("nats://127.0.0.1:4222", credentials=creds)
