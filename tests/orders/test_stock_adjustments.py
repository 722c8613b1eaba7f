"""A clerk's stock adjustment from the station reaches the cloud's stock ledger over the real bus
(SQLite and PostgreSQL): on hand moves by the delta, the movement keeps its reason, the clerk, the
note and the box's adjustment id, and a redelivered message is recorded once."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, select

from broker.envelope import MessageType
from broker.payloads import ClerkRef, StockData, StockLevel
from cloud.access.scope import Scope
from cloud.bus.worker import CloudBus
from cloud.orders import service
from tests.cloud.conftest import box, cloud_settings, running, until_db
from tests.conftest import Broker
from tests.orders.conftest import seed, stock


def test_an_adjustment_is_recorded_once_with_its_reason_and_clerk(broker: Broker, engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 10})
    mei = ClerkRef(id="7", name="Mei Chen")

    def moves() -> list[dict[str, object]]:
        with engine.connect() as conn:
            return service.movements(conn, Scope(all=True), "stb", "TEA-1")

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(bus), box(broker, "stb-k1") as b:
            await b.birth(data={"store": "stb"})
            adjust = b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(
                sku="TEA-1", on_hand=7, delta=-3, reason="damaged", clerk=mei, note="crushed in the back room",
                ref="0b7e5c1e-3f0a-4c9e-9d7a-2a1b3c4d5e6f"),)))
            await b.send(adjust)
            await b.send(adjust)  # redelivered (the box's outbox resends what the broker did not ack)
            plain = b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(sku="TEA-1", on_hand=6, delta=-1,
                                                                                reason="sale"),)))
            await b.send(plain)  # a fence: the box's messages are handled in order
            await until_db(engine, lambda _s: len([m for m in moves() if m["kind"] == "delta"]) == 2,
                           what="both deltas in the ledger")

    asyncio.run(asyncio.wait_for(main(), 60))
    deltas = [m for m in moves() if m["kind"] == "delta"]
    assert [(m["on_hand_delta"], m["on_hand_after"], m["reason"], m["clerk"], m["note"], m["ref"]) for m in deltas] == [
        (-1, 6, "sale", None, None, None),
        (-3, 7, "damaged", {"id": "7", "name": "Mei Chen"}, "crushed in the back room",
         "0b7e5c1e-3f0a-4c9e-9d7a-2a1b3c4d5e6f"),
    ]
    assert str(deltas[1]["source"]).endswith("(damaged) by Mei Chen")
    with engine.connect() as conn:
        assert conn.execute(select(service.STOCK.c.on_hand).where(service.STOCK.c.sku == "TEA-1")).scalar() == 6
