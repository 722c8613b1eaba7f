"""The clerks API over a real database (SQLite and PostgreSQL): scoping by role in one place, every
change audited without the PIN, weak PINs refused with the rule's message, and every change queued
as a new roster version to each box of the store, superseding an undelivered older one."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.payloads import ClerkRosterArgs
from broker.pins import verify_pin
from cloud.access.models import AuditEntry
from cloud.models import DownlinkCommand
from cloud.staff.models import Clerk
from tests.access.conftest import World

PIN = "2580"


def _h(world: World, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[role]}"}


def _rosters(world: World, node: str) -> list[DownlinkCommand]:
    with Session(world.engine) as s:
        return list(s.scalars(select(DownlinkCommand).where(DownlinkCommand.node == node,
                                                            DownlinkCommand.key.like("staff-roster:%"))
                              .order_by(DownlinkCommand.id)))


def test_create_rename_reset_deactivate_each_audited_and_sent_to_the_store_boxes(world: World) -> None:
    with world.app_client() as client:
        h = _h(world, "hq")
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "Li Wei", "staff_number": "E-17", "pin": PIN},
                        headers=h)
        assert r.status_code == 201, r.text
        clerk = r.json()
        assert clerk["store"] == "st0001" and clerk["name"] == "Li Wei" and clerk["active"] is True
        assert "pin" not in clerk and "pin_hash" not in clerk
        cid = clerk["id"]
        assert client.patch(f"/staff/clerks/{cid}", json={"name": "Li Wei (manager)"}, headers=h).json()["name"] \
            == "Li Wei (manager)"
        assert client.post(f"/staff/clerks/{cid}/pin", json={"pin": "7351"}, headers=h).status_code == 200
        assert client.post(f"/staff/clerks/{cid}/deactivate", headers=h).json()["active"] is False
        listed = client.get("/staff/clerks", params={"store": "st0001"}, headers=h).json()
        assert [(c["id"], c["active"]) for c in listed] == [(cid, False)]
        assert client.get("/staff/clerks", params={"store": "st0001", "active": "true"}, headers=h).json() == []

    with Session(world.engine) as s:
        row = s.get(Clerk, cid)
        assert row is not None and verify_pin("7351", row.pin_hash) and not verify_pin(PIN, row.pin_hash)
        audits = s.scalars(select(AuditEntry).where(AuditEntry.object_type == "clerk").order_by(AuditEntry.id)).all()
        assert [a.action for a in audits] == ["clerk.create", "clerk.update", "clerk.reset_pin", "clerk.deactivate"]
        logged = json.dumps([[a.before, a.after, a.detail] for a in audits])
        assert PIN not in logged and "7351" not in logged and "scrypt" not in logged

    # Four changes, four versions, sent to st0001's box only; each newer one superseded the older
    # undelivered one (no relay runs here), so only the newest is still pending.
    sent = _rosters(world, "st0001-k1")
    assert [c.status for c in sent] == ["superseded", "superseded", "superseded", "pending"]
    last = ClerkRosterArgs.model_validate(sent[-1].data["args"])
    assert last.version == 4 and last.store == "st0001"
    assert [(c.id, c.name, c.staff_number, c.active) for c in last.clerks] == [(cid, "Li Wei (manager)", "E-17", False)]
    assert verify_pin("7351", last.clerks[0].pin_hash)
    assert _rosters(world, "st0002-k1") == []


WEAK = [
    ("7777", "one digit repeated"),
    ("3456", "consecutive digits"),
    ("98765", "consecutive digits"),
    ("8901", "consecutive digits"),
    ("123", "4 to 8 digits"),
    ("123456789", "4 to 8 digits"),
    ("12a4", "4 to 8 digits"),
    ("١٢٣٥", "4 to 8 digits"),  # Arabic-Indic digits are digits to Python, not to a keypad
    ("5" * 33 + "-a-long-secret", "at most 32 characters"),  # refused by the schema: not repeated either
]


@pytest.mark.parametrize(("pin", "why"), WEAK)
def test_a_weak_or_malformed_pin_is_refused_with_the_rule_and_never_echoed(world: World, pin: str, why: str) -> None:
    with world.app_client() as client:
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "A", "pin": pin}, headers=_h(world, "hq"))
    assert r.status_code == 422, r.text
    assert why in r.text and "pin" in r.text
    assert pin not in r.text, r.text


def test_scope_store_user_regional_hq_and_technician(world: World) -> None:
    with world.app_client() as client:
        hq = _h(world, "hq")
        ids = {code: client.post("/staff/clerks", json={"store": code, "name": f"clerk of {code}", "pin": "2468"},
                                 headers=hq).json()["id"] for code in ("st0001", "st0002", "st0003")}
        seen = {role: sorted(c["store"] for c in client.get("/staff/clerks", headers=_h(world, role)).json())
                for role in ("hq", "regional", "store")}
        assert seen == {"hq": ["st0001", "st0002", "st0003"], "regional": ["st0001", "st0002"], "store": ["st0003"]}
        store = _h(world, "store")
        # The store user manages its own store's clerks, and cannot tell another store's from unknown ones.
        assert client.post("/staff/clerks", json={"store": "st0003", "name": "New", "pin": "2469"},
                           headers=store).status_code == 201
        for method, path, body in (("post", "/staff/clerks", {"store": "st0001", "name": "X", "pin": "2469"}),
                                   ("patch", f"/staff/clerks/{ids['st0001']}", {"name": "X"}),
                                   ("post", f"/staff/clerks/{ids['st0001']}/pin", {"pin": "2469"}),
                                   ("post", f"/staff/clerks/{ids['st0001']}/deactivate", None)):
            r = client.request(method, path, json=body, headers=store)
            assert r.status_code == 404, (path, r.text)
            assert "outside your regions and stores" in r.text
        assert client.get(f"/staff/clerks/{ids['st0001']}", headers=store).status_code == 404
        assert client.get(f"/staff/clerks/{ids['st0003']}", headers=store).status_code == 200
        # A technician manages boxes, not people.
        r = client.get("/staff/clerks", headers=_h(world, "technician"))
        assert r.status_code == 403 and "business" in r.text


def test_staff_numbers_are_unique_per_store(world: World) -> None:
    with world.app_client() as client:
        h = _h(world, "hq")
        a = client.post("/staff/clerks", json={"store": "st0001", "name": "A", "pin": "2468", "staff_number": "7"},
                        headers=h)
        assert a.status_code == 201
        # The same number in another store is another person.
        assert client.post("/staff/clerks", json={"store": "st0002", "name": "B", "pin": "2468", "staff_number": "7"},
                           headers=h).status_code == 201
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "C", "pin": "2468", "staff_number": "7"},
                        headers=h)
        assert r.status_code == 422 and f"already clerk {a.json()['id']}'s in this store" in r.text
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "C", "pin": "2468", "staff_number": "a b"},
                        headers=h)
        assert r.status_code == 422 and "is not a staff number" in r.text
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "  ", "pin": "2468"}, headers=h)
        assert r.status_code == 422 and "name" in r.text


def test_a_box_that_said_it_has_no_clerks_component_gets_no_roster(world: World) -> None:
    from sqlalchemy import update

    from cloud.models import Node

    with Session(world.engine) as s, s.begin():
        # What the fleet handler records from births: a kiosk (no clerk_roster), a box that did not say.
        s.execute(update(Node).where(Node.id == "st0001-k1").values(commands=["ping", "kiosk_refresh"]))
    with world.app_client() as client:
        r = client.post("/staff/clerks", json={"store": "st0001", "name": "Li Wei", "pin": PIN}, headers=_h(world, "hq"))
        assert r.status_code == 201, r.text
        assert _rosters(world, "st0001-k1") == []
        with Session(world.engine) as s, s.begin():
            s.execute(update(Node).where(Node.id == "st0001-k1").values(commands=None))
        assert client.post(f"/staff/clerks/{r.json()['id']}/pin", json={"pin": "7351"}, headers=_h(world, "hq")).status_code == 200
    assert [c.status for c in _rosters(world, "st0001-k1")] == ["pending"]
