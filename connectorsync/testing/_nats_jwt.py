"""NATS decentralised authentication for tests: nkeys, the JWTs an operator, an account and a
user are described by, and the ``.creds`` file a client logs in with. No ``nsc`` needed.

An nkey is an ed25519 key pair whose public key is base32 with a role prefix (``O``
operator, ``A`` account, ``U`` user); the ``nkeys`` package makes and signs with them
(:func:`new_key`). A NATS JWT is ``header.claims.signature``, each part base64url without
padding: the header ``{"typ": "JWT", "alg": "ed25519-nkey"}``; the claims name the issuer
(``iss``, the public key that signs), the subject (``sub``, the key described), when it was
issued (``iat``), optionally when it expires (``exp``), and what it is under ``nats``
(``type``, ``version`` 2, and the role's own fields); the signature is the issuer's ed25519
signature of ``header.claims`` (:func:`encode_jwt`). An operator signs itself, an account is
signed by its operator, a user by its account. ``jti``, a unique id, is a base32 hash of the
claims without it (nats-io's tools hash with SHA-512/256; the server does not recompute it,
so SHA-256, which every Python has, serves).

A ``.creds`` file holds the user's JWT and its seed between the marker lines nats-py and
the other clients look for (:func:`creds_file`). Test material only: every key here is made
fresh by the test and thrown away with its temporary directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Key",
    "NATSOperator",
    "account_jwt",
    "creds_file",
    "encode_jwt",
    "new_key",
    "operator_jwt",
    "user_jwt",
]

#: The account's limits: -1 is "no limit"; a 0 would refuse (nats-server reads a zero
#: connection or subscription limit as "none allowed"). JetStream is on for the account
#: when its memory or disk storage limit is not 0.
UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
UNLIMITED_JETSTREAM = {
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class Key:
    """An nkey: its public key (``O...``, ``A...``, ``U...``) and its seed (``S...``, the
    secret). ``repr`` shows the public key only."""

    public: str
    seed: str

    def __repr__(self) -> str:
        return f"Key({self.public!r})"

    def sign(self, data: bytes) -> bytes:
        import nkeys  # the test needs it for .creds files anyway

        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


_ROLES = {
    "operator": "PREFIX_BYTE_OPERATOR",
    "account": "PREFIX_BYTE_ACCOUNT",
    "user": "PREFIX_BYTE_USER",
}


def new_key(role: str) -> Key:
    """A fresh nkey for ``role``: ``"operator"``, ``"account"`` or ``"user"``."""
    if role not in _ROLES:
        raise ValueError(f"new_key: role must be operator, account or user; got {role!r}")
    import nkeys

    prefix = getattr(nkeys, _ROLES[role])
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return Key(public=bytes(pair.public_key).decode(), seed=bytes(seed).decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(
    issuer: Key, subject: str, name: str, nats: dict[str, Any], *, expires: float | None = None
) -> str:
    """A NATS JWT (v2) of ``subject`` signed by ``issuer``, with ``nats`` as its role's
    claims; ``expires`` (epoch seconds) sets ``exp``."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if expires is not None:
        claims["exp"] = int(expires)
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    return f"{header}.{body}.{_b64(issuer.sign(signing_input))}"


def operator_jwt(operator: Key, system_account: Key, name: str = "test-operator") -> str:
    """The operator, self-signed, naming its system account."""
    nats = {"type": "operator", "system_account": system_account.public}
    return encode_jwt(operator, operator.public, name, nats)


def account_jwt(
    operator: Key,
    account: Key,
    name: str,
    *,
    jetstream: bool = True,
    revoked: tuple[Key, ...] = (),
) -> str:
    """The account ``account`` signed by ``operator``: no connection limits, JetStream
    without limits when ``jetstream`` (a system account must not have it), and the users in
    ``revoked`` revoked (every JWT of theirs issued until now is refused)."""
    limits = dict(UNLIMITED_ACCOUNT)
    if jetstream:
        limits.update(UNLIMITED_JETSTREAM)
    nats: dict[str, Any] = {
        "type": "account",
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
    }
    if revoked:
        # A revocation refuses the user's JWTs issued at or before the time it names.
        nats["revocations"] = {user.public: int(time.time()) for user in revoked}
    return encode_jwt(operator, account.public, name, nats)


def user_jwt(account: Key, user: Key, name: str, *, expires: float | None = None) -> str:
    """The user ``user`` signed by ``account``: may publish and subscribe to anything."""
    nats = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    return encode_jwt(account, user.public, name, nats, expires=expires)


def creds_file(path: str | os.PathLike[str], jwt: str, user: Key) -> str:
    """Write a ``.creds`` file (the user's JWT and seed, as ``nsc`` writes one) at ``path``,
    readable by its owner only; its path."""
    text = (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    target = os.fspath(path)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        f.write(text)
    return target


class NATSOperator:
    """An operator of its own with a system account and one account, ``DEVICES``, that has
    JetStream, for a :class:`~connectorsync.testing.nats.NATSServer` in operator mode.

    Its users' ``.creds`` files: :meth:`user_creds` (logs in), :meth:`foreign_creds` (a user
    signed by an account the server does not know: refused), :meth:`expired_creds` (a JWT
    whose ``exp`` has passed: refused) and :meth:`revoked_creds` (a user the account
    revoked: refused). Every key is made fresh here.
    """

    def __init__(self) -> None:
        self.operator = new_key("operator")
        self.system = new_key("account")
        self.account = new_key("account")
        self._revoked = new_key("user")
        # Issued now, so before the revocation the account JWT names when the server starts.
        self._revoked_jwt = user_jwt(self.account, self._revoked, "revoked")

    def server_config(self) -> list[str]:
        """nats-server's settings for this operator: the operator JWT, the system account,
        and a memory resolver preloaded with both accounts' JWTs."""
        system = account_jwt(self.operator, self.system, "SYS", jetstream=False)
        devices = account_jwt(self.operator, self.account, "DEVICES", revoked=(self._revoked,))
        preload = ", ".join(
            f"{json.dumps(key.public)}: {json.dumps(jwt)}"
            for key, jwt in ((self.system, system), (self.account, devices))
        )
        return [
            f"operator: {json.dumps(operator_jwt(self.operator, self.system))}",
            f"system_account: {json.dumps(self.system.public)}",
            "resolver: MEMORY",
            f"resolver_preload: {{ {preload} }}",
        ]

    def user_creds(self, path: str | os.PathLike[str], name: str = "device") -> str:
        """A new user of ``DEVICES``: its ``.creds`` file at ``path``."""
        user = new_key("user")
        return creds_file(path, user_jwt(self.account, user, name), user)

    def foreign_creds(self, path: str | os.PathLike[str]) -> str:
        """A user signed by an account key of no account the server knows."""
        stranger, user = new_key("account"), new_key("user")
        return creds_file(path, user_jwt(stranger, user, "stranger"), user)

    def expired_creds(self, path: str | os.PathLike[str]) -> str:
        """A user of ``DEVICES`` whose JWT expired an hour ago."""
        user = new_key("user")
        jwt = user_jwt(self.account, user, "expired", expires=time.time() - 3600)
        return creds_file(path, jwt, user)

    def revoked_creds(self, path: str | os.PathLike[str]) -> str:
        """The user ``DEVICES`` revoked (its JWT issued before the revocation)."""
        return creds_file(path, self._revoked_jwt, self._revoked)
