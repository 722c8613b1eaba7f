"""The fleet's write operations through the REST API: create and rename regions, create and edit
stores (time zone and coordinates validated), assign a box to a store, retire a box. Each refusal
is a 422 naming the field or a 404 naming the id (an id outside the caller's scope is answered like
an unknown one), writes nothing and audits nothing; each change writes one audit row. SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import CommandData
from cloud.access.models import AuditEntry
from cloud.bus import downlink
from cloud.db import write_transaction
from cloud.models import DownlinkCommand, Region, Store
from tests.access.conftest import World

TZ_MESSAGE = "is not an IANA time zone name (e.g. 'Asia/Shanghai')"


def _audit(engine: Engine) -> list[tuple[str, str, str, str, Any, Any]]:
    with Session(engine) as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.action.like("region.%") | AuditEntry.action.like("store.%")
                                                  | AuditEntry.action.like("node.%")).order_by(AuditEntry.id)).all()
        return [(r.action, r.actor, r.object_id, r.via, r.before, r.after) for r in rows]


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _refused(answer: Any, field: str, message: str, *, where: str = "body") -> None:
    """A 422 in FastAPI's shape, naming the field and saying what is wrong with it."""
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == [where, field], error
    assert message in error["msg"], error


def _forbidden(answer: Any, message: str) -> None:
    """A 403 saying what the caller's rights lack (its scope, not its request, is the problem)."""
    assert answer.status_code == 403, answer.text
    assert message in answer.text, answer.text


def _not_found(answer: Any, message: str) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == message


@pytest.fixture
def api(world: World) -> Any:
    with world.app_client() as client:
        yield client


def as_(world: World, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[role]}"}


def test_regions_are_created_and_renamed_by_all_region_roles_only(world: World, api: TestClient) -> None:
    hq, regional, store = as_(world, "hq"), as_(world, "regional"), as_(world, "store")
    made = api.post("/regions", json={"code": "north", "name": "North China"}, headers=hq)
    assert made.status_code == 201 and {k: made.json()[k] for k in ("code", "name")} == {"code": "north", "name": "North China"}
    regions = _count(world.engine, Region)

    _refused(api.post("/regions", json={"code": "north", "name": "Again"}, headers=hq), "code", "region 'north' already exists")
    _refused(api.post("/regions", json={"code": "North!", "name": "x"}, headers=hq), "code",
             "'North!' is not a code: 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit")
    _refused(api.post("/regions", json={"code": "west", "name": "   "}, headers=hq), "name", "1 to 200 characters")
    _refused(api.post("/regions", json={"code": "west"}, headers=hq), "name", "Field required")
    _refused(api.post("/regions", json={"code": "west", "name": "W", "colour": "red"}, headers=hq), "colour",
             "Extra inputs are not permitted")
    # A regional manager sees part of the map only: a new region is not theirs to make.
    _forbidden(api.post("/regions", json={"code": "west", "name": "West"}, headers=regional),
               "creating a region needs a principal that sees every region (admin or hq)")
    assert api.post("/regions", json={"code": "west", "name": "West"}, headers=store).status_code == 403
    assert api.post("/regions", json={"code": "west", "name": "West"}).status_code == 401
    assert _count(world.engine, Region) == regions

    renamed = api.patch("/regions/north", json={"name": "Northern China"}, headers=hq)
    assert renamed.status_code == 200 and renamed.json()["name"] == "Northern China"
    _not_found(api.patch("/regions/nowhere", json={"name": "x"}, headers=hq),
               "No region 'nowhere' (unknown, or outside your regions)")
    _forbidden(api.patch("/regions/east", json={"name": "Mine"}, headers=regional),
               "renaming a region needs a principal that sees every region (admin or hq)")

    assert _audit(world.engine) == [
        ("region.create", "key:hq-key", "north", "api", None, {"code": "north", "name": "North China"}),
        ("region.update", "key:hq-key", "north", "api", {"code": "north", "name": "North China"},
         {"code": "north", "name": "Northern China"}),
    ]


BAD_STORE_EDITS: list[tuple[dict[str, Any], str, str]] = [
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", f"'Mars/Olympus_Mons' {TZ_MESSAGE}"),
    ({"timezone": "../../etc/passwd"}, "timezone", f"'../../etc/passwd' {TZ_MESSAGE}"),
    ({"timezone": "asia/shanghai "}, "timezone", f"'asia/shanghai ' {TZ_MESSAGE}"),
    ({"timezone": ""}, "timezone", "at least 1 character"),
    ({"lat": 90.5}, "lat", "less than or equal to 90"),
    ({"lat": -91}, "lat", "greater than or equal to -90"),
    ({"lon": 180.01}, "lon", "less than or equal to 180"),
    ({"lon": "east"}, "lon", "valid number"),
    ({"name": ""}, "name", "at least 1 character"),
    ({"name": "\t"}, "name", "1 to 200 characters"),
]


