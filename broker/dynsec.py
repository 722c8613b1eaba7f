"""The bus roles as Mosquitto dynamic security ("dynsec") plugin data, and run-time changes to them.

Why the plugin and not `password_file` + `acl_file`: Mosquitto's acl_file never checks SUBSCRIBE (any
client could join the cloud's shared subscription and take a share of other stores' traffic), its
`pattern` lines apply to every user, and `use_username_as_clientid` lets one node's credentials kick
another's session. The plugin checks subscriptions, binds each credential to one client id, and is
changed at run time over MQTT (`$CONTROL/dynamic-security/v1`) because Mosquitto does not reload
plugins on SIGHUP (https://github.com/eclipse-mosquitto/mosquitto/issues/392).

Measured on Mosquitto 2.0.11: the plugin checks a shared subscription against the whole
`$share/<group>/<filter>` string, so a `subscribePattern` never grants a `$share` filter and the cloud's
shared filters are granted one by one (`subscribeLiteral`). Changing a client's password or roles,
deleting it, or changing the ACLs of one of its roles disconnects it ("Administrative action").
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import json
import os
import platform
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from pydantic import BaseModel, ConfigDict

from broker import topics
from broker.client import BrokerAddress, BusError, BusNotConnected, MqttConnection

__all__ = [
    "ADMIN_USER",
    "DEFAULT_ACCESS",
    "ENROLLED_GROUP",
    "Acl",
    "AclType",
    "Applied",
    "BrokerState",
    "Client",
    "ClientState",
    "Command",
    "CredentialsError",
    "DynsecConfig",
    "DynsecError",
    "Role",
    "apply",
    "bus_config",
    "cloud_host_role",
    "config_json",
    "describe",
    "enrolled_entries",
    "grant_commands",
    "hash_password",
    "node_role",
    "ping",
    "plan",
    "plugin_path",
    "retire_commands",
    "revoke_commands",
    "send",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
ADMIN_USER = "omnishelf_admin"
"""The internal client that applies credential changes. `_` cannot occur in a node or host id, so no
entry of a credentials file can collide with it."""

ENROLLED_GROUP = "enrolled"
"""Clients the cloud created at run time for enrolled boxes (`omnishelf provision claim`) are members
of this group. The credentials file does not list them, so a reload (`plan`) leaves them alone and a
broker start carries them over from the plugin's own file (`enrolled_entries`): the cloud's fleet
engine, not the file, is their source of truth, and a revoked (disabled) one stays disabled."""

PBKDF2_ITERATIONS = 101
"""What the plugin itself uses for passwords set over `$CONTROL` (and `mosquitto_ctrl dynsec init`):
the file and run-time changes then hash alike. The plaintext credentials file is on the same machine
anyway, so more iterations would cost CPU at every CONNECT on a Pi-class broker and protect nothing."""

_PLUGIN_NAME = "mosquitto_dynamic_security.so"
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu",
    "amd64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armv7l": "arm-linux-gnueabihf",
    "armv6l": "arm-linux-gnueabihf",
}
# Control messages stay well under the broker's max_packet_size (1 MiB in our config).
_MAX_MESSAGE_BYTES = 256 * 1024

_T = TypeVar("_T")

Command = dict[str, Any]
"""One dynsec command as sent over `$CONTROL` (may hold a plaintext password: never log one whole)."""


class DynsecError(RuntimeError):
    """The plugin is missing, or the broker refused, or did not confirm, a dynsec command."""


class CredentialsError(ValueError):
    """A credential that cannot be given to the broker (bad username, empty password, two roles)."""


class AclType(enum.StrEnum):
    PUBLISH_SEND = "publishClientSend"
    PUBLISH_RECEIVE = "publishClientReceive"
    SUBSCRIBE_LITERAL = "subscribeLiteral"
    SUBSCRIBE_PATTERN = "subscribePattern"
    UNSUBSCRIBE_LITERAL = "unsubscribeLiteral"
    UNSUBSCRIBE_PATTERN = "unsubscribePattern"


DEFAULT_ACCESS: tuple[tuple[str, bool], ...] = (
    ("publishClientSend", False),
    ("publishClientReceive", False),
    ("subscribe", False),
    ("unsubscribe", True),
)
"""What a client may do that no ACL of its roles mentions: nothing but unsubscribe."""


@dataclass(frozen=True, slots=True)
class Acl:
    acltype: AclType
    topic: str
    """A topic filter; for `subscribeLiteral`, the exact filter string a client may subscribe to."""
    allow: bool = True
    priority: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype.value, "topic": self.topic, "priority": self.priority, "allow": self.allow}


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    acls: tuple[Acl, ...]


@dataclass(frozen=True, slots=True)
class Client:
    username: str
    """Also the only client id the broker accepts for this credential."""
    password: str = field(repr=False)
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DynsecConfig:
    """What the broker should know: every client and role, and the default access."""

    clients: tuple[Client, ...]
    roles: tuple[Role, ...]
    default_access: tuple[tuple[str, bool], ...] = DEFAULT_ACCESS

    def passwords(self) -> dict[str, str]:
        return {c.username: c.password for c in self.clients}


# -- the bus roles --------------------------------------------------------------------------------

CLOUD_ROLE = "cloud"
MONITOR_ROLE = "monitor"
ADMIN_ROLE = "dynsec-admin"


def node_role(node: str) -> str:
    """Mosquitto 2.0 roles have no %u/%c substitution: every node gets a role of its own."""
    return f"node:{node}"


def cloud_host_role(host: str) -> str:
    return f"cloud-host:{host}"


def _read(*filters: str) -> list[Acl]:
    """Subscribe to these filters (or narrower ones) and receive what they match."""
    return [a for f in filters for a in (Acl(AclType.SUBSCRIBE_PATTERN, f), Acl(AclType.PUBLISH_RECEIVE, f))]


def _node_acls(node: str) -> tuple[Acl, ...]:
    return (
        Acl(AclType.PUBLISH_SEND, topics.node_up_filter(node)),
        *_read(topics.node_dn_filter(node), topics.host_state_filter()),
    )


def _cloud_acls() -> tuple[Acl, ...]:
    up_all = f"{topics.ROOT}/up/#"
    return (
        # The shared filters one by one: joining any other share group, or sharing a wider filter,
        # is refused. Plain (unshared) filters below up/ are allowed too: they take nothing from the
        # shared group, and tests and the benchmark's baseline read one box's topics that way.
        *(Acl(AclType.SUBSCRIBE_LITERAL, f) for f in topics.cloud_ingest_filters()),
        *(Acl(AclType.SUBSCRIBE_LITERAL, f) for f in topics.cloud_lifecycle_filters()),
        Acl(AclType.SUBSCRIBE_PATTERN, up_all),
        Acl(AclType.PUBLISH_RECEIVE, up_all),
        *_read(topics.host_state_filter()),
        Acl(AclType.PUBLISH_SEND, f"{topics.ROOT}/dn/#"),
    )


def _admin_acls() -> tuple[Acl, ...]:
    control = "$CONTROL/dynamic-security/#"
    return (Acl(AclType.PUBLISH_SEND, control), *_read(control))


def bus_config(
    *,
    cloud: Mapping[str, str],
    nodes: Mapping[str, str],
    monitors: Mapping[str, str],
    admin_password: str,
) -> DynsecConfig:
    """The bus ACL as dynsec clients and roles; raises `CredentialsError` before anything is written."""
    seen: Counter[str] = Counter([*cloud, *nodes, *monitors])
    overlap = sorted(u for u, n in seen.items() if n > 1)
    if overlap:
        raise CredentialsError(
            f"Usernames given more than one role (cloud, node, monitor): {', '.join(overlap)}: expected each in one role only"
        )
    clients: list[Client] = [Client(ADMIN_USER, _secret(ADMIN_USER, admin_password), (ADMIN_ROLE,))]
    roles: list[Role] = [Role(ADMIN_ROLE, _admin_acls())]
    if cloud:
        roles.append(Role(CLOUD_ROLE, _cloud_acls()))
    if monitors:
        roles.append(Role(MONITOR_ROLE, tuple(_read(topics.everything_filter()))))
    for user, password in sorted(cloud.items()):
        clients.append(Client(_username(user), _secret(user, password), (CLOUD_ROLE, cloud_host_role(user))))
        roles.append(Role(cloud_host_role(user), (Acl(AclType.PUBLISH_SEND, topics.host_state(user)),)))
    for user, password in sorted(monitors.items()):
        clients.append(Client(_username(user), _secret(user, password), (MONITOR_ROLE,)))
    for node, password in sorted(nodes.items()):
        clients.append(Client(_username(node), _secret(node, password), (node_role(node),)))
        roles.append(Role(node_role(node), _node_acls(node)))
    return DynsecConfig(tuple(clients), tuple(roles))


def _username(user: str) -> str:
    try:
        return topics.check_id(user, "username")
    except topics.TopicError as exc:
        raise CredentialsError(str(exc)) from None


def _secret(user: str, password: str) -> str:
    if not password:
        raise CredentialsError(f"Empty password for {user!r}: expected a secret for each node, worker and monitor")
    return password


# -- the plugin's config file ---------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form of a password: base64 PBKDF2-SHA512 digest, base64 salt, iterations."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def config_json(config: DynsecConfig, keep: Mapping[str, list[dict[str, Any]]] | None = None) -> str:
    """The plugin's config file (`plugin_opt_config_file`), read once when Mosquitto starts.

    `keep`: entries carried over from the previous file (see `enrolled_entries`), added unless the
    generated config has a client or role of the same name."""
    doc: dict[str, Any] = {
        "defaultACLAccess": dict(config.default_access),
        "clients": [
            {
                "username": c.username,
                "clientid": c.username,
                **hash_password(c.password),
                "roles": [{"rolename": r} for r in c.roles],
                "groups": [],
            }
            for c in config.clients
        ],
        "roles": [{"rolename": r.name, "acls": [a.as_json() for a in r.acls]} for r in config.roles],
        "groups": [],
    }
    if keep:
        for key, name_key in (("clients", "username"), ("roles", "rolename"), ("groups", "groupname")):
            have = {item[name_key] for item in doc[key]}
            doc[key] += [item for item in keep.get(key, []) if item.get(name_key) not in have]
    return json.dumps(doc, indent=1) + "\n"


def enrolled_entries(previous_file_text: str) -> dict[str, list[dict[str, Any]]]:
    """The enrolled clients (members of `ENROLLED_GROUP`), their roles and the group itself, as the
    plugin stored them in its file (password hashes and the disabled flag included). Empty when the
    text is not a plugin file: a broken file must not stop the broker from starting."""
    try:
        doc = json.loads(previous_file_text)
        # The plugin records membership in the group's entry, not in the client's.
        groups = [g for g in doc.get("groups", []) if g.get("groupname") == ENROLLED_GROUP]
        members = {c.get("username") for g in groups for c in g.get("clients", [])}
        clients = [c for c in doc.get("clients", []) if c.get("username") in members]
        role_names = {r.get("rolename") for c in clients for r in c.get("roles", [])}
        roles = [r for r in doc.get("roles", []) if r.get("rolename") in role_names]
    except (ValueError, AttributeError, TypeError):
        return {}
    return {"clients": clients, "roles": roles, "groups": groups}


def grant_commands(node: str, password: str) -> list[Command]:
    """Create an enrolled node's role (its own topics only) and its credential, live. The first
    command fails harmlessly ("Group already exists") on every enrolment but the first."""
    return [
        {"command": "createGroup", "groupname": ENROLLED_GROUP},
        {"command": "createRole", "rolename": node_role(node), "acls": [a.as_json() for a in _node_acls(node)]},
        {
            "command": "createClient",
            "username": _username(node),
            "password": _secret(node, password),
            "clientid": node,
            "roles": [{"rolename": node_role(node)}],
            "groups": [{"groupname": ENROLLED_GROUP}],
        },
    ]


def revoke_commands(node: str) -> list[Command]:
    """Disable a node's credential: the broker drops its live connection at once and refuses its
    reconnects; the plugin saves the flag in its file, so it holds across broker restarts."""
    return [{"command": "disableClient", "username": node}]


def retire_commands(node: str) -> list[Command]:
    """Delete a node's credential and role for good (its id is never issued again by the cloud)."""
    return [{"command": "deleteClient", "username": node}, {"command": "deleteRole", "rolename": node_role(node)}]


