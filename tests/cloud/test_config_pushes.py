"""Config pushes on the cloud side, without boxes: what `POST /config-pushes` validates and queues
(the firmware_config schema, the box's profile, the network section), a push to a whole region,
the console's push form (CSRF) and progress table, and the fleet page's config column, on SQLite
and PostgreSQL. The boxes' side (applied, rejected, rolled back for real) is
tests/provisioning/test_config_push.py; here the boxes' answers are written as the bus would."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.models import AuditEntry
from cloud.fleet.models import ConfigPush, Identity, NodeConfigState
from cloud.models import DownlinkCommand, Node
from firmware_config import config_hash, parse_config
from tests.access.conftest import World, row_count, sign_in, world  # noqa: F401  (fixtures)
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


# -- a region, the console's form and progress table, the fleet page -----------------------------------


def answer(fleet: World, batch: str, answers: dict[str, tuple[str, str | None, str]]) -> None:
    """What the boxes' acks and births would have set (cloud.fleet.config_push.on_ack / on_birth):
    node → (status, field, detail)."""
    with service.write_session(fleet.engine) as s, s.begin():
        for push in s.scalars(select(ConfigPush).where(ConfigPush.batch == batch)):
            if push.node_id in answers:
                push.status, push.field, push.detail = answers[push.node_id]


def test_a_region_wide_push_goes_to_every_enrolled_box_of_the_region_and_no_other(fleet: World) -> None:
    with service.write_session(fleet.engine) as s, s.begin():
        # An enrolled box of the region that was revoked is not pushed to.
        s.add(Node(id="st0002-k2", store_id=s.scalars(select(Node.store_id).where(Node.id == "st0002-k1")).one()))
        s.flush()
        s.add(Identity(node_id="st0002-k2", serial="SN-9", model="pi5", role="kiosk", public_key="A" * 44, status="revoked",
                       broker_synced=True, enrolled_at=datetime.now(UTC), enrolled_by="test"))
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['hq']}"}) as api:
        r = api.post("/config-pushes", json={"region": "east", "overrides": {"telemetry_every_s": 30}, "rollback_after_s": 300})
        assert r.status_code == 201, r.text
        batch = r.json()["batch"]
        assert {k: r.json()[k] for k in ("total", "pending", "applied", "rejected", "rolled_back", "superseded")} == {
            "total": 2, "pending": 2, "applied": 0, "rejected": 0, "rolled_back": 0, "superseded": 0}
        assert [p["node"] for p in r.json()["pushes"]] == ["st0001-k1", "st0002-k1"]

        # Each through the durable downlink, versioned, with the rollback deadline.
        with Session(fleet.engine) as s:
            sent = {row.node: row for row in s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "config"))}
            assert sorted(sent) == ["st0001-k1", "st0002-k1"]
            assert all((c.data["version"], c.data["rollback_after_s"], c.data["config"]["telemetry_every_s"]) == (1, 300, 30)
                       for c in sent.values())
            (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "config.push"))
            assert entry.after is not None
            assert (entry.actor, entry.object_id, entry.after["nodes"], entry.via) == (
                "key:hq-key", batch, ["st0001-k1", "st0002-k1"], "api")

        answer(fleet, batch, {"st0001-k1": ("applied", None, "applied v1"),
                              "st0002-k1": ("rejected", "telemetry_every_s", "rejected v1: field 'telemetry_every_s': too often")})
        progress = api.get(f"/config-pushes/{batch}").json()
        assert (progress["applied"], progress["rejected"], progress["pending"]) == (1, 1, 0)
        assert progress["pushes"][1] == {"node": "st0002-k1", "version": 1, "status": "rejected", "field": "telemetry_every_s",
                                         "detail": "rejected v1: field 'telemetry_every_s': too often"}

        # A region without an active enrolled box, and a region outside the key's scope.
        none = api.post("/config-pushes", json={"region": "south", "overrides": {}})
        assert none.status_code == 201  # st0003-k1 is enrolled there
    with service.write_session(fleet.engine) as s, s.begin():
        s.get(Identity, "st0003-k1").status = "revoked"  # type: ignore[union-attr]
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['hq']}"}) as api:
        empty = api.post("/config-pushes", json={"region": "south", "overrides": {}})
        assert (empty.status_code, empty.json()["detail"][0]["msg"]) == (422, "no enrolled, active box there")
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['regional']}"}) as api:
        assert api.post("/config-pushes", json={"region": "south", "overrides": {}}).status_code == 404
        assert api.post("/config-pushes", json={"region": "east", "overrides": {}}).status_code == 201


def batch_row(page: str, batch: str) -> list[str]:
    """The cells of the console's progress row of `batch`, as text."""
    row = re.search(rf'<tr data-batch="{batch}">(.*?)</tr>', page, re.S)
    assert row, f"no row for batch {batch} in the page"
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]


