"""One valid payload per message type, shared by contract tests."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta, timezone

from broker import payloads as p
from broker.envelope import MessageType

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 24, 9, 30, 0, 123000, tzinfo=CST)

SAMPLES: dict[MessageType, p.Payload] = {
    MessageType.BIRTH: p.BirthData(
        software_version="0.1.0",
        config_hash="ab" * 32,
        store="st0001",
        devices=(p.DeviceInfo(kind="scanner", model="HS-2000", serial="SN1"),),
        last_seq=41,
        pending=3,
        oldest_seq=1,
        config_rollback=p.ConfigRollback(version=4, reason="could not reach the cloud within 300 s after applying v4",
                                         at=NOW),
    ),
    MessageType.DEATH: p.DeathData(),
    MessageType.SCAN: p.ScanData(code="\x1d0104012345678901215ABC123", symbology="datamatrix", station="till-1"),
    MessageType.ORDER: p.OrderData(
        order_id="K-1001",
        channel="kiosk",
        lines=(p.OrderLine(sku="SKU-0001", qty=2, price=12.5, discount=1.0),),
        fulfilment=p.Fulfilment.DELIVERY,
        address="上海市黄浦区南京东路 1 号",
        customer="c-42",
        lat=31.2397,
        lon=121.4998,
    ),
    MessageType.STOCK: p.StockData(levels=(p.StockLevel(sku="SKU-0001", on_hand=7),
                                           p.StockLevel(sku="SKU-0002", on_hand=3, delta=-1, reason="sale"))),
    MessageType.POP: p.PopData(screen="door", media_id="a" * 64, campaign_id="xmas", layer=p.SignageLayer.NORMAL,
                               schedule_version=3, started_at=NOW, duration_ms=15000),
    MessageType.FULFIL: p.FulfilData(order_id="K-1001", status=p.FulfilStatus.SHIPPED, assignment=3, carrier="SF",
                                     tracking="SF1234567890"),
    MessageType.ACK: p.AckData(ok=False, detail="config rejected: printer.port out of range"),
    MessageType.TELEMETRY: p.TelemetryData(metrics={"cpu": 0.25, "temp_c": 51.5}),
    MessageType.VERDICT: p.VerdictData(
        scan_id=uuid.UUID("01937a4e-0000-7000-8000-000000000001"),
        code="0104012345678901215ABC",
        parsed=p.ParsedCode(form="element_string", gtin="04012345678901", serial="5ABC",
                            epc="urn:epc:id:sgtin:4012345.067890.5ABC"),
        verdict=p.VerdictClass.GENUINE,
        rule=p.VerdictRule.COMMISSIONED_UNIT,
        message="Genuine: received at this store on 24 Nov",
        decided_at=NOW,
    ),
    MessageType.ASSIGN: p.AssignData(
        order_id="W-77", lines=(p.OrderLine(sku="SKU-0002", qty=1),), fulfilment=p.Fulfilment.PICKUP,
        assignment=3, accept_by=NOW + timedelta(minutes=15), pickup_code_sha256="c" * 64, channel="web",
    ),
    MessageType.CONFIG: p.ConfigData(config_hash="cd" * 32, config={"node_id": "st0001-k1"}, version=3, rollback_after_s=300),
    MessageType.SCHEDULE: p.ScheduleData(
        version=3,
        timeline_hash="0123456789abcdef" * 2,
        screen="main",
        timezone="Asia/Shanghai",
        valid_from=NOW,
        valid_until=NOW + timedelta(hours=48),
        items=(p.ScheduleItem(media="a" * 64, start=NOW, end=NOW + timedelta(seconds=15), layer=p.SignageLayer.NORMAL,
                              campaign="xmas", local_start=NOW),),
        campaigns=(p.RuleCampaign(id="xmas", layer=p.SignageLayer.NORMAL, items=(p.RuleItem(media="a" * 64, duration_s=15),),
                                  dayparts=(p.RuleDaypart(weekdays=(5, 6), start=time(22), end=time(2)),)),),
        default=(p.RuleItem(media="b" * 64, duration_s=10),),
        media=(p.MediaRef(sha256="a" * 64, size=1000, mime="image/png", path="/signage/media/" + "a" * 64),),
    ),
    MessageType.CATALOG: p.CatalogData(
        version=12,
        region="east",
        snapshot=p.CatalogFile(path="/catalogue/files/" + "a" * 64, sha256="a" * 64, size=1000),
        deltas=(p.CatalogFile(path="/catalogue/files/" + "b" * 64, sha256="b" * 64, size=10, from_version=11),),
    ),
    MessageType.COMMAND: p.CommandData(name="reboot", args={"delay_s": 5}),
    MessageType.REBIRTH: p.RebirthData(reason="seq gap", replay_from=17),
    MessageType.STATE: p.HostStateData(online=True),
}
