"""Tables of cloud.orders (all prefixed `orders_`): orders and their lines, state transitions,
the inbox of refused payloads, fulfilment locations, the stock ledger and its movements,
reservations, assignments to stores, routing decisions, rule sets, channels and the outbound feed.

Stock rows are the contended ones: routing locks them (`SELECT … FOR UPDATE`, in (location, sku)
order) and updates `reserved` in the transaction that records the reservation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.models import Base, BigId, UtcDateTime

__all__ = [
    "Assignment",
    "Channel",
    "Decision",
    "FeedItem",
    "InboxItem",
    "Location",
    "Movement",
    "Order",
    "OrderLineRow",
    "Reservation",
    "RuleSetRow",
    "StockRow",
    "Transition",
    "VersionRow",
]


class Order(Base):
    __tablename__ = "orders_orders"
    __table_args__ = (
        UniqueConstraint("channel", "channel_order_id"),
        Index("ix_orders_orders_state_route_after", "state", "route_after"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    channel_order_id: Mapped[str] = mapped_column(String(200))
    """With `channel`, the idempotency key: the same channel order is stored once."""
    state: Mapped[str] = mapped_column(String(20))
    """Looked up by `ix_orders_orders_state_route_after` (its first column)."""
    fulfilment: Mapped[str] = mapped_column(String(10))
    customer: Mapped[str | None] = mapped_column(String(200))
    contact: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(500))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    pickup_location_id: Mapped[int | None] = mapped_column(ForeignKey("orders_locations.id"))
    pickup_code: Mapped[str | None] = mapped_column(String(16))
    """Shown to the shopper (QR); the store box only gets its hash."""
    amount: Mapped[float] = mapped_column(Numeric(14, 2))
    source_node: Mapped[str | None] = mapped_column(String(63))
    """The box a kiosk order came from."""
    region: Mapped[str | None] = mapped_column(String(32), index=True)
    """The region of the location it is assigned to (console scoping); the source store's before."""
    store_id: Mapped[int | None] = mapped_column(Integer, index=True)
    """The fleet store it is assigned to (first assignment), for scoping."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    route_after: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Queued: route again at this time (unfilled policy `queue`)."""
    queued_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    merged_with: Mapped[int | None] = mapped_column(BigInteger)
    """An earlier order of the same customer and address it is sent out with (a `merge` check)."""
    excluded: Mapped[list[int] | None] = mapped_column(JSON)
    """Locations that rejected it or let it expire: never routed there again."""
    carrier: Mapped[str | None] = mapped_column(String(200))
    tracking: Mapped[str | None] = mapped_column(String(200))
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The order as received (after the channel mapping)."""


class OrderLineRow(Base):
    __tablename__ = "orders_lines"
    __table_args__ = (UniqueConstraint("order_id", "line_no"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders_orders.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[float] = mapped_column(Numeric(14, 2))
    discount: Mapped[float] = mapped_column(Numeric(14, 2))


class Transition(Base):
    """Every state change of an order: who, when, why."""

    __tablename__ = "orders_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders_orders.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(String(500))


class InboxItem(Base):
    """A payload that could not be accepted: kept with its raw body for an operator to fix and replay."""

    __tablename__ = "orders_inbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    channel: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    """webhook, rest, bus, console"""
    reason: Mapped[str] = mapped_column(String(32), index=True)
    """A `Refusal` value: bad_signature, stale, missing_field, unknown_sku, bad_quantity, no_coordinates, …"""
    detail: Mapped[str] = mapped_column(String(500))
    raw: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default="open", index=True)
    """open, replayed (an order was made from it), discarded"""
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    resolved_by: Mapped[str | None] = mapped_column(String(120))
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Location(Base):
    """A place that can fulfil: a store (its box receives `assign`) or a warehouse (REST/CSV)."""

    __tablename__ = "orders_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(12))
    """store or warehouse"""
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), unique=True)
    node: Mapped[str | None] = mapped_column(String(63))
    """The box that receives this location's assignments (its order desk)."""
    region: Mapped[str | None] = mapped_column(String(32))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    zone_radius_km: Mapped[float | None] = mapped_column(Float)
    zone_polygon: Mapped[list[Any] | None] = mapped_column(JSON)
    """[[lon, lat], …] ring; with neither a radius nor a polygon the location delivers anywhere."""
    capacity_per_day: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class StockRow(Base):
    __tablename__ = "orders_stock"
    __table_args__ = (Index("ix_orders_stock_sku", "sku"), {"postgresql_with": {"fillfactor": 80}})

    location_id: Mapped[int] = mapped_column(ForeignKey("orders_locations.id"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    safety: Mapped[int] = mapped_column(Integer, default=0)
    min_level: Mapped[int | None] = mapped_column(Integer)
    """Low-stock alert when available-to-promise falls below this."""
    pos_session: Mapped[int | None] = mapped_column(BigInteger)
    pos_seq: Mapped[int | None] = mapped_column(BigInteger)
    """Position (session, seq) of the store message `on_hand` came from: an older one never overwrites it."""
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class StockChange(Base):
    """The key of a stock row inserted, updated or deleted, and what it had available after
    (PostgreSQL: written by triggers on `orders_stock`, migrations 0018 and 0020; no key: the table was
    truncated), for the routing workers' holders caches (`cloud.orders.holders`). Nothing writes it
    on SQLite."""

    __tablename__ = "orders_stock_changes"
    __table_args__ = (Index("ix_orders_stock_changes_txid_id", "txid", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    txid: Mapped[int | None] = mapped_column(BigInteger)
    """The writing transaction's id (a column default): read in commit order as followers read the ledger."""
    location_id: Mapped[int | None] = mapped_column(Integer)
    sku: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    atp: Mapped[int | None] = mapped_column(Integer)
    """What the row had available after the change (0: deleted; none: logged before migration 0020)."""


class Movement(Base):
    """The stock ledger's history: every change of on hand or reserved, with its source."""

    __tablename__ = "orders_movements"
    __table_args__ = (Index("ix_orders_movements_loc_sku", "location_id", "sku"),
                      Index("ix_orders_movements_txid_id", "txid", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    txid: Mapped[int | None] = mapped_column(BigInteger)
    """PostgreSQL: the id of the transaction that wrote the row (a column default), so that the ATP
    feed reads movements in commit order (as followers read the ledger); null on SQLite."""
    location_id: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    """snapshot, level, reserve, release, consume, adjust"""
    on_hand_delta: Mapped[int] = mapped_column(Integer, default=0)
    reserved_delta: Mapped[int] = mapped_column(Integer, default=0)
    on_hand_after: Mapped[int] = mapped_column(Integer)
    reserved_after: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(200))
    """e.g. `bus:<msg_id>`, `order:17`, `csv:warehouse.csv`, `user:alice`."""
    pos_session: Mapped[int | None] = mapped_column(BigInteger)
    pos_seq: Mapped[int | None] = mapped_column(BigInteger)
    """A store's delta: the position of its message (a snapshot older than it does not erase it)."""
    reason: Mapped[str | None] = mapped_column(String(32))
    """A store's delta: what it was (sale, goods_in; a clerk's adjustment: damaged, lost, found, count, other)."""
    clerk_id: Mapped[str | None] = mapped_column(String(32))
    """A clerk's adjustment at the station: who (their id and name as the box sent them)."""
    clerk_name: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(String(200))
    ref: Mapped[str | None] = mapped_column(String(64))
    """A clerk's adjustment: its id on the box (what the station answered the clerk)."""


class Assignment(Base):
    """The part of an order one location fulfils (one per location when split)."""

    __tablename__ = "orders_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders_orders.id", ondelete="CASCADE"), index=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("orders_locations.id"), index=True)
    node: Mapped[str | None] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(20))
    """routed, accepted, picking, packed, shipped, ready_for_pickup, delivered, picked_up;
    rejected, expired, withdrawn (ended without fulfilment)"""
    lines: Mapped[list[Any]] = mapped_column(JSON)
    """[[sku, qty], …]"""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    accept_by: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    command: Mapped[Any | None] = mapped_column(Uuid)
    """The `assign` command's msg_id."""
    pos_session: Mapped[int | None] = mapped_column(BigInteger)
    pos_seq: Mapped[int | None] = mapped_column(BigInteger)
    """Position of the `fulfil` message that set `state` (order-safe)."""


class Reservation(Base):
    __tablename__ = "orders_reservations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("orders_assignments.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int] = mapped_column(BigInteger, index=True)
    location_id: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12), default="active")
    """active, released, consumed"""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Decision(Base):
    """One routing run: the rule that matched, every candidate with its distance and stock, and why
    each was dropped."""

    __tablename__ = "orders_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders_orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    ruleset_version: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    """routed, unfulfillable, queued, cancelled, held"""
    rule: Mapped[str | None] = mapped_column(String(100))
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON)


class RuleSetRow(Base):
    """A saved, validated rule set; the newest version is the one in force."""

    __tablename__ = "orders_rulesets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(120))
    note: Mapped[str | None] = mapped_column(String(500))


class Channel(Base):
    """A sales channel: its webhook secret and mapping, and where its status and ATP feeds go."""

    __tablename__ = "orders_channels"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str | None] = mapped_column(String(200))
    mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    replay_window_s: Mapped[int] = mapped_column(Integer, default=300)
    status_url: Mapped[str | None] = mapped_column(String(500))
    atp_url: Mapped[str | None] = mapped_column(String(500))
    atp_buffer: Mapped[int] = mapped_column(Integer, default=0)
    """Units held back from what the channel is told it may sell, per SKU."""
    atp_locations: Mapped[list[str] | None] = mapped_column(JSON)
    """Location codes the channel may sell from (None: all)."""


class FeedItem(Base):
    """An outbound message to a channel (status change or ATP batch), written in the transaction of
    the change (an outbox) and delivered with retries."""

    __tablename__ = "orders_feed"
    __table_args__ = (Index("ix_orders_feed_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    """status or atp"""
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    """pending, sent, failed (gave up after the retries)"""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))


class VersionRow(Base):
    """A counter bumped in the transaction of each change that in-process caches must see (the
    location index: `locations`). Read on every routing, written only by those rare changes."""

    __tablename__ = "orders_versions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
