"""Issue 10, point 3: the test ConnectorDB server answers the whole v0.3 REST API that the real
``connectordb`` 0.3.5 client uses: users, devices, roles, logins, listings, counts, meta,
server timestamps, ephemeral and downlink streams; and ``serve --admin`` makes an admin.

Every test drives the real client against a real ConnectorDBServer on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import connectordb
import pytest
import requests
from connectordb._connection import AuthenticationError

from connectorsync.testing import ConnectorDBServer

ADMIN = ("test", "test")


@pytest.fixture
def srv() -> Iterator[ConnectorDBServer]:
    server = ConnectorDBServer(admin=ADMIN)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def admin(srv: ConnectorDBServer) -> Iterator[connectordb.ConnectorDB]:
    db = connectordb.ConnectorDB(*ADMIN, url=srv.url)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def alice(
    srv: ConnectorDBServer, admin: connectordb.ConnectorDB
) -> Iterator[connectordb.ConnectorDB]:
    """Logged in as the user alice, whom the admin created."""
    admin("alice").create("alice@localhost", "alicepass")
    db = connectordb.ConnectorDB("alice", "alicepass", url=srv.url)
    try:
        yield db
    finally:
        db.close()


def test_admin_logs_in_with_name_and_password(
    srv: ConnectorDBServer, admin: connectordb.ConnectorDB
) -> None:
    assert admin.path == "test/user"
    assert admin.ping() == "test/user"
    assert admin.user.role == "admin"
    assert admin.role == "user"  # the user device acts as its user
    assert admin.apikey  # read with the password, then used for every later request
    with pytest.raises(AuthenticationError):
        connectordb.ConnectorDB("test", "wrong", url=srv.url)
    with pytest.raises(AuthenticationError):
        connectordb.ConnectorDB("nobody", "test", url=srv.url)


def test_connectordb_python_logger_tests_setup(srv: ConnectorDBServer) -> None:
    """The setUp of connectordb-python's own logger tests, as written there."""
    db = connectordb.ConnectorDB("test", "test", srv.url)
    try:
        usr = db("logger_test")
        if usr.exists():
            usr.delete()
        usr.create("loggertest@localhost", "mypass")
        dev = usr["mydevice"]
        dev.create()
        apikey = dev.apikey
        assert apikey
        devdb = connectordb.ConnectorDB(apikey, url=srv.url)
        assert devdb.path == "logger_test/mydevice"
        devdb.close()
        assert usr.exists()
        usr.delete()
        assert not usr.exists()
    finally:
        db.close()


def test_create_user_and_log_in_as_them(
    srv: ConnectorDBServer, admin: connectordb.ConnectorDB
) -> None:
    usr = admin("bob")
    assert not usr.exists()
    usr.create("bob@localhost", "bobpass", nickname="Bob", description="likes trains")
    assert usr.exists()
    bob = connectordb.ConnectorDB("bob", "bobpass", url=srv.url)
    try:
        assert bob.path == "bob/user"
        assert (bob.user.email, bob.user.nickname, bob.user.role) == (
            "bob@localhost",
            "Bob",
            "user",
        )
        assert bob.user.description == "likes trains"
        assert sorted(d.name for d in bob.user.devices()) == ["meta", "user"]
        bob.user.email = "bob@elsewhere"
        assert admin("bob").email == "bob@elsewhere"
        bob.user.set_password("newpass")
        with pytest.raises(AuthenticationError):
            connectordb.ConnectorDB("bob", "bobpass", url=srv.url)
        connectordb.ConnectorDB("bob", "newpass", url=srv.url).close()
        with pytest.raises(AuthenticationError):
            bob.user.role = "admin"  # only an admin changes roles
        with pytest.raises(AuthenticationError):
            usr.set({"admin": "Hello"})  # no such field
        with pytest.raises(AuthenticationError):
            usr.create("bob@localhost", "again")  # exists already
    finally:
        bob.close()


