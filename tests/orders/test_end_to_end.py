"""End to end over a real Mosquitto: a kiosk order on box A → the cloud bus (orders engine) →
routed to store B → `assign` over the durable downlink to box B's order desk → staff accept,
pick, pack, ready, hand over with the pickup code via B's local API → `fulfil` messages up
through the outbox → the channel's signed status feed saw every step."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from broker.envelope import MessageType
from broker.payloads import ClerkRosterArgs, RosterClerk, StockData, StockLevel
from broker.pins import hash_pin
from cloud.bus.worker import CloudBus
from cloud.db import write_transaction
from cloud.models import DownlinkCommand
from cloud.orders import service
from edge.agent import EdgeAgent
from edge.clerks.component import ClerksComponent
from firmware_config import NodeConfig
from tests.cloud.conftest import cloud_settings, running, until, until_db
from tests.conftest import Broker
from tests.orders.conftest import seed

SECRET = "feed-secret-0123456789"


class Feed:
    """A channel's status endpoint: records each signed delivery (and checks the signature)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.bad: list[str] = []
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers["X-Omnishelf-Timestamp"]
                mac = hmac.new(SECRET.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
                if self.headers.get("X-Omnishelf-Signature") != "sha256=" + mac:
                    feed.bad.append(self.headers.get("X-Omnishelf-Signature", ""))
                feed.bodies.append(json.loads(raw))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/status"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed() -> Iterator[Feed]:
    f = Feed()
    yield f
    f.close()


def box(broker: Broker, tmp: Path, node: str, store: str) -> EdgeAgent:
    password = broker.add_node(node)
    cfg = NodeConfig.model_validate({
        "node_id": node, "store_id": store, "data_dir": str(tmp / node), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": password},
        "backoff": {"base_s": 0.05, "cap_s": 0.5}, "orders": {"enabled": True}, "local_api": {"port": 0},
    })
    return EdgeAgent(cfg)


def call(agent: EdgeAgent, method: str, path: str, body: dict[str, Any] | None = None,
         clerk_token: str | None = None) -> tuple[int, Any]:
    assert agent.api is not None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if clerk_token is not None:
        headers["X-Clerk-Session"] = clerk_token
    req = urllib.request.Request(agent.api.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_kiosk_order_routed_to_another_store_fulfilled_and_fed_to_the_channel(
    broker: Broker, engine: Engine, tmp_path: Path, feed: Feed
) -> None:
    seed(engine)
    with write_transaction(engine) as conn:
        conn.execute(service.CHANNELS.insert().values(name="kiosk", status_url=feed.url, secret=SECRET,
                                                      replay_window_s=300, atp_buffer=0))
        service.save_rules(conn, {"groups": [{"name": "all", "rules": [{"name": "nearest"}]}],
                                  "accept_minutes": 10}, actor="test")

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(bus):
            a, b = box(broker, tmp_path, "sta-k1", "sta"), box(broker, tmp_path, "stb-k1", "stb")
            tasks = [asyncio.create_task(x.run()) for x in (a, b)]
            try:
                await asyncio.wait_for(asyncio.gather(a.ready.wait(), b.ready.wait()), 20)
                # Store B reports its stock over the bus; store A has none of it.
                await b.publish(MessageType.STOCK, StockData(levels=(StockLevel(sku="TEA-1", on_hand=4),), snapshot=True))
                await until_db(engine, lambda s: s.execute(select(service.STOCK.c.on_hand).where(
                    service.STOCK.c.sku == "TEA-1")).scalar() == 4, what="B's stock in the ledger")
                # The shopper at A's kiosk orders for pickup at B.
                status, placed = await asyncio.to_thread(call, a, "POST", "/desk/kiosk-order", {
                    "order_id": "K-A-1", "channel": "kiosk", "fulfilment": "pickup", "pickup_store": "stb",
                    "lines": [{"sku": "TEA-1", "qty": 2, "price": 168}]})
                assert status == 200, placed

                def held_by_b() -> list[Any]:
                    return list(call(b, "GET", "/desk/orders")[1])

                await until(lambda: bool(held_by_b()), timeout=20, what="the assignment on B's order desk")
                [held] = held_by_b()
                assert (held["state"], held["lines"]) == ("assigned", [{"sku": "TEA-1", "qty": 2, "price": None,
                                                                       "discount": 0.0}])
                assert call(a, "GET", "/desk/orders")[1] == []
                await until_db(engine, lambda s: s.execute(select(DownlinkCommand.status)).scalar() == "delivered",
                               what="B's ack of the assign command")
                with engine.connect() as conn:
                    order_id = conn.execute(select(service.ORDERS.c.id)).scalar_one()
                    code = conn.execute(select(service.ORDERS.c.pickup_code)).scalar_one()
                aid = held["assignment"]
                # A step out of order is refused on the box, naming the state.
                assert await asyncio.to_thread(call, b, "POST", f"/desk/orders/{aid}/pack", {}) == (
                    409, {"error": f"assignment {aid} is assigned: 'pack' needs it picking", "status": 409})
                # A clerk signed in at B takes the steps but the last: the order's timeline says who.
                clerks = b.component("clerks")
                assert isinstance(clerks, ClerksComponent)
                clerks.db.swap(ClerkRosterArgs(version=1, store="stb", clerks=(
                    RosterClerk(id=7, name="Mei Chen", pin_hash=hash_pin("2580")),)))
                status, signed = await asyncio.to_thread(call, b, "POST", "/clerks/sign-in", {"clerk_id": 7, "pin": "2580"})
                assert status == 200, signed
                for step in ("accept", "pick", "pack", "ready"):
                    status, out = await asyncio.to_thread(call, b, "POST", f"/desk/orders/{aid}/{step}", {},
                                                          signed["token"])
                    assert status == 200, out
                wrong = "0" * 6 if code != "0" * 6 else "1" * 6
                assert (await asyncio.to_thread(call, b, "POST", f"/desk/orders/{aid}/pickup",
                                                {"pickup_code": wrong}))[0] == 403
                status, out = await asyncio.to_thread(call, b, "POST", f"/desk/orders/{aid}/pickup", {"pickup_code": code})
                assert (status, out["state"]) == (200, "picked_up")
                await until_db(engine, lambda s: s.execute(select(service.ORDERS.c.state)).scalar() == "picked_up",
                               timeout=20, what="the order picked up in the cloud")
                await until(lambda: any(x["state"] == "picked_up" for x in feed.bodies), timeout=20,
                            what="the channel's feed to see picked_up")
            finally:
                await asyncio.gather(a.stop(), b.stop())
                await asyncio.wait_for(asyncio.gather(*tasks), 15)
        with engine.connect() as conn:
            rows = conn.execute(select(service.TRANS).where(service.TRANS.c.order_id == order_id)
                                .order_by(service.TRANS.c.id)).all()
            trail = [r.to_state for r in rows]
            who = {r.to_state: r.actor for r in rows}
            assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (2, 0)}
        assert trail == ["received", "routed", "accepted", "picking", "packed", "ready_for_pickup", "picked_up"]
        assert who["accepted"] == who["ready_for_pickup"] == "Mei Chen (clerk 7) at bus:stb-k1"
        assert who["picked_up"] == "bus:stb-k1"  # no clerk said: the box alone, as before
        assert [x["state"] for x in feed.bodies] == trail
        assert feed.bad == []
        assert {x["order"] for x in feed.bodies} == {"K-A-1"}

    asyncio.run(asyncio.wait_for(main(), 90))


def test_an_offline_store_gets_its_assignment_later_or_is_told_it_expired(
    broker: Broker, engine: Engine, tmp_path: Path
) -> None:
    """Store B is offline: an order assigned to it waits in the downlink and reaches B when it
    comes back. A second order's reservation expires while B is still away: it is released, the
    order goes to C, and B learns on its return that it was withdrawn (the assign itself expired)."""
    seed(engine)
    with write_transaction(engine) as conn:
        # 1.5 s to accept: the second order expires while B is away.
        service.save_rules(conn, {"groups": [{"name": "all", "rules": [{"name": "nearest"}]}],
                                  "accept_minutes": 0.025}, actor="test")
        for code, n in (("stb", 5), ("stc", 5)):
            service.apply_levels(conn, service.location_id(conn, code), [service.LevelIn("TEA-1", n)], source="t",
                                 now=service._now())

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(bus):
            with write_transaction(engine) as conn:
                first = service.intake(conn, service.OrderInput.model_validate({
                    "channel": "web", "channel_order_id": "OFF-1", "fulfilment": "pickup", "pickup_store": "stb",
                    "lines": [{"sku": "TEA-1", "qty": 1}]}), actor="test")
                # The first one is given an hour (its reservation and its assign command).
                later = service._now() + timedelta(hours=1)
                conn.execute(service.ASSIGN.update().values(accept_by=later))
                conn.execute(update(DownlinkCommand).values(expires_at=later))
                second = service.intake(conn, service.OrderInput.model_validate({
                    "channel": "web", "channel_order_id": "OFF-2", "fulfilment": "delivery", "lat": 31.241,
                    "lon": 121.491, "lines": [{"sku": "TEA-1", "qty": 2}]}), actor="test")
            assert (first.state, second.state) == ("routed", "routed")
            await until_db(engine, lambda s: [r.location for r in s.execute(
                select(service.ASSIGN.c.state, service.LOCS.c.code.label("location"))
                .join(service.LOCS, service.LOCS.c.id == service.ASSIGN.c.location_id)
                .where(service.ASSIGN.c.order_id == second.id, service.ASSIGN.c.state == "routed"))] == ["stc"],
                timeout=20, what="the second order's reservation at B to expire and the order to move to C")
            b = box(broker, tmp_path, "stb-k1", "stb")
            task = asyncio.create_task(b.run())
            try:
                await asyncio.wait_for(b.ready.wait(), 20)

                def desk() -> dict[str, str]:
                    return {x["order_id"]: x["state"] for x in call(b, "GET", "/desk/orders")[1]}

                await until(lambda: desk() == {str(first.id): "assigned", str(second.id): "withdrawn"}, timeout=20,
                            what="B to hold the first order and know the second was withdrawn")
                await until_db(engine, lambda s: sorted(s.execute(select(DownlinkCommand.status).where(
                    DownlinkCommand.node == "stb-k1")).scalars()) == ["delivered", "delivered", "expired"],
                    timeout=20, what="B's acks")
            finally:
                await b.stop()
                await asyncio.wait_for(task, 15)
        with engine.connect() as conn:
            stock_rows = {r.code: (r.on_hand, r.reserved) for r in conn.execute(
                select(service.LOCS.c.code, service.STOCK.c.on_hand, service.STOCK.c.reserved)
                .join(service.LOCS, service.LOCS.c.id == service.STOCK.c.location_id))}
            cmds = sorted((r.data["order_id"], r.data["action"], r.status) for r in conn.execute(
                select(DownlinkCommand.__table__).where(DownlinkCommand.node == "stb-k1")))
        assert stock_rows == {"stb": (5, 1), "stc": (5, 2)}
        assert cmds == [(str(first.id), "assign", "delivered"), (str(second.id), "assign", "expired"),
                        (str(second.id), "withdraw", "delivered")]

    asyncio.run(asyncio.wait_for(main(), 90))
