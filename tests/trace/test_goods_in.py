"""Goods-in of a case against the shipping notice (SQLite and PostgreSQL): every unit inside received
at once and counted; a unit that does not belong to the shipment to this store is flagged and not
received; units the notice names but the case lacks are counted missing. And the clerk who scanned,
sent by the box over the real bus, is kept with the scan and shown on the item's journey."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.payloads import ClerkRef, ScanPurpose
from cloud.bus.worker import CloudBus
from cloud.engines import load_engines
from cloud.trace.models import Scan, Unit
from tests.access.conftest import World, sign_in
from tests.cloud.conftest import box, cloud_settings, running
from tests.conftest import Broker
from tests.trace import chain
from tests.trace.test_bus import ask
from tests.trace.test_chain import capture, scan


def _unit_state(world: World, serial: str) -> tuple[str, int | None]:
    with Session(world.engine) as s:
        u = s.scalars(select(Unit).where(Unit.serial == serial)).one()
        return u.state, u.location_id


def test_a_case_that_matches_its_notice_is_received_whole(hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=4)
    capture(hq, doc)
    v = scan(hq, f"]C100{chain.sscc(1)}", "st0001", "receive")
    assert (v["verdict"], v["rule"], v["message"]) == ("genuine", "commissioned_unit", "4 of 4 units received"), v
    assert {k: v["evidence"][k] for k in ("sscc", "units", "expected", "received", "intruders", "missing")} == {
        "sscc": chain.sscc(1), "units": 4, "expected": 4, "received": 4, "intruders": [], "missing": 0}
    # Received: each unit now sells as genuine here.
    assert scan(hq, chain.element(plan["st0001"][0]), "st0001", "sell")["verdict"] == "genuine"


def test_an_intruder_in_the_case_is_flagged_and_not_received(tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=4)
    capture(hq, doc)
    # A unit shipped to st0003 ends up in st0001's case (repacked on the way).
    stray = plan["st0003"][0]
    t = datetime.now(UTC) - timedelta(days=1)
    capture(hq, chain.document([chain.event("AggregationEvent", t, "packing", "dc-east", action="ADD",
                                            parentID=chain.case(1), childEPCs=[chain.unit(stray)])]))
    v = scan(hq, f"]C100{chain.sscc(1)}", "st0001", "receive")
    assert (v["verdict"], v["rule"]) == ("diverted", "case_mismatch"), v
    assert v["message"] == "4 of 5 received; 1 unit does not belong to this shipment"
    assert {k: v["evidence"][k] for k in ("units", "expected", "received", "intruders", "missing")} == {
        "units": 5, "expected": 4, "received": 4, "intruders": [f"(01){chain.GTIN}(21){stray}"], "missing": 0}
    assert _unit_state(tworld, stray)[0] == "in_transit"  # not received here
    assert _unit_state(tworld, plan["st0001"][1])[0] == "received"
    alerts = hq.get("/trace/alerts").json()
    assert any(a["kind"] == "diverted" and chain.sscc(1) in a["code"] for a in alerts), alerts


def test_units_the_notice_names_but_the_case_lacks_are_missing(hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=3)
    capture(hq, doc)
    # A later notice to st0002 names the case and its units one by one, plus one that is not in it.
    t = datetime.now(UTC) - timedelta(hours=5)
    named = [chain.case(2), *(chain.unit(s) for s in plan["st0002"]), chain.unit(plan["factory"][0])]
    capture(hq, chain.document([chain.event(
        "ObjectEvent", t, "shipping", "dc-east", epcList=named, disposition="in_transit",
        destinationList=[{"type": "location", "destination": chain.sgln("st0002")}])]))
    v = scan(hq, f"]C100{chain.sscc(2)}", "st0002", "receive")
    assert (v["verdict"], v["rule"]) == ("diverted", "case_mismatch"), v
    assert v["message"] == "3 of 3 received; 1 unit of the shipping notice is not in the case"
    assert {k: v["evidence"][k] for k in ("units", "expected", "received", "intruders", "missing")} == {
        "units": 3, "expected": 4, "received": 3, "intruders": [], "missing": 1}


def test_a_case_received_without_any_notice_is_counted_not_judged(hq: TestClient) -> None:
    doc, _plan = chain.supply_chain(per_store=2)
    capture(hq, doc)
    # st0001's case received at st0002: no notice sent it there, and its units were shipped to st0001.
    v = scan(hq, f"]C100{chain.sscc(1)}", "st0002", "receive")
    assert (v["verdict"], v["evidence"]["expected"], len(v["evidence"]["intruders"])) == ("diverted", None, 2), v
    assert v["message"] == "0 of 2 received; 2 units do not belong to this shipment"


def test_the_clerk_who_scanned_is_kept_and_shown_on_the_journey(broker: Broker, tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=3)
    capture(hq, doc)
    assert scan(hq, f"]C100{chain.sscc(1)}", "st0001", "receive")["verdict"] == "genuine"
    sold = plan["st0001"][0]
    engine = tworld.engine
    mei = ClerkRef(id="7", name="Mei Chen")

    async def body() -> Any:
        bus = CloudBus(await cloud_settings(broker, engine), engine, load_engines())
        async with running(bus), box(broker, "st0001-k1") as b1:
            await b1.birth(data={"store": "st0001"})
            v = await ask(b1, chain.element(sold), ScanPurpose.SELL, clerk=mei)
            plain = await ask(b1, chain.element(plan["st0001"][1]), ScanPurpose.VERIFY)
            return v, plain

    v, plain = asyncio.run(body())
    assert v.verdict.value == "genuine" and plain.verdict.value == "genuine"
    with Session(engine) as s:
        rows = {r.msg_id: (r.clerk_id, r.clerk_name) for r in s.scalars(select(Scan).where(Scan.msg_id.in_([v.scan_id, plain.scan_id])))}
    assert rows == {v.scan_id: ("7", "Mei Chen"), plain.scan_id: (None, None)}
    journey = hq.get(f"/trace/items/{chain.unit(sold)}").json()
    selling = [e for e in journey["events"] if e.get("bizStep", "").endswith("retail_selling")]
    assert [e["clerk"] for e in selling] == [{"id": "7", "name": "Mei Chen"}], journey["events"]
    with tworld.app_client() as client:
        sign_in(client, "hq")
        page = client.get("/console/trace", params={"code": chain.element(sold)})
        assert page.status_code == 200 and "by Mei Chen" in page.text


def test_a_notice_that_names_the_pallet_counts_for_the_cases_on_it(hq: TestClient) -> None:
    doc, _plan = chain.supply_chain(per_store=4)
    capture(hq, doc)
    # Re-routed: st0001's case goes on a pallet shipped to st0002.
    t = datetime.now(UTC) - timedelta(hours=3)
    pallet = chain.case(9)
    capture(hq, chain.document([
        chain.event("AggregationEvent", t, "packing", "dc-east", action="ADD", parentID=pallet,
                    childEPCs=[chain.case(1)]),
        chain.event("ObjectEvent", t + timedelta(minutes=5), "shipping", "dc-east", epcList=[pallet],
                    disposition="in_transit", destinationList=[{"type": "location", "destination": chain.sgln("st0002")}]),
    ]))
    v = scan(hq, f"]C100{chain.sscc(1)}", "st0002", "receive")
    assert (v["verdict"], v["message"], v["evidence"]["expected"]) == ("genuine", "4 of 4 units received", 4), v