def plugin_path(machine: str | None = None, roots: Sequence[Path] = (Path("/usr/lib"), Path("/usr/local/lib"))) -> str:
    """Where this machine's Mosquitto keeps its dynamic security plugin (Debian: the multiarch dir)."""
    machine = machine or platform.machine()
    candidates: list[Path] = []
    for root in roots:
        if machine in _MULTIARCH:
            candidates.append(root / _MULTIARCH[machine] / _PLUGIN_NAME)
        candidates.append(root / _PLUGIN_NAME)
    for path in candidates:
        if path.is_file():
            return str(path)
    raise DynsecError(
        f"Mosquitto's dynamic security plugin is not installed on this {machine} machine: expected one of "
        f"{', '.join(map(str, candidates))}; install Debian's 'mosquitto' package, 2.0 or later"
    )


# -- what the broker has, and the commands that make it what we want ------------------------------


@dataclass(frozen=True, slots=True)
class ClientState:
    username: str
    clientid: str | None
    roles: frozenset[str]
    groups: frozenset[str]
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class BrokerState:
    """The plugin's clients, roles and default access as its `list…` commands report them."""

    clients: tuple[ClientState, ...]
    roles: tuple[Role, ...]
    default_access: tuple[tuple[str, bool], ...]


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")
    command: str
    error: str | None = None
    data: dict[str, Any] | None = None
    correlationData: str | None = None  # the plugin's spelling


