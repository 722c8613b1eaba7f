"""A store box for the clerk's station tests: the real agent (station, clerks, order desk, catalogue)
on a real Mosquitto, a file printer, and a cloud on the bus (`VerdictCloud`) that answers scans the
way the trace engine does, sends the clerks' roster and assigns orders."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from broker.envelope import Envelope, MessageType
from broker.payloads import (
    CLERK_ROSTER,
    TRACE_LISTS,
    ClerkRosterArgs,
    CommandData,
    ListUnit,
    RosterClerk,
    ScanData,
    TraceListsArgs,
    VerdictClass,
    VerdictData,
    VerdictRule,
)
from broker.pins import hash_pin
from edge.agent import EdgeAgent
from edge.station.codes import read_code
from firmware_config import NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import Cloud, until
from tests.kiosk.conftest import CATALOGUE, NODE, STORE, TEA_IMG, product, seed_catalogue

__all__ = ["BLACK_GTIN", "CLERKS", "CODES", "PIN", "RICE_GTIN", "STATION_CATALOGUE", "TEA_GTIN", "StationBox", "VerdictCloud", "gs1_unit", "sscc"]

PIN = "2580"
CLERKS = ((7, "Wang Fang", "S-007"), (8, "Li Lei", "S-008"))
"""(id, name, staff number) of this store's clerks."""


