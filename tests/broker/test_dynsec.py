"""The dynsec data we generate, the commands a reload sends, and the supervised process around them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pytest

from broker import dynsec, topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection, PublishRefused
from broker.dynsec import Acl, AclType, BrokerState, ClientState, Command, CredentialsError, DynsecConfig
from broker.mosquitto import BrokerLayout, MosquittoError, MosquittoProcess, free_port
from tests.conftest import Broker

SEND, RECEIVE, SUB, SUB_EXACT = (
    AclType.PUBLISH_SEND,
    AclType.PUBLISH_RECEIVE,
    AclType.SUBSCRIBE_PATTERN,
    AclType.SUBSCRIBE_LITERAL,
)
UP_ALL = f"{topics.ROOT}/up/#"
DN_ALL = f"{topics.ROOT}/dn/#"


def config(
    nodes: dict[str, str] | None = None,
    cloud: dict[str, str] | None = None,
    monitors: dict[str, str] | None = None,
) -> DynsecConfig:
    return dynsec.bus_config(cloud=cloud or {}, nodes=nodes or {}, monitors=monitors or {}, admin_password="adm")


def rights(cfg: DynsecConfig) -> dict[str, set[tuple[AclType, str]]]:
    return {r.name: {(a.acltype, a.topic) for a in r.acls if a.allow} for r in cfg.roles}


# -- what the broker is told ----------------------------------------------------------------------


def test_roles_give_each_kind_of_user_its_own_traffic_only() -> None:
    cfg = config(nodes={"st1-k1": "n"}, cloud={"cloud-1": "c"}, monitors={"ops": "m"})
    assert rights(cfg) == {
        "dynsec-admin": {
            (SEND, "$CONTROL/dynamic-security/#"),
            (SUB, "$CONTROL/dynamic-security/#"),
            (RECEIVE, "$CONTROL/dynamic-security/#"),
        },
        "node:st1-k1": {
            (SEND, topics.node_up_filter("st1-k1")),
            (SUB, topics.node_dn_filter("st1-k1")),
            (RECEIVE, topics.node_dn_filter("st1-k1")),
            (SUB, topics.host_state_filter()),
            (RECEIVE, topics.host_state_filter()),
        },
        "cloud": {
            *((SUB_EXACT, f) for f in topics.cloud_ingest_filters()),
            *((SUB_EXACT, f) for f in topics.cloud_lifecycle_filters()),
            (SUB, UP_ALL),
            (RECEIVE, UP_ALL),
            (SUB, topics.host_state_filter()),
            (RECEIVE, topics.host_state_filter()),
            (SEND, DN_ALL),
        },
        "cloud-host:cloud-1": {(SEND, topics.host_state("cloud-1"))},
        "monitor": {(SUB, topics.everything_filter()), (RECEIVE, topics.everything_filter())},
    }
    assert [(c.username, c.roles) for c in cfg.clients] == [
        (dynsec.ADMIN_USER, ("dynsec-admin",)),
        ("cloud-1", ("cloud", "cloud-host:cloud-1")),
        ("ops", ("monitor",)),
        ("st1-k1", ("node:st1-k1",)),
    ]


def test_config_file_as_the_plugin_reads_it() -> None:
    cfg = config(nodes={"st1-k1": "node-secret"}, cloud={"cloud-1": "cloud-secret"})
    text = dynsec.config_json(cfg)
    assert "node-secret" not in text and "cloud-secret" not in text
    doc = json.loads(text)
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: c for c in doc["clients"]}
    for user, password in (("st1-k1", "node-secret"), ("cloud-1", "cloud-secret"), (dynsec.ADMIN_USER, "adm")):
        c = clients[user]
        assert c["clientid"] == user  # any other client id is refused at CONNECT
        salt = base64.b64decode(c["salt"])
        assert (len(salt), c["iterations"]) == (12, 101)
        assert base64.b64decode(c["password"]) == hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    assert clients["st1-k1"]["salt"] != clients["cloud-1"]["salt"]


@pytest.mark.parametrize(
    ("nodes", "cloud", "monitors", "message"),
    [
        (
            {"st1-k1": "a"},
            {"st1-k1": "b"},
            {},
            "Usernames given more than one role (cloud, node, monitor): st1-k1: expected each in one role only",
        ),
        (
            {"Bad/Name": "a"},
            {},
            {},
            "Invalid username 'Bad/Name': expected 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        ),
        ({}, {}, {"ops": ""}, "Empty password for 'ops': expected a secret for each node, worker and monitor"),
    ],
    ids=["two roles", "bad username", "empty password"],
)
def test_bad_credentials_refused_before_anything_is_written(
    nodes: dict[str, str], cloud: dict[str, str], monitors: dict[str, str], message: str
) -> None:
    with pytest.raises(CredentialsError) as info:
        config(nodes=nodes, cloud=cloud, monitors=monitors)
    assert str(info.value) == message


# -- the difference a reload applies --------------------------------------------------------------


def state_of(cfg: DynsecConfig) -> BrokerState:
    """What a broker started from `cfg` reports."""
    return BrokerState(
        clients=tuple(ClientState(c.username, c.username, frozenset(c.roles), frozenset()) for c in cfg.clients),
        roles=cfg.roles,
        default_access=cfg.default_access,
    )


def with_client(state: BrokerState, user: str, **changes: object) -> BrokerState:
    clients = tuple(replace(c, **changes) if c.username == user else c for c in state.clients)  # type: ignore[arg-type]
    return replace(state, clients=clients)


def with_acls(state: BrokerState, role: str, acls: tuple[Acl, ...]) -> BrokerState:
    return replace(state, roles=tuple(replace(r, acls=acls) if r.name == role else r for r in state.roles))


ONE = config(nodes={"n1": "p1"})
ONE_ACLS = next(r.acls for r in ONE.roles if r.name == "node:n1")
IN_FORCE = {dynsec.ADMIN_USER: "adm", "n1": "p1"}

PLANS: list[tuple[str, BrokerState, DynsecConfig, dict[str, str], list[Command]]] = [
    ("in sync", state_of(ONE), ONE, IN_FORCE, []),
    (
        "node added",
        state_of(ONE),
        config(nodes={"n1": "p1", "n2": "p2"}),
        IN_FORCE,
        [
            {"command": "createRole", "rolename": "node:n2", "acls": [a.as_json() for a in dynsec._node_acls("n2")]},
            {
                "command": "createClient",
                "username": "n2",
                "password": "p2",
                "clientid": "n2",
                "roles": [{"rolename": "node:n2"}],
            },
        ],
    ),
    (
        "node removed",
        state_of(ONE),
        config(),
        IN_FORCE,
        [{"command": "deleteClient", "username": "n1"}, {"command": "deleteRole", "rolename": "node:n1"}],
    ),
    (
        "password changed",
        state_of(ONE),
        config(nodes={"n1": "new"}),
        IN_FORCE,
        [{"command": "setClientPassword", "username": "n1", "password": "new"}],
    ),
    (
        "password never set by us",
        state_of(ONE),
        ONE,
        {dynsec.ADMIN_USER: "adm"},
        [{"command": "setClientPassword", "username": "n1", "password": "p1"}],
    ),
    (
        "client id changed behind our back",
        with_client(state_of(ONE), "n1", clientid=None),
        ONE,
        IN_FORCE,
        [{"command": "setClientId", "username": "n1", "clientid": "n1"}],
    ),
    (
        "role widened behind our back",
        with_acls(state_of(ONE), "node:n1", (*ONE_ACLS, Acl(SUB, "#"))),
        ONE,
        IN_FORCE,
        [{"command": "removeRoleACL", "rolename": "node:n1", "acltype": "subscribePattern", "topic": "#"}],
    ),
    (
        "role narrowed behind our back",
        with_acls(state_of(ONE), "node:n1", ONE_ACLS[1:]),
        ONE,
        IN_FORCE,
        [{"command": "addRoleACL", "rolename": "node:n1", **ONE_ACLS[0].as_json()}],
    ),
    (
        "client put in a group",
        with_client(state_of(ONE), "n1", groups=frozenset({"g"})),
        ONE,
        IN_FORCE,
        [{"command": "removeGroupClient", "groupname": "g", "username": "n1"}],
    ),
    ("client disabled by someone stays disabled", with_client(state_of(ONE), "n1", disabled=True), ONE, IN_FORCE, []),
    (
        "node becomes a monitor",
        state_of(ONE),
        config(monitors={"n1": "p1"}),
        IN_FORCE,
        [
            {"command": "createRole", "rolename": "monitor", "acls": [a.as_json() for a in dynsec._read(topics.everything_filter())]},
            {"command": "removeClientRole", "username": "n1", "rolename": "node:n1"},
            {"command": "addClientRole", "username": "n1", "rolename": "monitor"},
            {"command": "deleteRole", "rolename": "node:n1"},
        ],
    ),
    (
        "default access changed behind our back",
        replace(state_of(ONE), default_access=(("publishClientSend", True), ("subscribe", False))),
        ONE,
        IN_FORCE,
        [
            {
                "command": "setDefaultACLAccess",
                "acls": [
                    {"acltype": "publishClientSend", "allow": False},
                    {"acltype": "publishClientReceive", "allow": False},
                    {"acltype": "unsubscribe", "allow": True},
                ],
            }
        ],
    ),
]


@pytest.mark.parametrize(("state", "desired", "in_force", "expected"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
def test_plan(state: BrokerState, desired: DynsecConfig, in_force: dict[str, str], expected: list[Command]) -> None:
    assert list(dynsec.plan(state, desired, in_force)) == expected


# -- the plugin and the files ---------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "triplet"), [("x86_64", "x86_64-linux-gnu"), ("aarch64", "aarch64-linux-gnu")])
def test_plugin_found_in_the_multiarch_dir(tmp_path: Path, machine: str, triplet: str) -> None:
    so = tmp_path / triplet / "mosquitto_dynamic_security.so"
    so.parent.mkdir()
    so.write_bytes(b"")
    assert dynsec.plugin_path(machine, roots=[tmp_path]) == str(so)


def test_missing_plugin_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(dynsec.DynsecError) as info:
        dynsec.plugin_path("aarch64", roots=[tmp_path])
    assert str(info.value) == (
        "Mosquitto's dynamic security plugin is not installed on this aarch64 machine: expected one of "
        f"{tmp_path}/aarch64-linux-gnu/mosquitto_dynamic_security.so, {tmp_path}/mosquitto_dynamic_security.so; "
        "install Debian's 'mosquitto' package, 2.0 or later"
    )


def test_layout_files(tmp_path: Path) -> None:
    layout = BrokerLayout(tmp_path / "b", 1883, node_users={"n1": "p1"})
    layout.data_dir.mkdir()
    for stale in ("passwd", "acl"):
        (layout.data_dir / stale).write_text("old\n")
    layout.write()
    secret = layout.admin_secret_path.read_text()
    layout.write()
    assert layout.admin_secret_path.read_text() == secret, "the admin password is kept across writes"
    assert sorted(p.name for p in layout.data_dir.iterdir()) == ["dynsec-admin.secret", "dynsec.json", "mosquitto.conf"]
    assert {p.name: p.stat().st_mode & 0o777 for p in layout.data_dir.iterdir()} == {
        "dynsec-admin.secret": 0o600,
        "dynsec.json": 0o600,
        "mosquitto.conf": 0o600,
    }
    conf = layout.conf_path.read_text().splitlines()
    assert f"plugin {dynsec.plugin_path()}" in conf
    assert f"plugin_opt_config_file {layout.dynsec_path}" in conf
    assert not [line for line in conf if line.split(" ")[0] in ("use_username_as_clientid", "password_file", "acl_file")]


def test_start_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = MosquittoProcess(BrokerLayout(tmp_path, port))
        with pytest.raises(MosquittoError) as info:
            proc.start()
    assert str(info.value) == f"Cannot listen on 127.0.0.1:{port}: expected a free port, found one already in use (another broker?)"
    assert not proc.running


def test_reload_while_stopped_rewrites_the_files(tmp_path: Path) -> None:
    layout = BrokerLayout(tmp_path, free_port())
    proc = MosquittoProcess(layout)
    layout.node_users["n1"] = "p1"
    assert proc.reload() is None
    assert [c["username"] for c in json.loads(layout.dynsec_path.read_text())["clients"]] == [dynsec.ADMIN_USER, "n1"]


# -- against a running broker ---------------------------------------------------------------------


def test_reload_puts_back_a_role_changed_behind_our_back(broker: Broker) -> None:
    password = broker.add_node("n1")
    broker.process.control(
        [{"command": "addRoleACL", "rolename": "node:n1", "acltype": "subscribePattern", "topic": "#", "allow": True}]
    )

    async def subscribe_everything() -> None:
        conn = MqttConnection(BrokerAddress.from_url(broker.url), "n1", password)
        await conn.connect()
        try:
            await conn.subscribe(["#"])
        finally:
            await conn.disconnect()

    asyncio.run(subscribe_everything())  # widened: granted
    applied = broker.process.reload()
    assert applied is not None and applied.summary() == "removeRoleACL x1"
    with pytest.raises(BusAuthError, match=r"subscription to '#' refused: Not authorized \(135\)"):
        asyncio.run(subscribe_everything())


def test_refused_command_is_an_error_naming_it(broker: Broker) -> None:
    with pytest.raises(MosquittoError) as info:
        broker.process.control([{"command": "deleteRole", "rolename": "nope"}])
    assert str(info.value) == "Mosquitto refused 1 of 1 dynsec commands: deleteRole nope: Role not found"


def test_admin_client_reaches_nothing_but_the_plugin(broker: Broker) -> None:
    admin = broker.layout.admin_password()

    async def body() -> None:
        conn = MqttConnection(BrokerAddress.from_url(broker.url), dynsec.ADMIN_USER, admin)
        await conn.connect()
        for f in (topics.everything_filter(), "#"):
            with pytest.raises(BusAuthError, match="Not authorized"):
                await conn.subscribe([f])
        with pytest.raises(PublishRefused, match=r"Not authorized \(135\)"):
            await conn.publish(topics.dn("n1", "command"), b"x")
        await conn.disconnect()

    asyncio.run(body())


def test_reload_takes_milliseconds(broker: Broker) -> None:
    """Tests add credentials all the time: a reload must cost milliseconds, not a SIGHUP and a wait."""
    took = []
    for i in range(20):
        t = time.perf_counter()
        broker.add_node(f"n{i}")
        took.append(time.perf_counter() - t)
    # ~5 ms here on a busy 2-core machine; the bound only catches a return to sleeping or polling.
    assert statistics.median(took) < 0.1, f"median reload {statistics.median(took) * 1000:.1f} ms"


def test_applied_never_shows_a_password() -> None:
    cmd: Command = {"command": "setClientPassword", "username": "n1", "password": "s3cret"}
    applied = dynsec.Applied((cmd,), ((dict(cmd), "no answer"),), 0.001)
    assert "s3cret" not in repr(applied) and "s3cret" not in applied.summary()
    assert repr(applied) == (
        "Applied(confirmed=['setClientPassword n1'], refused=['setClientPassword n1: no answer'], seconds=0.0010)"
    )
