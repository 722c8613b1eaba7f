"""Config pushes to a claimed box (real box process under its supervisor, real cloud and broker):
validated on the cloud before sending, applied and acked by the box, rejected with the field named,
and rolled back by the box itself when the new config cannot reach the cloud."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.mosquitto import free_port
from broker.payloads import ConfigData
from cloud.access.service import write_session
from cloud.bus import downlink
from cloud.fleet import config_push
from cloud.fleet.models import ConfigPush, NodeConfigState
from cloud.models import Node
from tests.provisioning.conftest import BoxProc, Cloud, claim_box, start_box


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _progress(cloud: Cloud, batch: str) -> dict[str, Any]:
    out: dict[str, Any] = cloud.api.get(f"/config-pushes/{batch}").json()
    return out


def _box_status(box: BoxProc) -> dict[str, Any]:
    lines = [ln for ln in box.log if "local API http://" in ln]
    url = lines[-1].split("local API ")[1].split(",")[0].strip()
    out: dict[str, Any] = httpx.get(f"{url}/status", timeout=5).json()
    return out


def test_push_applied_rejected_and_rolled_back(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-2000")
    boxes.append(box)
    node = claim_box(cloud, box)

    # Refused by the cloud before anything is sent: the field is named.
    bad = cloud.api.post("/config-pushes", json={"nodes": [node], "overrides": {"telemetry_every_s": -1}})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["msg"].startswith(f"{node}: field 'telemetry_every_s': ")

    # Applied: acked, the box restarts on it, its birth carries the new hash.
    r = cloud.api.post("/config-pushes", json={"store": "st0001", "overrides": {"telemetry_every_s": 30}})
    assert r.status_code == 201, r.text
    batch = r.json()["batch"]
    assert (r.json()["total"], r.json()["pending"]) == (1, 1)
    _wait(lambda: _progress(cloud, batch)["applied"] == 1, 30, "the push to be applied")
    def applied_version() -> int:
        with Session(cloud.engine) as s:
            state = s.get(NodeConfigState, node)
            return state.applied_version if state else -1

    _wait(lambda: applied_version() == 1, 30, "the birth on v1")
    with Session(cloud.engine) as s:
        push = s.query(ConfigPush).filter_by(node_id=node, version=1).one()
        node_row = s.get(Node, node)
        assert node_row is not None and node_row.config_hash == push.config_hash
    assert "telemetry_every_s: 30" in (box.config_dir / "box.yaml").read_text()
    _wait(lambda: _box_status(box)["components"]["config"]["version"] == 1, 20, "the box's status on v1")

    # Rejected by the box (a config the cloud's schema let through, e.g. from an older cloud):
    # the ack names the field and the box keeps running its config.
    with write_session(cloud.engine) as s, s.begin():
        data = ConfigData(config_hash="x" * 64, config={"node_id": node, "store_id": "st0001",
                                                        "broker": {"url": "mqtt://127.0.0.1:1"}, "telemetry_every_s": -5},
                          version=2)
        msg_id = downlink.send(s, node, MessageType.CONFIG, data, engine="fleet")
        now = push.created_at
        state = s.get(NodeConfigState, node)
        assert state is not None
        state.desired_version = 2
        s.add(ConfigPush(node_id=node, version=2, profile="", config=data.config, config_hash="x" * 64, batch=None,
                         status="pending", command_id=str(msg_id), created_by="test", created_at=now, updated_at=now))

    def rejected() -> bool:
        with Session(cloud.engine) as s:
            row = s.query(ConfigPush).filter_by(node_id=node, version=2).one()
            return row.status == "rejected" and row.field == "telemetry_every_s"
    _wait(rejected, 20, "the box to reject v2 naming the field")
    assert _box_status(box)["components"]["config"]["version"] == 1

    # Rolled back: a broker URL nobody listens on; the box cannot reach the cloud for 3 s after
    # applying it, goes back to its last good config by itself, and its next birth says so.
    dead = f"mqtt://127.0.0.1:{free_port()}"
    r = cloud.api.post("/config-pushes", json={"nodes": [node], "overrides": {"broker": {"url": dead}}, "rollback_after_s": 3})
    assert r.status_code == 201, r.text
    batch = r.json()["batch"]
    _wait(lambda: _progress(cloud, batch)["rolled_back"] == 1, 45, "the box to roll back")
    with Session(cloud.engine) as s:
        state = s.get(NodeConfigState, node)
        assert state is not None and state.last_rollback_version == 3 and state.applied_version == 1
        # The box said why in its birth, and the cloud recorded its words.
        assert state.last_rollback_reason == (
            "the box rolled back by itself: could not reach the cloud within 3 s after applying v3")
        node_row = s.get(Node, node)
        assert node_row is not None and node_row.online
    with Session(cloud.engine) as s:
        label = config_push.config_labels(s, [node])[node]
    assert label.startswith("v1 · drift (pushed v3) · rolled back v3 "), label  # what the fleet page shows
    status = _box_status(box)["components"]["config"]
    assert status["version"] == 1
    assert status["last_rollback"]["reason"] == "could not reach the cloud within 3 s after applying v3"
    assert dead not in (box.config_dir / "box.yaml").read_text()


def test_push_to_a_tag_counts_progress(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    a, b = start_box(tmp_path, "SN-2100", then_run=False), start_box(tmp_path, "SN-2101", then_run=False)
    boxes += [a, b]
    na, nb = claim_box(cloud, a, wait=0), claim_box(cloud, b, store="st0002", wait=0)
    assert cloud.api.put(f"/nodes/{na}/tags", json={"tags": ["Pilot", "east"]}).json() == {"node": na, "tags": ["east", "pilot"]}
    bad = cloud.api.put(f"/nodes/{nb}/tags", json={"tags": ["no spaces"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["msg"].startswith("'no spaces' is not a tag")
    r = cloud.api.post("/config-pushes", json={"tag": "pilot", "overrides": {"telemetry_every_s": 15}})
    assert r.status_code == 201, r.text
    body = r.json()
    # Only the tagged box; its agent is not running, so the push waits on the durable downlink.
    assert {k: body[k] for k in ("total", "pending", "applied", "rejected", "rolled_back")} == {
        "total": 1, "pending": 1, "applied": 0, "rejected": 0, "rolled_back": 0}
    assert [p["node"] for p in body["pushes"]] == [na]
    none = cloud.api.post("/config-pushes", json={"tag": "nobody", "overrides": {}})
    assert none.status_code == 422 and none.json()["detail"][0]["msg"] == "no enrolled, active box there"
