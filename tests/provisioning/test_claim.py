"""The technician's flow end to end on loopback: a real box process in setup mode (real zeroconf on
127.0.0.1), a real cloud, a real broker: fresh box → online node; each refused token; no claim
without the box's pairing code."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud.access.models import AuditEntry
from cloud.fleet.models import EnrolToken, Identity
from cloud.models import Node
from provisioning import technician
from provisioning.technician import ClaimError
from tests.provisioning.conftest import DISCOVER_S, LOOPBACK, BoxProc, Cloud, start_box
from tests.system.harness import wait_for


def _claim(cloud: Cloud, box: BoxProc, token: str, *, code: str | None = None, store: str = "st0001",
           role: str = "kiosk", wait: float = 30.0) -> technician.Claimed:
    return technician.claim(box.serial, store=store, role=role, token=token, code=code or box.pairing_code,
                            cloud_url=cloud.url, interface=LOOPBACK, wait_online_s=wait,
                            discover_timeout=DISCOVER_S)


def test_fresh_box_becomes_an_online_node(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-0001")
    boxes.append(box)
    code = box.pairing_code
    token = cloud.token("st0001", "kiosk")

    # The technician's table lists it (CLI, real zeroconf on loopback).
    out = subprocess.run([sys.executable, "-m", "omnishelf.cli", "provision", "discover", "--interface", LOOPBACK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["SERIAL", "MODEL", "ADDRESS", "AGE"]
    assert [r.split()[:2] for r in rows] == [["SN-0001", "pi5"]]

    done = _claim(cloud, box, token["token"], code=code)
    assert (done.node_id, done.store, done.role, done.profile, done.online) == ("st0001-k2", "st0001", "kiosk", "kiosk-pi5", True)
    box.wait_line("CLAIMED")

    cfg = (box.config_dir / "box.yaml").read_text()
    assert "node_id: st0001-k2" in cfg and "password_file: broker.secret" in cfg
    secret = (box.config_dir / "broker.secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert not (box.config_dir / "setup.key").exists()
    assert (box.config_dir / "identity.key").stat().st_mode & 0o777 == 0o600

    with Session(cloud.engine) as s:
        node = s.get(Node, "st0001-k2")
        identity = s.get(Identity, "st0001-k2")
        assert node is not None and node.online and node.store is not None and node.store.code == "st0001"
        assert identity is not None and identity.serial == "SN-0001" and identity.status == "active"
        assert identity.broker_synced and identity.first_birth_at is not None
        actions = [a for (a,) in s.execute(select(AuditEntry.action).order_by(AuditEntry.id))]
    assert [a for a in actions if a.split(".")[0] in ("enrol_token", "node", "broker")] == [
        "enrol_token.create", "enrol_token.use", "node.enrol", "broker.grant", "node.first_birth",
    ]
    # The password never reached the laptop: what the cloud answered was sealed to the box's key.
    assert secret.read_text().strip() not in cfg

    # The token is spent: a second box cannot use it.
    other = start_box(tmp_path, "SN-0002")
    boxes.append(other)
    with pytest.raises(ClaimError) as info:
        _claim(cloud, other, token["token"], wait=0)
    assert str(info.value).startswith(f"the cloud refused the claim: enrolment token {token['hint']}… was already used at ")
    assert str(info.value).endswith("(box SN-0001, node st0001-k2): each token claims one box")


def test_refused_tokens_say_why(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-0100", then_run=False)
    boxes.append(box)
    code = box.pairing_code

    expired = cloud.token("st0001", "kiosk")
    with Session(cloud.engine) as s, s.begin():
        s.execute(update(EnrolToken).where(EnrolToken.id == expired["id"])
                  .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    revoked = cloud.token("st0001", "kiosk")
    assert cloud.api.post(f"/enrolment-tokens/{revoked['id']}/revoke").json()["state"] == "revoked"
    other_store = cloud.token("st0002", "kiosk")
    other_role = cloud.token("st0001", "signage")

    cases = [
        ("et_not-a-token", "st0001", "kiosk", "enrolment token not recognised: check it was copied whole, or make a new one in the console"),
        (expired["token"], "st0001", "kiosk", f"enrolment token {expired['hint']}… expired at "),
        (revoked["token"], "st0001", "kiosk", f"enrolment token {revoked['hint']}… was revoked at "),
        (other_store["token"], "st0001", "kiosk", f"enrolment token {other_store['hint']}… is for store st0002, not st0001"),
        (other_role["token"], "st0001", "kiosk", f"enrolment token {other_role['hint']}… is for role signage, not kiosk"),
    ]
    for token, store, role, message in cases:
        with pytest.raises(ClaimError) as info:
            _claim(cloud, box, token, code=code, store=store, role=role, wait=0)
        assert str(info.value).startswith(f"the cloud refused the claim: {message}"), str(info.value)
    with Session(cloud.engine) as s:
        assert s.scalars(select(Identity)).all() == []
        assert s.scalars(select(EnrolToken).where(EnrolToken.used_at.is_not(None))).all() == []
    assert not (box.config_dir / "box.yaml").exists()


def test_no_claim_without_the_pairing_code(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    box = start_box(tmp_path, "SN-0200", then_run=False, lockout_s=5)
    boxes.append(box)
    code = box.pairing_code
    wrong = "000-000" if code != "000-000" else "111-111"
    token = cloud.token("st0001", "kiosk")
    with pytest.raises(ClaimError) as info:
        _claim(cloud, box, token["token"], code=wrong, wait=0)
    assert str(info.value) == "box SN-0200 refused the pairing code: pairing code does not match the one the box shows (4 tries left)"
    # Nothing reached the cloud: the token is still usable and no node exists.
    with Session(cloud.engine) as s:
        row = s.get(EnrolToken, token["id"])
        assert row is not None and row.used_at is None
        assert s.get(Node, "st0001-k2") is None
    # Four more wrong guesses and the box draws a new code; the old one is then worthless.
    for left in (3, 2, 1):
        with pytest.raises(ClaimError, match=f"{left} tries left"):
            _claim(cloud, box, token["token"], code=wrong, wait=0)
    with pytest.raises(ClaimError, match="too many tries: the box shows a new code, usable in 5 s"):
        _claim(cloud, box, token["token"], code=wrong, wait=0)
    new_code = box.pairing_code
    # Locked out for a while: not even the right code is looked at.
    with pytest.raises(ClaimError, match=r"too many wrong pairing codes: try again in [0-9] s"):
        _claim(cloud, box, token["token"], code=new_code, wait=0)
    # The lockout ends by itself: a code asked during it is not looked at (nor counted), so a wrong
    # one is asked until the box compares it again, and refuses it as wrong.
    stale = code if code != new_code else wrong
    answers: list[str] = []

    def looked_at() -> bool:
        try:
            _claim(cloud, box, token["token"], code=stale, wait=0)
        except ClaimError as exc:
            answers.append(str(exc))
            return "too many wrong pairing codes" not in str(exc)
        raise AssertionError("a wrong pairing code was accepted")

    wait_for(looked_at, 30, "the pairing lockout to end", interval=0.5)
    assert "refused the pairing code" in answers[-1], answers
    done = _claim(cloud, box, token["token"], code=new_code, wait=0)
    assert done.node_id == "st0001-k2"
    # Without --then-run the box process ends once claimed.
    assert box.popen.wait(20) == 0
