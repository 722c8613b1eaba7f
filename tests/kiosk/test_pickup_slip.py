"""A pickup order placed at the kiosk prints the shopper's pickup slip through the station's durable
print queue, to a real socket printer: order number, lines, where to collect, the confirmation QR;
never a pickup code. A delivery prints nothing; a box without a printer says so and keeps the order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge.agent import EdgeAgent
from edge.station.component import StationComponent
from firmware_config import NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import Cloud, arun, until
from tests.edge.test_station_print import PrinterPeer
from tests.kiosk.conftest import NODE, STORE, acall, seed_catalogue
from tests.kiosk.test_box_api import kiosk_of


def config(broker: Broker, tmp: Path, printer_port: int | None, node: str = NODE) -> NodeConfig:
    seed_catalogue(tmp / node / "edge" / node / "catalogue")
    devices = [] if printer_port is None else [
        {"kind": "printer", "name": "till", "host": "127.0.0.1", "port": printer_port, "timeout_s": 2}]
    return NodeConfig.model_validate({
        "node_id": node, "store_id": STORE, "data_dir": str(tmp / node), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": broker.add_node(node)},
        "backoff": {"base_s": 0.05, "cap_s": 0.3}, "local_api": {"port": 0}, "devices": devices,
        "catalogue": {"cloud_url": "http://127.0.0.1:9"},
        "station": {"enabled": printer_port is not None, "final_wait_s": 0},
        "kiosk": {"enabled": True, "nearby": [{"code": "st2", "name": "Xihu Road", "km": 2.4}],
                  "confirm_url": "https://shop.example/o/{order_id}"},
    })


async def running(cfg: NodeConfig) -> tuple[EdgeAgent, asyncio.Task[None]]:
    agent = EdgeAgent(cfg)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.ready.wait(), 20)
    await until(lambda: bool(kiosk_of(agent).db.indexed), timeout=20, what="the kiosk's search index built")
    assert agent.bus is not None
    await agent.bus.connected.wait()
    await until(lambda: kiosk_of(agent)._loop is not None, what="the kiosk's order service started")
    return agent, task


PICKUP: dict[str, Any] = {"lines": [{"sku": "TEA-LJ-250", "qty": 2}, {"sku": "RICE-WC-5KG", "qty": 1}],
                          "fulfilment": "pickup", "pickup_store": "st2"}


def test_a_kiosk_pickup_order_prints_the_slip_without_a_code(broker: Broker, tmp_path: Path) -> None:
    peer = PrinterPeer()

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent, task = await running(config(broker, tmp_path, peer.port))
        try:
            status, out = await acall(agent, "POST", "/shelf/orders", PICKUP)
            assert status == 200, out
            assert (out["print"]["kind"], out["print"]["new"]) == ("kiosk_pickup_slip", True)
            await until(lambda: len(peer.jobs) == 1, what="the pickup slip printed", timeout=30)
            slip = peer.jobs[0]
            station = agent.component("station")
            assert isinstance(station, StationComponent)
            assert slip == station.db.job(out["print"]["job"]).data  # type: ignore[union-attr]
            assert b"PICKUP ORDER" in slip and out["order_id"].encode() in slip
            assert b"Collect at: Xihu Road (st2)" in slip
            assert b"  2 x TEA-LJ-250" in slip and b"336.00" in slip and b"  1 x RICE-WC-5KG" in slip
            assert b"Total" in slip and b"425.90" in slip
            assert f"https://shop.example/o/{out['order_id']}".encode() in slip  # the QR's content
            assert b"code" in slip and b"pickup code:" not in slip.lower()
            assert slip.endswith(b"\x1dV\x00")  # cut
            # A delivery prints nothing (the fence: a second slip would be printed before this answer).
            status, out = await acall(agent, "POST", "/shelf/orders", {
                "lines": [{"sku": "TEA-LJ-250", "qty": 1}], "fulfilment": "delivery", "name": "Li Lei",
                "phone": "138 0000 1234", "address": "12 Xihu Road, Hangzhou"})
            assert status == 200 and "print" not in out
            _, status_body = await acall(agent, "GET", "/status")
            assert status_body["components"]["kiosk"]["slips_queued"] == 1
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 15)
            await cloud.close()
            peer.stop()
        assert len(peer.jobs) == 1

    arun(main())


def test_a_box_without_a_printer_keeps_the_order_and_says_no_slip(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent, task = await running(config(broker, tmp_path, None))
        try:
            status, out = await acall(agent, "POST", "/shelf/orders", PICKUP)
            assert (status, out["print"], out["print_note"]) == (200, None, "no printer on this box: no pickup slip")
            assert kiosk_of(agent).placed == 1
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 15)
            await cloud.close()

    arun(main())
