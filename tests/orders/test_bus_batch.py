"""Kiosk orders of one ingest batch are routed together (`on_orders` → `intake_batch`): in one call,
each box's orders in its own order, the scarce stock given as routing them one by one gives it,
and a payload that cannot be accepted kept in the inbox with its reason."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine, select

from broker.envelope import MessageType
from broker.payloads import OrderData
from cloud.bus import Message
from cloud.bus.dispatch import Call, run_calls
from cloud.db import write_transaction
from cloud.orders import handlers, service
from tests.orders.conftest import NOW, seed, stock


def _order(node: str, seq: int, order_id: str, sku: str = "TEA-1") -> Message:
    data = OrderData(order_id=order_id, channel="kiosk", fulfilment="delivery",
                     lines=({"sku": sku, "qty": 1, "price": 10},), lat=31.2410, lon=121.4910)
    return Message(uuid.uuid4(), node, MessageType.ORDER, 1, seq, NOW, NOW, False, None, data)


def test_a_batch_of_kiosk_orders_is_routed_in_one_call_as_one_by_one_would(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 1})  # 2 km from the addresses: the nearest, for one unit
    stock(engine, "stc", {"TEA-1": 5})  # 30 km away: the others
    calls: list[int] = []

    def spy(ctx: Any, batch: Any) -> None:
        calls.append(len(batch))
        handlers.on_orders(ctx, batch)

    # Two boxes; in the batch their messages are interleaved and out of order (seq 2 before seq 1).
    msgs = [_order("sta-k1", 2, "A2"), _order("stc-k1", 1, "C1"), _order("sta-k1", 1, "A1"),
            _order("sta-k1", 3, "A3", sku="NO-SUCH-SKU")]
    call = Call("orders", "cloud.orders.handlers.on_order", handlers.on_order, many=spy)
    with write_transaction(engine) as conn:
        assert run_calls(conn, [(call, m) for m in msgs], NOW) == 0
    assert calls == [4]
    with engine.connect() as c:
        where = dict(c.execute(
            select(service.ORDERS.c.channel_order_id, service.LOCS.c.code)
            .select_from(service.ORDERS.join(service.ASSIGN, service.ASSIGN.c.order_id == service.ORDERS.c.id)
                         .join(service.LOCS, service.LOCS.c.id == service.ASSIGN.c.location_id))).all())
        inbox = [(r.source, r.reason) for r in c.execute(select(service.INBOX))]
        actors = {r.actor for r in c.execute(select(service.TRANS.c.actor))}
    # sta-k1's orders in its own (session, seq) order: A1 takes stb's one unit, A2 goes further.
    assert where == {"A1": "stb", "A2": "stc", "C1": "stc"}
    assert inbox == [("bus", "unknown_sku")]
    assert actors <= {"bus:sta-k1", "bus:stc-k1", "system:router"} and {"bus:sta-k1", "bus:stc-k1"} <= actors
