"""A simulated supply chain (factory → two distributors in two regions → four stores) through the
REST API, with injected clones, diversions, resales, recalls, expired units and unknown codes, and
benign noise (double scans, undo then resale, returns): every fraud gets its class, no genuine
sale is flagged, and alerts name exactly the frauds."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from tests.trace import chain


def capture(client: TestClient, doc: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/epcis/capture", json=doc)
    assert answer.status_code == 202, answer.text
    status = client.get(answer.headers["Location"]).json()
    deadline = time.monotonic() + 20
    while status["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.get(answer.headers["Location"]).json()
    assert status["success"], status
    out: dict[str, Any] = status
    return out


def scan(client: TestClient, code: str, location: str, purpose: str = "verify", at: datetime | None = None,
         station: str = "till-1") -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "location": location, "purpose": purpose, "station": station}
    if at is not None:
        body["at"] = at.isoformat()
    answer = client.post("/trace/scans", json=body)
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    return out


def receive_all(client: TestClient, now: datetime) -> None:
    for i, store in enumerate(chain.STORES, 1):
        v = scan(client, f"]C100{chain.sscc(i)}", store, "receive", at=now - timedelta(days=5))
        assert (v["verdict"], v["evidence"]["units"]) == ("genuine", 10), v


def test_supply_chain_every_fraud_flagged_no_genuine_sale_flagged(hq: TestClient) -> None:
    doc, plan = chain.supply_chain()
    status = capture(hq, doc)
    assert status["stored"] == len(doc["epcisBody"]["eventList"])
    now = datetime.now(UTC)
    receive_all(hq, now)
    east1, east2, south3, south4 = (plan[s] for s in chain.STORES)
    el = chain.element
    got: list[tuple[str, str, str]] = []

    def sale(serial_code: str, store: str, expect: str, rule: str | None = None, **kw: Any) -> dict[str, Any]:
        v = scan(hq, serial_code, store, kw.pop("purpose", "sell"), **kw)
        got.append((serial_code, v["verdict"], v["rule"]))
        assert v["verdict"] == expect, v
        if rule:
            assert v["rule"] == rule, v
        return v

    # genuine sales in every store, one scanned twice at the till (a tolerated double scan)
    sale(el(east1[0]), "st0001", "genuine", "commissioned_unit", at=now)
    sale(el(east1[0]), "st0001", "genuine", "duplicate_scan", at=now + timedelta(seconds=5))
    sale(el(east2[0]), "st0002", "genuine", at=now)
    sale(el(south3[0]), "st0003", "genuine", at=now)
    sale(el(south4[0]), "st0004", "genuine", at=now)
    # undo then resale at the same store; a return then resale
    sale(el(east2[1]), "st0002", "genuine", at=now)
    sale(el(east2[1]), "st0002", "genuine", "return_accepted", purpose="undo", at=now + timedelta(minutes=2))
    sale(el(east2[1]), "st0002", "genuine", "commissioned_unit", at=now + timedelta(minutes=3))
    sale(el(south4[1]), "st0004", "genuine", at=now)
    sale(el(south4[1]), "st0004", "genuine", "return_accepted", purpose="return", at=now + timedelta(hours=1))
    sale(el(south4[1]), "st0004", "genuine", "commissioned_unit", at=now + timedelta(hours=2))
    genuine_alerts = hq.get("/trace/alerts").json()
    assert genuine_alerts == [], genuine_alerts

    # frauds
    clone = sale(el(east1[2]), "st0001", "genuine", at=now)
    clone = sale(el(east1[2]), "st0003", "cloned", "impossible_travel", at=now + timedelta(minutes=10))
    assert clone["evidence"]["from"]["code"] == "st0001" and clone["evidence"]["distance_km"] > 1000
    assert clone["evidence"]["speed_kmh"] > 900
    sale(el(east1[3]), "st0003", "diverted", "wrong_region", at=now)  # shipped to the east, offered in the south
    sale(el(east2[2]), "st0002", "genuine", at=now)
    sale(el(east2[2]), "st0002", "already_sold", "sold_before", at=now + timedelta(hours=3))  # resale
    recall = hq.post("/trace/recalls", json={"gtin": chain.GTIN, "serials": [south3[2]], "reason": "tampered seal"})
    assert recall.status_code == 201, recall.text
    sale(el(south3[2]), "st0003", "recalled", "unit_recalled", at=now)
    sale(el(south3[-1], "LX", "200131"), "st0003", "expired", "expiry_passed", at=now)
    sale(el("NOPE0001"), "st0004", "unknown_code", "never_commissioned", at=now)
    sale(el(south4[3], "L9"), "st0004", "batch_or_expiry_mismatch", "attributes_differ", at=now)
    sale(el(plan["factory"][0]), "st0004", "not_for_sale_here", "never_received", at=now)
    sale("0109506000134353", "st0004", "malformed", "parse_error", at=now)
    sale("4006381333931", "st0004", "untracked", "plain_product_code", at=now)

    alerts = hq.get("/trace/alerts").json()
    kinds = sorted(a["kind"] for a in alerts)
    assert kinds == sorted(["cloned", "diverted", "already_sold", "recalled_sold", "unknown_code",
                            "batch_or_expiry_mismatch"]), alerts
    flagged = {a["code"] for a in alerts}
    genuine_codes = {c for c, v, _r in got if v == "genuine"} - {el(east1[2]), el(east2[2])}
    assert not flagged & genuine_codes


def test_batch_recall_and_journey_through_cases(hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=3, expired_batch=False)
    capture(hq, doc)
    serial = plan["st0003"][0]
    journey = hq.get(f"/trace/items/{quote(chain.element(serial), safe='')}").json()
    steps = [(e["bizStep"], (e["place"] or {}).get("code")) for e in journey["events"]]
    # commissioned, packed, the case shipped to the DC, received there, shipped to the store
    assert steps == [("commissioning", "fac-suzhou"), ("packing", "fac-suzhou"), ("shipping", "fac-suzhou"),
                     ("receiving", "dc-south"), ("shipping", "dc-south")], steps
    assert journey["unit"]["parent"] == chain.sscc(3)
    answer = hq.post("/trace/recalls", json={"gtin": chain.GTIN, "batch": "L1", "reason": "contamination"})
    assert answer.status_code == 201
    v = scan(hq, chain.element(serial), "st0003", "sell")
    assert (v["verdict"], v["rule"]) == ("recalled", "batch_recalled")
    # the same query by any code form: URN, Digital Link, HRI
    urn = f"urn:epc:id:sgtin:95060001343.05.{serial}"
    after = hq.get(f"/trace/items/{quote(chain.element(serial), safe='')}").json()["events"]
    assert after == journey["events"]  # a refused sale is no movement
    for form in (urn, chain.unit(serial), f"(01){chain.GTIN}(21){serial}"):
        assert hq.get(f"/trace/items/{quote(form, safe='')}").json()["events"] == after, form
