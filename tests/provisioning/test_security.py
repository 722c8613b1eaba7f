"""Device security with enrolled identities on a real broker: revocation bites a live connection at
once and holds across broker restarts (also when the broker was down at the time); the revoked box
backs off and says why on its /status; a retired identity never comes back; one box cannot read or
forge another's traffic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection, PublishRefused
from cloud.fleet.identity import BrokerAdmin, BrokerAdminError, new_password
from cloud.fleet.models import Identity
from cloud.models import IngestedMessage, Node
from tests.conftest import Broker
from tests.provisioning.conftest import BoxProc, Cloud, claim_box, local_api, start_box


def _password(box: BoxProc) -> str:
    return (box.config_dir / "broker.secret").read_text().strip()


async def _login(broker: Broker, node: str, password: str) -> MqttConnection:
    conn = MqttConnection(BrokerAddress.from_url(broker.url), node, password)
    await conn.connect()
    return conn


def _refused(broker: Broker, node: str, password: str) -> bool:
    async def attempt() -> bool:
        try:
            conn = await _login(broker, node, password)
        except BusAuthError:
            return True
        await conn.disconnect()
        return False

    return asyncio.run(attempt())


def _wait(cond: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def test_revocation_bites_at_once_and_survives_restarts(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-1000")
    boxes.append(box)
    node = claim_box(cloud, box)
    api = local_api(box)
    assert httpx.get(f"{api}/status").json()["bus"]["connected"] is True

    answer = cloud.api.post(f"/nodes/{node}/revoke", json={"reason": "reported stolen"}).json()
    assert (answer["status"], answer["broker_synced"], answer["broker_problem"]) == ("revoked", True, None)

    def refused_locally() -> bool:
        bus = httpx.get(f"{api}/status").json()["bus"]
        return bus["connected"] is False and bus["refused_because"] is not None

    _wait(refused_locally, 10, "the box to be dropped and refused")
    status = httpx.get(f"{api}/status").json()["bus"]
    assert "Not authorized" in status["refused_because"] and "re-claim or reconfigure" in status["refused_because"]
    assert status["auth_failures"] == 1  # it backs off (auth_failure_s), it does not hammer

    password = _password(box)
    assert _refused(cloud.broker, node, password)
    cloud.broker.process.restart()
    assert _refused(cloud.broker, node, password), "a broker restart brought a revoked identity back"

    # Reinstated: the same credential works again (no re-claim needed for a box found again).
    assert cloud.api.post(f"/nodes/{node}/reinstate").json()["status"] == "active"
    assert not _refused(cloud.broker, node, password)


def test_revocation_while_the_broker_is_down_is_applied_when_it_returns(
    cloud: Cloud, boxes: list[BoxProc], tmp_path: Path
) -> None:
    box = start_box(tmp_path, "SN-1100", then_run=False)
    boxes.append(box)
    node = claim_box(cloud, box, wait=0)
    password = _password(box)
    assert not _refused(cloud.broker, node, password)
    cloud.broker.process.stop()
    answer = cloud.api.post(f"/nodes/{node}/revoke", json={"reason": "lost"}).json()
    assert answer["status"] == "revoked" and answer["broker_synced"] is False
    assert answer["broker_problem"].startswith("cannot talk to Mosquitto's dynamic security plugin")
    cloud.broker.process.start()
    _wait(lambda: _refused(cloud.broker, node, password), 10, "the reconciler to disable the credential")

    def recorded() -> bool:  # the reconciler writes it down once the broker confirmed (just after)
        with Session(cloud.engine) as s:
            identity = s.get(Identity, node)
            return identity is not None and identity.broker_synced

    _wait(recorded, 10, "the reconciler to record the broker in sync")


def test_retired_identity_never_comes_back(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-1200", then_run=False)
    boxes.append(box)
    node = claim_box(cloud, box, wait=0)
    password = _password(box)
    assert cloud.api.patch(f"/nodes/{node}", json={"retired": True}).status_code == 200
    _wait(lambda: _refused(cloud.broker, node, password), 10, "the retired credential to be deleted")
    cloud.broker.process.restart()
    assert _refused(cloud.broker, node, password)
    assert cloud.api.post(f"/nodes/{node}/reinstate").json()["detail"][0]["msg"] == (
        f"box {node!r} is retired: only a revoked box can be reinstated"
    )
    # The same hardware, repaired, is claimed again: it gets a new id, never the retired one.
    again = start_box(tmp_path, "SN-1200", then_run=False, tag="-repaired")
    boxes.append(again)
    second = claim_box(cloud, again, wait=0)
    assert second != node and second.startswith("st0001-k")
    assert _refused(cloud.broker, node, password)
    assert not _refused(cloud.broker, second, _password(again))


def test_one_box_cannot_read_or_forge_anothers_traffic(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    a_box, b_box = start_box(tmp_path, "SN-1300", then_run=False), start_box(tmp_path, "SN-1301", then_run=False)
    boxes += [a_box, b_box]
    a, b = claim_box(cloud, a_box, wait=0), claim_box(cloud, b_box, role="scan-station", wait=0)

    async def attempts() -> None:
        conn = await _login(cloud.broker, a, _password(a_box))
        try:
            with pytest.raises(BusAuthError, match="Not authorized"):
                await conn.subscribe([topics.node_dn_filter(b)])
            with pytest.raises(PublishRefused, match="Not authorized"):
                await conn.publish(topics.up(b, "scan"), b"{}")
            await conn.publish(topics.up(a, "scan"), b"{}")  # its own topic: accepted (the fence)
        finally:
            await conn.disconnect()

    asyncio.run(attempts())
    # B's password does not log in as A, nor A's as B.
    assert _refused(cloud.broker, a, _password(b_box)) and _refused(cloud.broker, b, _password(a_box))


def _status(box: BoxProc) -> dict[str, Any]:
    """The box's /status, from its newest local API (it moves when the agent restarts)."""
    lines = [ln for ln in box.log if "local API http://" in ln]
    url = lines[-1].split("local API ")[1].split(",")[0].strip()
    out: dict[str, Any] = httpx.get(f"{url}/status", timeout=5).json()
    return out


