"""Users and devices of the test ConnectorDB server, their roles, and who may do what.

Guarantees:

* A user is created with its "user" device (role "user": it acts as its user, and a login
  with the user's name and password is a login as that device) and its "meta" device, as
  ConnectorDB does; neither can be deleted on its own.
* Passwords are kept salted and hashed (PBKDF2-SHA256) and never returned.
* Deleting a user deletes its devices; deleting a device deletes its streams and their
  datapoints (downlink substreams included), in one transaction.
* Who may do what (:class:`Access`): an admin (a user of role "admin", logged in as its
  user device) anything; a user (its "user" device, or a device of role "user") its own user,
  devices and streams; any other device reads its user and that user's devices (apikeys
  excepted), edits itself, and creates, reads, writes and deletes its user's streams.
  Who writes a stream's datapoints is decided by the stream (``Store.insert``): its own
  device or an admin, and anyone who may read it when it is a downlink stream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import apsw

from ._errors import ApiError, valid_name

USER_ROLES = ("admin", "user")
DEVICE_ROLES = ("none", "reader", "writer", "user")

# The fields a client reads and writes, with their defaults (and so their JSON types).
_USER_FIELDS: dict[str, Any] = {
    "nickname": "",
    "email": "",
    "description": "",
    "icon": "",
    "role": "user",
    "public": False,
}
_DEVICE_FIELDS: dict[str, Any] = {
    "nickname": "",
    "description": "",
    "icon": "",
    "enabled": True,
    "public": False,
    "role": "none",
    "visible": True,
    "user_editable": True,
}
_BUILTIN_DEVICES: dict[str, dict[str, Any]] = {
    "user": {"role": "user"},
    "meta": {"visible": False, "user_editable": False},
}
_ITERATIONS = 20_000

ACCOUNT_TABLES = (
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS devices (user TEXT NOT NULL, name TEXT NOT NULL,"
    " apikey TEXT NOT NULL UNIQUE, PRIMARY KEY (user, name))",
)
# Added to the tables of a file written before users had passwords and properties.
_COLUMNS = (
    ("users", "props", "TEXT NOT NULL DEFAULT '{}'"),
    ("users", "password", "TEXT NOT NULL DEFAULT ''"),
    ("devices", "props", "TEXT NOT NULL DEFAULT '{}'"),
)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    return f"pbkdf2-sha256${_ITERATIONS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, iterations, salt, digest = stored.split("$")
        again = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:  # no password set (""), or not one of ours
        return False
    return hmac.compare_digest(again.hex(), digest)


@dataclass(frozen=True)
class Access:
    """Who sent a request: the device ``user/device``; ``as_user`` when it acts as its user
    (device role "user"), ``admin`` when it acts as a user of role "admin"."""

    user: str
    device: str
    as_user: bool
    admin: bool

    def may_read(self, owner: str) -> bool:
        """Read ``owner``, its devices and streams, and write its streams."""
        return self.admin or owner == self.user

    def may_manage(self, owner: str) -> bool:
        """Change ``owner``, create and delete its devices, read their apikeys."""
        return self.admin or (self.as_user and owner == self.user)

    def is_device(self, owner: str, device: str) -> bool:
        return (owner, device) == (self.user, self.device)

    def require(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise ApiError(403, f"Permission denied: {self.user}/{self.device} may not {what}")


def fields(
    body: dict[str, Any], defaults: dict[str, Any], name: str, extra: set[str]
) -> dict[str, Any]:
    """The known fields of a request body for the object ``name``, type-checked; 400 on a
    field that is unknown (``extra`` are handled by the caller), mistyped or a rename."""
    unknown = body.keys() - defaults.keys() - extra - {"name"}
    if unknown:
        raise ApiError(400, f"Unknown field(s) for {name}: {', '.join(sorted(unknown))}")
    if body.get("name", name) != name:
        raise ApiError(400, f"{name} cannot be renamed")
    out = {k: body[k] for k in defaults if k in body}
    for key, value in out.items():
        if type(value) is not type(defaults[key]):
            kind = type(defaults[key]).__name__
            raise ApiError(400, f"Invalid value for {key} of {name}: expected a {kind}")
    return out


def _check_role(props: dict[str, Any], roles: tuple[str, ...], name: str) -> None:
    if props.get("role", roles[-1]) not in roles:
        raise ApiError(400, f"Invalid role {props['role']!r} for {name}: one of {roles}")


def _password(body: dict[str, Any], name: str) -> str:
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise ApiError(400, f"A password (a non-empty string) is required for {name}")
    return password


class Accounts:
    """The users and devices part of the store (mixed into ``Store``, which owns the lock
    and the connection). Public methods take the lock; ``_``-methods expect it held."""

    _lock: threading.Lock
    _db: apsw.Connection

    def _one(self, sql: str, params: Any = ()) -> Any:
        return self._db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = ()) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    def _create_account_tables(self) -> None:
        for sql in ACCOUNT_TABLES:
            self._db.execute(sql)
        for table, column, decl in _COLUMNS:
            names = {row[1] for row in self._all(f"PRAGMA table_info({table})")}
            if column not in names:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    # -- who is asking ---------------------------------------------------------------

    def _access(self, user: str, device: str) -> Access:
        urow = self._one("SELECT props FROM users WHERE name=?", (user,))
        drow = self._one("SELECT props FROM devices WHERE user=? AND name=?", (user, device))
        user_role = json.loads(urow[0]).get("role", "user")
        as_user = json.loads(drow[0]).get("role", "none") == "user"
        return Access(user, device, as_user, as_user and user_role == "admin")

    def access_for_key(self, apikey: str) -> Access | None:
        with self._lock:
            row = self._one("SELECT user, name FROM devices WHERE apikey=?", (apikey,))
            return None if row is None else self._access(row[0], row[1])

    def access_for_login(self, name: str, password: str) -> Access | None:
        """The user's "user" device, if ``password`` is the user's."""
        with self._lock:
            row = self._one("SELECT password FROM users WHERE name=?", (name,))
            if row is None or not check_password(password, row[0]):
                return None
            return self._access(name, "user")

    # -- users -----------------------------------------------------------------------

    def _insert_user(self, name: str, props: dict[str, Any], password: str) -> None:
        self._db.execute(
            "INSERT INTO users (name, props, password) VALUES (?,?,?)",
            (name, json.dumps(props), hash_password(password) if password else ""),
        )
        for device, dprops in _BUILTIN_DEVICES.items():
            self._insert_device(name, device, dprops)

    def add_user(self, name: str, password: str, role: str = "user") -> None:
        """Create the user (and its devices), or set an existing one's password and role."""
        if not valid_name(name):
            raise ValueError(f"invalid user name: {name!r}")
        if role not in USER_ROLES or not password:
            raise ValueError(f"a user needs a password and a role in {USER_ROLES}")
        with self._lock, self._db:
            row = self._one("SELECT props FROM users WHERE name=?", (name,))
            if row is None:
                self._insert_user(name, {"role": role}, password)
                return
            props = json.dumps({**json.loads(row[0]), "role": role})
            self._db.execute(
                "UPDATE users SET props=?, password=? WHERE name=?",
                (props, hash_password(password), name),
            )
            for device, dprops in _BUILTIN_DEVICES.items():  # a user from an older file
                if self._one("SELECT 1 FROM devices WHERE user=? AND name=?", (name, device)):
                    continue
                self._insert_device(name, device, dprops)

    def create_user(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if not valid_name(name):
            raise ApiError(400, f"Invalid user name {name!r}")
        props = fields(body, _USER_FIELDS, name, {"password"})
        _check_role(props, USER_ROLES, name)
        if not props.get("email"):
            raise ApiError(400, f"An email is required for {name}")
        password = _password(body, name)
        with self._lock, self._db:
            if self._one("SELECT 1 FROM users WHERE name=?", (name,)) is not None:
                raise ApiError(409, f"User {name} already exists")
            self._insert_user(name, props, password)
        return self.read_user(name)

    def _user_json(self, name: str) -> dict[str, Any]:
        row = self._one("SELECT props FROM users WHERE name=?", (name,))
        if row is None:
            raise ApiError(404, f"User {name} does not exist")
        return {"name": name, **_USER_FIELDS, **json.loads(row[0])}

    def read_user(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._user_json(name)

    def update_user(self, name: str, body: dict[str, Any], may_set_role: bool) -> dict[str, Any]:
        props = fields(body, _USER_FIELDS, name, {"password"})
        _check_role(props, USER_ROLES, name)
        if "role" in props and not may_set_role:
            raise ApiError(403, f"Permission denied: only an admin may change {name}'s role")
        password = _password(body, name) if "password" in body else None
        with self._lock, self._db:
            merged = {**self._user_json(name), **props}
            del merged["name"]
            self._db.execute("UPDATE users SET props=? WHERE name=?", (json.dumps(merged), name))
            if password is not None:
                self._db.execute(
                    "UPDATE users SET password=? WHERE name=?", (hash_password(password), name)
                )
        return self.read_user(name)

    def delete_user(self, name: str) -> None:
        with self._lock, self._db:
            if self._one("SELECT 1 FROM users WHERE name=?", (name,)) is None:
                raise ApiError(404, f"User {name} does not exist")
            self._db.execute(
                "DELETE FROM datapoints WHERE stream IN (SELECT id FROM streams WHERE user=?)",
                (name,),
            )
            self._db.execute("DELETE FROM streams WHERE user=?", (name,))
            self._db.execute("DELETE FROM devices WHERE user=?", (name,))
            self._db.execute("DELETE FROM users WHERE name=?", (name,))

    def list_users(self) -> list[dict[str, Any]]:
        """Every user, by name."""
        with self._lock:
            rows = self._all("SELECT name FROM users ORDER BY name")
            return [self._user_json(r[0]) for r in rows]

    def count(self, what: str) -> int:
        """How many users, devices or streams (downlink substreams not counted) there are."""
        sql = {
            "users": "SELECT count(*) FROM users",
            "devices": "SELECT count(*) FROM devices",
            "streams": "SELECT count(*) FROM streams WHERE name NOT LIKE '%/%'",
        }[what]
        with self._lock:
            return int(self._one(sql)[0])

    def user_exists(self, user: str) -> bool:
        with self._lock:
            return self._one("SELECT 1 FROM users WHERE name=?", (user,)) is not None

    # -- devices -----------------------------------------------------------------------

    def _insert_device(self, user: str, name: str, props: dict[str, Any]) -> str:
        apikey = secrets.token_hex(16)
        self._db.execute(
            "INSERT INTO devices (user, name, apikey, props) VALUES (?,?,?,?)",
            (user, name, apikey, json.dumps(props)),
        )
        return apikey

    def add_device(self, user: str, device: str) -> str:
        """Create the user (without a password) and the device if missing; the apikey."""
        if not (valid_name(user) and valid_name(device)):
            raise ValueError(f"invalid user or device name: {user!r}/{device!r}")
        with self._lock, self._db:
            if self._one("SELECT 1 FROM users WHERE name=?", (user,)) is None:
                self._insert_user(user, {}, "")
            row = self._one("SELECT apikey FROM devices WHERE user=? AND name=?", (user, device))
            apikey = str(row[0]) if row is not None else self._insert_device(user, device, {})
        return apikey

    def device_apikey(self, user: str, device: str) -> str | None:
        with self._lock:
            row = self._one("SELECT apikey FROM devices WHERE user=? AND name=?", (user, device))
        return None if row is None else str(row[0])

    def _device_props(self, user: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        # "user" and "apikey" come back in a device exported by the client: "user" must be
        # the owner, and an apikey is never chosen by a client (see update_device).
        props = fields(body, _DEVICE_FIELDS, f"{user}/{name}", {"apikey", "streams", "user"})
        _check_role(props, DEVICE_ROLES, f"{user}/{name}")
        if body.get("user", user) != user:
            raise ApiError(400, f"{user}/{name} cannot move to another user")
        return props

    def create_device(self, user: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if not valid_name(name):
            raise ApiError(400, f"Invalid device name {name!r}")
        props = self._device_props(user, name, body)
        with self._lock, self._db:
            if self._one("SELECT 1 FROM users WHERE name=?", (user,)) is None:
                raise ApiError(404, f"User {user} does not exist")
            if self._one("SELECT 1 FROM devices WHERE user=? AND name=?", (user, name)):
                raise ApiError(409, f"Device {user}/{name} already exists")
            self._insert_device(user, name, props)
        return self.read_device(user, name, True)

    def _device_json(self, user: str, name: str, with_key: bool) -> dict[str, Any]:
        row = self._one("SELECT apikey, props FROM devices WHERE user=? AND name=?", (user, name))
        if row is None:
            raise ApiError(404, f"Device {user}/{name} does not exist")
        device = {"name": name, "user": user, **_DEVICE_FIELDS, **json.loads(row[1])}
        if with_key:
            device["apikey"] = row[0]
        return device

    def read_device(self, user: str, name: str, with_key: bool) -> dict[str, Any]:
        with self._lock:
            return self._device_json(user, name, with_key)

    def update_device(
        self, user: str, name: str, body: dict[str, Any], may_set_role: bool
    ) -> dict[str, Any]:
        """Set fields; ``"apikey": ""`` gives the device a new apikey (the old one stops
        working), any other apikey is ignored. Returns the device with its apikey."""
        props = self._device_props(user, name, body)
        if "role" in props and not may_set_role:
            raise ApiError(403, f"Permission denied: {user}/{name} may not change its role")
        with self._lock, self._db:
            merged = {**self._device_json(user, name, False), **props}
            for key in ("name", "user"):
                del merged[key]
            self._db.execute(
                "UPDATE devices SET props=? WHERE user=? AND name=?",
                (json.dumps(merged), user, name),
            )
            if body.get("apikey") == "":
                self._db.execute(
                    "UPDATE devices SET apikey=? WHERE user=? AND name=?",
                    (secrets.token_hex(16), user, name),
                )
        return self.read_device(user, name, True)

    def delete_device(self, user: str, name: str) -> None:
        if name in _BUILTIN_DEVICES:
            raise ApiError(400, f"The {name} device of {user} cannot be deleted")
        with self._lock, self._db:
            self._device_json(user, name, False)  # 404 if missing
            self._db.execute(
                "DELETE FROM datapoints WHERE stream IN"
                " (SELECT id FROM streams WHERE user=? AND device=?)",
                (user, name),
            )
            self._db.execute("DELETE FROM streams WHERE user=? AND device=?", (user, name))
            self._db.execute("DELETE FROM devices WHERE user=? AND name=?", (user, name))

    def list_devices(self, user: str, with_keys: bool) -> list[dict[str, Any]]:
        with self._lock:
            if self._one("SELECT 1 FROM users WHERE name=?", (user,)) is None:
                raise ApiError(404, f"User {user} does not exist")
            rows = self._all("SELECT name FROM devices WHERE user=? ORDER BY rowid", (user,))
            return [self._device_json(user, r[0], with_keys) for r in rows]
