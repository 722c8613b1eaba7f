"""The order desk prints through the station's durable print queue, to a real socket printer: the
pick list on accept, the packing slip on pack, the pickup slip on ready; steps without a slip print
nothing; a box without a printer still takes the step and says nothing was printed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from broker.envelope import MessageType
from edge.agent import EdgeAgent
from edge.orders.component import OrderDeskComponent
from edge.station.component import StationComponent
from firmware_config import NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, until
from tests.edge.test_station import api
from tests.edge.test_station_print import PrinterPeer


def desk_config(tmp: Path, broker: Broker, devices: list[dict[str, Any]], station: bool) -> NodeConfig:
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1", "data_dir": str(tmp / "data"), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": broker.add_node(NODE)},
        "backoff": {"base_s": 0.05, "cap_s": 0.3}, "devices": devices, "local_api": {"port": 0},
        "station": {"enabled": station, "final_wait_s": 0, "receipt_header": "Store 1"},
        "orders": {"enabled": True},
    })


async def assigned(agent: EdgeAgent, cloud: Cloud, assignment: int, fulfilment: str) -> None:
    assert agent.bus is not None
    await agent.bus.connected.wait()
    cmd = await cloud.send(NODE, MessageType.ASSIGN, {
        "order_id": "41", "assignment": assignment, "fulfilment": fulfilment, "channel": "kiosk",
        "lines": [{"sku": "TEA-1", "qty": 2}, {"sku": "RICE-1", "qty": 1}], "customer": "Li Lei",
        "contact": "+86 138 0000 0000", "address": "1 Nanjing Rd", "pickup_code_sha256": hashlib.sha256(b"123456").hexdigest(),
    })
    await until(lambda: bool(cloud.acks_for(cmd)), what="the box's ack of the assign command")


def test_slips_go_through_the_station_print_queue_to_the_printer(broker: Broker, tmp_path: Path) -> None:
    peer = PrinterPeer()
    cfg = desk_config(tmp_path, broker, [
        {"kind": "printer", "name": "till", "host": "127.0.0.1", "port": peer.port, "timeout_s": 2},
    ], station=True)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        try:
            await agent.ready.wait()
            station = agent.component("station")
            desk = agent.component("orders")
            assert isinstance(station, StationComponent) and isinstance(desk, OrderDeskComponent)
            await assigned(agent, cloud, 7, "pickup")

            status, out = await api(agent, "POST", "/desk/orders/7/accept", {})
            assert status == 200, out
            assert out["print"]["kind"] == "pick_list" and out["print"]["new"] is True
            pick_list = out["print"]["job"]
            # The printer driver may be in its retry back-off from the start (a loaded machine).
            await until(lambda: len(peer.jobs) == 1, what="the pick list printed", timeout=30)
            assert peer.jobs[0] == station.db.job(pick_list).data  # type: ignore[union-attr]
            assert b"PICK LIST" in peer.jobs[0] and b"Order 41" in peer.jobs[0]
            assert b"   2 x TEA-1" in peer.jobs[0] and b"   1 x RICE-1" in peer.jobs[0]
            assert peer.jobs[0].endswith(b"\x1dV\x00")  # cut

            status, out = await api(agent, "POST", "/desk/orders/7/pick", {})
            assert status == 200 and "print" not in out  # picking has no slip
            status, out = await api(agent, "POST", "/desk/orders/7/pack", {})
            assert (status, out["print"]["kind"]) == (200, "packing_slip")
            # The packing slip is the fence: had `pick` printed, it would be between the two.
            await until(lambda: len(peer.jobs) == 2, what="the packing slip printed")
            assert b"PACKING SLIP" in peer.jobs[1] and b"Deliver to 1 Nanjing Rd" in peer.jobs[1]

            status, out = await api(agent, "POST", "/desk/orders/7/ready", {})
            assert (status, out["print"]["kind"]) == (200, "pickup_slip")
            await until(lambda: len(peer.jobs) == 3, what="the pickup slip printed")
            assert b"PICKUP" in peer.jobs[2] and b"Customer Li Lei" in peer.jobs[2]
            assert b"123456" not in peer.jobs[2]  # the shopper's code is never printed (the box has only its hash)
            # Queued once per (assignment, step): asking the queue again returns the same job.
            again, new = station.queue_document("pickup_slip", lambda _p: b"x", request_id="orders-7-ready")
            assert (again, new) == (out["print"]["job"], False)
            _, status_body = await api(agent, "GET", "/status", None)
            assert status_body["components"]["orders"]["slips_queued"] == 3
            assert [j["kind"] for j in (await api(agent, "GET", "/station/print/jobs"))[1]["jobs"]] == [
                "pickup_slip", "packing_slip", "pick_list"]
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 15)
            assert cloud.conn is not None
            await cloud.conn.disconnect()
            peer.stop()

    arun(main())


def test_a_box_without_a_printer_takes_the_step_and_says_nothing_printed(broker: Broker, tmp_path: Path) -> None:
    cfg = desk_config(tmp_path, broker, [], station=False)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        try:
            await agent.ready.wait()
            await assigned(agent, cloud, 8, "delivery")
            status, out = await api(agent, "POST", "/desk/orders/8/accept", {})
            assert (status, out["state"], out["print"]) == (200, "accepted", None)
            assert out["print_note"] == "no printer on this box: nothing printed"
            await until(lambda: any(e.type == MessageType.FULFIL for e in cloud.received), what="the fulfil message")
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 15)
            assert cloud.conn is not None
            await cloud.conn.disconnect()

    arun(main())
