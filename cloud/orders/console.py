"""Console pages of the orders engine: orders (filters, timeline, routing explanation on a map
drawn by the server, actions), stock with low-stock alerts, the routing rule editor with dry run,
and the inbox of refused payloads. Data and changes go through `cloud.orders.service`, scoped by
the principal and audited, like the REST API."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from cloud.access.scope import NotFound, Perm, Principal
from cloud.api.deps import EngineDep
from cloud.console.pages import console_user, form_user, render
from cloud.db import write_transaction
from cloud.orders import batch, dryrun, service
from cloud.orders.rules import RuleError
from cloud.orders.service import STATES
from cloud.orders.stock import atp_rows, low_stock

__all__ = ["decision_map", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)
Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Writer = Annotated[Principal, Depends(form_user(Perm.BUSINESS))]
Filter = Annotated[str, Query(max_length=64)]


def decision_map(order: dict[str, Any], width: int = 560, height: int = 360) -> dict[str, Any] | None:
    """The destination and the candidates of the latest routing decision, projected for an SVG."""
    decisions = order.get("decisions") or []
    routed = [d for d in decisions if d["explanation"].get("rules")]
    if not routed:
        return None
    cands: dict[str, dict[str, Any]] = {}
    for r in routed[-1]["explanation"]["rules"]:
        for c in r.get("candidates", []):
            if "lat" in c:
                prev = cands.get(c["code"])
                if prev is None or c.get("chosen"):
                    cands[c["code"]] = c
    pts = [(c["lat"], c["lon"]) for c in cands.values()]
    if order.get("lat") is not None:
        pts.append((order["lat"], order["lon"]))
    if not pts:
        return None
    k = math.cos(math.radians(sum(p[0] for p in pts) / len(pts)))
    xs, ys = [p[1] * k for p in pts], [p[0] for p in pts]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 0.02)
    pad = 40
    scale = min((width - 2 * pad) / span, (height - 2 * pad) / span)
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return round(width / 2 + (lon * k - cx) * scale, 1), round(height / 2 - (lat - cy) * scale, 1)

    dots = []
    for c in cands.values():
        x, y = xy(c["lat"], c["lon"])
        dots.append({"x": x, "y": y, "code": c["code"], "chosen": bool(c.get("chosen")),
                     "title": f"{c['code']}: {c.get('distance_km')} km, stock {c.get('stock')}"
                              + (f" — {c['dropped']}" if c.get("dropped") else " — chosen")})
    dest = xy(order["lat"], order["lon"]) if order.get("lat") is not None else None
    lines = [{"x1": dest[0], "y1": dest[1], "x2": d["x"], "y2": d["y"]} for d in dots if d["chosen"] and dest]
    return {"width": width, "height": height, "dots": dots, "dest": dest, "lines": lines}


@router.get("/orders", response_class=HTMLResponse)
def orders_page(request: Request, principal: Reader, engine: EngineDep, state: Filter = "", channel: Filter = "",
                store: Filter = "", region: Filter = "",
                since: Annotated[str, Query(pattern=r"^(|\d{4}-\d{2}-\d{2})$")] = "",
                page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> HTMLResponse:
    try:
        start = datetime.fromisoformat(since).replace(tzinfo=UTC) if since else None
    except ValueError:
        start = None
    with engine.connect() as conn:
        rows = service.list_orders(conn, principal.scope, state=state or None, channel=channel or None,
                                   store=store or None, region=region or None, since=start, limit=100,
                                   offset=(page - 1) * 100)
        held = service.list_orders(conn, principal.scope, state="held", limit=100)
    return render(request, "orders_list.html", principal, active="orders", rows=rows, held=held, states=STATES,
                  filters={"state": state, "channel": channel, "store": store, "region": region, "since": since},
                  page=page)


def parse_lines(text: str) -> list[dict[str, Any]]:
    """The call-centre form's lines: one per line, `SKU quantity [price] [discount]`."""
    out = []
    for i, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise service.Refused(service.Refusal.MISSING_FIELD, f"line {i}: expected 'SKU quantity [price] [discount]'")
        try:
            qty = int(parts[1])
            price = float(parts[2]) if len(parts) > 2 else 0.0
            discount = float(parts[3]) if len(parts) > 3 else 0.0
        except ValueError:
            raise service.Refused(service.Refusal.INVALID, f"line {i}: {raw.strip()!r}: quantity, price and discount "
                                                           "must be numbers") from None
        out.append({"sku": parts[0], "qty": qty, "price": price, "discount": discount})
    return out


