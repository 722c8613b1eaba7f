"""REST of the orders engine: orders (intake, read, approve, cancel, re-route, fulfil steps for
locations without a box), the inbox, stock (JSON and CSV), locations, routing rules with dry run,
channels and their signed webhooks. Thin: each route calls `cloud.orders.service` in one write
transaction; refusals are answered 422 with one sentence, illegal transitions 409."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, select

from broker.payloads import FulfilData, FulfilStatus
from cloud.access.scope import Forbidden, NotFound, Perm, Principal
from cloud.access.web import Problem, error_responses, require, via
from cloud.api.deps import EngineDep
from cloud.db import write_transaction
from cloud.orders import batch, channels, dryrun, service
from cloud.orders.rules import RuleError
from cloud.orders.stock import LevelIn, StockError, apply_levels, parse_csv

__all__ = ["router"]

_ANSWERS: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 401, 403, 404),
    409: {"model": Problem, "description": "not allowed in the order's current state (named in `detail`)"},
    422: {"description": "refused: `detail` names the field or the reason (refused orders are kept in the inbox)"},
}
router = APIRouter(tags=["orders"], responses=_ANSWERS)
Business = Annotated[Principal, Depends(require(Perm.BUSINESS))]
OrderId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Code = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")]
T = TypeVar("T")


@contextmanager
def _answering(engine: Any) -> Iterator[Connection]:
    """A write transaction whose refusals become one-sentence HTTP answers."""
    try:
        with write_transaction(engine) as conn:
            yield conn
    except service.Refused as exc:
        raise HTTPException(422, f"{exc.reason.value}: {exc.detail}") from None
    except service.IllegalTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (RuleError, StockError) as exc:
        raise HTTPException(422, str(exc)) from None


def _own_location(conn: Connection, principal: Principal, code: str) -> int:
    """The location's id if the caller's scope holds it (a store user: its stores'); else 404."""
    loc = service.location_id(conn, code)
    ids = service.visible_location_ids(conn, principal.scope)
    if ids is not None and loc not in ids:
        raise NotFound(f"no location {code!r} (unknown, or outside your regions and stores)")
    return loc


def _everywhere(principal: Principal, what: str) -> None:
    """Rules and channels apply to every store: only principals who see every store change them."""
    if not principal.scope.all:
        raise Forbidden(f"{what} apply to every store: only a principal with access to all stores may change them")


class IntakeOut(BaseModel):
    id: int
    state: str
    created: bool
    pickup_code: str | None


def _intake(engine: Any, order: service.OrderInput, actor: str, channel: str, source: str, raw: str,
            response: Response) -> IntakeOut:
    try:
        r = service.retrying(engine, lambda conn: batch.intake_one(conn, order, actor=actor))
    except service.Refused as refused:
        with write_transaction(engine) as conn:
            item = service.inbox_add(conn, channel=channel, source=source, refused=refused, raw=raw,
                                     now=service._now())
        raise HTTPException(422, f"{refused.reason.value}: {refused.detail} (kept as inbox item {item})") from None
    response.status_code = status.HTTP_201_CREATED if r.created else status.HTTP_200_OK
    return IntakeOut(id=r.id, state=r.state, created=r.created, pickup_code=r.pickup_code)


@router.post("/orders", status_code=201, responses={200: {"description": "already stored (same channel order id)"},
                                                     422: {"description": "refused; kept in the inbox"}})
async def create_order(request: Request, response: Response, engine: EngineDep, principal: Business) -> IntakeOut:
    """An order from an integration or the call centre. The same (channel, channel_order_id) twice
    is stored once and answered the same (200 the second time)."""
    raw = (await request.body()).decode("utf-8", "replace")
    channel = "rest"
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("channel"), str):
            channel = data["channel"][:64]
        order = service.OrderInput.model_validate(data)
    except ValueError as exc:
        refused = (service.refusal_from_validation(exc) if isinstance(exc, ValidationError)
                   else service.Refused(service.Refusal.NOT_JSON, f"the body is not JSON ({exc})"))
        with write_transaction(engine) as conn:
            item = service.inbox_add(conn, channel=channel, source="rest", refused=refused, raw=raw,
                                     now=service._now())
        raise HTTPException(422, f"{refused.reason.value}: {refused.detail} (kept as inbox item {item})") from None
    return _intake(engine, order, principal.actor, channel, "rest", raw, response)


