"""The accounts side of the test ConnectorDB server's REST API: the root queries, ``meta``,
and users and devices at ``crud/USER`` and ``crud/USER/DEVICE``.

Every function answers one request as a real ConnectorDB v0.3 does: permission first (403
whether or not the target exists), then existence (404), then the body (400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._accounts import Access
from ._errors import ApiError
from ._store import Store

Reply = tuple[int, str, bytes]
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
VERSION = "0.3.0"
_COUNTS = {"countusers": "users", "countdevices": "devices", "countstreams": "streams"}
# ConnectorDB answers meta/interpolators with its registry: PipeScript's built-in ones, each
# as its Go struct encodes (name, description, input and output schema). Transforms stay
# empty, as on a ConnectorDB whose configuration disables them: data reads refuse them.
_INTERPOLATORS = {
    name: {"name": name, "description": description, "ischema": "", "oschema": ""}
    for name, description in (
        ("after", "Uses the closest datapoint after the interpolation timestamp"),
        ("before", "Uses the closest datapoint before the interpolation timestamp"),
        (
            "closest",
            "Uses the datapoint closest to the interpolation timestamp (both before and after)",
        ),
    )
}


def json_reply(value: Any) -> Reply:
    return 200, JSON, json.dumps(value).encode()


def text_reply(text: str) -> Reply:
    return 200, TEXT, text.encode()


@dataclass(frozen=True)
class Call:
    """One request: its method, query, body, sender and the store it acts on."""

    method: str
    query: dict[str, str]
    body: bytes
    access: Access
    store: Store

    def only(self, *methods: str) -> None:
        if self.method not in methods:
            raise ApiError(405, "Method not allowed")

    def json_body(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            raise ApiError(400, "The body is not valid JSON") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ApiError(400, "Expected a JSON object")
        return value

    def flag(self, name: str) -> bool:
        return self.query.get(name, "false").lower() not in ("false", "0", "")


def root(call: Call) -> Reply:
    """``GET /api/v1/?q=this`` (who am I) and, for an admin, ``?q=countusers`` etc."""
    call.only("GET")
    q = call.query.get("q", "this")
    if q == "this":
        return text_reply(f"{call.access.user}/{call.access.device}")
    if q not in _COUNTS:
        raise ApiError(400, f"Unsupported query {q!r}")
    call.access.require(call.access.admin, "count " + _COUNTS[q])
    return text_reply(str(call.store.count(_COUNTS[q])))


def meta(method: str, what: str) -> Reply:
    """``meta/version``, the transforms (none: they are refused) and the interpolators."""
    if what not in ("version", "transforms", "interpolators"):
        raise ApiError(404, "Not found")
    if method != "GET":
        raise ApiError(405, "Method not allowed")
    if what == "version":
        return text_reply(VERSION)
    return json_reply(_INTERPOLATORS if what == "interpolators" else {})


def users(call: Call) -> Reply:
    """``GET crud/?q=ls``: every user, for an admin only (the 0.3.5 client's own tests expect
    ``users()`` to raise for a user: ``tests/test_server_clientsuite.py``)."""
    call.only("GET")
    if call.query.get("q") != "ls":
        raise ApiError(400, "Unsupported query: use ?q=ls")
    call.access.require(call.access.admin, "list the users")
    return json_reply(call.store.list_users())


def user(call: Call, name: str) -> Reply:
    access, store = call.access, call.store
    if call.method == "POST":
        access.require(access.admin, f"create the user {name}")
        return json_reply(_create_user(store, name, call.json_body()))
    access.require(access.may_read(name), f"access {name}")
    if call.method == "GET":
        q = call.query.get("q")
        if q is None:
            return json_reply(store.read_user(name))
        access.require(access.may_manage(name), f"list what {name} has")
        if q == "ls":
            return json_reply(store.list_devices(name, with_keys=True))
        if q == "streams":
            only = {k: call.flag(k) for k in ("public", "downlink", "visible")}
            return json_reply(store.list_user_streams(name, only))
        raise ApiError(400, f"Unsupported query {q!r}")
    if call.method == "PUT":
        access.require(access.may_manage(name), f"change {name}")
        return json_reply(store.update_user(name, call.json_body(), access.admin))
    call.only("DELETE")
    access.require(access.admin, f"delete {name}")
    store.delete_user(name)
    return text_reply("ok")


def _create_user(store: Store, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create the user, then the devices and streams it is given (``"devices": {name:
    {fields, "streams": {...}}}`` and ``"streams"`` for its user device); nothing if any fails."""
    devices = body.pop("devices", {})
    if not isinstance(devices, dict):
        raise ApiError(400, f"Invalid devices for {name}: expected an object")
    tree = {"user": {"streams": body.pop("streams", {})}, **devices}
    created = store.create_user(name, body)
    try:
        for device, props in tree.items():
            _create_tree(store, f"{name}/{device}", props, create=(device != "user"))
    except ApiError:
        store.delete_user(name)
        raise
    return created


def _create_tree(store: Store, path: str, props: Any, create: bool = True) -> None:
    if not isinstance(props, dict) or not isinstance(props.get("streams", {}), dict):
        raise ApiError(400, f"Invalid properties for {path}")
    streams = props.pop("streams", {})
    if create:
        owner, device = path.split("/")
        store.create_device(owner, device, props)
    for stream, sprops in streams.items():
        if not isinstance(sprops, dict):
            raise ApiError(400, f"Invalid properties for {path}/{stream}")
        store.create_stream(f"{path}/{stream}", sprops)


def device(call: Call, owner: str, name: str) -> Reply:
    access, store = call.access, call.store
    access.require(access.may_read(owner), f"access {owner}/{name}")
    own = access.is_device(owner, name)
    if call.method == "GET":
        if call.query.get("q") == "ls":
            store.read_device(owner, name, False)  # 404 if missing
            return json_reply(store.list_streams(owner, name))
        return json_reply(store.read_device(owner, name, own or access.may_manage(owner)))
    if call.method == "PUT":
        access.require(own or access.may_manage(owner), f"change {owner}/{name}")
        body = call.json_body()
        return json_reply(store.update_device(owner, name, body, access.may_manage(owner)))
    call.only("POST", "DELETE")
    what = "create" if call.method == "POST" else "delete"
    access.require(access.may_manage(owner), f"{what} devices of {owner}")
    if call.method == "POST":
        body = call.json_body()
        streams = body.pop("streams", {})
        created = store.create_device(owner, name, body)
        try:
            _create_tree(store, f"{owner}/{name}", {"streams": streams}, create=False)
        except ApiError:
            store.delete_device(owner, name)
            raise
        return json_reply(created)
    store.delete_device(owner, name)
    return text_reply("ok")
