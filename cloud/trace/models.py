"""Tables of cloud.trace: locations, units and their cases, EPCIS events, capture jobs, scans with
their verdicts, recalls, alerts and shopper registrations.

The verification path reads only by unique keys (unit by GTIN + serial, location by store or GLN,
recall by GTIN + batch or unit): the unit row carries what the rules need (state, last place seen,
last shipping destination's region, last scan), so no rule scans a table.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.models import Base, BigId, UtcDateTime

UNITS_FILLFACTOR = 80
"""Percent of a `trace_units` page its inserts fill on PostgreSQL (see `Unit`, migration 0017)."""

__all__ = [
    "Alert",
    "Capture",
    "Case",
    "Event",
    "EventEpc",
    "Location",
    "Recall",
    "Registration",
    "Scan",
    "Unit",
]


class Location(Base):
    """A place that handles goods: factory, distributor, warehouse or store (a store's location
    points at its `stores` row and takes its region and coordinates from there when created)."""

    __tablename__ = "trace_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(12))
    """factory, distributor, warehouse, store."""
    name: Mapped[str] = mapped_column(String(200))
    gln: Mapped[str | None] = mapped_column(String(13), unique=True)
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), unique=True)


class Unit(Base):
    """One item, one code: a commissioned GTIN + serial and what the rules need about it now."""

    __tablename__ = "trace_units"
    __table_args__ = (UniqueConstraint("gtin", "serial"),
                      # Packed units only: a bulk commissioning does not index 100,000 NULLs (migration 0016).
                      Index("ix_trace_units_parent", "parent", postgresql_where=text("parent IS NOT NULL"),
                            sqlite_where=text("parent IS NOT NULL")),
                      # PostgreSQL: a fifth of each page kept free, so a scan's update of its unit (no
                      # indexed column changes) stays on the page as a HOT update, writing no index
                      # entry (migration 0017).
                      {"postgresql_with": {"fillfactor": UNITS_FILLFACTOR}})

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    gtin: Mapped[str] = mapped_column(String(14))
    serial: Mapped[str] = mapped_column(String(20))
    batch: Mapped[str | None] = mapped_column(String(20))
    expiry: Mapped[date | None] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(16), default="commissioned")
    """commissioned, in_transit, received, sold, decommissioned."""
    location_id: Mapped[int | None] = mapped_column(Integer)
    """Where it is (its last commissioning/receiving/sale location)."""
    received_at_store: Mapped[bool] = mapped_column(Boolean, default=False)
    parent: Mapped[str | None] = mapped_column(String(18))
    """The SSCC of the case it is packed in now."""
    ship_dest_id: Mapped[int | None] = mapped_column(Integer)
    ship_region_id: Mapped[int | None] = mapped_column(Integer)
    """The region of its last shipping event's destination: where it may be sold."""
    seen_location_id: Mapped[int | None] = mapped_column(Integer)
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Its last observation (event or scan): the cloned rule's other end."""
    last_scan_id: Mapped[int | None] = mapped_column(BigInteger)
    sold_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sold_location_id: Mapped[int | None] = mapped_column(Integer)
    sold_node: Mapped[str | None] = mapped_column(String(63))
    sold_session: Mapped[int | None] = mapped_column(BigInteger)
    sold_seq: Mapped[int | None] = mapped_column(BigInteger)
    """Position of the sale in its box's stream: an older scan of that box handled later is not 'after the sale'."""
    recalled: Mapped[bool] = mapped_column(Boolean, default=False)


class Case(Base):
    """A case or pallet (SSCC) and where it is; its units point at it with `parent`."""

    __tablename__ = "trace_cases"

    sscc: Mapped[str] = mapped_column(String(18), primary_key=True)
    parent: Mapped[str | None] = mapped_column(String(18))
    location_id: Mapped[int | None] = mapped_column(Integer)