@router.get("/orders")
def list_orders(
    engine: EngineDep, principal: Business, state: Annotated[str | None, Query(max_length=20)] = None,
    channel: Annotated[str | None, Query(max_length=64)] = None, store: Annotated[str | None, Query(max_length=32)] = None,
    region: Annotated[str | None, Query(max_length=32)] = None, since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return service.list_orders(conn, principal.scope, state=state, channel=channel, store=store, region=region,
                                   since=since, limit=limit, offset=offset)


@router.get("/orders/inbox")
def inbox(engine: EngineDep, principal: Business,
          status_: Annotated[Literal["open", "replayed", "discarded"] | None, Query(alias="status")] = "open",
          ) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return service.inbox(conn, status_)


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str | None = Field(None, max_length=256 * 1024, description="the fixed order (JSON); omit to replay as kept")


@router.post("/orders/inbox/{item_id}/replay")
def replay(item_id: OrderId, request: Request, engine: EngineDep, principal: Business,
           body: ReplayIn | None = None) -> IntakeOut:
    with _answering(engine) as conn:
        r = service.replay_inbox(conn, item_id, actor=principal.actor, body=body.body if body else None, via=via(request))
    return IntakeOut(id=r.id, state=r.state, created=r.created, pickup_code=r.pickup_code)


@router.post("/orders/inbox/{item_id}/discard", status_code=204)
def discard(item_id: OrderId, request: Request, engine: EngineDep, principal: Business) -> None:
    with _answering(engine) as conn:
        service.discard_inbox(conn, item_id, actor=principal.actor, via=via(request))


@router.get("/orders/{order_id}")
def get_order(order_id: OrderId, engine: EngineDep, principal: Business) -> dict[str, Any]:
    with engine.connect() as conn:
        return service.get_order(conn, principal.scope, order_id)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


def _act(engine: Any, principal: Principal, order_id: int, request: Request, action: str,
         fn: Callable[[Connection], str]) -> dict[str, Any]:
    with _answering(engine) as conn:
        service.get_order(conn, principal.scope, order_id)  # 404 outside the caller's scope
        before = conn.execute(select(service.ORDERS.c.state).where(service.ORDERS.c.id == order_id)).scalar()
        state = fn(conn)
        service.audit(conn, principal.actor, f"order.{action}", str(order_id), before={"state": before},
                      after={"state": state}, via=via(request))
    return {"id": order_id, "state": state}


@router.post("/orders/{order_id}/approve", responses={409: {"description": "not held"}})
def approve(order_id: OrderId, request: Request, engine: EngineDep, principal: Business) -> dict[str, Any]:
    return _act(engine, principal, order_id, request, "approve",
                lambda c: service.approve(c, order_id, actor=principal.actor))


@router.post("/orders/{order_id}/cancel", responses={409: {"description": "too late to cancel"}})
def cancel(order_id: OrderId, request: Request, engine: EngineDep, principal: Business,
           body: ReasonIn | None = None) -> dict[str, Any]:
    reason = (body.reason if body else "") or f"cancelled by {principal.actor}"
    return _act(engine, principal, order_id, request, "cancel",
                lambda c: service.cancel(c, order_id, actor=principal.actor, reason=reason))


@router.post("/orders/{order_id}/reroute", responses={409: {"description": "not re-routable now"}})
def reroute(order_id: OrderId, request: Request, engine: EngineDep, principal: Business,
            body: ReasonIn | None = None) -> dict[str, Any]:
    reason = (body.reason if body else "") or f"re-routed by {principal.actor}"
    return _act(engine, principal, order_id, request, "reroute",
                lambda c: service.reroute(c, order_id, actor=principal.actor, reason=reason))


class StepIn(BaseModel):
    """A fulfilment step reported over REST (a warehouse has no box)."""

    model_config = ConfigDict(extra="forbid")
    status: FulfilStatus
    assignment: int | None = Field(None, ge=1, le=2**63 - 1)
    carrier: str | None = Field(None, max_length=200)
    tracking: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=500)
    pickup_code: str | None = Field(None, max_length=16)


