"""REST, webhooks and console of the orders engine: intake and idempotency, the inbox, signed
webhooks with the example mappings, scoping, rules with dry run, stock CSV, pages and audit."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud.access.models import AuditEntry
from cloud.db import write_transaction
from cloud.orders import service
from cloud.orders.channels import sign
from tests.access.conftest import World, sign_in, world  # noqa: F401 - fixtures

SECRET = "market-a-secret-0123456789"
NEAR_ST1 = {"lat": 31.2360, "lon": 121.4750}


def _example(name: str) -> Any:
    return json.loads((resources.files("cloud.orders") / "channels" / name).read_text())


@pytest.fixture
def shop(world: World) -> Iterator[tuple[World, TestClient]]:  # noqa: F811
    with write_transaction(world.engine) as conn:
        for node in ("st0001-k1", "st0002-k1", "st0003-k1"):
            service.store_location(conn, node)
    with world.app_client() as client:
        client.headers["Authorization"] = f"Bearer {world.keys['hq']}"
        for code in ("st0001", "st0002", "st0003"):
            r = client.put(f"/stock/{code}", json=[{"sku": "TEA-LJ-250", "on_hand": 5, "min_level": 2},
                                                    {"sku": "SOY-LS-500", "on_hand": 9}, {"sku": "MOON-LT-4", "on_hand": 3}])
            assert r.status_code == 200, r.text
        yield world, client


def body(oid: str, **kw: Any) -> dict[str, Any]:
    return {"channel": "callcentre", "channel_order_id": oid, "fulfilment": "delivery",
            "lines": [{"sku": "TEA-LJ-250", "qty": 1, "price": 168}], **NEAR_ST1, **kw}


def test_post_order_is_idempotent_and_routed(shop: tuple[World, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    _, client = shop

    def per_order(*_a: object, **_k: object) -> None:
        raise AssertionError("routed one order at a time: the REST intake takes the batch's path")

    monkeypatch.setattr(service, "intake", per_order)
    first = client.post("/orders", json=body("CC-1"))
    again = client.post("/orders", json=body("CC-1"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json() | {"created": True}
    assert first.json()["state"] == "routed"
    detail = client.get(f"/orders/{first.json()['id']}").json()
    assert [a["location"] for a in detail["assignments"]] == ["st0001"]
    assert client.get("/orders", params={"channel": "callcentre"}).json()[0]["id"] == first.json()["id"]


BAD = [
    (body("B1", lines=[{"sku": "NOPE", "qty": 1}]), "unknown_sku: unknown SKU NOPE: not in the catalogue"),
    (body("B2", lat=None, lon=None), "no_coordinates: a delivery address needs lat and lon (geocoding is not done here)"),
    (body("B3", lines=[{"sku": "TEA-LJ-250", "qty": -1}]), "bad_quantity: line 1 (TEA-LJ-250): quantity -1 must be 1..10000"),
    ({k: v for k, v in body("B4").items() if k != "lines"}, "missing_field: field 'lines' is missing"),
]


@pytest.mark.parametrize(("payload", "message"), BAD, ids=["sku", "coords", "qty", "missing"])
def test_bad_orders_are_refused_precisely_and_kept_in_the_inbox(shop: tuple[World, TestClient], payload: dict[str, Any],
                                                                 message: str) -> None:
    _, client = shop
    raw = json.dumps(payload)
    r = client.post("/orders", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    item = int(re.search(r"kept as inbox item (\d+)", r.json()["detail"])[1])  # type: ignore[index]
    assert r.json()["detail"] == f"{message} (kept as inbox item {item})"
    [kept] = client.get("/orders/inbox").json()
    assert (kept["id"], kept["raw"], kept["source"]) == (item, raw, "rest")


def test_inbox_item_is_fixed_and_replayed(shop: tuple[World, TestClient]) -> None:
    _, client = shop
    item = client.get("/orders/inbox").json()
    assert item == []
    client.post("/orders", json=body("FIX", lines=[{"sku": "TEA-LJ-25O", "qty": 1}]))
    [kept] = client.get("/orders/inbox").json()
    again = client.post(f"/orders/inbox/{kept['id']}/replay", json={})
    assert again.status_code == 422 and "unknown SKU TEA-LJ-25O" in again.json()["detail"]
    fixed = client.post(f"/orders/inbox/{kept['id']}/replay", json={"body": json.dumps(body("FIX"))})
    assert fixed.status_code == 200 and fixed.json()["state"] == "routed"
    assert client.get("/orders/inbox").json() == []
    assert client.get("/orders/inbox", params={"status": "replayed"}).json()[0]["order_id"] == fixed.json()["id"]


def _signed(client: TestClient, channel: str, raw: bytes, ts: int | None = None, secret: str = SECRET) -> Any:
    ts = int(time.time()) if ts is None else ts
    return client.post(f"/channels/{channel}/webhook", content=raw, headers={
        "X-Omnishelf-Timestamp": str(ts), "X-Omnishelf-Signature": sign(secret, ts, raw),
        "Content-Type": "application/json"})


def test_webhooks_with_the_example_mappings(shop: tuple[World, TestClient]) -> None:
    _, client = shop
    for name in ("market_a", "market_b"):
        assert client.put(f"/channels/{name}", json={"secret": SECRET, "mapping": name}).status_code == 200
    raw = json.dumps(_example("market_a.sample.json")).encode()
    first, again = _signed(client, "market_a", raw), _signed(client, "market_a", raw)
    assert (first.status_code, again.status_code, again.json()["id"]) == (201, 200, first.json()["id"])
    got = client.get(f"/orders/{first.json()['id']}").json()
    assert (got["channel_order_id"], got["customer"], got["amount"]) == ("880012345", "tb-buyer-77", 183.0)
    assert got["lines"] == [{"sku": "TEA-LJ-250", "qty": 1, "price": 168.0, "discount": 10.0},
                            {"sku": "SOY-LS-500", "qty": 2, "price": 12.5, "discount": 0.0}]
    b = _signed(client, "market_b", json.dumps(_example("market_b.sample.json")).encode())
    assert b.status_code == 201 and b.json()["pickup_code"]
    assert [a["location"] for a in client.get(f"/orders/{b.json()['id']}").json()["assignments"]] == ["st0002"]


def test_webhook_signature_and_replay_window(shop: tuple[World, TestClient]) -> None:
    _, client = shop
    client.put("/channels/market_a", json={"secret": SECRET, "mapping": "market_a", "replay_window_s": 60})
    raw = json.dumps(_example("market_a.sample.json")).encode()
    forged = _signed(client, "market_a", raw, secret="not-the-secret-at-all")
    stale = _signed(client, "market_a", raw, ts=int(time.time()) - 120)
    tampered = client.post("/channels/market_a/webhook", content=raw + b" ", headers={
        "X-Omnishelf-Timestamp": str(int(time.time())), "X-Omnishelf-Signature": sign(SECRET, int(time.time()), raw)})
    assert [forged.status_code, stale.status_code, tampered.status_code] == [401, 401, 401]
    assert forged.json()["detail"].startswith("bad_signature: signature does not match the body and the channel's secret")
    assert re.match(r"stale: timestamp is 12\d s off: outside the channel's 60 s replay window", stale.json()["detail"])
    kept = client.get("/orders/inbox").json()
    assert sorted(k["reason"] for k in kept) == ["bad_signature", "bad_signature", "stale"]
    assert client.get("/orders").json() == []


def test_a_store_user_sees_only_its_stores_orders(shop: tuple[World, TestClient]) -> None:
    w, client = shop
    near = client.post("/orders", json=body("NEAR-1")).json()  # → st0001 (east)
    south = client.post("/orders", json=body("FAR-1", lat=22.54, lon=114.06)).json()  # → st0003
    with w.app_client() as store:
        store.headers["Authorization"] = f"Bearer {w.keys['store']}"
        assert [o["id"] for o in store.get("/orders").json()] == [south["id"]]
        assert store.get(f"/orders/{near['id']}").status_code == 404
        assert store.post(f"/orders/{near['id']}/cancel", json={}).status_code == 404


def test_rules_validated_versioned_and_dry_run(shop: tuple[World, TestClient]) -> None:
    _, client = shop
    client.post("/orders", json=body("DRY-1"))
    bad = client.put("/routing/rules", json={"groups": [{"name": "g", "rules": [
        {"name": "r", "filters": [{"field": "kind", "op": "lt", "value": "store"}]}]}]})
    assert bad.status_code == 422
    assert bad.json()["detail"] == ("rule set groups.0.rules.0.filters.0: filter kind lt: kind is not a number; "
                                    "use eq, ne, in or not_in")
    spec = {"groups": [{"name": "g", "rules": [{"name": "warehouses only", "unfilled": "unfulfillable",
                                               "filters": [{"field": "kind", "op": "eq", "value": "warehouse"}]}]}]}
    dry = client.post("/routing/dry-run", json=spec)
    assert dry.json()["outcomes"] == {"unfulfillable": 1}
    assert client.put("/routing/rules", json=spec).json() == {"version": 1}
    assert client.get("/routing/rules").json()["version"] == 1


def test_stock_csv_and_low_stock_alerts(shop: tuple[World, TestClient]) -> None:
    _, client = shop
    bad = client.post("/stock/csv", content="location,sku,on_hand\nst0001,TEA-LJ-250,lots\n")
    assert (bad.status_code, bad.json()["detail"]) == (422, "line 2: on_hand 'lots' is not a whole number")
    ok = client.post("/stock/csv", content="location,sku,on_hand,safety\nst0001,TEA-LJ-250,1,0\n")
    assert ok.json() == {"changed": 1}
    assert [(a["location"], a["sku"], a["atp"]) for a in client.get("/stock/alerts").json()] == [
        ("st0001", "TEA-LJ-250", 1)]
    moves = client.get("/stock/st0001/TEA-LJ-250/movements").json()
    assert moves[0]["on_hand_delta"] == -4 and moves[0]["source"].startswith("csv:key:hq-key")


def test_console_pages_and_an_audited_cancel(world: World) -> None:  # noqa: F811
    with write_transaction(world.engine) as conn:
        for node in ("st0001-k1", "st0002-k1"):
            service.store_location(conn, node)
    with world.app_client() as client:
        csrf = sign_in(client, "hq")
        client.headers["X-CSRF-Token"] = csrf
        client.put("/stock/st0001", json=[{"sku": "TEA-LJ-250", "on_hand": 5, "min_level": 9}])
        oid = client.post("/orders", json=body("CON-1")).json()["id"]
        page = client.get(f"/console/orders/{oid}")
        assert page.status_code == 200
        assert 'id="route-map"' in page.text and "st0001" in page.text and "<svg" in page.text
        assert client.get("/console/orders").status_code == 200
        assert "TEA-LJ-250" in client.get("/console/stock").text.split('id="alerts"')[1].split("</div>")[0]
        assert client.get("/console/routing").status_code == 200
        assert client.get("/console/orders/inbox").status_code == 200
        done = client.post(f"/console/orders/{oid}", data={"csrf_token": csrf, "action": "cancel", "reason": "fraud"},
                           follow_redirects=False)
        assert done.status_code == 303
        again = client.post(f"/console/orders/{oid}", data={"csrf_token": csrf, "action": "cancel"})
        assert again.status_code == 409 and f"order {oid} is cancelled: it cannot be cancelled any more" in again.text
    with world.engine.connect() as conn:
        audit = conn.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.object_id)
                             .where(AuditEntry.action == "order.cancel")).all()
    assert [tuple(a) for a in audit] == [("user:hq", "order.cancel", str(oid))]




def test_call_centre_form_places_an_order_or_names_the_problem(shop: tuple[World, TestClient]) -> None:
    w, _ = shop
    with w.app_client() as client:
        csrf = sign_in(client, "hq")
        form = {"csrf_token": csrf, "channel_order_id": "TEL-1", "customer": "c-9", "fulfilment": "delivery",
                "lat": "31.236", "lon": "121.475", "lines": "TEA-LJ-250 1 168\nSOY-LS-500 2 12.5 1"}
        bad = client.post("/console/orders/new", data=form | {"lines": "TEA-LJ-250 one"})
        assert bad.status_code == 422
        assert "invalid: line 1: &#39;TEA-LJ-250 one&#39;: quantity, price and discount must be numbers" in bad.text
        done = client.post("/console/orders/new", data=form, follow_redirects=False)
        assert done.status_code == 303
        oid = int(done.headers["location"].rsplit("/", 1)[1])
        client.headers["X-CSRF-Token"] = csrf
        got = client.get(f"/orders/{oid}").json()
    assert (got["channel"], got["state"], got["amount"]) == ("callcentre", "routed", 192.0)


def test_a_store_user_changes_only_its_own_stock_and_no_rules(shop: tuple[World, TestClient]) -> None:
    w, _ = shop
    with w.app_client() as store:
        store.headers["Authorization"] = f"Bearer {w.keys['store']}"  # st0003 only
        assert store.put("/stock/st0003", json=[{"sku": "TEA-LJ-250", "on_hand": 1}]).status_code == 200
        other = store.put("/stock/st0001", json=[{"sku": "TEA-LJ-250", "on_hand": 1}])
        assert (other.status_code, other.json()["detail"]) == (
            404, "no location 'st0001' (unknown, or outside your regions and stores)")
        rules = store.put("/routing/rules", json={"groups": [{"name": "g", "rules": [{"name": "r"}]}]})
        assert rules.status_code == 403 and "only a principal with access to all stores" in rules.json()["detail"]


def test_a_store_user_reads_other_stores_stock_only_as_a_shopper_would(shop: tuple[World, TestClient]) -> None:
    """Its kiosk tells shoppers how many a nearby store has: the ATP, not that store's counts,
    reservations or minimum, its low-stock alerts or its history."""
    w, client = shop
    with w.app_client() as store:
        store.headers["Authorization"] = f"Bearer {w.keys['store']}"  # st0003 only
        rows = {r["location"]: r for r in store.get("/stock", params={"sku": "TEA-LJ-250"}).json()}
        assert sorted(rows) == ["st0001", "st0002", "st0003"]
        assert rows["st0001"] == {"sku": "TEA-LJ-250", "location": "st0001", "kind": "store",
                                  "region": rows["st0001"]["region"], "atp": 5,
                                  "updated_at": rows["st0001"]["updated_at"]}
        assert (rows["st0003"]["on_hand"], rows["st0003"]["min_level"]) == (5, 2)
        everything = {r["location"]: r for r in client.get("/stock", params={"sku": "TEA-LJ-250"}).json()}
        assert everything["st0001"]["on_hand"] == 5  # HQ sees every location whole
        client.put("/stock/st0001", json=[{"sku": "TEA-LJ-250", "on_hand": 1}])
        client.put("/stock/st0003", json=[{"sku": "TEA-LJ-250", "on_hand": 1}])
        assert [a["location"] for a in store.get("/stock/alerts").json()] == ["st0003"]
        assert [a["location"] for a in client.get("/stock/alerts").json()] == ["st0001", "st0003"]
        assert store.get("/stock/st0003/TEA-LJ-250/movements").json()[0]["on_hand_delta"] == -4
        other = store.get("/stock/st0001/TEA-LJ-250/movements")
        assert (other.status_code, other.json()["detail"]) == (
            404, "no location 'st0001' (unknown, or outside your regions and stores)")


def test_console_orders_filter_by_date(shop: tuple[World, TestClient]) -> None:
    w, client = shop
    oid = client.post("/orders", json=body("DATE-1")).json()["id"]
    with w.app_client() as console:
        sign_in(console, "hq")
        today = console.get("/console/orders", params={"since": "2000-01-01"}).text
        future = console.get("/console/orders", params={"since": "2999-01-01"}).text
        assert console.get("/console/orders", params={"since": "yesterday"}).status_code == 422
    assert f'href="/console/orders/{oid}"' in today and f'href="/console/orders/{oid}"' not in future