class Capture(Base):
    """An EPCIS capture job: 202 answers with its id; the status says how far it got."""

    __tablename__ = "trace_captures"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    status: Mapped[str] = mapped_column(String(12))
    """running, succeeded, failed."""
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    stored: Mapped[int] = mapped_column(Integer, default=0)
    """Events new to the repository (the rest were already captured: idempotence)."""
    errors: Mapped[list[str] | None] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Event(Base):
    """An EPCIS 2.0 event as captured (its JSON-LD in `doc`), with the fields the queries filter on."""

    __tablename__ = "trace_events"
    __table_args__ = (Index("ix_trace_events_time", "event_time"), Index("ix_trace_events_step", "biz_step"),
                      Index("ix_trace_events_loc", "biz_location"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    """The document's eventID, or the standard event hash (`ni:///sha-256;…`) when it has none."""
    hash: Mapped[str] = mapped_column(String(100), unique=True)
    type: Mapped[str] = mapped_column(String(24))
    action: Mapped[str | None] = mapped_column(String(8))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    tz_offset: Mapped[str] = mapped_column(String(6))
    biz_step: Mapped[str | None] = mapped_column(String(100))
    disposition: Mapped[str | None] = mapped_column(String(100))
    biz_location: Mapped[str | None] = mapped_column(String(200))
    read_point: Mapped[str | None] = mapped_column(String(200))
    capture_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventEpc(Base):
    """Which identifiers an event names (epcList, parentID, childEPCs, quantity classes): the index
    MATCH_epc / MATCH_anyEPC and the journey read."""

    __tablename__ = "trace_event_epcs"
    __table_args__ = (Index("ix_trace_event_epcs_epc", "epc", "event_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(BigId, index=True)
    """The event's id; no foreign key: checked per row, it was half of a bulk commissioning's index
    rows' COPY, and these rows are written only right after their event (migration 0016)."""
    epc: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(8))
    """epc (epcList/inputs/outputs), parent, child, class."""


class Scan(Base):
    """A scan at a station (bus or REST) and the verdict it got."""

    __tablename__ = "trace_scans"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    msg_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    """The bus message's id (or a fresh one for a REST scan): what the verdict's `corr` names."""
    node: Mapped[str | None] = mapped_column(String(63))
    """Not indexed, nor `at` (migration 0017): nothing reads scans by box or by time, and each index
    was one more entry to write per scan."""
    station: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(8))
    code: Mapped[str] = mapped_column(String(1024))
    gtin: Mapped[str | None] = mapped_column(String(14))
    serial: Mapped[str | None] = mapped_column(String(20))
    location_id: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    verdict: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(500))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    provisional: Mapped[str | None] = mapped_column(String(32))
    """The verdict the box gave offline, if it reported one."""
    clerk_id: Mapped[str | None] = mapped_column(String(32))
    """Who scanned: the clerk signed in at the station (newer boxes say; null otherwise)."""
    clerk_name: Mapped[str | None] = mapped_column(String(200))


class Recall(Base):
    """A recall: a GTIN's batch, or single units (`serial` set)."""

    __tablename__ = "trace_recalls"
    __table_args__ = (Index("ix_trace_recalls_key", "gtin", "batch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gtin: Mapped[str] = mapped_column(String(14))
    batch: Mapped[str | None] = mapped_column(String(20))
    serial: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Alert(Base):
    """Something HQ must look at: a clone, a diversion, a recalled unit sold, an unknown code, a
    provisional verdict overturned, a second shopper registration."""

    __tablename__ = "trace_alerts"
    __table_args__ = (Index("ix_trace_alerts_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    code: Mapped[str] = mapped_column(String(1024))
    gtin: Mapped[str | None] = mapped_column(String(14), index=True)
    serial: Mapped[str | None] = mapped_column(String(20))
    location_id: Mapped[int | None] = mapped_column(Integer)
    store_id: Mapped[int | None] = mapped_column(Integer, index=True)
    region_id: Mapped[int | None] = mapped_column(Integer, index=True)
    scan_id: Mapped[int | None] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(String(500))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(80))
    note: Mapped[str | None] = mapped_column(String(500))


class Registration(Base):
    """A shopper's registration of one unit (warranty/loyalty): once per unit."""

    __tablename__ = "trace_registrations"
    __table_args__ = (UniqueConstraint("gtin", "serial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gtin: Mapped[str] = mapped_column(String(14))
    serial: Mapped[str] = mapped_column(String(20))
    contact: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
