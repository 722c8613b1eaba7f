"""Every verdict class through the real bus: simulated boxes publish `scan` on a real Mosquitto, the
real cloud worker decides in the ledger transaction and the box receives a `verdict` command whose
envelope `corr` is the scan's msg_id. Redelivery decides nothing twice; a scan handled after a
newer sale of the same box is not 'after the sale'; a box's birth gets it its offline lists; a
provisional verdict the cloud overturns raises an alert."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import CommandData, ScanData, ScanPurpose, TraceListsArgs, VerdictClass, VerdictData
from cloud.bus.worker import CloudBus
from cloud.engines import load_engines
from cloud.models import DownlinkCommand, Node
from cloud.trace.models import Alert, Scan
from tests.access.conftest import World
from tests.cloud.conftest import Box, box, cloud_settings, running, until
from tests.conftest import Broker
from tests.trace import chain
from tests.trace.test_chain import capture

el = chain.element


def verdicts(b: Box) -> dict[uuid.UUID, tuple[Envelope, VerdictData]]:
    out = {}
    for topic, raw in b.received:
        if topic == topics.dn(b.node, MessageType.VERDICT):
            env = decode(raw, topic)
            assert isinstance(env.data, VerdictData) and env.corr is not None
            out[env.corr] = (env, env.data)
    return out


async def ask(b: Box, code: str, purpose: ScanPurpose = ScanPurpose.VERIFY, **kw: Any) -> VerdictData:
    env = b.envelope(MessageType.SCAN, ScanData(code=code, station="till-1", purpose=purpose, **kw))
    await b.send(env)
    await until(lambda: env.msg_id in verdicts(b), what=f"the verdict on {code!r}")
    got_env, data = verdicts(b)[env.msg_id]
    assert got_env.corr == env.msg_id == data.scan_id
    return data


def count(engine: Engine, model: type, *where: Any) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_every_verdict_class_over_the_bus(broker: Broker, tworld: World, hq: TestClient) -> None:
    doc, plan = chain.supply_chain(per_store=6)
    capture(hq, doc)
    now_ = time.time()
    from datetime import UTC, datetime

    receive_all_6 = datetime.fromtimestamp(now_, UTC)
    for i, store in enumerate(chain.STORES, 1):
        v = hq.post("/trace/scans", json={"code": f"]C100{chain.sscc(i)}", "location": store, "purpose": "receive",
                                          "at": (receive_all_6 - timedelta(days=5)).isoformat()}).json()
        assert v["verdict"] == "genuine", v
    assert hq.post("/trace/recalls", json={"gtin": chain.GTIN, "serials": [plan["st0001"][4]],
                                           "reason": "seal"}).status_code == 201
    east, south = plan["st0001"], plan["st0003"]
    engine = tworld.engine

    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine, load_engines())
        async with running(bus), box(broker, "st0001-k1") as b1, box(broker, "st0003-k1") as b3:
            await b1.birth(data={"store": "st0001"})
            await b3.birth(data={"store": "st0003"})
            lists_topic = topics.dn("st0001-k1", MessageType.COMMAND)
            await until(lambda: any(t == lists_topic for t, _ in b1.received), what="the trace lists")
            lists = [decode(raw, t).data for t, raw in b1.received if t == lists_topic]
            assert isinstance(lists[0], CommandData) and lists[0].name == "trace_lists"
            args = TraceListsArgs.model_validate(lists[0].args)
            assert (args.part, args.parts, args.store) == (0, 1, "st0001")
            assert sorted(u.serial for u in args.received) == sorted(east)
            assert [(u.gtin, u.serial) for u in args.recalled_units] == [(chain.GTIN, east[4])]

            expect: list[tuple[Box, str, ScanPurpose, VerdictClass, str]] = [
                (b1, el(east[0]), ScanPurpose.SELL, VerdictClass.GENUINE, "commissioned_unit"),
                (b1, el(east[0]), ScanPurpose.SELL, VerdictClass.GENUINE, "duplicate_scan"),
                (b3, el(east[0]), ScanPurpose.VERIFY, VerdictClass.CLONED, "impossible_travel"),
                (b3, el(east[1]), ScanPurpose.SELL, VerdictClass.DIVERTED, "wrong_region"),
                (b1, el(east[4]), ScanPurpose.SELL, VerdictClass.RECALLED, "unit_recalled"),
                (b1, el(east[5], "LX", "200131"), ScanPurpose.SELL, VerdictClass.EXPIRED, "expiry_passed"),
                (b1, el("NEVER1"), ScanPurpose.SELL, VerdictClass.UNKNOWN_CODE, "never_commissioned"),
                (b1, el(east[2], "L7"), ScanPurpose.SELL, VerdictClass.BATCH_OR_EXPIRY_MISMATCH, "attributes_differ"),
                (b1, el(plan["factory"][0]), ScanPurpose.SELL, VerdictClass.NOT_FOR_SALE_HERE, "never_received"),
                (b1, "]d20109506000134353", ScanPurpose.SELL, VerdictClass.MALFORMED, "parse_error"),
                (b1, "]E04006381333931", ScanPurpose.SELL, VerdictClass.UNTRACKED, "plain_product_code"),
                (b3, el(south[0]), ScanPurpose.SELL, VerdictClass.GENUINE, "commissioned_unit"),
            ]
            for who, code, purpose, cls, rule in expect:
                v = await ask(who, code, purpose)
                assert (v.verdict, v.rule.value) == (cls, rule), (code, v)
            # a resale at the same till after the tolerance window: the box's clock says 2 minutes later
            env = b3.envelope(MessageType.SCAN, ScanData(code=el(south[0]), station="till-1", purpose=ScanPurpose.SELL))
            later = env.model_copy(update={"ts": env.ts + timedelta(minutes=2)})
            await b3.send(later)
            await until(lambda: later.msg_id in verdicts(b3), what="the resale's verdict")
            assert verdicts(b3)[later.msg_id][1].verdict is VerdictClass.ALREADY_SOLD
            malformed = next(d for _e, d in verdicts(b1).values() if d.verdict is VerdictClass.MALFORMED)
            assert malformed.message == "AI (01) GTIN: expected check digit 2, found 3 in '09506000134353'"
            assert malformed.parsed is None

            # provisional genuine from the box's offline cache, really a clone: alert
            other = plan["st0002"][0]
            assert (await ask(b1, el(other), ScanPurpose.SELL)).verdict is VerdictClass.GENUINE
            v = await ask(b3, el(other), ScanPurpose.SELL, provisional=VerdictClass.GENUINE)
            assert v.verdict is VerdictClass.CLONED
            assert count(engine, Alert, Alert.kind == "provisional_overturned") == 1

            # exactly once: the same scan bytes again decide nothing new (fence: a marker scan after)
            before = count(engine, Scan)
            first = b1.envelope(MessageType.SCAN, ScanData(code=el(east[3]), station="till-2", purpose=ScanPurpose.SELL))
            await b1.send(first)
            await b1.raw(topics.up("st0001-k1", "scan"), encode(first))
            marker = await ask(b1, el("MARKER"), ScanPurpose.VERIFY)
            assert marker.verdict is VerdictClass.UNKNOWN_CODE
            assert count(engine, Scan) == before + 2
            sells = [d for _e, d in verdicts(b1).values() if d.scan_id == first.msg_id]
            assert len(sells) == 1 and sells[0].verdict is VerdictClass.GENUINE

            # order-safe: a verify the box made before its sale, handled after it, is not "after the sale"
            early = b1.envelope(MessageType.SCAN, ScanData(code=el(east[2]), station="till-3"))
            sale = b1.envelope(MessageType.SCAN, ScanData(code=el(east[2]), station="till-3", purpose=ScanPurpose.SELL))
            await b1.send(sale)
            await until(lambda: sale.msg_id in verdicts(b1), what="the sale")
            await b1.send(early)
            await until(lambda: early.msg_id in verdicts(b1), what="the earlier verify")
            assert verdicts(b1)[sale.msg_id][1].verdict is VerdictClass.GENUINE
            assert verdicts(b1)[early.msg_id][1].verdict is VerdictClass.GENUINE
        assert bus.stats.handler_failures == 0

    asyncio.run(body())


def test_a_box_without_a_station_gets_no_verdict_its_scans_are_recorded(broker: Broker, tworld: World) -> None:
    """A box whose birth names no station (no `trace_lists`: a simulator, a feed) would only refuse
    a verdict; its scans are verified and recorded all the same. One with a station gets its own."""
    engine = tworld.engine

    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine, load_engines())
        async with running(bus), box(broker, "st0001-k1") as station, box(broker, "st0002-k1") as feed:
            await station.birth(data={"store": "st0001", "commands": ["ping", "trace_lists"]})
            await feed.birth(data={"store": "st0002", "commands": ["ping"]})
            await until(lambda: count(engine, Node, Node.commands.is_not(None)) == 2, what="both births stored")
            fed = feed.envelope(MessageType.SCAN, ScanData(code="]E04006381333931", station="feed"))
            await feed.send(fed)
            await until(lambda: count(engine, Scan, Scan.msg_id == fed.msg_id) == 1, what="the feed's scan recorded")
            # Its verdict would have been written in the same transaction as the scan's row.
            assert count(engine, DownlinkCommand, DownlinkCommand.node == "st0002-k1",
                         DownlinkCommand.type == MessageType.VERDICT.value) == 0
            assert (await ask(station, "]E04006381333931")).verdict is VerdictClass.UNTRACKED

    asyncio.run(asyncio.wait_for(body(), 60))
