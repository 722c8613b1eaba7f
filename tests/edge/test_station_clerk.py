"""The clerk's station API on a real agent, a real Mosquitto and a fake cloud on the bus: a signed-in
clerk is stamped on scans, order steps and stock adjustments (a token naming nobody is refused and
sends nothing); stock here and nearby through the kiosk's figures, from the cloud and from the cache;
printers and scanners always in the summary."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.envelope import Envelope, MessageType
from broker.payloads import (
    CLERK_ROSTER,
    ClerkRef,
    ClerkRosterArgs,
    FulfilData,
    ParsedCode,
    RosterClerk,
    ScanData,
    StockData,
    VerdictClass,
    VerdictData,
    VerdictRule,
)
from broker.pins import hash_pin
from edge.agent import EdgeAgent
from edge.clerks.component import ClerksComponent
from firmware_config import NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, cloud_reachable, until
from tests.kiosk.conftest import StockApi

PIN = "2580"
MEI = ClerkRef(id="7", name="Mei Chen")
CODE = "(01)09506000134352(21)SER001"


def config(tmp: Path, broker: Broker, stock_url: str, *, require: bool = False) -> NodeConfig:
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1", "data_dir": str(tmp / "data"), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": broker.add_node(NODE)},
        "backoff": {"base_s": 0.05, "cap_s": 0.3}, "local_api": {"port": 0},
        "devices": [{"kind": "printer", "name": "till", "connection": "file", "path": str(tmp / "receipts.bin")},
                    {"kind": "scanner", "name": "hid", "source": "hid", "path": str(tmp / "no-such-keyboard")}],
        "station": {"enabled": True, "final_wait_s": 0},
        "orders": {"enabled": True},
        "clerks": {"require_sign_in": require},
        "kiosk": {"enabled": True, "stock_url": stock_url, "stock_timeout_s": 2,
                  "nearby": [{"code": "st3", "name": "Binjiang", "km": 7.9}, {"code": "st2", "name": "Xihu Road", "km": 2.4}]},
    })


def http(agent: EdgeAgent, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    assert agent.api is not None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["X-Clerk-Session"] = token
    req = urllib.request.Request(agent.api.url + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def api(agent: EdgeAgent, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(http, agent, method, path, body, token)


async def signed_in(agent: EdgeAgent, cloud: Cloud) -> str:
    roster = ClerkRosterArgs(version=1, store="st1", clerks=(RosterClerk(id=7, name="Mei Chen", pin_hash=hash_pin(PIN)),))
    await cloud.send(NODE, MessageType.COMMAND, {"name": CLERK_ROSTER, "args": roster.model_dump(mode="json")})
    clerks = agent.component("clerks")
    assert isinstance(clerks, ClerksComponent)
    await until(lambda: clerks.db.version == 1, what="the roster on the box")
    status, body = await api(agent, "POST", "/clerks/sign-in", {"clerk_id": 7, "pin": PIN})
    assert status == 200, body
    return str(body["token"])


async def fence(cloud: Cloud) -> None:
    """Everything the box sent before this is in (the bus keeps a box's messages in order)."""
    ping = await cloud.send(NODE, MessageType.COMMAND, {"name": "ping"})
    await until(lambda: bool(cloud.acks_for(ping)), what="the fence's ack")


def scans(cloud: Cloud) -> list[ScanData]:
    return [e.data for e in cloud.of(MessageType.SCAN) if isinstance(e.data, ScanData)]


def test_a_signed_in_clerk_is_stamped_on_scans_steps_and_adjustments(broker: Broker, tmp_path: Path) -> None:
    stock = StockApi()
    stock.set("TEA-1", "st1", 5)
    stock.rows[-1]["on_hand"] = 8  # 3 reserved for orders
    stock.set("TEA-1", "st2", 2)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(config(tmp_path, broker, stock.url))
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await cloud_reachable(agent.bus)
        token = await signed_in(agent, cloud)

        # Scans: with the clerk, without a header (nobody), and a token naming nobody (refused, nothing sent).
        status, body = await api(agent, "POST", "/station/scans", {"code": CODE, "purpose": "sell"}, token)
        assert status == 200 and body["clerk"] == {"id": "7", "name": "Mei Chen"}, body
        status, body = await api(agent, "POST", "/station/scans", {"code": CODE}, "not-a-session")
        assert status == 401, body
        assert body["error"] == ("X-Clerk-Session: no clerk is signed in with this token (signed out, expired, or the "
                                 "clerk was deactivated): sign in again")
        status, body = await api(agent, "POST", "/station/scans", {"code": CODE, "purpose": "verify"})
        assert status == 200 and body["clerk"] is None
        await fence(cloud)
        assert [(s.purpose.value, s.clerk) for s in scans(cloud)] == [("sell", MEI), ("verify", None)]
        # The station's own history says who scanned (the app's list of scans).
        status, latest = await api(agent, "GET", "/station/verdicts?limit=5")
        assert [(s["purpose"], s["clerk"]) for s in latest["scans"]] == [("verify", None),
                                                                          ("sell", {"id": "7", "name": "Mei Chen"})]

        # An order step carries the clerk to the cloud.
        assign = await cloud.send(NODE, MessageType.ASSIGN, {
            "order_id": "41", "assignment": 9, "fulfilment": "pickup", "lines": [{"sku": "TEA-1", "qty": 1}],
            "pickup_code_sha256": hashlib.sha256(b"123456").hexdigest()})
        await until(lambda: bool(cloud.acks_for(assign)), what="the assign's ack")
        status, body = await api(agent, "POST", "/desk/orders/9/accept", {}, "expired-or-forged")
        assert status == 401 and "sign in again" in body["error"]
        status, body = await api(agent, "POST", "/desk/orders/9/accept", {}, token)
        assert status == 200 and body["clerk"] == {"id": "7", "name": "Mei Chen"} and body["state"] == "accepted", body
        await until(lambda: bool(cloud.of(MessageType.FULFIL)), what="the fulfil message")
        steps = [e.data for e in cloud.of(MessageType.FULFIL) if isinstance(e.data, FulfilData)]
        assert [(f.status.value, f.clerk) for f in steps] == [("accepted", MEI)]

        # Stock here and nearby, from the cloud; nearest store first, a store with no figure says null.
        status, body = await api(agent, "GET", "/station/stock/TEA-1")
        assert status == 200, body
        assert {k: body[k] for k in ("sku", "here", "nearby", "source")} == {
            "sku": "TEA-1", "here": {"on_hand": 8, "available": 5}, "source": "cloud",
            "nearby": [{"store": "st2", "name": "Xihu Road", "distance_km": 2.4, "available": 2},
                       {"store": "st3", "name": "Binjiang", "distance_km": 7.9, "available": None}]}
        as_of = body["as_of"]
        assert isinstance(as_of, str) and as_of.endswith("+00:00")
        stock.up = False  # the cloud's stock API fails: the figures last fetched, said so
        status, body = await api(agent, "GET", "/station/stock/TEA-1")
        assert (status, body["source"], body["here"], body["as_of"]) == (200, "cache", {"on_hand": 8, "available": 5}, as_of)
        status, body = await api(agent, "GET", "/station/stock/NEVER-SEEN")
        assert (status, body["here"], body["as_of"], body["source"]) == (200, None, None, "cache")
        status, body = await api(agent, "GET", "/station/stock/bad%20sku")
        assert status == 400 and body["error"].startswith("'bad sku' is not a SKU")

        # Adjustments: bad input named, nothing sent; a good one goes up once as a stock delta.
        for bad, why in [({"sku": "TEA-1", "delta": 0, "reason": "lost"}, "body field 'delta': Value error, delta is 0"),
                         ({"sku": "TEA-1", "delta": -1, "reason": "stolen"}, "body field 'reason': Input should be"),
                         ({"sku": "TEA-1", "delta": 10_001, "reason": "found"}, "body field 'delta': Input should be less"),
                         ({"sku": "TEA 1", "delta": 1, "reason": "found"}, "body field 'sku': String should match")]:
            status, body = await api(agent, "POST", "/station/stock/adjustments", bad, token)
            assert status == 400 and body["error"].startswith(why), (bad, body)
        adjustment = {"sku": "TEA-1", "delta": -2, "reason": "damaged", "note": "dropped a box", "request_id": "adj-1"}
        status, body = await api(agent, "POST", "/station/stock/adjustments", adjustment, token)
        assert status == 202, body
        assert {k: body[k] for k in ("sku", "delta", "reason", "note", "clerk", "on_hand_after", "new")} == {
            "sku": "TEA-1", "delta": -2, "reason": "damaged", "note": "dropped a box",
            "clerk": {"id": "7", "name": "Mei Chen"}, "on_hand_after": 6, "new": True}
        # Retried (the answer was lost on the way): the same adjustment, nothing sent again.
        status, again = await api(agent, "POST", "/station/stock/adjustments", adjustment, token)
        assert (status, again) == (202, {**body, "new": False})
        await fence(cloud)
        sent = [e.data for e in cloud.of(MessageType.STOCK) if isinstance(e.data, StockData)]
        assert len(sent) == 1 and not sent[0].snapshot
        level = sent[0].levels[0]
        assert (level.sku, level.delta, level.reason, level.clerk, level.note, level.ref) == (
            "TEA-1", -2, "damaged", MEI, "dropped a box", body["adjustment_id"])

        # A reprint takes the header too.
        status, body = await api(agent, "POST", "/station/print/jobs/1/reprint", None, "nobody")
        assert status == 401

        # The summary always shows the printer (with its jobs waiting) and the scanner (here: no device).
        status, summary = await api(agent, "GET", "/station")
        assert status == 200
        till = summary["printers"]["till"]
        assert till["state"] in ("starting", "ready") and till["queued"] == 0 and till["default"] is True
        await until(lambda: http(agent, "GET", "/station")[1]["scanners"]["hid"]["state"] == "unavailable",
                    what="the missing scanner reported unavailable")
        hid = http(agent, "GET", "/station")[1]["scanners"]["hid"]
        assert hid["source"] == "hid" and "no-such-keyboard" in hid["detail"], hid
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    try:
        arun(main())
    finally:
        stock.close()


def test_a_box_that_requires_sign_in_refuses_unattributed_writes(broker: Broker, tmp_path: Path) -> None:
    stock = StockApi()

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(config(tmp_path, broker, stock.url, require=True))
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await cloud_reachable(agent.bus)
        for path, body in [("/station/scans", {"code": CODE}),
                           ("/station/stock/adjustments", {"sku": "TEA-1", "delta": 1, "reason": "found"})]:
            status, answer = await api(agent, "POST", path, body)
            assert status == 401, answer
            assert answer["error"] == ("this box requires a signed-in clerk: sign in (POST /clerks/sign-in) and send "
                                       "the token in the X-Clerk-Session header")
        token = await signed_in(agent, cloud)
        status, answer = await api(agent, "POST", "/station/scans", {"code": CODE}, token)
        assert status == 200 and answer["clerk"]["name"] == "Mei Chen"
        await fence(cloud)
        assert [s.clerk for s in scans(cloud)] == [MEI]
        assert cloud.of(MessageType.STOCK) == []
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    try:
        arun(main())
    finally:
        stock.close()


def test_a_case_received_prints_its_goods_in_label_with_the_count(broker: Broker, tmp_path: Path) -> None:
    stock = StockApi()
    sscc = "106141411234567897"

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(config(tmp_path, broker, stock.url))
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await cloud_reachable(agent.bus)
        status, body = await api(agent, "POST", "/station/scans", {"code": f"]C100{sscc}", "purpose": "receive"})
        assert status == 200, body
        await until(lambda: bool(cloud.of(MessageType.SCAN)), what="the case's scan")
        scan = cloud.of(MessageType.SCAN)[0]
        message = "23 of 24 received; 1 unit does not belong to this shipment"
        verdict = VerdictData(
            scan_id=scan.msg_id, code=f"00{sscc}", parsed=ParsedCode(form="element_string", sscc=sscc),
            verdict=VerdictClass.DIVERTED, rule=VerdictRule.CASE_MISMATCH, message=message, decided_at=datetime.now(UTC),
            evidence={"sscc": sscc, "units": 24, "expected": 23, "received": 23, "missing": 0,
                      "intruders": ["(01)09506000134352(21)X1"]})
        await cloud.resend(Envelope(type=MessageType.VERDICT, node=NODE, session=1, seq=0, corr=scan.msg_id, data=verdict))
        receipts = tmp_path / "receipts.bin"
        await until(lambda: any(j["state"] == "printed" for j in http(agent, "GET", "/station/print/jobs")[1]["jobs"]),
                    what="the goods-in label printed")
        printed = receipts.read_bytes()
        assert message.encode() in printed and sscc.encode() in printed and b"Notice 23 units" in printed, printed
        status, jobs = await api(agent, "GET", "/station/print/jobs")
        assert [(j["kind"], j["scan_id"]) for j in jobs["jobs"]] == [("label", str(scan.msg_id))]
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    try:
        arun(main())
    finally:
        stock.close()