def _check(digits: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


TEA_GTIN = "0695000000001" + _check("0695000000001")
RICE_GTIN = "0695000000002" + _check("0695000000002")
BLACK_GTIN = "0695000000003" + _check("0695000000003")


def gs1_unit(gtin: str, serial: str) -> str:
    """A GS1 DataMatrix's content as a keyboard-wedge scanner types it (AIM prefix, then AIs)."""
    return f"]d201{gtin}21{serial}"


def sscc(n: int) -> str:
    body = f"0695000{n:010d}"
    return "]C100" + body + _check(body)


CODES = {
    "genuine": gs1_unit(TEA_GTIN, "OK0001"),
    "cloned": gs1_unit(TEA_GTIN, "CLONE01"),
    "rice": gs1_unit(RICE_GTIN, "OK0002"),
    "rice2": gs1_unit(RICE_GTIN, "OK0003"),
    "black": gs1_unit(BLACK_GTIN, "OK0004"),
    "case": sscc(1),
}
STATION_CATALOGUE = [
    *(product(p["sku"], p["name_en"], p["name_zh"], p["list_price"], image=TEA_IMG, gtins=[TEA_GTIN])
      if p["sku"] == "TEA-LJ-250" else p for p in CATALOGUE[:1]),
    product("RICE-WC-5KG", "Wuchang rice 5 kg", "五常大米 5公斤", "89.90", brand="Wuchang", category="Food > Rice",
            gtins=[RICE_GTIN]),
    product("TEA-BL-100", "Keemun black tea 100 g", "祁门红茶 100克", "45.00", brand="Qimen", gtins=[BLACK_GTIN]),
]


class VerdictCloud(Cloud):
    """Answers every scan at once, as the cloud's trace engine would for these codes; `answering`
    False: it receives but stays silent (a slow cloud)."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.answering = True
        self.answered = 0
        self.rules: Callable[[ScanData], tuple[VerdictClass, VerdictRule, str, dict[str, Any]]] = verdict_for

    async def start(self, persistent: bool = False) -> VerdictCloud:
        self.loop = asyncio.get_running_loop()
        await super().start(persistent)
        return self

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        super()._on_message(msg)
        env = self.received[-1] if self.received else None
        if env is not None and env.type == MessageType.SCAN and self.answering and self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: self.loop and self.loop.create_task(self._answer(env)))

    async def _answer(self, scan: Envelope) -> None:
        data = scan.data
        assert isinstance(data, ScanData)
        verdict, rule, message, evidence = self.rules(data)
        try:
            parsed = read_code(data.code, data.symbology)
        except Exception:
            parsed = None
        body = VerdictData(scan_id=scan.msg_id, code=data.code, parsed=parsed, verdict=verdict, rule=rule,
                           message=message, evidence=evidence, decided_at=datetime.now(UTC))
        await self.resend(Envelope(type=MessageType.VERDICT, node=NODE, session=1, seq=0, corr=scan.msg_id, data=body))
        self.answered += 1

    async def roster(self, version: int = 1, store: str = STORE) -> Envelope:
        args = ClerkRosterArgs(version=version, store=store, clerks=tuple(
            RosterClerk(id=i, name=n, staff_number=s, pin_hash=hash_pin(PIN)) for i, n, s in CLERKS))
        return await self.send(NODE, MessageType.COMMAND, CommandData(name=CLERK_ROSTER, args=args.model_dump(mode="json")).model_dump(mode="json"))

    async def lists(self) -> Envelope:
        """The store's offline lists: the genuine unit is received here (the box's provisional answer)."""
        args = TraceListsArgs(version=1, store=STORE, received=(ListUnit(gtin=TEA_GTIN, serial="OK0001"),))
        return await self.send(NODE, MessageType.COMMAND, CommandData(name=TRACE_LISTS, args=args.model_dump(mode="json")).model_dump(mode="json"))

    async def assign(self, assignment: int, order_id: str, pickup_code: str, *, minutes: float = 10) -> Envelope:
        return await self.send(NODE, MessageType.ASSIGN, {
            "order_id": order_id, "assignment": assignment, "fulfilment": "pickup", "channel": "tmall",
            "lines": [{"sku": "TEA-LJ-250", "qty": 1, "price": 168}, {"sku": "RICE-WC-5KG", "qty": 1, "price": 89.9}],
            "accept_by": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(),
            "pickup_code_sha256": hashlib.sha256(pickup_code.encode()).hexdigest(),
            "customer": "Zhang San", "contact": "138****0000"})


def verdict_for(scan: ScanData) -> tuple[VerdictClass, VerdictRule, str, dict[str, Any]]:
    code, purpose = scan.code, scan.purpose.value
    if "CLONE" in code:
        return (VerdictClass.CLONED, VerdictRule.IMPOSSIBLE_TRAVEL, "this code was sold in Chengdu 30 minutes ago",
                {"km": 1690, "minutes": 30})
    if purpose == "receive":
        intruder = gs1_unit(TEA_GTIN, "XX9999")
        return (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT, "case of 12 received: 11 of this shipment, 1 not",
                {"sscc": code[-18:], "units": 12, "expected": 11, "intruders": [intruder], "missing": []})
    if purpose in ("undo", "return"):
        return VerdictClass.GENUINE, VerdictRule.RETURN_ACCEPTED, "back in stock", {}
    return VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT, "received at this store on 2026-11-20", {}


def station_config(broker: Broker, tmp: Path, **station: Any) -> NodeConfig:
    password = broker.add_node(NODE)
    seed_catalogue(tmp / NODE / "edge" / NODE / "catalogue", STATION_CATALOGUE)
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": STORE, "data_dir": str(tmp / NODE), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": password},
        "backoff": {"base_s": 0.05, "cap_s": 0.5}, "local_api": {"port": 0},
        "catalogue": {"cloud_url": "http://127.0.0.1:9"},
        "station": {"enabled": True, "final_wait_s": 5, **station},
        "orders": {"enabled": True},
        "clerks": {"enabled": True, "max_failures": 3, "lock_s": 600},
        # The station looks stock up through the kiosk component (no cloud URL here: its cache answers).
        "kiosk": {"enabled": True},
        "devices": [{"kind": "printer", "name": "till", "connection": "file", "path": str(tmp / "till.bin")}],
    })


class StationBox:
    def __init__(self, broker: Broker, tmp: Path, **station: Any) -> None:
        self.agent = EdgeAgent(station_config(broker, tmp, **station))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EdgeAgent:
        self.task = asyncio.create_task(self.agent.run())
        await asyncio.wait_for(self.agent.ready.wait(), 20)
        return self.agent

    async def __aexit__(self, *_: Any) -> None:
        await self.agent.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


async def ready(cloud: VerdictCloud, agent: EdgeAgent) -> None:
    """The roster on the box (its ack is back), the cloud online."""
    await cloud.set_online(True)
    # Commands are for a box that listens: its birth says it is subscribed.
    await until(lambda: bool(cloud.of(MessageType.BIRTH)), timeout=20, what="the box's birth")
    command = await cloud.roster()
    await until(lambda: bool(cloud.acks_for(command)), timeout=20, what="the roster's ack")
    command = await cloud.lists()
    await until(lambda: bool(cloud.acks_for(command)), timeout=20, what="the offline lists' ack")