def _scans(cloud: Cloud, node: str) -> int:
    with Session(cloud.engine) as s:
        return s.scalar(select(func.count()).where(IngestedMessage.node == node, IngestedMessage.type == "scan")) or 0


def test_rotation_keeps_the_box_online(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    """Without downtime, in a store's terms: the box keeps taking scans through the rotation, the
    cloud stores every one of them exactly once, the box is back within one short reconnect and the
    cloud never shows it offline."""
    box = start_box(tmp_path, "SN-1400")
    boxes.append(box)
    node = claim_box(cloud, box)
    # A steady stream of scans (20 a second from the box's simulator), set up by a config push
    # (the box restarts on it; that restart is not the rotation's).
    stream = {"kind": "simulator", "scans_per_s": 20, "orders_per_min": 0, "stock_every_s": 0}
    r = cloud.api.post("/config-pushes", json={"nodes": [node], "overrides": {"devices": [stream]}, "rollback_after_s": 0})
    assert r.status_code == 201, r.text
    _wait(lambda: _scans(cloud, node) >= 20, 60, "the box to restart on the pushed config and stream scans")
    before = _status(box)["bus"]
    with Session(cloud.engine) as s:
        row = s.get(Node, node)
        assert row is not None and row.online and row.session is not None
        session_before, death_before = row.session, row.last_death_at
    old = _password(box)
    mark = len(box.log)
    r = cloud.api.post(f"/nodes/{node}/rotate-credential")
    assert r.status_code == 202, r.text

    with Session(cloud.engine) as s:
        identity = s.get(Identity, node)
        # Until the box acknowledges, the next password waits wrapped, never in clear.
        assert identity is not None and (identity.pending_password is None or identity.pending_password.startswith("v1:"))

    def rotated() -> bool:
        with Session(cloud.engine) as s:
            identity = s.get(Identity, node)
            return identity is not None and identity.credential_version == 2 and identity.pending_password is None

    _wait(rotated, 15, "the broker to take the new password")
    nxt = box.config_dir / "broker.secret.next"
    _wait(lambda: _password(box) != old and not nxt.exists(), 15, "the box to store the password it logged in with")
    after = _status(box)
    bus = after["bus"]
    assert bus["connected"] is True and bus["auth_failures"] == 0 and bus["refused_because"] is None
    # One reconnect (the broker dropped the old login), and a short one: from losing the old
    # connection to the birth on the new password. 5 s is generous for a loaded machine.
    assert bus["reconnects"] == before["reconnects"] + 1, (before, bus)
    assert bus["last_offline_s"] is not None and bus["last_offline_s"] < 5.0, bus
    # Dropped for the credential change, the box went straight to the new password: no backoff,
    # no login with the old one for the broker to refuse.
    during = "".join(ln for ln in box.log[mark:] if "verdict command" not in ln)
    assert "ended for a credential change" in during and "login refused" not in during, during
    assert _refused(cloud.broker, node, old)

    # The fence: the box's newest seq once the stream has gone on for a while (40 more messages:
    # scans, and acks of the verdicts the cloud answers them with) after the rotation. Every message
    # up to it, the scans taken while the box was reconnecting included, is stored exactly once.
    _wait(lambda: _status(box)["outbox"]["last_seq"] >= after["outbox"]["last_seq"] + 40, 30, "more scans")
    fence = _status(box)["outbox"]["last_seq"]

    def stored_to_fence() -> bool:
        with Session(cloud.engine) as s:
            row = s.get(Node, node)
            return row is not None and row.seq_contig >= fence

    _wait(stored_to_fence, 30, f"the cloud to store every message up to seq {fence}")
    with Session(cloud.engine) as s:
        # Births and deaths are not outbox rows (they carry the newest seq, not one of their own).
        rows = s.execute(select(IngestedMessage.seq, func.count()).where(
            IngestedMessage.node == node, IngestedMessage.seq <= fence, IngestedMessage.type.not_in(("birth", "death")),
        ).group_by(IngestedMessage.seq)).all()
        per_seq = {seq: n for seq, n in rows}
        assert sorted(per_seq) == list(range(1, fence + 1)) and set(per_seq.values()) == {1}
        scans = s.scalars(select(IngestedMessage.seq).where(
            IngestedMessage.node == node, IngestedMessage.type == "scan", IngestedMessage.session > session_before,
            IngestedMessage.seq <= fence)).all()
        # The stream kept going: scans taken on the new connection (or queued while reconnecting).
        assert len(scans) >= 10, scans
        row = s.get(Node, node)
        # The cloud never marked the node offline: no death processed, online on a newer session.
        assert row is not None and row.online and row.session is not None and row.session > session_before
        assert row.last_death_at == death_before and row.lost_seqs == 0


def test_a_pending_password_is_wrapped_to_the_admin_secret_and_the_node() -> None:
    admin = BrokerAdmin(BrokerAddress.from_url("mqtt://127.0.0.1:1"), "admin-secret")
    wrapped = admin.wrap_pending("st0001-k1", "next-password")
    assert "next-password" not in wrapped and len(wrapped) <= 100  # the column's width
    assert admin.unwrap_pending("st0001-k1", wrapped) == "next-password"
    with pytest.raises(BrokerAdminError, match="cannot be opened"):
        admin.unwrap_pending("st0001-k2", wrapped)  # bound to its node: not moved to another box's row
    other = BrokerAdmin(admin.address, "another-secret")
    with pytest.raises(BrokerAdminError, match=r"admin secret changed since the rotation\?\); rotate the credential again"):
        other.unwrap_pending("st0001-k1", wrapped)
    with pytest.raises(BrokerAdminError, match="not in a form this cloud knows"):
        admin.unwrap_pending("st0001-k1", "next-password")
    long = admin.wrap_pending("st0001-k1", new_password())
    assert len(long) <= 100