@router.post("/orders/{order_id}/fulfil")
def fulfil(order_id: OrderId, body: StepIn, request: Request, engine: EngineDep, principal: Business) -> dict[str, Any]:
    data = FulfilData(order_id=str(order_id), status=body.status, assignment=body.assignment, carrier=body.carrier,
                      tracking=body.tracking, note=body.note)
    return _act(engine, principal, order_id, request, f"fulfil.{body.status.value}",
                lambda c: service.apply_fulfil(c, data, actor=principal.actor, node=None, pickup_code=body.pickup_code))


# -- stock -----------------------------------------------------------------------------------------


class LevelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64)
    on_hand: int | None = Field(None, ge=0, le=10_000_000)
    safety: int | None = Field(None, ge=0, le=10_000_000)
    min_level: int | None = Field(None, ge=0, le=10_000_000)


@router.get("/stock")
def stock(engine: EngineDep, principal: Business, sku: Annotated[str | None, Query(max_length=64)] = None,
          location: Annotated[str | None, Query(max_length=32)] = None,
          limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, Any]]:
    """Stock and its ATP per location; outside the caller's stores only what a shopper may be told
    (`sku`, `location`, `kind`, `region`, `atp`, `updated_at`)."""
    with engine.connect() as conn:
        return service.stock_rows(conn, principal.scope, sku=sku, location=location, limit=limit)


@router.get("/stock/alerts")
def alerts(engine: EngineDep, principal: Business) -> list[dict[str, Any]]:
    """Low-stock rows of the caller's locations."""
    with engine.connect() as conn:
        return service.stock_alerts(conn, principal.scope)


@router.put("/stock/{location}")
def put_stock(location: Code, levels: Annotated[list[LevelBody], Body(max_length=50_000)], request: Request,
              engine: EngineDep, principal: Business) -> dict[str, int]:
    """Set levels at a location (a warehouse's feed): on hand, safety stock, low-stock minimum."""
    with _answering(engine) as conn:
        loc = _own_location(conn, principal, location)
        n = apply_levels(conn, loc, [LevelIn(lv.sku, lv.on_hand, lv.safety, lv.min_level) for lv in levels],
                         source=f"{via(request)}:{principal.actor}", now=service._now(), kind="adjust")
        service.audit(conn, principal.actor, "stock.put", location, detail=f"{n} rows", via=via(request),
                      object_type="stock")
    return {"changed": n}


@router.post("/stock/csv", openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}})
async def stock_csv(request: Request, engine: EngineDep, principal: Business) -> dict[str, int]:
    """`location,sku,on_hand[,safety][,min_level]` with a header line; refused whole on a bad row."""
    text = (await request.body()).decode("utf-8", "replace")
    with _answering(engine) as conn:
        n = 0
        for code, levels in parse_csv(text).items():
            loc = _own_location(conn, principal, code)
            n += apply_levels(conn, loc, levels, source=f"csv:{principal.actor}", now=service._now(), kind="adjust")
        service.audit(conn, principal.actor, "stock.csv", "-", detail=f"{n} rows", via=via(request),
                      object_type="stock")
    return {"changed": n}


@router.get("/stock/{location}/{sku}/movements")
def stock_movements(location: Code, sku: Annotated[str, Path(max_length=64)], engine: EngineDep,
                    principal: Business) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return service.movements(conn, principal.scope, location, sku)


@router.put("/locations/{code}")
def put_location(code: Code, body: service.LocationInput, request: Request, engine: EngineDep,
                 principal: Business) -> dict[str, int]:
    _everywhere(principal, "locations")
    with _answering(engine) as conn:
        return {"id": service.put_location(conn, code, body, actor=principal.actor, via=via(request))}


# -- routing rules ---------------------------------------------------------------------------------


@router.get("/routing/rules")
def get_rules(engine: EngineDep, principal: Business) -> dict[str, Any]:
    with engine.connect() as conn:
        version, rules = service.current_rules(conn)
    return {"version": version, "rules": rules.model_dump(mode="json")}


@router.put("/routing/rules")
def put_rules(spec: Annotated[dict[str, Any], Body()], request: Request, engine: EngineDep,
              principal: Business) -> dict[str, int]:
    """Validated before saving (422 names the rule and field); saved as a new version."""
    _everywhere(principal, "routing rules")
    with _answering(engine) as conn:
        return {"version": service.save_rules(conn, spec, actor=principal.actor, via=via(request))}