@pytest.mark.parametrize(("edit", "field", "message"), BAD_STORE_EDITS, ids=[str(e[0]) for e in BAD_STORE_EDITS])
def test_a_bad_store_edit_is_refused_naming_the_field_and_changes_nothing(
    world: World, api: TestClient, edit: dict[str, Any], field: str, message: str
) -> None:
    before = api.get("/stores", headers=as_(world, "hq")).json()
    _refused(api.patch("/stores/st0001", json={"name": "Renamed", **edit}, headers=as_(world, "hq")), field, message)
    assert api.get("/stores", headers=as_(world, "hq")).json() == before
    assert _audit(world.engine) == []


def test_non_finite_coordinates_are_refused(world: World, api: TestClient) -> None:
    for raw in (b'{"lat": NaN}', b'{"lon": Infinity}', b'{"lat": 1e999}'):
        answer = api.patch("/stores/st0001", content=raw, headers={**as_(world, "hq"), "Content-Type": "application/json"})
        assert answer.status_code == 422, (raw, answer.text)
    assert _audit(world.engine) == []


def test_stores_are_created_and_edited_within_the_callers_regions_audited(world: World, api: TestClient) -> None:
    hq, regional = as_(world, "hq"), as_(world, "regional")
    store = {"code": "st0009", "name": "Ningbo Tianyi", "region": "east", "lat": 29.87, "lon": 121.55, "timezone": "Asia/Shanghai"}
    _refused(api.post("/stores", json={**store, "timezone": "China/Ningbo"}, headers=regional), "timezone",
             f"'China/Ningbo' {TZ_MESSAGE}")
    _refused(api.post("/stores", json={**store, "lat": 129.87}, headers=regional), "lat", "less than or equal to 90")
    _not_found(api.post("/stores", json={**store, "region": "south"}, headers=regional),
               "No region 'south' (unknown, or outside your regions)")
    _not_found(api.post("/stores", json={**store, "region": "nowhere"}, headers=hq),
               "No region 'nowhere' (unknown, or outside your regions)")
    stores = _count(world.engine, Store)
    made = api.post("/stores", json=store, headers=regional)
    assert made.status_code == 201 and made.json()["timezone"] == "Asia/Shanghai"
    _refused(api.post("/stores", json=store, headers=hq), "code", "store 'st0009' already exists")
    assert _count(world.engine, Store) == stores + 1

    edited = api.patch("/stores/st0009", json={"timezone": "Asia/Urumqi", "lat": 43.8}, headers=regional)
    assert edited.status_code == 200
    assert {k: edited.json()[k] for k in ("lat", "lon", "timezone")} == {"lat": 43.8, "lon": 121.55, "timezone": "Asia/Urumqi"}
    # Another region's store is unknown to them; so is another region to move theirs into.
    _not_found(api.patch("/stores/st0003", json={"name": "Mine now"}, headers=regional),
               "No store 'st0003' (unknown, or outside your regions and stores)")
    _not_found(api.patch("/stores/st0009", json={"region": "south"}, headers=regional),
               "No region 'south' (unknown, or outside your regions)")
    _not_found(api.patch("/stores/st9999", json={"name": "x"}, headers=hq),
               "No store 'st9999' (unknown, or outside your regions and stores)")
    assert api.patch("/stores/st0003", json={"name": "x"}, headers=as_(world, "store")).status_code == 403
    moved = api.patch("/stores/st0009", json={"region": "south"}, headers=hq)
    assert moved.status_code == 200 and moved.json()["region"] == "south"

    view = {"code": "st0009", "name": "Ningbo Tianyi", "region": "east", "lat": 29.87, "lon": 121.55, "timezone": "Asia/Shanghai"}
    urumqi = view | {"lat": 43.8, "timezone": "Asia/Urumqi"}
    assert _audit(world.engine) == [
        ("store.create", "key:regional-key", "st0009", "api", None, view),
        ("store.update", "key:regional-key", "st0009", "api", view, urumqi),
        ("store.update", "key:hq-key", "st0009", "api", urumqi, urumqi | {"region": "south"}),
    ]


