"""The broker's side of enrolled boxes: the credentials file's reload leaves the cloud's clients
alone, and a broker start carries them (disabled flag included) over from the plugin's file."""

from __future__ import annotations

import json

from broker import dynsec
from broker.dynsec import BrokerState, ClientState


def _state(*clients: ClientState) -> BrokerState:
    cfg = dynsec.bus_config(cloud={}, nodes={"n1": "p1"}, monitors={}, admin_password="adm")
    base = tuple(ClientState(c.username, c.username, frozenset(c.roles), frozenset()) for c in cfg.clients)
    roles = (*cfg.roles, dynsec.Role(dynsec.node_role("st1-k2"), ()))
    return BrokerState(clients=(*base, *clients), roles=roles, default_access=cfg.default_access)


def test_reload_leaves_enrolled_clients_and_their_roles_alone() -> None:
    desired = dynsec.bus_config(cloud={}, nodes={"n1": "p1"}, monitors={}, admin_password="adm")
    enrolled = ClientState("st1-k2", "st1-k2", frozenset({dynsec.node_role("st1-k2")}), frozenset({dynsec.ENROLLED_GROUP}))
    stray = ClientState("old-1", "old-1", frozenset(), frozenset())
    cmds = dynsec.plan(_state(enrolled, stray), desired, {dynsec.ADMIN_USER: "adm", "n1": "p1"})
    assert cmds == ({"command": "deleteClient", "username": "old-1"},)


def test_enrolled_entries_from_the_plugin_file() -> None:
    doc = {
        "clients": [
            {"username": "st1-k2", "clientid": "st1-k2", "disabled": True, "roles": [{"rolename": "node:st1-k2"}],
             "password": "h", "salt": "s", "iterations": 101},
            {"username": "n1", "roles": [{"rolename": "node:n1"}]},
        ],
        "roles": [{"rolename": "node:st1-k2", "acls": []}, {"rolename": "node:n1", "acls": []}],
        "groups": [{"groupname": "enrolled", "roles": [], "clients": [{"username": "st1-k2"}]}],
    }
    kept = dynsec.enrolled_entries(json.dumps(doc))
    assert [c["username"] for c in kept["clients"]] == ["st1-k2"] and kept["clients"][0]["disabled"] is True
    assert [r["rolename"] for r in kept["roles"]] == ["node:st1-k2"]
    assert kept["groups"] == doc["groups"]
    assert dynsec.enrolled_entries("not json") == {}
    merged = json.loads(dynsec.config_json(dynsec.bus_config(cloud={}, nodes={"n1": "p1"}, monitors={}, admin_password="a"), kept))
    assert sorted(c["username"] for c in merged["clients"]) == sorted([dynsec.ADMIN_USER, "n1", "st1-k2"])
    assert merged["groups"] == doc["groups"]
