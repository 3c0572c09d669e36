"""The checks of :class:`~connectorsync.remotes.nats.NATSRemote`'s arguments, each refusing
a bad one when the remote is built, with a :class:`ConfigurationError` that names it (and
never shows a credential's value), and the TLS context its ``ca=``/``verify=`` make."""

from __future__ import annotations

import os
import re
import ssl
from urllib.parse import urlsplit

from ..errors import ConfigurationError

_PORTS = {"nats": 4222, "tls": 4222}
_IDENTITY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


def check_credentials(
    user: str | None, password: str | None, token: str | None, credentials: str | None
) -> None:
    """At most one way to log in; a password goes with a user; a .creds file exists."""
    given = [
        name
        for name, v in (("user", user), ("token", token), ("credentials", credentials))
        if v is not None
    ]
    if len(given) > 1:
        raise ConfigurationError(
            f"NATSRemote: give one of user=, token=, credentials=; got {given}"
        )
    if (password is not None) != (user is not None):
        raise ConfigurationError("NATSRemote: user= and password= go together")
    if credentials is not None:
        _check_file(credentials)


def check_options(  # noqa: PLR0913 - the remote's settings, each checked
    subject: object,
    ca: object,
    verify: object,
    window: object,
    create_stream: object,
    identity: object,
) -> None:
    """The settings other than the url and the credentials."""
    check_subject(subject)
    if ca is not None and not (isinstance(ca, str) and os.path.isfile(ca)):
        raise ConfigurationError(f"NATSRemote ca must be the path of a CA file; got {ca!r}")
    if not isinstance(verify, bool):
        raise ConfigurationError(f"NATSRemote verify must be True or False; got {verify!r}")
    if not (isinstance(window, int) and not isinstance(window, bool) and 0 < window <= 65535):
        raise ConfigurationError(f"NATSRemote window must be 1..65535; got {window!r}")
    if create_stream is not None and not (
        isinstance(create_stream, str) and _STREAM_NAME.fullmatch(create_stream)
    ):
        raise ConfigurationError(
            f"NATSRemote create_stream must be a stream name (letters, digits, _ -); "
            f"got {create_stream!r}"
        )
    if identity is not None:
        check_identity(identity)


def load_nats() -> None:
    try:
        import nats  # noqa: F401 - only whether it imports
    except ImportError as exc:
        raise ConfigurationError(
            "NATSRemote needs nats-py, which cannot be imported here "
            f"({type(exc).__name__}: {exc}): pip install 'connectorsync[nats]'"
        ) from None


def check_url(url: object) -> tuple[str, str, int]:
    if not isinstance(url, str):
        raise ConfigurationError(
            f"NATSRemote url must be a str, nats://host[:port] or tls://host[:port]; "
            f"got {type(url).__name__}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = urlsplit(""), None
    if parts.scheme not in _PORTS or not parts.hostname:
        shown = f"***@{url.rsplit('@', 1)[1]}" if "@" in url else url
        raise ConfigurationError(
            f"NATSRemote url must be nats://host[:port] or tls://host[:port]; got {shown!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("NATSRemote: put credentials in user=/password= or token=")
    port = port or _PORTS[parts.scheme]
    return f"{parts.scheme}://{parts.hostname}:{port}", parts.hostname, port


def check_subject(subject: object) -> None:
    if not (
        isinstance(subject, str)
        and subject
        and not any(c in subject for c in " \t\r\n*>")
        and all(subject.replace("{stream}", "s").split("."))
    ):
        raise ConfigurationError(
            "NATSRemote subject must be dot-separated tokens without spaces or wildcards, "
            f"{{stream}} standing for the stream's name; got {subject!r}"
        )


def check_identity(identity: object) -> None:
    if not (isinstance(identity, str) and _IDENTITY.fullmatch(identity)):
        raise ConfigurationError(
            f"NATSRemote identity must be 1-64 letters, digits, _ . -; got {identity!r}"
        )


def _check_file(path: object) -> None:
    if not (isinstance(path, str) and os.path.isfile(path)):
        raise ConfigurationError(
            f"NATSRemote credentials must be a .creds file's path; got {path!r}"
        )
    if (problem := creds_problem(path)) is not None:
        raise ConfigurationError(
            f"NATSRemote credentials: the file {path!r} {problem}; expected a .creds file "
            "(a user JWT and its nkey seed, as `nsc generate creds` writes one)"
        )
    try:
        import nkeys  # noqa: F401 - nats-py signs with it
    except ImportError:
        raise ConfigurationError(
            "NATSRemote credentials= (a .creds file) needs the nkeys package: pip install nkeys"
        ) from None


#: The marker lines of a .creds file, each followed by what it marks on the next line.
_CREDS_SECTIONS = {b"BEGIN NATS USER JWT": "user JWT", b"BEGIN USER NKEY SEED": "nkey seed"}


class CredentialsFileError(OSError):
    """The ``.creds`` file is gone or is not one (said without its contents)."""


def recheck_creds(path: str) -> None:
    """Before each connect: the file still a ``.creds`` file.

    :raises CredentialsFileError: it is not (the message names the path, not the contents)
    """
    if (problem := creds_problem(path)) is not None:
        raise CredentialsFileError(f"the .creds file {path!r} {problem}")


def creds_problem(path: str) -> str | None:
    """What makes ``path`` unusable as a ``.creds`` file, said without its contents, or
    None. nats-py reads the line after each marker line, and loops for ever on a file
    without the JWT's marker (nats-py 2.16, ``_read_creds_user_jwt``): the file is checked
    before nats-py reads it (``tests/test_nats_creds.py``)."""
    try:
        with open(path, "rb") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    for marker, what in _CREDS_SECTIONS.items():
        at = next((i for i, line in enumerate(lines) if marker in line), None)
        if at is None or at + 1 >= len(lines) or not lines[at + 1].strip():
            return f"holds no {what} (no line after {marker.decode()!r})"
    return None


def tls_context(ca: str | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
