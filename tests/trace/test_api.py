"""The trace engine's other surfaces: the downlink's `corr`, the CLI (capture, commission, verify),
locations CSV, alerts scoped by region with an audited acknowledgement, CSV export and the SVG chart,
the console page (journey timeline + map), and the shopper's registration page."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.envelope import MessageType, decode
from broker.payloads import TRACE_LISTS, CommandData, RecalledBatch, TraceListsArgs
from cloud.access.models import AuditEntry
from cloud.bus import downlink
from cloud.db import write_transaction
from cloud.trace.models import Alert
from omnishelf.cli import main
from tests.access.conftest import World, sign_in
from tests.trace import chain
from tests.trace.test_chain import capture, scan


def test_a_command_carries_the_corr_it_was_sent_with(tworld: World) -> None:
    import uuid

    scan_id = uuid.uuid4()
    with write_transaction(tworld.engine) as conn:
        msg_id = downlink.send(conn, "st0001-k1", MessageType.COMMAND, CommandData(name="x"), engine="t", corr=scan_id)
        plain = downlink.send(conn, "st0001-k1", MessageType.COMMAND, CommandData(name="y"), engine="t")
        conn.execute(downlink._NODES.update().values(online=True))
    with write_transaction(tworld.engine) as conn:
        claimed = {c.msg_id: c for c in downlink.claim_due(conn, datetime.now(UTC))}
    env = decode(claimed[msg_id].payload or b"", claimed[msg_id].topic)
    assert env.corr == scan_id
    assert decode(claimed[plain].payload or b"", claimed[plain].topic).corr is None


def test_cli_capture_commission_verify(tworld: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], hq: TestClient) -> None:
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", tworld.settings.DATABASE_URL)
    doc, _plan = chain.supply_chain(per_store=2)
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    assert main(["trace", "capture", str(tmp_path / "doc.json"), "--no-progress"]) == 0
    assert f"{len(doc['epcisBody']['eventList'])} events, succeeded" in capsys.readouterr().out
    bad = {**doc, "epcisBody": {"eventList": [{**doc["epcisBody"]["eventList"][0], "action": "CREATE"}]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["trace", "capture", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "refused, nothing stored: event 1 (ObjectEvent): action must be ADD, OBSERVE or DELETE, found 'CREATE'" in err
    (tmp_path / "units.csv").write_text("gtin,serial,batch,expiry,location\n"
                                        f"{chain.GTIN},C1,B7,2030-01-31,fac-suzhou\n{chain.GTIN},C2,B7,,fac-suzhou\n")
    assert main(["trace", "commission", str(tmp_path / "units.csv")]) == 0
    assert "commissioned 2 units" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text(f"gtin,serial,batch,expiry,location\n{chain.GTIN}9,C3,B7,,fac-suzhou\n")
    assert main(["trace", "commission", str(tmp_path / "bad.csv")]) == 2
    assert "line 2: GTIN '095060001343529' must be 8, 12, 13 or 14 digits" in capsys.readouterr().err
    assert main(["trace", "verify", chain.element("C1", "B7", "300131"), "--location", "fac-suzhou"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["verdict"], verdict["rule"]) == ("not_for_sale_here", "never_received")


def test_alerts_scoped_acknowledged_exported_and_charted(tworld: World, hq: TestClient) -> None:
    doc, _plan = chain.supply_chain(per_store=3)
    capture(hq, doc)
    receive_all_small(hq)
    scan(hq, chain.element("UNKNOWN1"), "st0001", "sell")   # east
    scan(hq, chain.element("UNKNOWN2"), "st0003", "sell")   # south
    with tworld.app_client(headers={"Authorization": f"Bearer {tworld.keys['regional']}"}) as east:
        seen = east.get("/trace/alerts").json()
        assert [a["code"] for a in seen] == [chain.element("UNKNOWN1")]  # the regional user sees the east only
        answer = east.post(f"/trace/alerts/{seen[0]['id']}/ack", json={"note": "fake label, police informed"})
        assert answer.status_code == 200 and answer.json()["note"] == "fake label, police informed"
        south_id = next(a["id"] for a in hq.get("/trace/alerts").json() if a["code"].endswith("UNKNOWN2"))
        assert east.post(f"/trace/alerts/{south_id}/ack", json={"note": "x"}).status_code == 404
    with Session(tworld.engine) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "trace.alert.ack")).one()
        assert entry.actor == "key:regional-key" and entry.after == {"note": "fake label, police informed"}
    csv_text = hq.get("/trace/alerts", params={"format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("id,kind,at,code") and "UNKNOWN2" in csv_text and "<GS>" in csv_text
    assert len(csv_text.strip().splitlines()) == 3


def receive_all_small(client: TestClient) -> None:
    now = datetime.now(UTC)
    for i, store in enumerate(chain.STORES, 1):
        v = scan(client, f"]C100{chain.sscc(i)}", store, "receive", at=now)
        assert v["verdict"] == "genuine", v


def test_console_page_journey_map_and_chart(tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=2)
    capture(hq, doc)
    scan(hq, chain.element("UNKNOWN3"), "st0001", "sell")
    with tworld.app_client() as client:
        sign_in(client, "hq")
        page = client.get("/console/trace", params={"code": chain.element(plan["st0003"][0])})
        assert page.status_code == 200
        text = page.text
        assert "Journey of 09506000134352" in text and 'aria-label="journey map"' in text
        assert "Guangzhou DC" in text and "Suzhou factory" in text
        assert 'aria-label="alerts per day"' in text and "unknown_code" in text
        bad = client.get("/console/trace", params={"code": "0109506000134353"})
        assert "AI (01) GTIN: expected check digit 2, found 3" in bad.text
        assert "https://" not in text.split("<body", 1)[1].replace("https://id.gs1.org", "")  # no outside assets


def test_shopper_registers_once_second_is_refused_and_flagged(tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=1)
    capture(hq, doc)
    path = f"/01/{chain.GTIN}/21/{quote(plan['st0001'][0])}"
    with tworld.app_client() as client:
        page = client.get(path)
        assert page.status_code == 200 and "Register your item" in page.text and "<script" not in page.text
        first = client.post(path, data={"contact": "ann@example.com"})
        assert first.status_code == 200 and "Registered" in first.text
        second = client.post(path, data={"contact": "bob@example.com"})
        assert second.status_code == 409 and "already registered" in second.text
        unknown = client.post(f"/01/{chain.GTIN}/21/FAKE", data={"contact": "c@example.com"})
        assert unknown.status_code == 409 and "unknown to the brand" in unknown.text
    with Session(tworld.engine) as s:
        assert [a.kind for a in s.scalars(select(Alert))] == ["second_registration"]


def test_locations_csv_refuses_a_bad_line_naming_it(hq: TestClient, tworld: World) -> None:
    answer = hq.post("/trace/locations/import", content="code,kind,name,gln,region,lat,lon\n"
                     f"wh-1,warehouse,WH,{chain.gln(9)},east,31,121\nwh-2,shop,WH2,,east,31,121\n")
    assert answer.status_code == 422, answer.text
    assert "line 3: kind: must be one of factory, distributor, warehouse, store, got 'shop'" in answer.text
    codes = [x["code"] for x in hq.get("/trace/locations").json()]
    assert "wh-1" not in codes and "fac-suzhou" in codes




def test_a_recall_pushes_the_lists_to_every_store_box_with_a_station(tworld: World, hq: TestClient) -> None:
    from sqlalchemy import update

    from cloud.models import DownlinkCommand, Node

    doc, _plan = chain.supply_chain(per_store=1)
    capture(hq, doc)
    with Session(tworld.engine) as s, s.begin():
        # What the births said: st0002's box runs no station (a kiosk), st0003's did not say.
        s.execute(update(Node).where(Node.id == "st0001-k1").values(commands=["ping", TRACE_LISTS]))
        s.execute(update(Node).where(Node.id == "st0002-k1").values(commands=["ping", "kiosk_refresh"]))
    assert hq.post("/trace/recalls", json={"gtin": chain.GTIN, "batch": "LX", "reason": "expired stock"}).status_code == 201
    with Session(tworld.engine) as s:
        sent = s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "command")).all()
    assert sorted(c.node for c in sent) == ["st0001-k1", "st0003-k1"]  # stray-1 has no store
    assert all(c.data["name"] == TRACE_LISTS for c in sent)
    assert all(TraceListsArgs.model_validate(c.data["args"]).recalled_batches
               == (RecalledBatch(gtin=chain.GTIN, batch="LX", reason="expired stock"),) for c in sent)


def test_alerts_filter_by_region_and_store(tworld: World, hq: TestClient) -> None:
    doc, _plan = chain.supply_chain(per_store=1)
    capture(hq, doc)
    scan(hq, chain.element("UNKNOWN1"), "st0001", "sell")
    scan(hq, chain.element("UNKNOWN2"), "st0003", "sell")
    codes = {f: [a["code"][-8:] for a in hq.get("/trace/alerts", params=p).json()]
             for f, p in (("east", {"region": "east"}), ("st3", {"store": "st0003"}), ("nowhere", {"region": "mars"}))}
    assert codes == {"east": ["UNKNOWN1"], "st3": ["UNKNOWN2"], "nowhere": []}


def test_console_recall_form_and_locations(tworld: World, hq: TestClient) -> None:
    import re

    with tworld.app_client() as client:
        sign_in(client, "hq")
        page = client.get("/console/trace").text
        assert "Suzhou factory" in page and chain.GLNS["fac-suzhou"] in page
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        answer = client.post("/console/trace/recalls", data={"csrf_token": token[1], "gtin": chain.GTIN,
                                                            "serials": "S1, S2", "reason": "tampered"},
                             follow_redirects=False)
        assert answer.status_code == 303, answer.text
        bad = client.post("/console/trace/recalls", data={"csrf_token": token[1], "gtin": chain.GTIN, "reason": "x"})
        assert bad.status_code == 422 and "give the batch, or the serials" in bad.text
    with Session(tworld.engine) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "trace.recall")).one()
        assert entry.via == "console" and entry.after is not None and entry.after["serials"] == ["S1", "S2"]


def test_event_query_parameters(tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=2)
    capture(hq, doc)
    serial = plan["st0001"][0]

    def steps(**params: str) -> list[str]:
        body = hq.get("/epcis/events", params=params).json()
        return [e["bizStep"] for e in body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]

    # MATCH_epc: epcList or childEPCs (the packing names the unit as a child); the case's shipping
    # names the case, found with MATCH_anyEPC of the case only
    assert steps(MATCH_epc=f"urn:epc:id:sgtin:95060001343.05.{serial}") == ["commissioning", "packing"]
    assert steps(MATCH_anyEPC=chain.case(1)) == ["packing", "shipping", "receiving", "shipping"]
    assert steps(EQ_bizStep="shipping", EQ_bizLocation=chain.sgln("dc-east")) == ["shipping"] * 2  # to st0001, st0002
    t0 = doc["epcisBody"]["eventList"][0]["eventTime"]
    assert steps(MATCH_anyEPC=chain.case(1), LT_eventTime=t0) == []
    assert steps(MATCH_anyEPC=chain.case(1), GE_eventTime=t0)[:1] == ["packing"]
    bad = hq.get("/epcis/events", params={"MATCH_foo": "x"})
    assert bad.status_code == 422 and "unknown query parameter" in bad.text


def test_cli_streams_a_large_document_in_batches_and_refuses_a_bad_last_event(
        tworld: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.trace.models import Capture, Event

    monkeypatch.setenv("OMNISHELF_DATABASE_URL", tworld.settings.DATABASE_URL)
    n = 3000
    base = datetime(2026, 11, 1, tzinfo=UTC)
    events = [chain.event("ObjectEvent", base, "inspecting", "fac-suzhou", eventID=f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                          epcList=[chain.unit(f"B{i:06d}")]) for i in range(n)]
    path = tmp_path / "big.json"
    bad = [*events[:-1], {**events[-1], "eventTimeZoneOffset": "8:00"}]
    path.write_text(json.dumps(chain.document(bad)))
    assert main(["trace", "capture", str(path), "--no-progress"]) == 2
    assert f"event {n} (ObjectEvent): eventTimeZoneOffset must be ±HH:MM, found '8:00'" in capsys.readouterr().err
    with Session(tworld.engine) as s:
        assert s.scalar(select(Event.id).limit(1)) is None  # nothing stored
    path.write_text(json.dumps(chain.document(events)))
    assert main(["trace", "capture", str(path), "--no-progress", "--batch", "1000"]) == 0
    assert f"{n} events, succeeded; {n} new" in capsys.readouterr().out
    with Session(tworld.engine) as s:
        job = s.scalars(select(Capture)).one()
        assert (job.total, job.done, job.stored, job.status) == (n, n, n, "succeeded")


def test_journeys_and_event_queries_show_a_regional_user_only_the_places_it_sees(tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=1)
    capture(hq, doc)
    east_unit, south_unit = plan["st0001"][0], plan["st0003"][0]
    whole = hq.get(f"/trace/items/(01){chain.GTIN}(21){south_unit}").json()
    assert {e["place"]["code"] for e in whole["events"] if e["place"]} == {"fac-suzhou", "dc-south"}
    with tworld.app_client(headers={"Authorization": f"Bearer {tworld.keys['regional']}"}) as east:
        # The east's own unit: the factory and the east's distributor, both in the east.
        mine = east.get(f"/trace/items/(01){chain.GTIN}(21){east_unit}").json()
        assert {e["place"]["code"] for e in mine["events"] if e["place"]} == {"fac-suzhou", "dc-east"}
        # A south unit: only what happened in the east (its factory), never the south's distributor.
        theirs = east.get(f"/trace/items/(01){chain.GTIN}(21){south_unit}").json()
        assert {e["place"]["code"] for e in theirs["events"] if e["place"]} == {"fac-suzhou"}
        assert len(theirs["events"]) < len(whole["events"])
        # The EPCIS query the same way: receiving happened at both distributors, the east sees its own.
        steps = east.get("/epcis/events", params={"EQ_bizStep": "receiving"}).json()
        places = {e["bizLocation"]["id"] for e in steps["epcisBody"]["queryResults"]["resultsBody"]["eventList"]}
        assert places == {chain.sgln("dc-east")}
        everything = hq.get("/epcis/events", params={"EQ_bizStep": "receiving"}).json()
        assert len(everything["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 2
    with tworld.app_client(headers={"Authorization": f"Bearer {tworld.keys['store']}"}) as store:
        # A store user (st0003) sees its store only, where nothing of this chain happened yet.
        assert store.get(f"/trace/items/(01){chain.GTIN}(21){south_unit}").status_code == 404