def _data(r: _Response | None, key: str) -> list[Any]:
    if r is None:
        raise DynsecError(f"Mosquitto did not answer the request for its {key} in time")
    if r.error is not None or r.data is None:
        raise DynsecError(f"Mosquitto answered {r.command!r} with {r.error or 'no data'!r}: expected its {key}")
    items = r.data.get(key, [])
    if not isinstance(items, list):
        raise DynsecError(f"Mosquitto's {r.command!r} answer has {key!r} = {items!r}: expected a list")
    return items


def _state(clients: _Response | None, roles: _Response | None, access: _Response | None) -> BrokerState:
    # Plain dict reads, not a model per item: a listing of 1000 nodes is ~7000 items.
    try:
        return BrokerState(
            clients=tuple(
                ClientState(
                    str(c["username"]),
                    c.get("clientid"),
                    frozenset(str(r["rolename"]) for r in c.get("roles", [])),
                    frozenset(str(g["groupname"]) for g in c.get("groups", [])),
                    bool(c.get("disabled", False)),
                )
                for c in _data(clients, "clients")
            ),
            roles=tuple(
                Role(
                    str(r["rolename"]),
                    tuple(
                        Acl(AclType(a["acltype"]), str(a["topic"]), bool(a["allow"]), int(a.get("priority", 0)))
                        for a in r.get("acls", [])
                    ),
                )
                for r in _data(roles, "roles")
            ),
            default_access=tuple((str(a["acltype"]), bool(a["allow"])) for a in _data(access, "acls")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DynsecError(f"Mosquitto's dynsec listing is not what version 2.0 sends: {type(exc).__name__} {exc}") from None


def plan(state: BrokerState, desired: DynsecConfig, passwords_in_force: Mapping[str, str]) -> tuple[Command, ...]:
    """The commands that turn `state` into `desired`, removals before additions so that no client ever
    holds old and new rights at once.

    The plugin never reveals passwords, so `passwords_in_force` says which ones the broker has (those we
    set): a password is set when its client is new or when it differs. A client someone disabled stays
    disabled: re-enabling is a decision, not a difference to undo.
    """
    cmds: list[Command] = []
    have_access = dict(state.default_access)
    changed_access = [{"acltype": k, "allow": v} for k, v in desired.default_access if have_access.get(k) is not v]
    if changed_access:
        cmds.append({"command": "setDefaultACLAccess", "acls": changed_access})

    have_roles = {r.name: set(r.acls) for r in state.roles}
    for role in desired.roles:
        want = set(role.acls)
        if role.name not in have_roles:
            cmds.append({"command": "createRole", "rolename": role.name, "acls": [a.as_json() for a in role.acls]})
            continue
        have = have_roles[role.name]
        # removeRoleACL matches on type and topic; an entry differing only in allow/priority is replaced.
        cmds += [
            {"command": "removeRoleACL", "rolename": role.name, "acltype": a.acltype.value, "topic": a.topic}
            for a in sorted(have - want, key=_acl_key)
        ]
        cmds += [
            {"command": "addRoleACL", "rolename": role.name, **a.as_json()} for a in sorted(want - have, key=_acl_key)
        ]

    wanted = {c.username: c for c in desired.clients}
    enrolled = [c for c in state.clients if ENROLLED_GROUP in c.groups and c.username not in wanted]
    enrolled_roles = {r for c in enrolled for r in c.roles}
    for have_client in sorted(state.clients, key=lambda c: c.username):
        if have_client.username not in wanted and ENROLLED_GROUP not in have_client.groups:
            # The plugin disconnects a deleted client at once; its reconnects get "Not authorized".
            cmds.append({"command": "deleteClient", "username": have_client.username})
    have_clients = {c.username: c for c in state.clients}
    for client in desired.clients:
        user = client.username
        current = have_clients.get(user)
        if current is None:
            cmds.append(
                {
                    "command": "createClient",
                    "username": user,
                    "password": client.password,
                    "clientid": user,
                    "roles": [{"rolename": r} for r in client.roles],
                }
            )
            continue
        cmds += [{"command": "removeGroupClient", "groupname": g, "username": user} for g in sorted(current.groups)]
        cmds += [
            {"command": "removeClientRole", "username": user, "rolename": r}
            for r in sorted(current.roles - set(client.roles))
        ]
        if current.clientid != user:
            cmds.append({"command": "setClientId", "username": user, "clientid": user})
        if passwords_in_force.get(user) != client.password:
            cmds.append({"command": "setClientPassword", "username": user, "password": client.password})
        cmds += [
            {"command": "addClientRole", "username": user, "rolename": r} for r in client.roles if r not in current.roles
        ]

    desired_roles = {r.name for r in desired.roles}
    cmds += [
        {"command": "deleteRole", "rolename": name}
        for name in sorted(set(have_roles) - desired_roles - enrolled_roles)
    ]
    return tuple(cmds)


def _acl_key(a: Acl) -> tuple[str, str]:
    return (a.acltype.value, a.topic)


def describe(cmd: Command) -> str:
    """A command for logs and errors, without its password."""
    subject = cmd.get("username") or cmd.get("rolename") or ""
    return f"{cmd['command']} {subject}".strip()


# -- talking to the plugin ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Applied:
    """The commands the broker confirmed (and those it refused) in one `apply`."""

    confirmed: tuple[Command, ...]
    refused: tuple[tuple[Command, str], ...]
    seconds: float

    def passwords_in_force(self, before: Mapping[str, str]) -> dict[str, str]:
        """`before`, updated with what the broker confirmed."""
        after = dict(before)
        for cmd in self.confirmed:
            if cmd["command"] in ("createClient", "setClientPassword"):
                after[cmd["username"]] = cmd["password"]
            elif cmd["command"] == "deleteClient":
                after.pop(cmd["username"], None)
        return after

    def __repr__(self) -> str:
        # The commands may hold passwords: name them only.
        refused = [f"{describe(c)}: {why}" for c, why in self.refused]
        return f"Applied(confirmed={[describe(c) for c in self.confirmed]}, refused={refused}, seconds={self.seconds:.4f})"

    def summary(self) -> str:
        if not self.confirmed:
            return "no change"
        counts = Counter(c["command"] for c in self.confirmed)
        return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))


