"""The scanning station end to end: a real Mosquitto, the real agent, a fake cloud on the bus, codes
read by the real decoder from a video file and from HID keystrokes, verdicts on the local API."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from broker.envelope import Envelope, MessageType
from broker.payloads import TRACE_LISTS as LISTS_COMMAND
from broker.payloads import (
    AckData,
    CommandData,
    ListUnit,
    RecalledBatch,
    ScanData,
    TraceListsArgs,
    VerdictClass,
    VerdictData,
    VerdictRule,
)
from edge.agent import EdgeAgent
from edge.station.codes import read_code
from edge.station.component import StationComponent
from edge.station.scanners import CameraScanner, HidScanner, keystrokes
from edge.station.testcard import Symbol, write_video
from firmware_config import NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, cloud_reachable, until

GTIN = "09506000134352"
DM_HRI = f"(01){GTIN}(17)301231(10)L001(21)SER001"
DM_CODE = f"01{GTIN}1730123110L001\x1d21SER001"
QR_LINK = f"https://id.gs1.org/01/{GTIN}/21/SER002"


def station_config(tmp: Path, broker: Broker, password: str, devices: list[dict[str, Any]], **station: Any) -> NodeConfig:
    return NodeConfig.model_validate({
        "node_id": NODE,
        "store_id": "st1",
        "data_dir": str(tmp / "data"),
        "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": password},
        "backoff": {"base_s": 0.05, "cap_s": 0.3},
        "devices": devices,
        "local_api": {"port": 0},
        "station": {"enabled": True, "final_wait_s": 0, **station},
    })


def http(agent: EdgeAgent, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    assert agent.api is not None
    req = urllib.request.Request(agent.api.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def api(agent: EdgeAgent, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(http, agent, method, path, body)


def sd(env: Envelope) -> ScanData:
    assert isinstance(env.data, ScanData)
    return env.data


def ad(env: Envelope) -> AckData:
    assert isinstance(env.data, AckData)
    return env.data


def station_of(agent: EdgeAgent) -> StationComponent:
    found = agent.component("station")
    assert isinstance(found, StationComponent)
    return found


def verdict_env(scan: Envelope, verdict: VerdictClass, rule: VerdictRule, message: str = "", **kw: Any) -> Envelope:
    # What the cloud's reading of the code gives (the box's stop-gap reader stands in for it here).
    data = VerdictData(scan_id=scan.msg_id, code=sd(scan).code, parsed=read_code(sd(scan).code, sd(scan).symbology),
                       verdict=verdict, rule=rule, message=message, decided_at=datetime.now(UTC), **kw)
    return Envelope(type=MessageType.VERDICT, node=NODE, session=1, seq=0, corr=scan.msg_id, data=data)


def test_video_scans_reach_the_cloud_and_its_verdicts_the_local_api(broker: Broker, tmp_path: Path) -> None:
    video = tmp_path / "counter.avi"
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "scanner", "name": "cam", "source": "camera", "path": str(video), "formats": ["datamatrix", "qrcode"],
         "purpose": "sell", "debounce_s": 0.2},
    ])

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await cloud_reachable(agent.bus)
        # The camera is plugged in once the box knows the cloud is online (until then its driver
        # reports it unavailable and retries): every scan then waits for the cloud's verdict.
        part = tmp_path / "part.avi"  # written whole, then plugged in at once
        write_video(part, [Symbol(DM_HRI, gs1=True), Symbol(QR_LINK, "qrcode"), Symbol(DM_HRI, gs1=True)], hold=5, gap=3)
        part.rename(video)
        # The same code held for 5 frames is one scan; shown again after another code, a new one.
        await until(lambda: len(cloud.of(MessageType.SCAN)) >= 3, what="three scans")
        scans = cloud.of(MessageType.SCAN)
        assert [(sd(s).code, sd(s).purpose.value, sd(s).station) for s in scans] == [
            (DM_CODE, "sell", "cam"), (QR_LINK, "sell", "cam"), (DM_CODE, "sell", "cam")]
        assert str(sd(scans[0]).symbology).startswith("]d") and sd(scans[1]).symbology == "]Q1"
        cam = station_of(agent).scanners["cam"]
        assert isinstance(cam, CameraScanner)
        await until(lambda: cam.stats.ended, what="end of the video")
        assert len(cloud.of(MessageType.SCAN)) == 3
        # Online, with final_wait_s 0: no provisional verdict, the scan waits for the cloud.
        status, body = await api(agent, "GET", f"/station/verdicts/{scans[0].msg_id}")
        assert (status, body["verdict"], body["code"]) == (200, None, DM_CODE)
        command = verdict_env(scans[0], VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT, "received here on 2026-11-20")
        await cloud.resend(command)
        await until(lambda: bool(cloud.acks_for(command)), what="the verdict's ack")
        ack = ad(cloud.acks_for(command)[0])
        assert ack.ok and ack.detail == f"stored genuine for scan {scans[0].msg_id}"
        status, body = await api(agent, "GET", f"/station/verdicts/{scans[0].msg_id}")
        assert status == 200
        assert {k: body["verdict"][k] for k in ("verdict", "rule", "provisional", "message")} == {
            "verdict": "genuine", "rule": "commissioned_unit", "provisional": False, "message": "received here on 2026-11-20"}
        # The same command again (a redelivery) is not run twice: the bus dedupes it, no second ack.
        await cloud.resend(command)
        fence = await cloud.send(NODE, MessageType.COMMAND, {"name": "ping"})
        await until(lambda: bool(cloud.acks_for(fence)), what="the fence's ack")
        assert len(cloud.acks_for(command)) == 1
        status, latest = await api(agent, "GET", "/station/verdicts?limit=10")
        assert [s["scan_id"] for s in latest["scans"]] == [str(s.msg_id) for s in reversed(scans)]
        status, summary = await api(agent, "GET", "/station")
        assert (summary["scans"], summary["awaiting_verdict"], summary["final_count"], summary["cloud_online"]) == (3, 2, 1, True)
        assert summary["scanners"]["cam"] == {"source": "camera", "purpose": "sell", "frames": 24, "decoded": 15,
                                              "scans": 3, "fps": summary["scanners"]["cam"]["fps"], "ended": True,
                                              "state": "ended", "detail": "the video source ended"}
        status, feed = await api(agent, "GET", "/station/events?after=0")
        kinds = [e["kind"] for e in feed["events"]]
        assert kinds.count("scan") == 3 and kinds.count("verdict") == 1
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())


def test_hid_scanner_keystrokes_become_scans(broker: Broker, tmp_path: Path) -> None:
    device = tmp_path / "event-kbd"
    device.write_bytes(b"")
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "scanner", "name": "hid", "source": "hid", "path": str(device), "purpose": "receive"},
    ])

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        with device.open("ab") as f:
            f.write(keystrokes("]d2" + DM_CODE))  # with the AIM prefix, GS typed as Ctrl+]
            f.write(keystrokes("]d2" + DM_CODE))  # a double trigger: debounced
            f.write(keystrokes("4006381333931"))  # an EAN-13 without a prefix
        await until(lambda: len(cloud.of(MessageType.SCAN)) >= 2, what="two scans")
        scans = cloud.of(MessageType.SCAN)
        assert [(sd(s).code, sd(s).symbology, sd(s).purpose.value) for s in scans] == [
            (DM_CODE, "]d2", "receive"), ("4006381333931", None, "receive")]
        hid = station_of(agent).scanners["hid"]
        assert isinstance(hid, HidScanner) and hid.lines == 3
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())


def test_offline_provisional_verdict_then_final_and_an_alert(broker: Broker, tmp_path: Path) -> None:
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [])

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(False)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await agent.bus.connected.wait()
        lists = TraceListsArgs(version=3, received=(ListUnit(gtin=GTIN, serial="SER001", batch="L001", expiry=date(2030, 12, 31)),),
                               recalled_batches=(RecalledBatch(gtin=GTIN, batch="B666", reason="contaminated"),))
        push = await cloud.send(NODE, MessageType.COMMAND, CommandData(name=LISTS_COMMAND, args=lists.model_dump(mode="json")).model_dump())
        # Commands reach a box whose cloud is offline (its acks wait in the outbox with the scans).
        await until(lambda: station_of(agent).db.list_version == 3, what="the lists applied")
        status, held = await api(agent, "GET", "/station/lists")
        assert (held["version"], held["received"], held["recalled_batches"]) == (3, 1, 1)
        # The cloud is unreachable: the station answers from its lists, provisionally.
        status, scan = await api(agent, "POST", "/station/scans", {"code": "]d2" + DM_CODE, "purpose": "sell", "wait_s": 5})
        assert status == 200, scan
        assert {k: scan["verdict"][k] for k in ("verdict", "rule", "provisional")} == {
            "verdict": "genuine", "rule": "offline_cache", "provisional": True}
        status, bad = await api(agent, "POST", "/station/scans",
                                {"code": f"(01){GTIN}(10)B666(21)SER009", "purpose": "sell", "wait_s": 5})
        assert (bad["verdict"]["verdict"], bad["verdict"]["message"]) == ("recalled", "batch B666 is recalled: contaminated")
        # Offline, the sale is remembered: the same unit again is already sold.
        status, again = await api(agent, "POST", "/station/scans", {"code": DM_CODE, "purpose": "sell", "wait_s": 5})
        assert again["verdict"]["verdict"] == "already_sold"
        assert cloud.of(MessageType.SCAN) == []  # held in the outbox
        # The link is back: the scans go up, the cloud's final verdict replaces the provisional one.
        await cloud.set_online(True)
        await until(lambda: len(cloud.of(MessageType.SCAN)) == 3, what="the held scans")
        await until(lambda: bool(cloud.acks_for(push)), what="the lists' ack")
        assert ad(cloud.acks_for(push)[0]).detail == "version 3 applied (1 units)"
        first = next(s for s in cloud.of(MessageType.SCAN) if str(s.msg_id) == scan["scan_id"])
        assert sd(first).symbology == "]d2" and sd(first).code == DM_CODE
        # Each scan tells the cloud what the clerk was told offline (HQ is alerted if it is overturned).
        assert sorted(str(sd(s).provisional) for s in cloud.of(MessageType.SCAN)) == [
            "already_sold", "genuine", "recalled"]
        command = verdict_env(first, VerdictClass.CLONED, VerdictRule.IMPOSSIBLE_TRAVEL, "sold in Chengdu 30 minutes ago")
        await cloud.resend(command)
        await until(lambda: bool(cloud.acks_for(command)), what="the verdict's ack")
        assert ad(cloud.acks_for(command)[0]).detail == f"replaced cloned for scan {first.msg_id} (was provisional genuine)"
        status, now = await api(agent, "GET", f"/station/verdicts/{first.msg_id}")
        assert (now["verdict"]["verdict"], now["verdict"]["provisional"]) == ("cloned", False)
        status, alerts = await api(agent, "GET", "/station/alerts")
        assert [(a["scan_id"], a["was"], a["now"]) for a in alerts["alerts"]] == [(str(first.msg_id), "genuine", "cloned")]
        assert "sold in Chengdu 30 minutes ago" in alerts["alerts"][0]["message"]
        status, acked = await api(agent, "POST", f"/station/alerts/{alerts['alerts'][0]['id']}/ack", {"note": "item kept"})
        assert acked["acknowledged"] and not acked["already"]
        status, alerts = await api(agent, "GET", "/station/alerts")
        assert alerts["alerts"] == []
        # A late provisional never replaces a final verdict; a verdict whose corr is not its scan is refused.
        wrong = verdict_env(first, VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT)
        wrong = wrong.model_copy(update={"corr": uuid.uuid4()})
        await cloud.resend(wrong)
        await until(lambda: bool(cloud.acks_for(wrong)), what="the refusal")
        assert not ad(cloud.acks_for(wrong)[0]).ok
        status, now = await api(agent, "GET", f"/station/verdicts/{first.msg_id}")
        assert now["verdict"]["verdict"] == "cloned"
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())


def test_event_feed_long_poll_wakes_on_a_verdict(broker: Broker, tmp_path: Path) -> None:
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [])

    async def main() -> None:
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        status, feed = await api(agent, "GET", "/station/events?after=0")
        last = feed["last"]
        waiting = asyncio.create_task(api(agent, "GET", f"/station/events?after={last}&wait=20"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        status, _ = await api(agent, "POST", "/station/scans", {"code": "hello"})  # unreadable: malformed, offline
        status, woke = await asyncio.wait_for(waiting, 10)
        assert status == 200 and woke["events"][0]["kind"] == "scan"
        status, later = await api(agent, "GET", f"/station/events?after={woke['events'][0]['id']}&wait=5")
        assert later["events"][0]["kind"] == "verdict" and later["events"][0]["data"]["verdict"] == "malformed"
        status, err = await api(agent, "POST", "/station/scans", {"code": ""})
        assert (status, err["error"]) == (400, "body field 'code': String should have at least 1 character")
        status, err = await api(agent, "GET", "/station/verdicts/nope")
        assert (status, err["error"]) == (400, "scan id 'nope' is not a scan id: expected a UUID")
        await agent.stop()
        await asyncio.wait_for(task, 10)

    arun(main())


def test_a_slow_cloud_gets_a_provisional_answer_meanwhile(broker: Broker, tmp_path: Path) -> None:
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [], final_wait_s=0.3)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        assert agent.bus is not None
        await cloud_reachable(agent.bus)
        _, scan = await api(agent, "POST", "/station/scans", {"code": DM_CODE, "wait_s": 5})
        assert (scan["verdict"]["provisional"], scan["verdict"]["rule"]) == (True, "offline_cache")
        await until(lambda: bool(cloud.of(MessageType.SCAN)), what="the scan")
        command = verdict_env(cloud.of(MessageType.SCAN)[0], VerdictClass.UNKNOWN_CODE, VerdictRule.NEVER_COMMISSIONED)
        await cloud.resend(command)
        await until(lambda: bool(cloud.acks_for(command)), what="the verdict's ack")
        _, now = await api(agent, "GET", f"/station/verdicts/{scan['scan_id']}")
        assert (now["verdict"]["verdict"], now["verdict"]["provisional"]) == ("unknown_code", False)
        # not_for_sale_here (provisional) → unknown_code: both alarms, nothing let through: no alert.
        _, alerts = await api(agent, "GET", "/station/alerts")
        assert alerts["alerts"] == []
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())