def test_devices_and_their_apikeys(srv: ConnectorDBServer, alice: connectordb.ConnectorDB) -> None:
    mydevice = alice.user["mydevice"]
    assert not mydevice.exists()
    mydevice.create(nickname="sensor box", description="on the roof", icon="material:home")
    assert mydevice.exists()
    assert len(alice.user.devices()) == 3
    key = mydevice.apikey
    assert key
    assert (mydevice.public, mydevice.enabled, mydevice.role) == (False, True, "none")
    assert (mydevice.nickname, mydevice.description) == ("sensor box", "on the roof")
    assert mydevice.icon == "material:home"
    mydevice.public = True
    mydevice.enabled = False
    assert (alice("alice/mydevice").public, alice("alice/mydevice").enabled) == (True, False)

    dev = connectordb.ConnectorDB(key, url=srv.url)
    try:
        assert dev.path == "alice/mydevice"
        assert dev.apikey == key  # a device sees its own apikey
        with pytest.raises(AuthenticationError):
            dev.user.devices()  # but not its user's devices
        assert alice.user["user"].apikey  # which its user does
        dev.nickname = "renamed"
        assert alice("alice/mydevice").nickname == "renamed"
        newkey = dev.reset_apikey()
        assert newkey != key
        with pytest.raises(AuthenticationError):
            connectordb.ConnectorDB(key, url=srv.url)
        assert dev.nickname == "renamed"  # the client switched to the new key
    finally:
        dev.close()
    mydevice.delete()
    assert not mydevice.exists()
    with pytest.raises(AuthenticationError):
        alice.user["user"].delete()  # the user device goes only with its user


def test_streams_with_properties_and_listings(
    srv: ConnectorDBServer, admin: connectordb.ConnectorDB, alice: connectordb.ConnectorDB
) -> None:
    alice.user["box"].create()
    s = alice("alice/box/temp")
    s.create(
        {"type": "number"},
        nickname="Temperature",
        description="outside",
        datatype="temperature.c",
        icon="material:cloud",
        ephemeral=False,
        downlink=True,
    )
    again = alice("alice/box/temp")
    assert again.schema == {"type": "number"}
    assert (again.nickname, again.description) == ("Temperature", "outside")
    assert (again.datatype, again.icon) == ("temperature.c", "material:cloud")
    assert (again.ephemeral, again.downlink) == (False, True)
    again.ephemeral = True
    again.datatype = "t"
    assert (alice("alice/box/temp").ephemeral, alice("alice/box/temp").datatype) == (True, "t")
    alice["mine"].create({"type": "string"})  # on alice's user device

    assert [s.name for s in alice.user["box"].streams()] == ["temp"]
    assert [s.name for s in alice.streams()] == ["mine"]
    listed = {(s.device.name, s.name) for s in alice.user.streams()}
    assert listed == {("box", "temp"), ("user", "mine")}
    assert [s.name for s in alice.user.streams(downlink=True)] == ["temp"]
    with pytest.raises(AuthenticationError):
        alice.users()  # admins only, as in connectordb-python's test_basics
    assert [u.name for u in admin.users()] == ["alice", "test"]
    assert (admin.count_users(), admin.count_devices(), admin.count_streams()) == (2, 5, 2)
    with pytest.raises(AuthenticationError):
        alice.count_users()  # admins only
    info = admin.info()
    assert info["version"] == "0.3.0"
    assert info["transforms"] == {}  # refused, as on a ConnectorDB that disables them
    assert sorted(info["interpolators"]) == ["after", "before", "closest"]


def test_insert_without_t_gets_the_server_time(alice: connectordb.ConnectorDB) -> None:
    s = alice["mystream"]
    s.create({"type": "string"})
    s.insert("1")
    before = time.time()
    s.insert_array([{"d": "2", "t": s[-1]["t"]}, {"d": "3"}])
    after = time.time()
    assert [p["d"] for p in s[:]] == ["1", "2", "3"]
    assert before <= s[-1]["t"] <= after


