"""Bus handlers of the orders engine, run in the ledger transaction of each new message.

- `order` (kiosk): an order, stored once per (channel, order id), checked and routed; a payload
  that cannot be accepted goes to the inbox with its reason (never dropped, never an exception).
- `stock`: on hand at the box's store, order-safe by (session, seq) per row.
- `fulfil`: a store's step on an assignment (accept … picked up, or reject → routed again); a step
  that cannot be applied goes to the inbox with its reason, and is applied once when replayed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from broker.payloads import FulfilData, OrderData, StockData, StockLevel
from cloud.access.scope import NotFound
from cloud.bus import Context, Message
from cloud.orders import service
from cloud.orders.batch import intake_batch, intake_one
from cloud.orders.stock import LevelIn, apply_deltas, apply_levels

__all__ = ["fulfil_actor", "on_fulfil", "on_order", "on_orders", "on_stock"]


def _bus_order(ctx: Context, msg: Message) -> tuple[OrderData, dict[str, Any], str]:
    """A box's `order` as the intake's input (its body, and that body's text for the inbox)."""
    data = msg.data
    assert isinstance(data, OrderData)
    body = service.from_bus_order(data.model_dump(mode="json"), data.channel)
    if data.fulfilment.value == "pickup" and not data.pickup_store:
        # A kiosk pickup without a store named is collected where it was ordered.
        body["pickup_store"] = ctx.conn.execute(
            select(service.LOCS.c.code).select_from(
                service.NODES.join(service.LOCS, service.LOCS.c.store_id == service.NODES.c.store_id))
            .where(service.NODES.c.id == msg.node)).scalar()
    return data, body, json.dumps(body, ensure_ascii=False)


def on_order(ctx: Context, msg: Message) -> None:
    data, body, text = _bus_order(ctx, msg)
    try:
        order = service.OrderInput.model_validate(body)
        intake_one(ctx.conn, order, actor=f"bus:{msg.node}", now=ctx.now, source_node=msg.node)
    except ValidationError as exc:
        service.inbox_add(ctx.conn, channel=data.channel, source="bus", refused=service.refusal_from_validation(exc),
                          raw=text, now=ctx.now)
    except service.Refused as refused:
        service.inbox_add(ctx.conn, channel=data.channel, source="bus", refused=refused, raw=text, now=ctx.now)


def on_orders(ctx: Context, msgs: Sequence[Message]) -> None:
    """`on_order` for a batch's orders at once (`cloud.engine.Handler.batch`): each box's orders in
    its own (session, seq) order, routed together by `intake_batch` (the same decisions as one by
    one, in a few statements for them all)."""
    by_node: dict[str, list[tuple[OrderData, str, service.OrderInput]]] = {}
    for msg in sorted(msgs, key=lambda m: (m.node, m.session, m.seq)):
        data, body, text = _bus_order(ctx, msg)
        try:
            order = service.OrderInput.model_validate(body)
        except ValidationError as exc:
            service.inbox_add(ctx.conn, channel=data.channel, source="bus",
                              refused=service.refusal_from_validation(exc), raw=text, now=ctx.now)
            continue
        by_node.setdefault(msg.node, []).append((data, text, order))
    for node, items in by_node.items():
        results = intake_batch(ctx.conn, [order for _, _, order in items], actor=f"bus:{node}", now=ctx.now,
                               source_node=node)
        for (data, text, _), result in zip(items, results, strict=True):
            if isinstance(result, service.Refused):
                service.inbox_add(ctx.conn, channel=data.channel, source="bus", refused=result, raw=text, now=ctx.now)


def on_stock(ctx: Context, msg: Message) -> None:
    data = msg.data
    assert isinstance(data, StockData)
    location = service.store_location(ctx.conn, msg.node)
    source = f"bus:{msg.node}:{msg.msg_id}"
    if data.snapshot and any(lv.delta is not None for lv in data.levels):
        raise ValueError("a stock snapshot holds levels, not deltas: the box sent a delta in a snapshot")
    levels = [LevelIn(sku=lv.sku, on_hand=lv.on_hand) for lv in data.levels if lv.delta is None]
    if levels or data.snapshot:
        apply_levels(ctx.conn, location, levels, source=source, now=ctx.now, pos=msg.position, snapshot=data.snapshot)
    deltas = [(lv.sku, lv.delta, lv.reason) for lv in data.levels if lv.delta is not None]
    if deltas:
        extras = [_move_extras(lv) for lv in data.levels if lv.delta is not None]
        apply_deltas(ctx.conn, location, deltas, source=source, now=ctx.now, pos=msg.position, extras=extras)


def fulfil_actor(data: FulfilData, node: str) -> str:
    """Who took a store's step, as the order's timeline shows it: the clerk signed in at the box
    (newer boxes say), and the box."""
    if data.clerk is None:
        return f"bus:{node}"
    return f"{data.clerk.name[:60]} (clerk {data.clerk.id}) at bus:{node}"[:120]


def _move_extras(lv: StockLevel) -> dict[str, Any]:
    """What a clerk's adjustment adds to its ledger row (reason, who, their note, the box's id)."""
    return {"reason": lv.reason, "clerk_id": lv.clerk.id if lv.clerk else None,
            "clerk_name": lv.clerk.name if lv.clerk else None, "note": lv.note, "ref": lv.ref}


def on_fulfil(ctx: Context, msg: Message) -> None:
    data = msg.data
    assert isinstance(data, FulfilData)
    try:
        service.apply_fulfil(ctx.conn, data, actor=fulfil_actor(data, msg.node), node=msg.node, pos=msg.position,
                             now=ctx.now)
    except (service.Refused, service.IllegalTransition, NotFound) as exc:
        refused = exc if isinstance(exc, service.Refused) else service.Refused(service.Refusal.CONFLICT, str(exc))
        # Kept with who sent it and its position, so that a replay after a fix applies it as the box sent it.
        service.inbox_add(ctx.conn, channel="store", source=service.FULFIL_SOURCE, refused=refused,
                          raw=service.fulfil_raw(data, msg.node, msg.position, str(msg.msg_id)), now=ctx.now)
