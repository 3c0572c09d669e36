"""PostgresRemote's one error map: psycopg's errors onto connectorsync's tree.

Decided by the SQLSTATE the server sent, and, for a failure to connect (libpq says it in
words, with no SQLSTATE), by libpq's message. Where in a push the failure came matters for
one thing: once ``COMMIT`` was sent, a lost connection may have come after the server
committed, so it is ambiguous; before it, the transaction was rolled back and nothing was
stored (transient).

Every message is scrubbed of the password (libpq and psycopg may quote the connection
string, as in "unexpected spaces found in ..."), and says what to do.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    AmbiguousRemoteError,
    AuthError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)

# SQLSTATE classes and codes (PostgreSQL's errcodes appendix).
_REFUSED_CLASSES = ("22", "23")  # data exception, integrity constraint violation
_REFUSED = {"54000"}  # program limit exceeded: a value too big for jsonb
_AUTH_CLASSES = ("28",)  # invalid authorization specification (28P01: bad password)
_AUTH = {"42501"}  # insufficient privilege (no INSERT or CREATE on the table)
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")  # connection, rollback, resources, operator
_TRANSIENT = {"55P03", "55006"}  # lock_timeout passed, object in use: worth a later try
_NO_DATABASE = "3D000"
# libpq's words when connecting fails (no SQLSTATE reaches the client then).
_AUTH_WORDS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    'role "',  # role "x" does not exist
    "password is required",
    "no password supplied",
    "authentication failed",
)
_NO_DATABASE_WORDS = ('database "',)


def scrub(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (and its URL-quoted form) masked."""
    if secret:
        from urllib.parse import quote

        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    return text


def reason_of(exc: Exception) -> str:
    """The server's primary message (libpq's first line when it has none)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    if primary:
        return f"{primary} ({detail})" if detail else str(primary)
    text = " ".join(str(exc).split("\n\t"))
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def map_error(
    exc: Exception, *, where: str, secret: str | None, committing: bool = False
) -> RemoteError:
    """The connectorsync error for psycopg's ``exc``.

    :param where: what was being done to what (``"PostgreSQL u@host:port/db, table t,
        stream 's'"``)
    :param committing: ``COMMIT`` had been sent: a lost connection is ambiguous
    """
    state: str = getattr(exc, "sqlstate", None) or ""
    reason = scrub(reason_of(exc), secret)
    message = f"{where}: {reason}"
    if state.startswith(_REFUSED_CLASSES) or state in _REFUSED:
        return RejectedError(
            f"{message}; the datapoints that PostgreSQL refuses are kept as dead letters",
            status=None,
            body=scrub(f"PostgreSQL refused the value: {reason} (SQLSTATE {state})", secret),
        )
    if state.startswith(_AUTH_CLASSES) or state in _AUTH:
        return AuthError(
            f"{message}; check the user, the password and the role's privileges on the table"
        )
    if state == _NO_DATABASE:
        return RemoteError(f"{message}; check the database name in the dsn (the data is kept)")
    lost = not state or state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT
    if committing and lost:
        return AmbiguousRemoteError(
            f"{message}; the connection failed after COMMIT was sent: the batch is sent "
            "again (stored once: ON CONFLICT DO NOTHING)"
        )
    if not state:
        lowered = reason.lower()
        if any(words in lowered for words in _AUTH_WORDS):
            return AuthError(f"{message}; check the user and the password")
        if any(words in lowered for words in _NO_DATABASE_WORDS) and "does not exist" in lowered:
            return RemoteError(f"{message}; check the database name in the dsn (the data is kept)")
        return TransientRemoteError(f"{message}; retried later")
    if lost:
        return TransientRemoteError(f"{message} (SQLSTATE {state}); retried later")
    return RemoteError(f"{message} (SQLSTATE {state}); check the table= and the dsn")


def describe_dsn(params: dict[str, Any]) -> str:
    """``user@host:port/dbname`` of libpq ``params`` (never the password)."""
    user = params.get("user") or "?"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or 5432
    return f"{user}@{host}:{port}/{params.get('dbname') or user}"