@router.post("/routing/dry-run")
def dry_run(spec: Annotated[dict[str, Any], Body()], engine: EngineDep, principal: Business,
            last: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    """What `spec` would do to the last N orders (nothing is reserved or changed)."""
    with _answering(engine) as conn:
        return dryrun.dry_run(conn, spec, last)


# -- channels --------------------------------------------------------------------------------------


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str | None = Field(None, min_length=16, max_length=200)
    mapping: dict[str, Any] | str | None = Field(None, description="a mapping, or the name of an example one")
    replay_window_s: int = Field(300, ge=1, le=86_400)
    status_url: str | None = Field(None, max_length=500, pattern=r"^https?://")
    atp_url: str | None = Field(None, max_length=500, pattern=r"^https?://")
    atp_buffer: int = Field(0, ge=0, le=1_000_000)
    atp_locations: list[str] | None = None


@router.put("/channels/{name}")
def put_channel(name: Annotated[str, Path(pattern=r"^[a-z0-9_\-]{1,64}$")], body: ChannelIn, request: Request,
                engine: EngineDep, principal: Business) -> dict[str, str]:
    _everywhere(principal, "channels")
    mapping = body.mapping
    if isinstance(mapping, str):
        if mapping not in channels.EXAMPLES:
            raise HTTPException(422, f"no example mapping {mapping!r}: expected one of {sorted(channels.EXAMPLES)}")
        mapping = channels.EXAMPLES[mapping]
    values = body.model_dump() | {"mapping": mapping}
    with _answering(engine) as conn:
        exists = conn.execute(select(service.CHANNELS.c.name).where(service.CHANNELS.c.name == name)).scalar()
        if exists:
            conn.execute(service.CHANNELS.update().where(service.CHANNELS.c.name == name).values(**values))
        else:
            conn.execute(service.CHANNELS.insert().values(name=name, **values))
        service.audit(conn, principal.actor, "channel.put", name, via=via(request), object_type="channel",
                      after={k: v for k, v in values.items() if k != "secret"})
    service.invalidate_channels()
    return {"name": name}


@router.post("/channels/{name}/webhook", status_code=201,
             responses={200: {"description": "already stored"}, 401: {"description": "bad signature or stale"},
                        422: {"description": "refused; kept in the inbox"}})
async def webhook(
    name: Annotated[str, Path(pattern=r"^[a-z0-9_\-]{1,64}$")], request: Request, response: Response, engine: EngineDep,
    x_omnishelf_timestamp: Annotated[str | None, Header(max_length=20)] = None,
    x_omnishelf_signature: Annotated[str | None, Header(max_length=100)] = None,
) -> IntakeOut:
    """A marketplace's order: signed with the channel's secret (see docs/orders.md), mapped with
    its mapping. Every refusal is kept, with the raw body, in the inbox."""
    raw = await request.body()
    text = raw.decode("utf-8", "replace")
    with engine.connect() as conn:
        ch = conn.execute(select(service.CHANNELS).where(service.CHANNELS.c.name == name)).first()

    def keep(refused: service.Refused, code: int) -> HTTPException:
        with write_transaction(engine) as conn:
            item = service.inbox_add(conn, channel=name, source="webhook", refused=refused, raw=text,
                                     now=service._now())
        return HTTPException(code, f"{refused.reason.value}: {refused.detail} (kept as inbox item {item})")

    if ch is None or not ch.secret or not ch.mapping:
        raise keep(service.Refused(service.Refusal.UNKNOWN_CHANNEL,
                                   f"channel {name!r} is not configured with a secret and a mapping"), 404)
    try:
        channels.verify(ch.secret, ch.replay_window_s, x_omnishelf_timestamp, x_omnishelf_signature, raw)
    except service.Refused as refused:
        raise keep(refused, 401) from None
    try:
        body = json.loads(text)
        order = channels.map_order(name, ch.mapping, body)
    except service.Refused as refused:
        raise keep(refused, 422) from None
    except ValueError as exc:
        raise keep(service.Refused(service.Refusal.NOT_JSON, f"the body is not JSON ({exc})"), 422) from None
    return _intake(engine, order, f"channel:{name}", name, "webhook", text, response)