class _Control:
    """One admin connection exchanging commands with the plugin, matched by correlation data."""

    def __init__(self, conn: MqttConnection, answers: dict[str, _Response], arrived: asyncio.Event) -> None:
        self.conn = conn
        self.answers = answers
        self.arrived = arrived
        self.token = uuid.uuid4().hex[:12]
        self.counter = 0

    async def ask(self, cmds: Sequence[Command], timeout: float, per_message: int = 1) -> list[_Response | None]:
        """Send `cmds` in messages of `per_message` commands, each once the previous one is answered;
        the answers in the same order. A message unanswered within `timeout`, or a lost connection,
        stops the exchange: the commands not answered by then get None.

        Why one change per message: Mosquitto is single-threaded and the 2.0 plugin rewrites its whole
        file after every command that changes something (~10 ms per command with 1000 nodes here). Adding
        200 nodes to 1000 in one message held up every client's traffic for 6.8 s; one command per
        message kept the longest round trip meanwhile at 63 ms, for about the same total time."""
        ids: list[str] = []
        batches: list[list[Command]] = [[]]
        size = 0
        for cmd in cmds:
            self.counter += 1
            cid = f"{self.token}-{self.counter}"
            ids.append(cid)
            tagged = {**cmd, "correlationData": cid}
            n = len(json.dumps(tagged))
            if batches[-1] and (size + n > _MAX_MESSAGE_BYTES or len(batches[-1]) >= per_message):
                batches.append([])
                size = 0
            batches[-1].append(tagged)
            size += n
        loop = asyncio.get_running_loop()
        for batch in batches:
            if not batch:
                continue
            wanted = [c["correlationData"] for c in batch]
            deadline = loop.time() + timeout
            try:
                # A refused publish (PublishRefused) propagates: it names what the admin may not do.
                await asyncio.wait_for(self.conn.publish(CONTROL_TOPIC, json.dumps({"commands": batch}).encode()), timeout)
                while not all(i in self.answers for i in wanted):
                    self.arrived.clear()
                    left = deadline - loop.time()
                    if left <= 0 or self.conn.closed.done():
                        raise TimeoutError
                    await asyncio.wait_for(self.arrived.wait(), left)
            except (TimeoutError, BusNotConnected):
                break  # what was answered so far still counts (the caller records confirmed passwords)
        return [self.answers.pop(i, None) for i in ids]


