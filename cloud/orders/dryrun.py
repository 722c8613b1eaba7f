"""Dry run: what a rule set would do to the last N orders, against today's stock, reserving nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from cloud.orders import service
from cloud.orders.candidates import Pool, plan_rule
from cloud.orders.routing import OrderIn
from cloud.orders.rules import Unfilled, parse_rules

__all__ = ["dry_run"]


def dry_run(conn: Connection, spec: Any, last: int = 50) -> dict[str, Any]:
    rules = parse_rules(spec)
    now = datetime.now(UTC)
    out: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    locs = service.routing_state(conn)[2]
    orders = conn.execute(select(service.ORDERS).order_by(service.ORDERS.c.id.desc()).limit(last)).all()
    for o in orders:
        lines = tuple((r.sku, r.qty) for r in conn.execute(
            select(service.LINES.c.sku, service.LINES.c.qty).where(service.LINES.c.order_id == o.id)))
        order = OrderIn(id=o.id, channel=o.channel, fulfilment=o.fulfilment, lines=lines, lat=o.lat, lon=o.lon,
                        pickup_location=o.pickup_location_id)
        group = rules.group_for(o.channel)
        outcome, where, rule_name = "unfulfillable", [], None
        # The same search as routing (the nearest, else the nearest holding the order), reserving nothing.
        pool = Pool(conn, locs, order, now, max(r.candidates for r in group.rules))
        for rule in group.rules:
            p = plan_rule(pool, rule)
            if p.filled:
                outcome, rule_name = "routed", rule.name
                where = sorted(c["code"] for c in p.candidates if c.get("chosen"))
                break
            if rule.unfilled is Unfilled.QUEUE:
                outcome, rule_name = "queued", rule.name
                break
            if rule.unfilled is Unfilled.UNFULFILLABLE:
                break
        counts[outcome] = counts.get(outcome, 0) + 1
        out.append({"order": o.id, "channel": o.channel, "state_now": o.state, "outcome": outcome, "rule": rule_name,
                    "locations": where})
    return {"orders": len(out), "outcomes": counts, "results": out}