def test_ephemeral_stream_checks_but_stores_nothing(alice: connectordb.ConnectorDB) -> None:
    s = alice["mystream"]
    s.create({"type": "string"})
    s.insert("Hello World!")
    s.ephemeral = True
    s.insert("another hello!")
    s.insert_array([{"d": "yet another"}])
    with pytest.raises(AuthenticationError):
        s.insert(5)  # still checked against the schema
    assert len(s) == 1
    s.ephemeral = False
    s.insert("stored")
    assert [p["d"] for p in s[:]] == ["Hello World!", "stored"]


def test_downlink_inserts_by_others_go_to_the_substream(
    srv: ConnectorDBServer, alice: connectordb.ConnectorDB
) -> None:
    mydevice = alice.user["mydevice"]
    mydevice.create()
    dev = connectordb.ConnectorDB(mydevice.apikey, url=srv.url)
    try:
        own = dev["light"]
        own.create({"type": "boolean"})
        own.downlink = True
        theirs = mydevice["light"]
        theirs.insert(True)  # from alice's user device: a request to the light
        assert len(theirs) == 0
        assert theirs.length(downlink=True) == 1
        assert [p["d"] for p in theirs(downlink=True)] == [True]
        with pytest.raises(AuthenticationError):
            theirs.insert("on")  # the stream's schema holds for the downlink too
        own.insert(True)  # the light's own acknowledgement goes to the stream itself
        assert [p["d"] for p in own[:]] == [True]
        assert own.length(downlink=True) == 1
        own.delete()
        assert not own.exists()
    finally:
        dev.close()


def test_delete_user_cascades(srv: ConnectorDBServer, admin: connectordb.ConnectorDB) -> None:
    usr = admin("carol")
    usr.create("carol@localhost", "pw")
    usr["phone"].create()
    key = usr["phone"].apikey
    s = usr["phone"]["steps"]
    s.create({"type": "integer"})
    s.insert(3)
    usr.delete()
    assert not usr.exists()
    with pytest.raises(AuthenticationError):
        connectordb.ConnectorDB(key, url=srv.url)  # its devices went too
    with pytest.raises(AuthenticationError):
        connectordb.ConnectorDB("carol", "pw", url=srv.url)
    with pytest.raises(KeyError):
        srv.datapoints("carol/phone/steps")
    assert (admin.count_users(), admin.count_devices(), admin.count_streams()) == (1, 2, 0)


def test_a_user_may_not_touch_another_users_things(
    srv: ConnectorDBServer, admin: connectordb.ConnectorDB, alice: connectordb.ConnectorDB
) -> None:
    admin("bob").create("bob@localhost", "bobpass")
    admin("bob")["phone"].create()
    admin("bob/phone/steps").create({"type": "integer"})
    assert not alice("bob").exists()
    assert not alice("bob/phone").exists()
    with pytest.raises(AuthenticationError):
        alice("bob/phone").nickname = "mine now"
    with pytest.raises(AuthenticationError):
        alice("bob/phone").delete()
    with pytest.raises(AuthenticationError):
        alice("bob")["x"].create()
    with pytest.raises(AuthenticationError):
        alice("bob/phone/steps").insert(1)
    with pytest.raises(AuthenticationError):
        alice("carol").create("carol@localhost", "pw")  # only an admin creates users
    with pytest.raises(AuthenticationError):
        alice.user.delete()
    assert admin("bob/phone").exists() and admin("bob/phone").nickname == ""


