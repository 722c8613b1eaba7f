"""Tables of cloud.staff: the clerks of each store and each store's roster version.

Migration 0015 creates these. The PIN is never stored: only its `broker.pins` hash.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloud.models import Base, Store, UtcDateTime

__all__ = ["Clerk", "Roster"]


class Clerk(Base):
    """A clerk of one store: a name the station shows, an optional staff number, a PIN hash."""

    __tablename__ = "staff_clerks"
    __table_args__ = (UniqueConstraint("store_id", "staff_number", name="uq_staff_clerks_store_id_staff_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    staff_number: Mapped[str | None] = mapped_column(String(32))
    """Unique within the store when given (the payroll or badge number)."""
    active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    pin_hash: Mapped[str] = mapped_column(String(200))
    pin_set_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    store: Mapped[Store] = relationship()


class Roster(Base):
    """A store's roster version: bumped by every change to its clerks, sent with the roster so a
    box keeps the newest it has seen."""

    __tablename__ = "staff_rosters"

    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