@router.get("/orders/new", response_class=HTMLResponse)
def new_order_page(request: Request, principal: Reader) -> HTMLResponse:
    return render(request, "orders_new.html", principal, active="orders", error=None, form={})


@router.post("/orders/new", response_class=HTMLResponse)
def new_order(request: Request, principal: Writer, engine: EngineDep,
              channel_order_id: Annotated[str, Form(max_length=200)] = "",
              customer: Annotated[str, Form(max_length=200)] = "", contact: Annotated[str, Form(max_length=200)] = "",
              fulfilment: Annotated[str, Form(pattern="^(delivery|pickup)$")] = "delivery",
              address: Annotated[str, Form(max_length=500)] = "", lat: Annotated[str, Form(max_length=20)] = "",
              lon: Annotated[str, Form(max_length=20)] = "", pickup_store: Annotated[str, Form(max_length=32)] = "",
              lines: Annotated[str, Form(max_length=20_000)] = "") -> Response:
    """The call centre's order form: the same checks, routing and inbox as every other channel."""
    form = {"channel_order_id": channel_order_id, "customer": customer, "contact": contact, "fulfilment": fulfilment,
            "address": address, "lat": lat, "lon": lon, "pickup_store": pickup_store, "lines": lines}
    raw: dict[str, Any] = {"channel": "callcentre", "channel_order_id": channel_order_id, "fulfilment": fulfilment,
                           **{k: v for k, v in form.items() if v and k in ("customer", "contact", "address",
                                                                           "pickup_store")}}
    try:
        raw["lines"] = parse_lines(lines)
        for k, v in (("lat", lat), ("lon", lon)):
            if v.strip():
                try:
                    raw[k] = float(v)
                except ValueError:
                    raise service.Refused(service.Refusal.INVALID, f"{k} {v!r} is not a number") from None
        try:
            order = service.OrderInput.model_validate(raw)
        except ValidationError as exc:
            raise service.refusal_from_validation(exc) from None
        with write_transaction(engine) as conn:
            result = batch.intake_one(conn, order, actor=principal.actor)
            service.audit(conn, principal.actor, "order.create", str(result.id), via="console",
                          after={"state": result.state, "created": result.created})
    except service.Refused as exc:
        return render(request, "orders_new.html", principal, status_code=422, active="orders",
                      error=f"{exc.reason.value}: {exc.detail}", form=form)
    return RedirectResponse(f"/console/orders/{result.id}", 303)


@router.get("/orders/inbox", response_class=HTMLResponse)
def inbox_page(request: Request, principal: Reader, engine: EngineDep, error: Filter = "") -> HTMLResponse:
    with engine.connect() as conn:
        items = service.inbox(conn, "open")
    return render(request, "orders_inbox.html", principal, active="orders", items=items, error=error)


@router.post("/orders/inbox/{item_id}", response_class=HTMLResponse)
def inbox_action(request: Request, principal: Writer, engine: EngineDep, item_id: int,
                 action: Annotated[str, Form(pattern="^(replay|discard)$")],
                 body: Annotated[str, Form(max_length=256 * 1024)] = "") -> Response:
    try:
        with write_transaction(engine) as conn:
            if action == "discard":
                service.discard_inbox(conn, item_id, actor=principal.actor, via="console")
            else:
                service.replay_inbox(conn, item_id, actor=principal.actor, body=body or None, via="console")
    except (service.Refused, service.IllegalTransition, NotFound) as exc:
        with engine.connect() as conn:
            items = service.inbox(conn, "open")
        return render(request, "orders_inbox.html", principal, status_code=422, active="orders", items=items,
                      error=f"item {item_id}: {exc}")
    return RedirectResponse("/console/orders/inbox", 303)