def test_python_add_user_and_admin_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "cdb.sqlite"
    with ConnectorDBServer(path=path, admin=ADMIN) as first:
        first.add_user("dave", "davepass")
        connectordb.ConnectorDB("dave", "davepass", url=first.url).close()
        url = first.url
    first.close()
    # A second start with the same admin is no error; a new password replaces the old.
    with ConnectorDBServer(path=path, port=int(url.rsplit(":", 1)[1]), admin=("test", "new")) as s:
        db = connectordb.ConnectorDB("test", "new", url=s.url)
        assert db.user.role == "admin"
        assert sorted(u.name for u in db.users()) == ["dave", "test"]
        db.close()
        with pytest.raises(AuthenticationError):
            connectordb.ConnectorDB("test", "test", url=s.url)
        with pytest.raises(ValueError):
            s.add_user("eve", "pw", role="root")
    s.close()


def test_serve_admin_via_the_cli() -> None:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    env["CONNECTORSYNC_ADMIN_PASSWORD"] = "s3cret:x"  # never on the command line
    cmd = [sys.executable, "-m", "connectorsync", "serve", "--admin", "root"]
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
        reader.start()
        try:
            url = lines.get(timeout=30).strip()
            db = connectordb.ConnectorDB("root", "s3cret:x", url=url)  # the password may hold ":"
            assert db.user.role == "admin"
            db("newbie").create("newbie@localhost", "pw")
            db.close()
            r = requests.get(
                url + "/api/v1/", params={"q": "this"}, auth=("newbie", "pw"), timeout=10
            )
            assert (r.status_code, r.text) == (200, "newbie/user")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_refuses_a_malformed_admin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from connectorsync.testing.server import main

    monkeypatch.delenv("CONNECTORSYNC_ADMIN_PASSWORD", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for argv, says in (
        (["--admin", "root:pw"], "--admin takes the NAME only"),
        (["--admin", "name:"], "--admin takes the NAME only"),
        (["--admin", "bad name"], "not a valid user name"),
        (["--admin", "nopassword"], "no password"),  # no terminal to ask on
        (["--admin", "root", "--admin-password-file", str(empty)], "is empty"),
        (["--admin-password-file", str(empty)], "goes with --admin NAME"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert says in capsys.readouterr().err


def test_raw_user_and_device_json(srv: ConnectorDBServer) -> None:
    """The fields as a ConnectorDB v0.3 server sends them (the client reads them by name)."""
    with requests.Session() as api:
        api.auth = ADMIN
        user = api.get(f"{srv.url}/api/v1/crud/test").json()
        assert set(user) == {"name", "nickname", "email", "description", "icon", "role", "public"}
        device = api.get(f"{srv.url}/api/v1/crud/test/user").json()
        assert set(device) >= {"name", "nickname", "description", "icon", "apikey", "public"}
        assert (device["role"], device["enabled"], device["visible"]) == ("user", True, True)
        r = api.post(f"{srv.url}/api/v1/crud/x", data=json.dumps({"email": "x@y"}))
        assert r.status_code == 400 and "password" in r.json()["msg"]


def test_export_and_import_a_user_with_the_client(
    tmp_path: Path, admin: connectordb.ConnectorDB, alice: connectordb.ConnectorDB
) -> None:
    alice.user["box"].create(nickname="the box")
    s = alice("alice/box/temp")
    s.create({"type": "number"}, description="outside", downlink=True)
    s.insert(1)  # from alice's user device: to the downlink substream
    dev = connectordb.ConnectorDB(alice.user["box"].apikey, url=admin.db.baseurl)
    dev["temp"].insert_array([{"t": 1.0, "d": 20}, {"t": 2.0, "d": 21}])
    dev.close()
    admin("alice").export(str(tmp_path / "export"))
    admin("alice").delete()

    admin.import_users(str(tmp_path / "export"))
    again = admin("alice/box/temp")
    assert (again.description, again.downlink) == ("outside", True)
    assert [p["d"] for p in again[:]] == [20, 21]
    assert [p["d"] for p in again(downlink=True)] == [1]
    assert admin("alice/box").nickname == "the box"
    connectordb.ConnectorDB("alice", "alice", url=admin.db.baseurl).close()  # import's password
