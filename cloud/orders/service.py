"""Orders: intake (idempotent per channel order), the state machine, routing with reservations,
store fulfilment, expiry, cancellation, and the inbox of refused payloads.

Every function takes the caller's connection and runs in its transaction: the REST API's write
transaction, or the ledger transaction of a bus message (so a kiosk order, a stock snapshot or a
store's `fulfil` takes effect exactly once). Commands to store boxes go through the durable
downlink in the same transaction; status changes for channels are written to `orders_feed`.

No overselling: `reserve` locks the stock rows it takes from with `SELECT … FOR UPDATE`, always in
(location, sku) order, and re-checks availability under the lock; on SQLite every write
transaction holds the database's write lock (`BEGIN IMMEDIATE`), which serialises them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import Connection, Table, bindparam, func, select, update

from broker.envelope import MessageType
from broker.payloads import AssignAction, AssignData, FulfilData, FulfilStatus, OrderLine
from cloud.access.models import AuditEntry
from cloud.access.scope import NotFound
from cloud.bus import downlink
from cloud.catalogue.models import products
from cloud.db import insert_for
from cloud.models import Node, Region, Store
from cloud.orders import candidates as _candidates
from cloud.orders.candidates import Locations, Pool, invalidate_locations, plan_rule
from cloud.orders.geo import Zone
from cloud.orders.models import (
    Assignment,
    Channel,
    Decision,
    FeedItem,
    InboxItem,
    Location,
    Movement,
    Order,
    OrderLineRow,
    Reservation,
    RuleSetRow,
    StockRow,
    Transition,
    VersionRow,
)
from cloud.orders.routing import OrderIn, Plan
from cloud.orders.rules import DEFAULT_RULES, Filter, FilterField, Op, Rule, RuleError, RuleSet, Unfilled, parse_rules
from cloud.orders.stock import LevelIn, Shortage, apply_levels, atp_rows, low_stock
from cloud.orders.stock import reserve as reserve

__all__ = [
    "ORDERS",
    "IllegalTransition",
    "LevelIn",
    "OrderInput",
    "Refusal",
    "Refused",
    "apply_fulfil",
    "apply_levels",
    "cancel",
    "expire_due",
    "intake",
    "reserve",
    "route",
]

log = logging.getLogger(__name__)

ENGINE = "orders"
ORDERS: Table = Order.__table__  # type: ignore[assignment]
LINES: Table = OrderLineRow.__table__  # type: ignore[assignment]
TRANS: Table = Transition.__table__  # type: ignore[assignment]
INBOX: Table = InboxItem.__table__  # type: ignore[assignment]
LOCS: Table = Location.__table__  # type: ignore[assignment]
STOCK: Table = StockRow.__table__  # type: ignore[assignment]
MOVES: Table = Movement.__table__  # type: ignore[assignment]
ASSIGN: Table = Assignment.__table__  # type: ignore[assignment]
RESV: Table = Reservation.__table__  # type: ignore[assignment]
DECIDE: Table = Decision.__table__  # type: ignore[assignment]
RULESETS: Table = RuleSetRow.__table__  # type: ignore[assignment]
CHANNELS: Table = Channel.__table__  # type: ignore[assignment]
FEED: Table = FeedItem.__table__  # type: ignore[assignment]
VERSIONS: Table = VersionRow.__table__  # type: ignore[assignment]
AUDIT: Table = AuditEntry.__table__  # type: ignore[assignment]
STORES: Table = Store.__table__  # type: ignore[assignment]
NODES: Table = Node.__table__  # type: ignore[assignment]
REGIONS: Table = Region.__table__  # type: ignore[assignment]


# -- errors ----------------------------------------------------------------------------------------


class Refusal(enum.StrEnum):
    """Why a payload was not accepted as an order (kept in the inbox under this reason)."""

    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    UNKNOWN_CHANNEL = "unknown_channel"
    NOT_JSON = "not_json"
    MISSING_FIELD = "missing_field"
    INVALID = "invalid"
    UNKNOWN_SKU = "unknown_sku"
    BAD_QUANTITY = "bad_quantity"
    NO_COORDINATES = "no_coordinates"
    UNKNOWN_STORE = "unknown_store"
    CONFLICT = "conflict"
    FOREIGN_ASSIGNMENT = "foreign_assignment"


class Refused(ValueError):
    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class IllegalTransition(ValueError):
    """A state change the state machine does not allow; the message names the current state."""


# -- the state machine -----------------------------------------------------------------------------

TERMINAL = frozenset({"delivered", "picked_up", "cancelled"})
_BEFORE_SHIPPING = ("routed", "accepted", "picking", "packed")
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"held", "routed", "unfulfillable", "cancelled"}),
    "held": frozenset({"routed", "unfulfillable", "cancelled"}),
    "routed": frozenset({"routed", "accepted", "picking", "packed", "shipped", "ready_for_pickup", "rejected",
                         "cancelled", "unfulfillable"}),
    "accepted": frozenset({"picking", "packed", "shipped", "ready_for_pickup", "rejected", "cancelled", "routed"}),
    "picking": frozenset({"packed", "shipped", "ready_for_pickup", "rejected", "cancelled"}),
    "packed": frozenset({"shipped", "ready_for_pickup", "cancelled"}),
    "shipped": frozenset({"delivered"}),
    "ready_for_pickup": frozenset({"picked_up", "cancelled"}),
    "rejected": frozenset({"routed", "unfulfillable", "cancelled"}),
    "unfulfillable": frozenset({"routed", "cancelled"}),
    "delivered": frozenset(),
    "picked_up": frozenset(),
    "cancelled": frozenset(),
}
STATES = tuple(TRANSITIONS)
RANK = {"routed": 0, "accepted": 1, "picking": 2, "packed": 3, "shipped": 4, "ready_for_pickup": 4,
        "delivered": 5, "picked_up": 5}
"""Progress of an assignment: a store message moves it forward only."""
ACTIVE_ASSIGNMENT = tuple(RANK)
FULFIL_STATE = {
    FulfilStatus.ACCEPTED: "accepted", FulfilStatus.PICKING: "picking", FulfilStatus.PICKED: "picking",
    FulfilStatus.PACKED: "packed", FulfilStatus.SHIPPED: "shipped", FulfilStatus.READY: "ready_for_pickup",
    FulfilStatus.HANDED_OVER: "picked_up", FulfilStatus.PICKED_UP: "picked_up",
    FulfilStatus.DELIVERED: "delivered", FulfilStatus.REJECTED: "rejected",
}


def _now() -> datetime:
    return datetime.now(UTC)


# Built once: constructing SQLAlchemy statements per order cost as much as running them.
_STATE_OF = select(ORDERS.c.state).where(ORDERS.c.id == bindparam("_order"))
_UPDATE_ORDER = update(ORDERS).where(ORDERS.c.id == bindparam("_order"))
"""SET whichever columns the parameters name (besides `_order`)."""
_TRANSITION = TRANS.insert()
_DECISION = DECIDE.insert()


def transition_row(order_id: int, from_state: str | None, to: str, *, actor: str, reason: str,
                   now: datetime) -> dict[str, Any]:
    return {"order_id": order_id, "from_state": from_state, "to_state": to, "at": now, "actor": actor[:120],
            "reason": reason[:500]}


def set_state(conn: Connection, order_id: int, to: str, *, actor: str, reason: str, now: datetime,
              current: str | None = None, channel: str | None = None, extra: dict[str, Any] | None = None,
              pending: list[dict[str, Any]] | None = None) -> str:
    """Move an order to `to`, recording who/when/why, and queue the channel's status feed; return
    the state it was in. Raises `IllegalTransition` naming the current state. With `pending`, the
    transition row is appended there for the caller to insert with the others of its transaction."""
    if current is None:
        current = conn.execute(_STATE_OF, {"_order": order_id}).scalar()
        if current is None:
            raise NotFound(f"no order {order_id}")
    if to not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing (it is final)"
        raise IllegalTransition(f"order {order_id} is {current}: it cannot become {to} (from {current}: {allowed})")
    conn.execute(_UPDATE_ORDER, {"_order": order_id, "state": to, "updated_at": now, **(extra or {})})
    row = transition_row(order_id, current, to, actor=actor, reason=reason, now=now)
    if pending is None:
        conn.execute(_TRANSITION, [row])
    else:
        pending.append(row)
    _feed_status(conn, order_id, current, to, reason, now, channel)
    return current


_feeds: dict[str, tuple[float, frozenset[str]]] = {}
FEED_CHANNELS_TTL_S = 2.0
"""A channel given a status feed is fed from then on (on another host within this)."""


def _feed_channels(conn: Connection) -> frozenset[str]:
    key = _db_key(conn)
    hit = _feeds.get(key)
    if hit is not None and time.monotonic() - hit[0] < FEED_CHANNELS_TTL_S:
        return hit[1]
    names = frozenset(conn.execute(select(CHANNELS.c.name).where(CHANNELS.c.status_url.is_not(None))).scalars())
    _feeds[key] = (time.monotonic(), names)
    return names


def invalidate_channels() -> None:
    _feeds.clear()


def _feed_status(conn: Connection, order_id: int, from_state: str | None, to: str, reason: str, now: datetime,
                 channel: str | None = None) -> None:
    if channel is not None and channel not in _feed_channels(conn):
        return
    o = conn.execute(select(ORDERS.c.channel, ORDERS.c.channel_order_id, ORDERS.c.carrier, ORDERS.c.tracking)
                     .where(ORDERS.c.id == order_id)).first()
    if o is None:
        return
    if channel is None and o.channel not in _feed_channels(conn):
        return
    conn.execute(FEED.insert().values(
        channel=o.channel, kind="status", status="pending", attempts=0, next_attempt_at=now, created_at=now,
        body={"order": o.channel_order_id, "omnishelf_id": order_id, "from": from_state, "state": to,
              "reason": reason, "at": now.isoformat(), "carrier": o.carrier, "tracking": o.tracking},
    ))


def audit(conn: Connection, actor: str, action: str, object_id: str, *, detail: str | None = None,
          before: dict[str, Any] | None = None, after: dict[str, Any] | None = None, via: str = "api",
          object_type: str = "order") -> None:
    conn.execute(AUDIT.insert().values(at=_now(), actor=actor[:120], action=action, object_type=object_type,
                                       object_id=object_id[:128], before=before, after=after, via=via, detail=detail))


# -- intake ----------------------------------------------------------------------------------------

Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class LineInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    qty: int
    price: Annotated[float, Field(ge=0, le=10_000_000)] = 0
    discount: Annotated[float, Field(ge=0, le=10_000_000)] = 0


class OrderInput(BaseModel):
    """An order as any channel delivers it (after the channel's mapping)."""

    model_config = ConfigDict(extra="forbid")
    channel: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$")]
    channel_order_id: Text
    fulfilment: Literal["delivery", "pickup"]
    lines: Annotated[list[LineInput], Field(min_length=1, max_length=500)]
    customer: Text | None = None
    contact: Text | None = None
    address: Annotated[str, StringConstraints(max_length=500)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None
    pickup_store: Text | None = None
    """Pickup: the location code where the shopper collects."""


@dataclass(frozen=True)
class IntakeResult:
    id: int
    state: str
    created: bool
    pickup_code: str | None


def refusal_from_validation(exc: ValidationError) -> Refused:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(x) for x in err["loc"]) or "(body)"
    if err["type"] == "missing":
        return Refused(Refusal.MISSING_FIELD, f"field '{where}' is missing")
    return Refused(Refusal.INVALID, f"field '{where}': {err['msg']} (got {str(err.get('input'))[:60]!r})")


_KNOWN_SKUS = select(products.c.sku).where(products.c.sku.in_(bindparam("skus", expanding=True)))
_EXISTING = select(ORDERS.c.id, ORDERS.c.state, ORDERS.c.pickup_code).where(
    ORDERS.c.channel == bindparam("channel"), ORDERS.c.channel_order_id == bindparam("channel_order_id"))
_LINES_INSERT = LINES.insert()
_NODE_REGION = select(REGIONS.c.code).select_from(
    NODES.join(STORES, STORES.c.id == NODES.c.store_id).join(REGIONS, REGIONS.c.id == STORES.c.region_id)
).where(NODES.c.id == bindparam("node"))
_INSERT_ORDER: dict[str, Any] = {}
"""Per dialect: the order, once per (channel, channel order id), returning its id (None if it exists)."""


def _insert_order(conn: Connection) -> Any:
    stmt = _INSERT_ORDER.get(conn.dialect.name)
    if stmt is None:
        stmt = _INSERT_ORDER[conn.dialect.name] = insert_for(conn, ORDERS).on_conflict_do_nothing(
            index_elements=["channel", "channel_order_id"]).returning(ORDERS.c.id)
    return stmt


def check(conn: Connection, order: OrderInput, locs: Locations | None = None, *,
          known: set[str] | None = None) -> int | None:
    """Refuse what cannot be routed (naming the line and value); return the pickup location id.
    `known`: the catalogue's SKUs among the order's, when the caller read them (for a batch)."""
    for i, line in enumerate(order.lines, start=1):
        if line.qty <= 0 or line.qty > 10_000:
            raise Refused(Refusal.BAD_QUANTITY, f"line {i} ({line.sku}): quantity {line.qty} must be 1..10000")
        if line.discount > line.price * line.qty:
            raise Refused(Refusal.INVALID, f"line {i} ({line.sku}): discount {line.discount} exceeds the line's "
                                           f"price x quantity {line.price * line.qty}")
    skus = sorted({line.sku for line in order.lines})
    if len(skus) != len(order.lines):
        raise Refused(Refusal.INVALID, "a SKU appears on two lines: give one line per SKU")
    if known is None:
        known = set(conn.execute(_KNOWN_SKUS, {"skus": skus}).scalars())
    unknown = [s for s in skus if s not in known]
    if unknown:
        raise Refused(Refusal.UNKNOWN_SKU, f"unknown SKU {', '.join(unknown)}: not in the catalogue")
    if order.fulfilment == "delivery" and (order.lat is None or order.lon is None):
        raise Refused(Refusal.NO_COORDINATES, "a delivery address needs lat and lon (geocoding is not done here)")
    if order.fulfilment == "pickup":
        if not order.pickup_store:
            raise Refused(Refusal.MISSING_FIELD, "a pickup order needs pickup_store (the location code)")
        loc = (locs or _candidates.locations(conn)).by_code.get(order.pickup_store)
        if loc is None:
            raise Refused(Refusal.UNKNOWN_STORE, f"pickup store {order.pickup_store!r} is not a known location")
        return int(loc)
    return None


def inbox_add(conn: Connection, *, channel: str, source: str, refused: Refused, raw: str, now: datetime) -> int:
    return int(conn.execute(INBOX.insert().values(
        received_at=now, channel=channel[:64], source=source, reason=refused.reason.value, detail=refused.detail[:500],
        raw=raw, status="open",
    ).returning(INBOX.c.id)).scalar_one())


@dataclass(frozen=True)
class _Head:
    """What routing reads of an order's row, for an order this transaction has just inserted."""

    id: int
    state: str
    channel: str
    fulfilment: str
    customer: str | None
    contact: str | None
    address: str | None
    pickup_code: str | None
    merged_with: int | None = None
    queued_since: datetime | None = None


def intake(conn: Connection, order: OrderInput, *, actor: str, now: datetime | None = None,
           source_node: str | None = None, route_now: bool = True) -> IntakeResult:
    """Store a new order (or answer the stored one: the channel's order id is the idempotency key),
    run the checks and route it. Raises `Refused` for what cannot be accepted."""
    now = now or _now()
    version, ruleset, locs = routing_state(conn)
    key = {"channel": order.channel, "channel_order_id": order.channel_order_id}
    try:
        pickup = check(conn, order, locs)
    except Refused:
        found = conn.execute(_EXISTING, key).first()
        if found is not None:  # accepted before (the catalogue or locations changed since): the same answer
            return IntakeResult(found.id, found.state, False, found.pickup_code)
        raise
    amount = sum(Decimal(str(ln.price)) * ln.qty - Decimal(str(ln.discount)) for ln in order.lines)
    region = None
    if source_node:
        region = conn.execute(_NODE_REGION, {"node": source_node}).scalar()
    code = f"{secrets.randbelow(10**6):06d}" if order.fulfilment == "pickup" else None
    # No lookup first: the unique (channel, channel order id) answers "stored already" in the insert.
    new_id = conn.execute(_insert_order(conn), {
        **key, "state": "received", "fulfilment": order.fulfilment, "customer": order.customer,
        "contact": order.contact, "address": order.address, "lat": order.lat, "lon": order.lon,
        "pickup_location_id": pickup, "pickup_code": code, "amount": amount, "source_node": source_node,
        "region": region, "created_at": now, "updated_at": now, "raw": order.model_dump(mode="json"),
    }).scalar()
    if new_id is None:  # stored before, or by another host at the same moment
        again = conn.execute(_EXISTING, key).one()
        return IntakeResult(again.id, again.state, False, again.pickup_code)
    conn.execute(_LINES_INSERT, [
        {"order_id": new_id, "line_no": i, "sku": ln.sku, "qty": ln.qty, "price": ln.price, "discount": ln.discount}
        for i, ln in enumerate(order.lines, start=1)
    ])
    # The transitions of this transaction go in together, at the end.
    pending = [transition_row(new_id, None, "received", actor=actor, reason=f"received from {order.channel}", now=now)]
    _feed_status(conn, new_id, None, "received", f"received from {order.channel}", now, order.channel)
    state = "received"
    held = _checks(conn, ruleset, order, float(amount), new_id)
    if held:
        set_state(conn, new_id, "held", actor="system:checks", reason=held, now=now, current="received",
                  pending=pending)
        conn.execute(_DECISION, {"order_id": new_id, "at": now, "ruleset_version": version, "outcome": "held",
                                 "rule": None, "explanation": {"check": held}})
        state = "held"
    else:
        merge = _merge_target(conn, ruleset, order, new_id, now)
        if merge is not None:
            conn.execute(_UPDATE_ORDER, {"_order": new_id, "merged_with": merge})
        if route_now:
            head = _Head(id=new_id, state="received", channel=order.channel, fulfilment=order.fulfilment,
                         customer=order.customer, contact=order.contact, address=order.address, pickup_code=code,
                         merged_with=merge)
            wanted = OrderIn(id=new_id, channel=order.channel, fulfilment=order.fulfilment,
                             lines=tuple((ln.sku, ln.qty) for ln in order.lines), lat=order.lat, lon=order.lon,
                             pickup_location=pickup)
            state = route(conn, new_id, actor="system:router", now=now, rules=(version, ruleset), locs=locs,
                          known=(head, wanted, []), pending=pending)
    conn.execute(_TRANSITION, pending)
    return IntakeResult(new_id, state, True, code)


def _merge_target(conn: Connection, rules: RuleSet, order: OrderInput, order_id: int, now: datetime) -> int | None:
    """The earlier order this one goes out with (a `merge` check), if any."""
    for c in rules.checks:
        if c.action != "merge" or (c.channels and order.channel not in c.channels) or not order.customer:
            continue
        if not order.address and order.lat is None and not order.pickup_store:
            continue
        same_place = (ORDERS.c.address == order.address) if order.address else (
            (ORDERS.c.lat == order.lat) & (ORDERS.c.lon == order.lon)) if order.lat is not None else (
            ORDERS.c.pickup_location_id == select(LOCS.c.id).where(LOCS.c.code == order.pickup_store).scalar_subquery())
        found = conn.execute(select(ORDERS.c.id).where(
            ORDERS.c.customer == order.customer, ORDERS.c.id != order_id, ORDERS.c.fulfilment == order.fulfilment,
            ORDERS.c.created_at >= now - timedelta(minutes=c.window_minutes), same_place,
            ORDERS.c.state.in_(("routed", "accepted", "picking"))).order_by(ORDERS.c.id.desc()).limit(1)).scalar()
        if found is not None:
            return int(found)
    return None


def _checks(conn: Connection, rules: RuleSet, order: OrderInput, amount: float, order_id: int) -> str | None:
    for c in rules.checks:
        if c.action == "merge":
            continue
        if c.channels and order.channel not in c.channels:
            continue
        if c.amount_over is not None and amount <= c.amount_over:
            continue
        if c.new_customer is not None:
            if not order.customer:
                continue
            earlier = conn.execute(select(func.count()).select_from(ORDERS).where(
                ORDERS.c.customer == order.customer, ORDERS.c.id != order_id)).scalar_one()
            if (earlier == 0) != c.new_customer:
                continue
        if c.action == "approve":
            return None
        return f"check {c.name!r}: held for review (amount {amount:.2f})"
    return None


# -- rules -----------------------------------------------------------------------------------------


_parsed_rules: dict[tuple[str, int], RuleSet] = {}


def _rules_at(conn: Connection, version: int | None) -> tuple[int, RuleSet]:
    if version is None:
        return 0, DEFAULT_RULES
    key = (_db_key(conn), version)
    rules = _parsed_rules.get(key)
    if rules is None:
        spec = conn.execute(select(RULESETS.c.spec).where(RULESETS.c.version == version)).scalar_one()
        rules = _parsed_rules[key] = parse_rules(spec)
    return version, rules


def current_rules(conn: Connection) -> tuple[int, RuleSet]:
    """The rule set in force (the newest version); parsed once per version and database."""
    return _rules_at(conn, _candidates.versions(conn)[0])


def routing_state(conn: Connection) -> tuple[int, RuleSet, Locations]:
    """The rule set in force and the location index, both checked against the database's versions
    in one query (each is reloaded only when it changed)."""
    rules_version, locations_version = _candidates.versions(conn)
    version, rules = _rules_at(conn, rules_version)
    return version, rules, _candidates.locations(conn, locations_version)


def _db_key(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True) + str(conn.engine.url.query)


def save_rules(conn: Connection, spec: Any, *, actor: str, note: str | None = None, via: str = "api") -> int:
    """Validate and save a new version of the rule set; raise `RuleError` naming what is wrong."""
    rules = parse_rules(spec)
    version = (conn.execute(select(func.max(RULESETS.c.version))).scalar() or 0) + 1
    conn.execute(RULESETS.insert().values(version=version, spec=rules.model_dump(mode="json"), created_at=_now(),
                                          created_by=actor[:120], note=note))
    audit(conn, actor, "routing.rules", str(version), detail=note, after={"version": version}, via=via,
          object_type="routing_rules")
    return version


# -- the location index ---------------------------------------------------------------------------


def _locations(conn: Connection) -> Locations:
    return _candidates.locations(conn)


def candidates(conn: Connection, order: OrderIn, k: int, now: datetime) -> tuple[list[Any], int]:
    """The `k` nearest active locations with their stock of the order's SKUs, and how many there are."""
    pool = Pool(conn, _locations(conn), order, now, k)
    return pool.near(k), pool.total


# -- routing ---------------------------------------------------------------------------------------


def _order_in(conn: Connection, order_id: int, *, lock: bool = True) -> tuple[Any, OrderIn, list[str]]:
    """The order's row, what of it is still to route, and the states of its active assignments."""
    stmt = select(ORDERS).where(ORDERS.c.id == order_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=ORDERS)
    o = conn.execute(stmt).first()
    if o is None:
        raise NotFound(f"no order {order_id}")
    need: dict[str, int] = {}
    for r in conn.execute(select(LINES.c.sku, LINES.c.qty).where(LINES.c.order_id == order_id).order_by(LINES.c.line_no)):
        need[r.sku] = need.get(r.sku, 0) + r.qty
    # What active assignments already cover is not routed again (a split order re-routes its rejected part).
    active: list[str] = []
    for a in conn.execute(select(ASSIGN.c.lines, ASSIGN.c.state).where(ASSIGN.c.order_id == order_id,
                                                                       ASSIGN.c.state.in_(ACTIVE_ASSIGNMENT))):
        active.append(a.state)
        for sku, qty in a.lines:
            need[sku] = need.get(sku, 0) - int(qty)
    lines = tuple((s, q) for s, q in need.items() if q > 0)
    return o, OrderIn(id=o.id, channel=o.channel, fulfilment=o.fulfilment, lines=lines, lat=o.lat, lon=o.lon,
                      pickup_location=o.pickup_location_id, excluded=frozenset(o.excluded or ())), active


RACE_RETRIES = 6
"""Optimistic tries (plan on unlocked reads, lock only what was chosen); the last locks every candidate."""


def route(conn: Connection, order_id: int, *, actor: str, now: datetime | None = None,
          rules: tuple[int, RuleSet] | None = None, locs: Locations | None = None,
          known: tuple[Any, OrderIn, list[str]] | None = None, pending: list[dict[str, Any]] | None = None) -> str:
    """Route what of the order is not assigned yet, reserve it and send it to the stores; record
    the decision. Returns the order's new state. `known`: the order as `_order_in` would read it
    (an order this transaction has just inserted); `pending`: see `set_state`."""
    now = now or _now()
    if rules is None or locs is None:
        version, ruleset, locs = routing_state(conn)
        if rules is not None:
            version, ruleset = rules
    else:
        version, ruleset = rules
    o, order, active = known if known is not None else _order_in(conn, order_id)
    if o.state not in ("received", "held", "rejected", "routed", "unfulfillable", "accepted"):
        raise IllegalTransition(f"order {order_id} is {o.state}: only received, held, rejected, routed or "
                                f"unfulfillable orders are routed")
    if not order.lines:
        return str(o.state)
    try:
        group = ruleset.group_for(order.channel)
    except RuleError as exc:
        return _unfillable(conn, o, version, None, {"error": str(exc)}, str(exc), actor, now, pending)
    tried: list[dict[str, Any]] = []
    rules_to_try = list(group.rules)
    merge_ids: list[int] | None = None
    if o.merged_with is not None:
        siblings = sorted(set(conn.execute(select(ASSIGN.c.location_id).where(
            ASSIGN.c.order_id == o.merged_with, ASSIGN.c.state.in_(ACTIVE_ASSIGNMENT))).scalars()))
        if siblings:
            # Sent out with the earlier order: its locations first, if one can fill this one.
            rules_to_try.insert(0, Rule(name=f"merge with order {o.merged_with}", assignment="single",
                                        filters=(Filter(field=FilterField.LOCATION, op=Op.IN,
                                                        value=[locs.base[i].code for i in siblings
                                                               if i in locs.base]),),
                                        candidates=max(1, len(siblings))))
            merge_ids = siblings
    pool = Pool(conn, locs, order, now, max(r.candidates for r in rules_to_try))
    for rule in rules_to_try:
        only = merge_ids if merge_ids is not None and rule is rules_to_try[0] else None
        chosen: Plan | None = None
        for attempt in range(RACE_RETRIES):
            last = attempt == RACE_RETRIES - 1
            # Lost every race but this one: lock all the candidates' rows (in the one fixed order),
            # so the plan made now holds until commit; in a savepoint, so that those locks go if it
            # cannot fill the order and the next rule locks others.
            locking = conn.begin_nested() if last and conn.dialect.name == "postgresql" else None
            p = plan_rule(pool, rule, lock=last, only=only)
            if p.filled:
                try:
                    reserve(conn, order_id, p.allocation, now)
                except Shortage:
                    if locking is not None:
                        locking.rollback()
                    pool.forget()
                    continue
            if locking is not None:
                (locking.commit if p.filled else locking.rollback)()
            chosen = p
            break
        if chosen is None:  # lost every race: stock is moving under us; treat as unfilled now
            tried.append({"rule": rule.name, "note": "stock kept changing while reserving", "candidates": []})
            continue
        entry = {"rule": rule.name, "assignment": rule.assignment, "note": chosen.note,
                 "candidates": chosen.shown(), "considered": chosen.considered}
        tried.append(entry)
        if chosen.filled:
            extra = _assign(conn, o, chosen, ruleset, now, locs) | {"route_after": None, "queued_since": None}
            conn.execute(_DECISION, {"order_id": order_id, "at": now, "ruleset_version": version, "outcome": "routed",
                                     "rule": rule.name, "explanation": {"group": group.name, "rules": tried}})
            target = min([*active, "routed"], key=lambda st: RANK[st])
            if target != o.state or o.state == "routed":
                where = ", ".join(sorted(locs.base[i].code for i in chosen.allocation if i in locs.base))
                set_state(conn, order_id, target, actor=actor, now=now, current=o.state, channel=o.channel,
                          reason=f"rule {rule.name!r}: assigned to {where}", extra=extra, pending=pending)
            else:
                conn.execute(_UPDATE_ORDER, {"_order": order_id, **extra})
            return target
        if rule.unfilled is Unfilled.NEXT_RULE:
            continue
        if rule.unfilled is Unfilled.QUEUE:
            since = o.queued_since or now
            if now - since < timedelta(days=rule.cancel_after_days):
                conn.execute(update(ORDERS).where(ORDERS.c.id == order_id).values(
                    route_after=now + timedelta(minutes=rule.retry_minutes), queued_since=since))
                conn.execute(DECIDE.insert().values(order_id=order_id, at=now, ruleset_version=version,
                                                    outcome="queued", rule=rule.name,
                                                    explanation={"group": group.name, "rules": tried}))
                return str(o.state)
            conn.execute(DECIDE.insert().values(order_id=order_id, at=now, ruleset_version=version,
                                                outcome="cancelled", rule=rule.name,
                                                explanation={"group": group.name, "rules": tried}))
            _release_all(conn, order_id, now, "queued too long")
            set_state(conn, order_id, "cancelled", actor=actor, now=now, current=o.state,
                      reason=f"rule {rule.name!r}: unfilled for {rule.cancel_after_days} days", pending=pending)
            return "cancelled"
        break
    return _unfillable(conn, o, version, group.name, {"group": group.name, "rules": tried},
                       _why(order, tried), actor, now, pending)


def _why(order: OrderIn, tried: list[dict[str, Any]]) -> str:
    reasons = [c.get("dropped", "") for t in tried for c in t.get("candidates", [])]
    if order.fulfilment == "delivery" and reasons and all("delivery zone" in r for r in reasons):
        return "the address is outside every delivery zone"
    if not reasons:
        return "no location to consider (no coordinates, or no active location)"
    return "no rule could fill it: " + "; ".join(f"{t['rule']}: {t.get('note') or 'unfilled'}" for t in tried)


def _unfillable(conn: Connection, o: Any, version: int, group: str | None, explanation: dict[str, Any],
                reason: str, actor: str, now: datetime, pending: list[dict[str, Any]] | None = None) -> str:
    conn.execute(_DECISION, {"order_id": o.id, "at": now, "ruleset_version": version, "outcome": "unfulfillable",
                             "rule": None, "explanation": explanation | {"reason": reason}})
    if o.state == "unfulfillable":
        return "unfulfillable"
    if o.state in ("accepted",):
        return str(o.state)
    set_state(conn, o.id, "unfulfillable", actor=actor, now=now, current=o.state, reason=reason, pending=pending)
    return "unfulfillable"


_ASSIGN_INSERT = ASSIGN.insert().returning(ASSIGN.c.id, sort_by_parameter_order=True)
_RESV_INSERT = RESV.insert()


def _assign(conn: Connection, o: Any, p: Plan, ruleset: RuleSet, now: datetime, locs: Locations) -> dict[str, Any]:
    """Write the assignments and reservations of `p`, send each box its `assign`; return the
    order's new scoping columns (the first location's store and region)."""
    accept_by = now + timedelta(minutes=ruleset.accept_minutes)
    parts = sorted(p.allocation.items())
    ids = list(conn.execute(_ASSIGN_INSERT, [
        {"order_id": o.id, "location_id": loc_id, "node": locs.meta.get(loc_id, (None, None))[0], "state": "routed",
         "lines": [[s, q] for s, q in lines], "created_at": now, "accept_by": accept_by} for loc_id, lines in parts
    ]).scalars())
    conn.execute(_RESV_INSERT, [
        {"assignment_id": aid, "order_id": o.id, "location_id": loc_id, "sku": s, "qty": q, "status": "active",
         "created_at": now} for aid, (loc_id, lines) in zip(ids, parts, strict=True) for s, q in lines])
    for aid, (loc_id, lines) in zip(ids, parts, strict=True):
        node = locs.meta.get(loc_id, (None, None))[0]
        if node:
            msg = downlink.send(conn, node, MessageType.ASSIGN, _assign_data(conn, o, aid, lines, accept_by),
                                engine=ENGINE, expires_in=accept_by - now, key=f"orders-assign-{aid}", now=now)
            conn.execute(update(ASSIGN).where(ASSIGN.c.id == aid).values(command=msg))
    first = parts[0][0]
    return {"store_id": locs.meta.get(first, (None, None))[1],
            "region": locs.base[first].region if first in locs.base else None}


def _assign_data(conn: Connection, o: Any, aid: int, lines: Sequence[tuple[str, int]], accept_by: datetime | None,
                 action: AssignAction = AssignAction.ASSIGN) -> AssignData:
    code_hash = hashlib.sha256(o.pickup_code.encode()).hexdigest() if o.pickup_code else None
    return AssignData(order_id=str(o.id), lines=tuple(OrderLine(sku=s, qty=q) for s, q in lines),
                      fulfilment=o.fulfilment, assignment=aid, action=action, accept_by=accept_by,
                      pickup_code_sha256=code_hash, customer=o.customer, contact=o.contact,
                      address=o.address, channel=o.channel)


def _derived_state(conn: Connection, order_id: int) -> str | None:
    """The order's progress: that of its least advanced active assignment."""
    states = list(conn.execute(select(ASSIGN.c.state).where(ASSIGN.c.order_id == order_id,
                                                            ASSIGN.c.state.in_(ACTIVE_ASSIGNMENT))).scalars())
    if not states:
        return None
    return str(min(states, key=lambda s: RANK[s]))


# -- releasing -------------------------------------------------------------------------------------


def _release(conn: Connection, assignment_id: int, now: datetime, why: str, *, consume: bool = False) -> None:
    """Give an assignment's active reservations back (or, `consume`, take the goods off on hand)."""
    for r in conn.execute(select(RESV).where(RESV.c.assignment_id == assignment_id, RESV.c.status == "active")
                          .order_by(RESV.c.location_id, RESV.c.sku)).all():
        stmt = select(STOCK).where(STOCK.c.location_id == r.location_id, STOCK.c.sku == r.sku)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        s = conn.execute(stmt).one()
        on_hand = max(0, s.on_hand - r.qty) if consume else s.on_hand
        reserved = max(0, s.reserved - r.qty)
        conn.execute(update(STOCK).where(STOCK.c.location_id == r.location_id, STOCK.c.sku == r.sku)
                     .values(on_hand=on_hand, reserved=reserved, updated_at=now))
        conn.execute(MOVES.insert().values(location_id=r.location_id, sku=r.sku, at=now,
                                           kind="consume" if consume else "release",
                                           on_hand_delta=on_hand - s.on_hand, reserved_delta=reserved - s.reserved,
                                           on_hand_after=on_hand, reserved_after=reserved,
                                           source=f"order:{r.order_id} ({why})"[:200]))
        conn.execute(update(RESV).where(RESV.c.id == r.id).values(status="consumed" if consume else "released"))


def _withdraw(conn: Connection, o: Any, a: Any, now: datetime, state: str, why: str) -> None:
    _release(conn, a.id, now, why)
    conn.execute(update(ASSIGN).where(ASSIGN.c.id == a.id).values(state=state, accept_by=None))
    if a.node:
        downlink.send(conn, a.node, MessageType.ASSIGN,
                      _assign_data(conn, o, a.id, [(s, q) for s, q in a.lines], None, AssignAction.WITHDRAW),
                      engine=ENGINE, key=f"orders-withdraw-{a.id}", now=now)


def _release_all(conn: Connection, order_id: int, now: datetime, why: str) -> None:
    o = conn.execute(select(ORDERS).where(ORDERS.c.id == order_id)).one()
    # By location: the stock rows are locked in (location, sku) order, as routing locks them.
    for a in conn.execute(select(ASSIGN).where(ASSIGN.c.order_id == order_id, ASSIGN.c.state.in_(ACTIVE_ASSIGNMENT))
                          .order_by(ASSIGN.c.location_id)).all():
        _withdraw(conn, o, a, now, "withdrawn", why)


def _exclude(conn: Connection, order_id: int, location_id: int) -> None:
    current = conn.execute(select(ORDERS.c.excluded).where(ORDERS.c.id == order_id)).scalar() or []
    if location_id not in current:
        conn.execute(update(ORDERS).where(ORDERS.c.id == order_id).values(excluded=[*current, location_id]))


def cancel(conn: Connection, order_id: int, *, actor: str, reason: str, now: datetime | None = None) -> str:
    """Cancel (intercept) an order not yet shipped: reservations back, stores told to drop it."""
    now = now or _now()
    o, _, _ = _order_in(conn, order_id)
    if "cancelled" not in TRANSITIONS[o.state]:
        raise IllegalTransition(f"order {order_id} is {o.state}: it cannot be cancelled any more")
    _release_all(conn, order_id, now, f"cancelled: {reason}")
    set_state(conn, order_id, "cancelled", actor=actor, reason=reason, now=now, current=o.state)
    return "cancelled"


def approve(conn: Connection, order_id: int, *, actor: str, now: datetime | None = None) -> str:
    now = now or _now()
    state = conn.execute(select(ORDERS.c.state).where(ORDERS.c.id == order_id)).scalar()
    if state is None:
        raise NotFound(f"no order {order_id}")
    if state != "held":
        raise IllegalTransition(f"order {order_id} is {state}: only held orders are approved")
    return route(conn, order_id, actor=actor, now=now)


def reroute(conn: Connection, order_id: int, *, actor: str, reason: str, now: datetime | None = None) -> str:
    """Withdraw the not-yet-accepted assignments and route again, excluding those locations."""
    now = now or _now()
    o, _, _ = _order_in(conn, order_id)
    if o.state not in ("routed", "unfulfillable", "rejected", "received"):
        raise IllegalTransition(f"order {order_id} is {o.state}: only received, routed, rejected or unfulfillable "
                                f"orders are re-routed")
    for a in conn.execute(select(ASSIGN).where(ASSIGN.c.order_id == order_id, ASSIGN.c.state == "routed")).all():
        _withdraw(conn, o, a, now, "withdrawn", f"re-routed: {reason}")
        _exclude(conn, order_id, a.location_id)
    return route(conn, order_id, actor=actor, now=now)


# -- store fulfilment ------------------------------------------------------------------------------


def apply_fulfil(conn: Connection, data: FulfilData, *, actor: str, node: str | None,
                 pos: tuple[int, int] | None = None, now: datetime | None = None,
                 pickup_code: str | None = None) -> str:
    """A store's (or a warehouse's) step on one assignment: accepted, picking, packed, shipped,
    ready, picked up, delivered, or rejected. Order-safe: a step older than the last applied, or
    one that would go backwards, changes nothing. Returns the order's state."""
    now = now or _now()
    try:
        order_id = int(data.order_id)
    except ValueError:
        raise Refused(Refusal.INVALID, f"order_id {data.order_id!r} is not an omnishelf order number") from None
    o, _, _ = _order_in(conn, order_id)
    stmt = select(ASSIGN).where(ASSIGN.c.order_id == order_id)
    if data.assignment is not None:
        stmt = stmt.where(ASSIGN.c.id == data.assignment)
    elif node is not None:
        stmt = stmt.where(ASSIGN.c.node == node).order_by(ASSIGN.c.id.desc()).limit(1)
    a = conn.execute(stmt).first()
    if a is None:
        raise Refused(Refusal.CONFLICT, f"order {order_id} has no assignment {data.assignment or ''} for {node or 'it'}")
    if node is not None and a.node != node:
        raise Refused(Refusal.FOREIGN_ASSIGNMENT, f"assignment {a.id} belongs to {a.node}, not {node}")
    if pos is not None and a.pos_session is not None and (a.pos_session, a.pos_seq) >= pos:
        return str(o.state)  # an older step arriving late
    to = FULFIL_STATE[data.status]
    if a.state not in RANK:
        return str(o.state)  # withdrawn / expired / rejected: the store is told separately
    if to == "picked_up" and node is None and (
            not pickup_code or not o.pickup_code or not secrets.compare_digest(pickup_code, o.pickup_code)):
        raise Refused(Refusal.INVALID, "the pickup code does not match this order's")
    if to == "rejected":
        if RANK[a.state] >= RANK["shipped"]:
            raise IllegalTransition(f"assignment {a.id} is {a.state}: too late to reject")
        _release(conn, a.id, now, f"rejected by {a.node or 'the location'}")
        conn.execute(update(ASSIGN).where(ASSIGN.c.id == a.id).values(
            state="rejected", accept_by=None, **({"pos_session": pos[0], "pos_seq": pos[1]} if pos else {})))
        _exclude(conn, order_id, a.location_id)
        set_state(conn, order_id, "rejected", actor=actor, now=now, current=o.state,
                  reason=f"rejected by {a.node or 'location'}: {data.note or 'no reason given'}")
        return route(conn, order_id, actor="system:router", now=now)
    if RANK[to] <= RANK[a.state]:
        return str(o.state)
    values: dict[str, Any] = {"state": to, "accept_by": None}
    if pos is not None:
        values |= {"pos_session": pos[0], "pos_seq": pos[1]}
    conn.execute(update(ASSIGN).where(ASSIGN.c.id == a.id).values(**values))
    if to in ("shipped", "picked_up"):
        _release(conn, a.id, now, to, consume=True)
    if data.carrier or data.tracking:
        conn.execute(update(ORDERS).where(ORDERS.c.id == order_id).values(carrier=data.carrier, tracking=data.tracking))
    target = _derived_state(conn, order_id)
    state = str(o.state)
    if target is None or target == state or RANK.get(target, -1) <= RANK.get(state, -1):
        return state
    # Steps the store skipped (an `accepted` lost on the way) are recorded as implied.
    for step in _path(state, target):
        implied = step != target
        set_state(conn, order_id, step, actor=actor, now=now, current=state,
                  reason=(f"implied by {target}" if implied else f"{a.node or 'location'}: {data.status.value}")
                  + (f" ({data.note})" if data.note and not implied else "")
                  + (f" via {data.carrier} {data.tracking}" if to == "shipped" and data.tracking and not implied else ""))
        state = step
    return state


_CHAIN = {"delivery": ["routed", "accepted", "picking", "packed", "shipped", "delivered"],
          "pickup": ["routed", "accepted", "picking", "packed", "ready_for_pickup", "picked_up"]}


def _path(current: str, target: str) -> list[str]:
    chain = _CHAIN["pickup" if target in ("ready_for_pickup", "picked_up") else "delivery"]
    if current in chain and target in chain:
        i, j = chain.index(current), chain.index(target)
        return chain[i + 1:j + 1]
    return [target]


def retrying(engine: Any, fn: Any, attempts: int = 4) -> Any:
    """Run `fn(conn)` in a write transaction, again if PostgreSQL chose it as a deadlock's victim
    (routing locks in one order, but releasing then re-routing in one transaction cannot)."""
    from sqlalchemy.exc import OperationalError

    from cloud.db import write_transaction

    for attempt in range(attempts):
        try:
            with write_transaction(engine) as conn:
                return fn(conn)
        except OperationalError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in ("40P01", "40001") or attempt == attempts - 1:
                raise
            log.info("orders: transaction retried after %s", code)
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


# -- expiry and the queue --------------------------------------------------------------------------


def expire_due(conn: Connection, now: datetime | None = None, limit: int = 100) -> int:
    """Assignments not accepted by their deadline: reservation back, box told, order routed again."""
    now = now or _now()
    stmt = select(ASSIGN).where(ASSIGN.c.state == "routed", ASSIGN.c.accept_by <= now).order_by(ASSIGN.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    due = conn.execute(stmt).all()
    for a in due:
        o = conn.execute(select(ORDERS).where(ORDERS.c.id == a.order_id)).one()
        _withdraw(conn, o, a, now, "expired", "not accepted in time")
        _exclude(conn, a.order_id, a.location_id)
        if o.state in ("routed", "accepted"):
            route(conn, a.order_id, actor="system:expiry", now=now)
    return len(due)


def route_queued(conn: Connection, now: datetime | None = None, limit: int = 50) -> int:
    now = now or _now()
    ids = list(conn.execute(select(ORDERS.c.id).where(ORDERS.c.route_after <= now).order_by(ORDERS.c.route_after)
                            .limit(limit)).scalars())
    for i in ids:
        route(conn, i, actor="system:queue", now=now)
    return len(ids)


# -- locations -------------------------------------------------------------------------------------


def store_location(conn: Connection, node: str) -> int:
    """The location of the store `node` belongs to (made from the fleet's store on first use)."""
    row = conn.execute(select(NODES.c.store_id, STORES.c.code, STORES.c.lat, STORES.c.lon, REGIONS.c.code.label("region"))
                       .select_from(NODES.join(STORES, STORES.c.id == NODES.c.store_id)
                                    .join(REGIONS, REGIONS.c.id == STORES.c.region_id))
                       .where(NODES.c.id == node)).first()
    if row is None:
        raise LookupError(f"node {node!r} belongs to no store: assign it to one (omnishelf fleet / console), "
                          "then replay this message")
    loc = conn.execute(select(LOCS.c.id, LOCS.c.node).where(LOCS.c.store_id == row.store_id)).first()
    if loc is not None:
        if loc.node is None:
            conn.execute(update(LOCS).where(LOCS.c.id == loc.id).values(node=node))
            _candidates.bump_locations(conn)
        return int(loc.id)
    new = conn.execute(insert_for(conn, LOCS).values(
        code=row.code, kind="store", store_id=row.store_id, node=node, region=row.region, lat=row.lat, lon=row.lon,
        priority=0, cost=0.0, active=True,
    ).on_conflict_do_nothing().returning(LOCS.c.id)).scalar()
    if new is not None:
        _candidates.bump_locations(conn)
    if new is None:
        return int(conn.execute(select(LOCS.c.id).where(LOCS.c.store_id == row.store_id)).scalar_one())
    return int(new)


class LocationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["store", "warehouse"] = "warehouse"
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    region: Annotated[str, StringConstraints(max_length=32)] | None = None
    node: Annotated[str, StringConstraints(max_length=63)] | None = None
    store: Annotated[str, StringConstraints(max_length=32)] | None = None
    """The fleet store code (kind store)."""
    zone_radius_km: Annotated[float, Field(gt=0, le=20_000)] | None = None
    zone_polygon: Annotated[list[tuple[float, float]], Field(min_length=3, max_length=10_000)] | None = None
    capacity_per_day: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    cost: Annotated[float, Field(ge=0, le=1e9)] = 0.0
    active: bool = True


def put_location(conn: Connection, code: str, body: LocationInput, *, actor: str, via: str = "api") -> int:
    if body.zone_polygon:
        try:
            Zone(body.lat, body.lon, None, tuple(body.zone_polygon))
        except ValueError as exc:
            raise Refused(Refusal.INVALID, f"location {code}: {exc}") from None
    store_id = None
    if body.store:
        store_id = conn.execute(select(STORES.c.id).where(STORES.c.code == body.store)).scalar()
        if store_id is None:
            raise Refused(Refusal.UNKNOWN_STORE, f"location {code}: no fleet store {body.store!r}")
    values = body.model_dump(exclude={"store"}) | {"store_id": store_id}
    existing = conn.execute(select(LOCS.c.id).where(LOCS.c.code == code)).scalar()
    if existing is None:
        loc_id = int(conn.execute(LOCS.insert().values(code=code, **values).returning(LOCS.c.id)).scalar_one())
    else:
        conn.execute(update(LOCS).where(LOCS.c.id == existing).values(**values))
        loc_id = int(existing)
    audit(conn, actor, "location.put", code, after=body.model_dump(mode="json"), via=via, object_type="location")
    _candidates.bump_locations(conn)
    return loc_id


def location_id(conn: Connection, code: str) -> int:
    found = conn.execute(select(LOCS.c.id).where(LOCS.c.code == code)).scalar()
    if found is None:
        raise NotFound(f"no location {code!r}")
    return int(found)


# -- reading ---------------------------------------------------------------------------------------


def visible_store_ids(conn: Connection, scope: Any) -> list[int] | None:
    """None: every store (and unassigned orders); else the ids of the stores in scope."""
    if scope.all:
        return None
    return list(conn.execute(select(Store.id).join(Store.region).where(scope.store_clause())).scalars())


def visible_location_ids(conn: Connection, scope: Any) -> list[int] | None:
    """None: every location; else those of the stores in scope (warehouses only for all-store scopes)."""
    ids = visible_store_ids(conn, scope)
    if ids is None:
        return None
    return list(conn.execute(select(LOCS.c.id).where(LOCS.c.store_id.in_(ids))).scalars())


def list_orders(conn: Connection, scope: Any, *, state: str | None = None, channel: str | None = None,
                store: str | None = None, region: str | None = None, since: datetime | None = None,
                limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    stmt = select(ORDERS, LOCS.c.code.label("location")).outerjoin(LOCS, LOCS.c.store_id == ORDERS.c.store_id)
    ids = visible_store_ids(conn, scope)
    if ids is not None:
        stmt = stmt.where(ORDERS.c.store_id.in_(ids))
    if state:
        stmt = stmt.where(ORDERS.c.state == state)
    if channel:
        stmt = stmt.where(ORDERS.c.channel == channel)
    if store:
        stmt = stmt.where(LOCS.c.code == store)
    if region:
        stmt = stmt.where(ORDERS.c.region == region)
    if since:
        stmt = stmt.where(ORDERS.c.created_at >= since)
    rows = conn.execute(stmt.order_by(ORDERS.c.id.desc()).limit(limit).offset(offset)).all()
    return [_summary(r) for r in rows]


def _summary(r: Any) -> dict[str, Any]:
    return {"id": r.id, "channel": r.channel, "channel_order_id": r.channel_order_id, "state": r.state,
            "fulfilment": r.fulfilment, "customer": r.customer, "amount": float(r.amount), "region": r.region,
            "location": getattr(r, "location", None), "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat()}


def get_order(conn: Connection, scope: Any, order_id: int) -> dict[str, Any]:
    r = conn.execute(select(ORDERS, LOCS.c.code.label("location")).outerjoin(LOCS, LOCS.c.store_id == ORDERS.c.store_id)
                     .where(ORDERS.c.id == order_id)).first()
    ids = visible_store_ids(conn, scope)
    if r is None or (ids is not None and r.store_id not in ids):
        raise NotFound(f"no order {order_id} (unknown, or outside your regions and stores)")
    out = _summary(r) | {
        "contact": r.contact, "address": r.address, "lat": r.lat, "lon": r.lon, "carrier": r.carrier,
        "tracking": r.tracking, "pickup_code": r.pickup_code, "excluded": r.excluded or [],
        "lines": [dict(sku=x.sku, qty=x.qty, price=float(x.price), discount=float(x.discount)) for x in conn.execute(
            select(LINES).where(LINES.c.order_id == order_id).order_by(LINES.c.line_no))],
        "timeline": [dict(from_state=t.from_state, to_state=t.to_state, at=t.at.isoformat(), actor=t.actor,
                          reason=t.reason) for t in conn.execute(
            select(TRANS).where(TRANS.c.order_id == order_id).order_by(TRANS.c.id))],
        "assignments": [dict(id=a.id, location=a.code, node=a.node, state=a.state, lines=a.lines,
                             accept_by=a.accept_by.isoformat() if a.accept_by else None) for a in conn.execute(
            select(ASSIGN, LOCS.c.code).join(LOCS, LOCS.c.id == ASSIGN.c.location_id)
            .where(ASSIGN.c.order_id == order_id).order_by(ASSIGN.c.id))],
        "decisions": [dict(id=d.id, at=d.at.isoformat(), outcome=d.outcome, rule=d.rule, ruleset=d.ruleset_version,
                           explanation=d.explanation) for d in conn.execute(
            select(DECIDE).where(DECIDE.c.order_id == order_id).order_by(DECIDE.c.id))],
    }
    return out


def inbox(conn: Connection, status: str | None = "open", limit: int = 100) -> list[dict[str, Any]]:
    stmt = select(INBOX)
    if status:
        stmt = stmt.where(INBOX.c.status == status)
    return [dict(id=r.id, received_at=r.received_at.isoformat(), channel=r.channel, source=r.source, reason=r.reason,
                 detail=r.detail, raw=r.raw, status=r.status, order_id=r.order_id)
            for r in conn.execute(stmt.order_by(INBOX.c.id.desc()).limit(limit))]


FULFIL_SOURCE = "fulfil"
"""The inbox source of a store's step that could not be applied (its raw: `fulfil_raw`)."""


def fulfil_raw(data: FulfilData, node: str, position: tuple[int, int], msg_id: str) -> str:
    """A refused `fulfil` as the inbox keeps it: the step, the box that sent it, its position."""
    return json.dumps({"fulfil": data.model_dump(mode="json"), "node": node, "position": list(position),
                       "msg_id": msg_id}, ensure_ascii=False)


def _replay_fulfil(conn: Connection, item: Any, raw: str, data: Any, *, actor: str, via: str) -> IntakeResult:
    """Apply a refused store step again (fixed, or after fixing what it refers to), exactly once:
    the item is claimed by a conditional update in the transaction that applies it."""
    try:
        if not isinstance(data, dict) or not isinstance(data.get("fulfil"), dict) or not data.get("node"):
            raise Refused(Refusal.MISSING_FIELD, "a store step needs 'fulfil' (the step) and 'node' (the box)")
        step = FulfilData.model_validate(data["fulfil"])
        pos = data.get("position")
        position = (int(pos[0]), int(pos[1])) if isinstance(pos, list) and len(pos) == 2 else None
        order_id = int(step.order_id) if step.order_id.isdigit() else 0
    except ValidationError as exc:
        refused = refusal_from_validation(exc)
        conn.execute(update(INBOX).where(INBOX.c.id == item.id).values(reason=refused.reason.value,
                                                                        detail=refused.detail[:500], raw=raw))
        raise refused from None
    claimed = conn.execute(update(INBOX).where(INBOX.c.id == item.id, INBOX.c.status == "open").values(
        status="replayed", order_id=order_id or None, raw=raw, resolved_by=actor[:120], resolved_at=_now())).rowcount
    if not claimed:
        raise IllegalTransition(f"inbox item {item.id} was replayed meanwhile: only open items are replayed")
    nested = conn.begin_nested()
    try:
        state = apply_fulfil(conn, step, actor=f"{actor} (replay of inbox item {item.id})", node=str(data["node"]),
                             pos=position)
    except (Refused, IllegalTransition, NotFound) as exc:
        nested.rollback()
        refused = exc if isinstance(exc, Refused) else Refused(Refusal.CONFLICT, str(exc))
        conn.execute(update(INBOX).where(INBOX.c.id == item.id).values(
            status="open", reason=refused.reason.value, detail=refused.detail[:500], raw=raw, resolved_by=None,
            resolved_at=None))
        raise refused from None
    nested.commit()
    audit(conn, actor, "inbox.replay", str(item.id), detail=f"store step {step.status.value} of order {step.order_id}",
          via=via, object_type="order_inbox")
    return IntakeResult(order_id, state, False, None)


def replay_inbox(conn: Connection, item_id: int, *, actor: str, body: str | None = None,
                 via: str = "api") -> IntakeResult:
    """Accept an inbox item again, as it was or with `body` (the fixed JSON order, or store step);
    refused again → the item stays open with the new reason."""
    item = conn.execute(select(INBOX).where(INBOX.c.id == item_id)).first()
    if item is None:
        raise NotFound(f"no inbox item {item_id}")
    if item.status != "open":
        raise IllegalTransition(f"inbox item {item_id} is {item.status}: only open items are replayed")
    raw = body if body is not None else item.raw
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Refused(Refusal.NOT_JSON, f"the body is not JSON ({exc})") from None
    if item.source == FULFIL_SOURCE:
        return _replay_fulfil(conn, item, raw, data, actor=actor, via=via)
    if isinstance(data, dict) and "channel_order_id" not in data and "order_id" in data:
        data = from_bus_order(data, item.channel)
    try:
        if item.source == "webhook":
            from cloud.orders.channels import map_order

            mapping = conn.execute(select(CHANNELS.c.mapping).where(CHANNELS.c.name == item.channel)).scalar()
            if not mapping:
                raise Refused(Refusal.UNKNOWN_CHANNEL, f"channel {item.channel!r} has no mapping")
            order = map_order(item.channel, mapping, data)
        else:
            order = OrderInput.model_validate(data)
    except (ValidationError, Refused) as exc:
        refused = exc if isinstance(exc, Refused) else refusal_from_validation(exc)
        conn.execute(update(INBOX).where(INBOX.c.id == item_id).values(reason=refused.reason.value,
                                                                        detail=refused.detail[:500], raw=raw))
        raise refused from None
    nested = conn.begin_nested()
    try:
        result = intake(conn, order, actor=actor)
    except Refused as refused:
        nested.rollback()
        conn.execute(update(INBOX).where(INBOX.c.id == item_id).values(reason=refused.reason.value,
                                                                        detail=refused.detail[:500], raw=raw))
        raise
    nested.commit()
    conn.execute(update(INBOX).where(INBOX.c.id == item_id).values(status="replayed", order_id=result.id, raw=raw,
                                                                    resolved_by=actor[:120], resolved_at=_now()))
    audit(conn, actor, "inbox.replay", str(item_id), detail=f"order {result.id}", via=via, object_type="order_inbox")
    return result


def discard_inbox(conn: Connection, item_id: int, *, actor: str, via: str = "api") -> None:
    n = conn.execute(update(INBOX).where(INBOX.c.id == item_id, INBOX.c.status == "open").values(
        status="discarded", resolved_by=actor[:120], resolved_at=_now())).rowcount
    if not n:
        raise NotFound(f"no open inbox item {item_id}")
    audit(conn, actor, "inbox.discard", str(item_id), via=via, object_type="order_inbox")


def from_bus_order(data: dict[str, Any], channel: str) -> dict[str, Any]:
    """A kiosk `order` payload (as JSON) in the shape of `OrderInput`."""
    out = {k: v for k, v in data.items() if k in ("fulfilment", "customer", "contact", "address", "lat", "lon",
                                                   "pickup_store")}
    out["channel"] = data.get("channel") or channel
    out["channel_order_id"] = data.get("order_id")
    out["lines"] = [{k: v for k, v in ln.items() if k in ("sku", "qty", "price", "discount") and v is not None}
                    for ln in data.get("lines", [])]
    return out


SHOPPER_STOCK_FIELDS = ("sku", "location", "kind", "region", "atp", "updated_at")
"""What a caller learns of stock at a location outside its scope: what a shopper may be told ("2 at
the store 2.4 km away"), not the location's counts, reservations, safety stock or minimum."""


def stock_rows(conn: Connection, scope: Any, *, sku: str | None = None, location: str | None = None,
               limit: int = 500) -> list[dict[str, Any]]:
    """Stock with its ATP at every location (a store's kiosk and station tell shoppers and clerks
    of nearby stores and warehouses); rows of locations outside `scope` carry only
    `SHOPPER_STOCK_FIELDS`."""
    ids = [location_id(conn, location)] if location else None
    rows = atp_rows(conn, sku=sku, location_ids=ids, limit=limit)
    visible = visible_location_ids(conn, scope)
    if visible is None:
        return rows
    own = set(conn.execute(select(LOCS.c.code).where(LOCS.c.id.in_(visible))).scalars())
    return [row if row["location"] in own else {k: row[k] for k in SHOPPER_STOCK_FIELDS} for row in rows]


def stock_alerts(conn: Connection, scope: Any) -> list[dict[str, Any]]:
    """Low-stock rows of the locations in `scope` (what the console's stock page shows)."""
    return low_stock(conn, visible_location_ids(conn, scope))


def movements(conn: Connection, scope: Any, location: str, sku: str, limit: int = 100) -> list[dict[str, Any]]:
    """A SKU's stock history at a location in `scope` (NotFound outside it, as for an unknown one)."""
    loc = location_id(conn, location)
    visible = visible_location_ids(conn, scope)
    if visible is not None and loc not in visible:
        raise NotFound(f"no location {location!r} (unknown, or outside your regions and stores)")
    return [dict(at=m.at.isoformat(), kind=m.kind, on_hand_delta=m.on_hand_delta, reserved_delta=m.reserved_delta,
                 on_hand_after=m.on_hand_after, reserved_after=m.reserved_after, source=m.source, reason=m.reason,
                 clerk=None if m.clerk_id is None else {"id": m.clerk_id, "name": m.clerk_name}, note=m.note,
                 ref=m.ref)
            for m in conn.execute(select(MOVES).where(MOVES.c.location_id == loc, MOVES.c.sku == sku)
                                  .order_by(MOVES.c.id.desc()).limit(limit))]


def totals(conn: Connection, skus: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """(on hand, reserved) per SKU over every location (tests and the bench check overselling with it)."""
    stmt = select(STOCK.c.sku, func.sum(STOCK.c.on_hand), func.sum(STOCK.c.reserved)).group_by(STOCK.c.sku)
    if skus is not None:
        stmt = stmt.where(STOCK.c.sku.in_(list(skus)))
    return {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(stmt)}


def oversold(conn: Connection) -> int:
    """Stock rows whose reservations exceed what they may promise (must always be 0)."""
    return int(conn.execute(select(func.count()).select_from(STOCK).where(
        STOCK.c.reserved > STOCK.c.on_hand - STOCK.c.safety, STOCK.c.reserved > 0)).scalar_one())


__all__ += [
    "FULFIL_SOURCE",
    "approve",
    "current_rules",
    "discard_inbox",
    "fulfil_raw",
    "get_order",
    "inbox",
    "inbox_add",
    "invalidate_locations",
    "list_orders",
    "movements",
    "put_location",
    "replay_inbox",
    "reroute",
    "route_queued",
    "routing_state",
    "save_rules",
    "set_state",
    "stock_alerts",
    "stock_rows",
    "store_location",
]