async def _session(
    address: BrokerAddress, password: str, timeout: float, work: Callable[[_Control], Awaitable[_T]]
) -> _T:
    answers: dict[str, _Response] = {}
    arrived = asyncio.Event()

    def on_message(msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
            for item in body.get("responses", []):
                r = _Response.model_validate(item)
                if r.correlationData is not None:
                    answers[r.correlationData] = r
        except (ValueError, AttributeError):
            return  # not a plugin answer we can use; the command it belonged to times out and is named
        arrived.set()

    conn = MqttConnection(address, ADMIN_USER, password, on_message=on_message, connect_timeout=timeout)
    conn.closed.add_done_callback(lambda _: arrived.set())  # a lost connection ends any wait for answers
    try:
        await conn.connect()
        await conn.subscribe([RESPONSE_TOPIC])
        return await work(_Control(conn, answers, arrived))
    except BusError as exc:
        raise DynsecError(f"cannot talk to Mosquitto's dynamic security plugin at {address} as {ADMIN_USER!r}: {exc}") from None
    finally:
        await conn.disconnect(timeout=1.0)


def _outcome(cmds: Sequence[Command], answers: Sequence[_Response | None], started: float) -> Applied:
    confirmed = tuple(c for c, r in zip(cmds, answers, strict=True) if r is not None and r.error is None)
    refused = tuple(
        (c, "no answer" if r is None else str(r.error))
        for c, r in zip(cmds, answers, strict=True)
        if r is None or r.error is not None
    )
    return Applied(confirmed, refused, time.perf_counter() - started)


def _in_own_loop(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a private event loop in a private thread, so that a synchronous
    caller works whether or not its own thread runs an event loop (the tests call us from async code).
    Every wait inside is bounded (connect, each batch), so joining without a timeout cannot hang."""
    box: list[_T] = []
    error: list[BaseException] = []

    async def main() -> _T:
        return await make()

    def target() -> None:
        try:
            box.append(asyncio.run(main()))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target, name="dynsec-control", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return box[0]


def apply(
    address: BrokerAddress,
    admin_password: str,
    desired: DynsecConfig,
    passwords_in_force: Mapping[str, str],
    timeout: float = 10.0,
) -> Applied:
    """Read what the broker has, send what differs from `desired`, and return once the broker has
    answered every command. A message unanswered for `timeout`, or a lost connection, ends the
    exchange: the commands not answered by then count as refused ("no answer")."""

    async def work(ctl: _Control) -> Applied:
        started = time.perf_counter()
        listing = await ctl.ask(
            [
                {"command": "listClients", "verbose": True},
                {"command": "listRoles", "verbose": True},
                {"command": "getDefaultACLAccess"},
            ],
            timeout,
            per_message=3,  # reads: nothing is saved, one message is cheapest
        )
        state = _state(*listing)
        cmds = plan(state, desired, passwords_in_force)
        return _outcome(cmds, await ctl.ask(cmds, timeout) if cmds else [], started)

    return _in_own_loop(lambda: _session(address, admin_password, timeout, work))


def send(address: BrokerAddress, admin_password: str, commands: Sequence[Command], timeout: float = 10.0) -> Applied:
    """Send `commands` as they are (one per message) and return once each is answered."""

    async def work(ctl: _Control) -> Applied:
        started = time.perf_counter()
        answers = await ctl.ask(commands, timeout)
        return _outcome(commands, answers, started)

    return _in_own_loop(lambda: _session(address, admin_password, timeout, work))


def ping(address: BrokerAddress, admin_password: str, timeout: float = 10.0) -> None:
    """Return once the plugin answers our admin: it loaded our config file and handles commands."""

    async def work(ctl: _Control) -> None:
        (answer,) = await ctl.ask([{"command": "getDefaultACLAccess"}], timeout)
        if answer is None or answer.error is not None:
            raise DynsecError(
                f"Mosquitto's dynamic security plugin did not answer {ADMIN_USER!r} within {timeout:.0f} s "
                f"({'no answer' if answer is None else answer.error})"
            )

    _in_own_loop(lambda: _session(address, admin_password, timeout, work))


def read_or_create_secret(path: Path) -> str:
    """The admin password kept in the data dir (mode 0600), created on first use."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if not secret:
        secret = secrets.token_urlsafe(32)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        tmp.replace(path)
    path.chmod(0o600)
    return secret