def test_console_push_form_and_its_progress_table(fleet: World) -> None:
    with fleet.app_client() as client:
        csrf = sign_in(client, "hq")
        form = {"action": "push", "target": "region:east", "overrides": '{"telemetry_every_s": 30}', "rollback_after_s": "300"}
        # Without the session's CSRF token nothing is pushed.
        refused = client.post("/console/enrolment", data=form | {"csrf_token": "forged"})
        assert refused.status_code == 403
        assert row_count(fleet.engine, ConfigPush) == 0

        page = client.get("/console/enrolment").text
        assert '<option value="region:east">region east</option>' in page
        bad = client.post("/console/enrolment", data=form | {"csrf_token": csrf, "overrides": '{"telemetry_every_s": -1}'})
        assert bad.status_code == 422
        assert "st0001-k1: field &#39;telemetry_every_s&#39;: Input should be greater than or equal to 0" in bad.text
        assert row_count(fleet.engine, ConfigPush) == 0

        done = client.post("/console/enrolment", data=form | {"csrf_token": csrf})
        assert done.status_code == 200, done.text
        with Session(fleet.engine) as s:
            pushes = s.scalars(select(ConfigPush).order_by(ConfigPush.node_id)).all()
            batch = pushes[0].batch
            assert batch is not None
            assert [(p.node_id, p.status, p.config["telemetry_every_s"]) for p in pushes] == [
                ("st0001-k1", "pending", 30), ("st0002-k1", "pending", 30)]
            (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "config.push"))
            assert entry.after is not None
            assert (entry.actor, entry.via, entry.after["rollback_after_s"]) == ("user:hq", "console", 300)
        assert f"Config pushed to 2 box(es) (batch {batch[:8]})." in done.text
        # batch, boxes, applied, rejected, pending, rolled back, superseded, rejections
        assert batch_row(done.text, batch) == [batch[:8], "2", "0", "0", "2", "0", "0", ""]

        answer(fleet, batch, {"st0001-k1": ("rolled_back", None, "the box rolled back by itself: could not reach the cloud"),
                              "st0002-k1": ("rejected", "telemetry_every_s", "rejected v1: field 'telemetry_every_s': too often")})
        page = client.get("/console/enrolment").text
        assert batch_row(page, batch) == [batch[:8], "2", "0", "1", "0", "1", "0",
                                          "st0002-k1: rejected v1: field &#39;telemetry_every_s&#39;: too often"]


def test_the_fleet_page_shows_each_boxs_config_version_drift_and_last_rollback(fleet: World) -> None:
    with service.write_session(fleet.engine) as s, s.begin():
        # st0001-k1 runs v1; HQ pushed v2, which the box applied and rolled back: drift.
        s.get(Node, "st0001-k1").config_hash = "sha256:v1"  # type: ignore[union-attr]
        state = s.get(NodeConfigState, "st0001-k1")
        assert state is not None
        state.applied_version, state.desired_version, state.desired_hash = 1, 2, "sha256:v2"
        state.last_rollback_at, state.last_rollback_version = datetime(2026, 11, 28, 10, 2, tzinfo=UTC), 2
        state.last_rollback_reason = "the box rolled back by itself"
        # st0002-k1 runs what was pushed.
        s.get(Node, "st0002-k1").config_hash = "sha256:v3"  # type: ignore[union-attr]
        state = s.get(NodeConfigState, "st0002-k1")
        assert state is not None
        state.applied_version, state.desired_version, state.desired_hash = 3, 3, "sha256:v3"
    with fleet.app_client() as client:
        sign_in(client, "hq")
        page = client.get("/console/fleet").text
    cells = {node: re.sub(r"<[^>]+>", "", cell).strip()
             for node, cell in re.findall(r'<tr[^>]*data-node="([^"]+)".*?<td class="config-state">(.*?)</td>', page, re.S)}
    assert cells == {
        "st0001-k1": "v1 · drift (pushed v2) · rolled back v2 2026-11-28 10:02",
        "st0002-k1": "v3",
        "st0003-k1": "v0",  # enrolled, nothing pushed yet
        "stray-1": "\N{EN DASH}",  # never enrolled
    }


def test_the_api_the_console_and_add_printer_ask_for_the_same_rollback_by_default(fleet: World) -> None:
    from cloud.fleet.config_push import DEFAULT_ROLLBACK_AFTER_S
    from omnishelf import cli

    assert DEFAULT_ROLLBACK_AFTER_S == 300
    add_printer = cli.build_parser(["provision"]).parse_args(["provision", "add-printer", "st0001-k1", "10.0.0.5"])
    assert add_printer.rollback_after == DEFAULT_ROLLBACK_AFTER_S
    with fleet.app_client(headers={"Authorization": f"Bearer {fleet.keys['hq']}"}) as api:
        r = api.post("/config-pushes", json={"nodes": ["st0001-k1"], "overrides": {}})  # no rollback_after_s
        assert r.status_code == 201, r.text
    with fleet.app_client() as client:
        csrf = sign_in(client, "hq")
        page = client.get("/console/enrolment").text
        assert f'name="rollback_after_s" type="number" min="0" max="604800" value="{DEFAULT_ROLLBACK_AFTER_S:.0f}"' in page
        # A form post without the field (a script) gets the same.
        done = client.post("/console/enrolment", data={"csrf_token": csrf, "action": "push", "target": "store:st0002",
                                                       "overrides": "{}"})
        assert done.status_code == 200, done.text
    with Session(fleet.engine) as s:
        sent = {c.node: c.data["rollback_after_s"] for c in s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "config"))}
    assert sent == {"st0001-k1": DEFAULT_ROLLBACK_AFTER_S, "st0002-k1": DEFAULT_ROLLBACK_AFTER_S}
