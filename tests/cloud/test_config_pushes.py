"""Config pushes on the cloud side, without boxes: what `POST /config-pushes` validates and queues
(the firmware_config schema, the box's profile, the network section), on SQLite and PostgreSQL.
The boxes' side (applied, rejected, rolled back) is tests/provisioning/test_config_push.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.fleet.models import ConfigPush, Identity, NodeConfigState
from firmware_config import config_hash, parse_config
from tests.access.conftest import World, cheap_argon2, world  # noqa: F401  (fixtures)
from tests.cloud.conftest import db_url, engine  # noqa: F401  (fixtures)

ENROLLED = {"st0001-k1": ("kiosk", "pi5"), "st0002-k1": ("scan-station", "pi5"), "st0003-k1": ("signage", "cm4")}
"""The seeded boxes, enrolled as if claimed: node → (role, model)."""


@pytest.fixture
def fleet(world: World) -> World:  # noqa: F811
    with service.write_session(world.engine) as s, s.begin():
        for i, (node, (role, model)) in enumerate(ENROLLED.items()):
            s.add(Identity(node_id=node, serial=f"SN-{i}", model=model, role=role, public_key="A" * 44, status="active",
                           broker_synced=True, enrolled_at=datetime.now(UTC), enrolled_by="test"))
            s.add(NodeConfigState(node_id=node, desired_version=0, applied_version=0))
    return world


def pushes(fleet: World, batch: str) -> dict[str, ConfigPush]:
    with Session(fleet.engine) as s:
        return {p.node_id: p for p in s.scalars(select(ConfigPush).where(ConfigPush.batch == batch))}


NETWORK: dict[str, Any] = {
    "hostname": "st0001-k1",
    "wifi": {"ssid": "Store Wi-Fi", "psk_file": "wifi.psk", "country": "CN"},
    "ipv4": "static", "address": "192.168.1.20/24", "gateway": "192.168.1.1", "dns": ["192.168.1.1"],
    "ntp": ["ntp.aliyun.com"],
}


def test_a_network_section_is_validated_then_pushed_as_the_box_will_read_it(fleet: World) -> None:
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['hq']}"}) as api:
        bad = api.post("/config-pushes", json={"nodes": ["st0001-k1"], "overrides": {"network": NETWORK | {"gateway": "10.0.0.1"}}})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["msg"] == (
            "st0001-k1: field 'network.gateway': 10.0.0.1 is not another host of 192.168.1.0/24: expected the router's address there")
        bad = api.post("/config-pushes", json={"nodes": ["st0001-k1"], "overrides": {"network": {"wifi": {"ssid": "x", "psk": "secret"}}}})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["msg"] == "st0001-k1: field 'network.wifi.psk_file': required but missing"

        r = api.post("/config-pushes", json={"nodes": ["st0001-k1"], "overrides": {"network": NETWORK}})
        assert r.status_code == 201, r.text
    push = pushes(fleet, r.json()["batch"])["st0001-k1"]
    assert push.profile == "kiosk-pi5"
    # What the box receives is valid for its schema, with the same hash, and holds the section.
    on_box = parse_config(yaml.safe_dump(push.config, sort_keys=False), "pushed config")
    assert config_hash(on_box) == push.config_hash
    assert on_box.network.model_dump(mode="json") == NETWORK


def test_each_box_gets_the_profile_of_its_role_on_its_hardware(fleet: World) -> None:
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['hq']}"}) as api:
        r = api.post("/config-pushes", json={"nodes": list(ENROLLED), "overrides": {"telemetry_every_s": 30}})
        assert r.status_code == 201, r.text
    got = {node: p.profile for node, p in pushes(fleet, r.json()["batch"]).items()}
    # A Pi 5 has its own profile for each role; a Compute Module 4 has none: the role's.
    assert got == {"st0001-k1": "kiosk-pi5", "st0002-k1": "scan-station-pi5", "st0003-k1": "signage-player"}