def _order_page(request: Request, principal: Principal, engine: Any, order_id: int, error: str | None = None,
                code: int = 200) -> HTMLResponse:
    try:
        with engine.connect() as conn:
            order = service.get_order(conn, principal.scope, order_id)
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, active="orders", message=str(exc),
                      title="Order not found")
    return render(request, "orders_order.html", principal, status_code=code, active="orders", o=order,
                  map=decision_map(order), error=error, json=json)


@router.get("/orders/{order_id}", response_class=HTMLResponse)
def order_page(request: Request, principal: Reader, engine: EngineDep, order_id: int) -> HTMLResponse:
    return _order_page(request, principal, engine, order_id)


@router.post("/orders/{order_id}", response_class=HTMLResponse)
def order_action(request: Request, principal: Writer, engine: EngineDep, order_id: int,
                 action: Annotated[str, Form(pattern="^(approve|cancel|reroute)$")],
                 reason: Annotated[str, Form(max_length=500)] = "") -> Response:
    try:
        with write_transaction(engine) as conn:
            service.get_order(conn, principal.scope, order_id)
            why = reason or f"{action} by {principal.actor}"
            if action == "approve":
                state = service.approve(conn, order_id, actor=principal.actor)
            elif action == "cancel":
                state = service.cancel(conn, order_id, actor=principal.actor, reason=why)
            else:
                state = service.reroute(conn, order_id, actor=principal.actor, reason=why)
            service.audit(conn, principal.actor, f"order.{action}", str(order_id), after={"state": state},
                          via="console", detail=reason or None)
    except (service.IllegalTransition, service.Refused) as exc:
        return _order_page(request, principal, engine, order_id, error=str(exc), code=409)
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, active="orders", message=str(exc),
                      title="Order not found")
    return RedirectResponse(f"/console/orders/{order_id}", 303)


@router.get("/stock", response_class=HTMLResponse)
def stock_page(request: Request, principal: Reader, engine: EngineDep, sku: Filter = "",
               location: Filter = "") -> HTMLResponse:
    with engine.connect() as conn:
        ids = service.visible_location_ids(conn, principal.scope)
        if location:
            try:
                wanted = service.location_id(conn, location)
            except NotFound:
                wanted = -1
            ids = [wanted] if ids is None or wanted in ids else []
        rows = atp_rows(conn, sku=sku or None, location_ids=ids, limit=500)
        alerts = low_stock(conn, service.visible_location_ids(conn, principal.scope))
    return render(request, "orders_stock.html", principal, active="stock", rows=rows, alerts=alerts,
                  filters={"sku": sku, "location": location})


@router.get("/routing", response_class=HTMLResponse)
def routing_page(request: Request, principal: Reader, engine: EngineDep) -> HTMLResponse:
    with engine.connect() as conn:
        version, rules = service.current_rules(conn)
    return render(request, "orders_routing.html", principal, active="routing", version=version,
                  spec=json.dumps(rules.model_dump(mode="json"), indent=2, ensure_ascii=False), result=None, error=None)


@router.post("/routing", response_class=HTMLResponse)
def routing_action(request: Request, principal: Writer, engine: EngineDep,
                   spec: Annotated[str, Form(max_length=256 * 1024)],
                   action: Annotated[str, Form(pattern="^(dry_run|save)$")],
                   last: Annotated[int, Form(ge=1, le=1000)] = 50) -> HTMLResponse:
    result, error, code = None, None, 200
    try:
        parsed = json.loads(spec)
        if action == "save" and not principal.scope.all:
            raise RuleError("routing rules apply to every store: only a principal with access to all stores may "
                            "change them")
        if action == "save":
            with write_transaction(engine) as conn:
                service.save_rules(conn, parsed, actor=principal.actor, via="console")
        else:
            with engine.connect() as conn:
                result = dryrun.dry_run(conn, parsed, last)
    except ValueError as exc:
        error, code = (str(exc) if isinstance(exc, RuleError) else f"the rule set is not JSON ({exc})"), 422
    with engine.connect() as conn:
        version, _ = service.current_rules(conn)
    return render(request, "orders_routing.html", principal, status_code=code, active="routing", version=version,
                  spec=spec, result=result, error=error)