def _node(api: TestClient, world: World, node: str, role: str = "hq") -> dict[str, Any]:
    answer = api.get(f"/nodes/{node}", headers=as_(world, role))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_box_is_assigned_to_a_store_in_scope_only_audited(world: World, api: TestClient) -> None:
    hq, regional = as_(world, "hq"), as_(world, "regional")
    assigned = api.patch("/nodes/stray-1", json={"store": "st0003"}, headers=hq)
    assert assigned.status_code == 200 and assigned.json()["store"] == "st0003"

    _not_found(api.patch("/nodes/st0001-k1", json={"store": "st9999"}, headers=hq),
               "No store 'st9999' (unknown, or outside your regions and stores)")
    _not_found(api.patch("/nodes/nope-1", json={"store": "st0001"}, headers=hq),
               "No node 'nope-1': unknown, never sent a message and not seeded, or outside your scope")
    _refused(api.patch("/nodes/st0001-k1", json={}, headers=hq), "store",
             "give store (a store code) to move the box, or retired: true")
    _refused(api.patch("/nodes/st0001-k1", json={"retired": False}, headers=hq), "store",
             "give store (a store code) to move the box, or retired: true")
    _refused(api.patch("/nodes/st0001-k1", json={"store": "st0002", "owner": "me"}, headers=hq), "owner",
             "Extra inputs are not permitted")
    # The regional manager (east): neither another region's box nor another region's store.
    _not_found(api.patch("/nodes/st0003-k1", json={"store": "st0001"}, headers=regional),
               "No node 'st0003-k1': unknown, never sent a message and not seeded, or outside your scope")
    _not_found(api.patch("/nodes/st0001-k1", json={"store": "st0003"}, headers=regional),
               "No store 'st0003' (unknown, or outside your regions and stores)")
    assert api.patch("/nodes/st0003-k1", json={"store": "st0003"}, headers=as_(world, "store")).status_code == 403
    assert _node(api, world, "st0001-k1")["store"] == "st0001"
    moved = api.patch("/nodes/st0001-k1", json={"store": "st0002"}, headers=regional)
    assert moved.status_code == 200 and moved.json()["store"] == "st0002"

    assert _audit(world.engine) == [
        ("node.assign", "key:hq-key", "stray-1", "api", {"id": "stray-1", "store": None, "retired_at": None},
         {"id": "stray-1", "store": "st0003", "retired_at": None}),
        ("node.assign", "key:regional-key", "st0001-k1", "api", {"id": "st0001-k1", "store": "st0001", "retired_at": None},
         {"id": "st0001-k1", "store": "st0002", "retired_at": None}),
    ]


def test_a_retired_box_leaves_the_fleet_its_commands_are_cancelled_and_it_cannot_be_assigned(
    world: World, api: TestClient
) -> None:
    hq, regional = as_(world, "hq"), as_(world, "regional")
    with write_transaction(world.engine) as conn:
        waiting = downlink.send(conn, "st0002-k1", MessageType.COMMAND, CommandData(name="ping"), engine="test")

    _not_found(api.patch("/nodes/st0003-k1", json={"retired": True}, headers=regional),
               "No node 'st0003-k1': unknown, never sent a message and not seeded, or outside your scope")
    assert api.patch("/nodes/st0003-k1", json={"retired": True}, headers=as_(world, "store")).status_code == 403
    assert _node(api, world, "st0003-k1")["retired_at"] is None

    retired = api.patch("/nodes/st0002-k1", json={"retired": True}, headers=regional)
    assert retired.status_code == 200 and retired.json()["retired_at"] is not None and retired.json()["online"] is False
    assert "st0002-k1" not in [n["id"] for n in api.get("/nodes", headers=hq).json()]
    assert [n["id"] for n in api.get("/nodes", params={"retired": True}, headers=hq).json()] == ["st0002-k1"]
    with Session(world.engine) as s:
        command = s.scalars(select(DownlinkCommand).where(DownlinkCommand.msg_id == waiting)).one()
        assert (command.status, command.detail) == ("cancelled", "the box was retired")

    _refused(api.patch("/nodes/st0002-k1", json={"store": "st0001"}, headers=hq), "node",
             "box 'st0002-k1' is retired; it cannot be assigned")
    again = api.patch("/nodes/st0002-k1", json={"retired": True}, headers=hq)  # already retired: nothing to do
    assert again.status_code == 200 and again.json()["retired_at"] == retired.json()["retired_at"]

    (row,) = _audit(world.engine)
    assert row[:4] == ("node.retire", "key:regional-key", "st0002-k1", "api")
    assert row[4] == {"id": "st0002-k1", "store": "st0002", "retired_at": None}
    assert row[5]["retired_at"] is not None and row[5]["store"] == "st0002"
