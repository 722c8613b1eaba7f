"""The cloud's tables as typed SQLAlchemy 2 ORM classes (the schema Alembic migrates to).

Column types are chosen to behave the same on SQLite and PostgreSQL: `Uuid`, `JSON`, and
`UtcDateTime`, which stores an instant and always reads back timezone-aware (SQLite has no
timezone support of its own).
"""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

__all__ = [
    "Base",
    "DownlinkCommand",
    "FailedMessage",
    "FollowerCursor",
    "IngestedMessage",
    "Node",
    "Region",
    "RejectedMessage",
    "Store",
    "UtcDateTime",
]

REJECTED_PAYLOAD_MAX = 64 * 1024
"""Bytes of a rejected message kept for diagnosis."""

# Explicit constraint names make migrations reproducible on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-numbers an INTEGER PRIMARY KEY (a rowid alias), not a BIGINT one.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant: stored in UTC, read back with tzinfo=UTC on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; omnishelf stores only aware times")
        if value.tzinfo is not UTC:  # most are UTC already (a scan's time is converted a few times)
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Region(Base):
    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))

    stores: Mapped[list[Store]] = relationship(back_populates="region")


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64))
    """IANA time zone name, e.g. Asia/Shanghai."""

    region: Mapped[Region] = relationship(back_populates="stores")
    nodes: Mapped[list[Node]] = relationship(back_populates="store")

    @validates("timezone")
    def _iana(self, _key: str, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"Store time zone {value!r} is not an IANA time zone name (e.g. 'Asia/Shanghai')") from None
        return value

    @validates("lat")
    def _lat(self, _key: str, value: float) -> float:
        if not -90 <= value <= 90:
            raise ValueError(f"Store latitude {value} is outside -90..90")
        return value

    @validates("lon")
    def _lon(self, _key: str, value: float) -> float:
        if not -180 <= value <= 180:
            raise ValueError(f"Store longitude {value} is outside -180..180")
        return value


class Node(Base):
    """A store box as the cloud knows it: identity, liveness from birth/death, sequence tracking."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    session: Mapped[int | None] = mapped_column(BigInteger)
    """The box session of the newest birth accepted."""
    software_version: Mapped[str | None] = mapped_column(String(200))
    config_hash: Mapped[str | None] = mapped_column(String(128))
    devices: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    commands: Mapped[list[str] | None] = mapped_column(JSON)
    """The `CommandData` names the box said (in its current session's birth) that it runs; None:
    it did not say (older software), so it is sent every command."""
    devices_session: Mapped[int | None] = mapped_column(BigInteger)
    devices_seq: Mapped[int | None] = mapped_column(BigInteger)
    """Position (session, seq) of the message `devices` came from: an older one never overwrites it."""
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Cloud time of the newest message from this node."""
    last_birth_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_death_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    seq_contig: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    """Highest seq such that every seq 1..seq_contig is stored (or recorded as lost)."""
    seq_high: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    """Highest seq known to exist."""
    gap_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Since when seq_high > seq_contig (cloud time); null while there is no gap."""
    last_rebirth_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lost_seqs: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    """Seqs the box could no longer replay: recorded as unrecoverable."""
    rebirths: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Rebirths sent for the gap open now (reset when it closes); drives the backoff."""
    gap_abandoned_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Set when the cloud stopped asking for the open gap (too many rebirths): an operator's alert."""
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """A box taken out of service: hidden from the fleet, no commands; what it still sends is kept."""

    store: Mapped[Store | None] = relationship(back_populates="nodes")


class IngestedMessage(Base):
    """The ledger: every valid message from the bus, each msg_id once."""

    __tablename__ = "ingested_messages"
    __table_args__ = (
        Index("ix_ingested_messages_node_seq", "node", "seq"),
        Index("ix_ingested_messages_txid_id", "txid", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    txid: Mapped[int | None] = mapped_column(BigInteger)
    """PostgreSQL: the id of the transaction that stored the row (a column default), so that a
    follower can read rows in commit order (see cloud.bus.followers); null on SQLite, where the
    single writer makes `id` order commit order."""
    msg_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    node: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    session: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    """The box's clock when the message was created."""
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    historical: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    corr: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class RejectedMessage(Base):
    """A message that broke the bus contract, kept (truncated) for diagnosis."""

    __tablename__ = "rejected_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    topic: Mapped[str] = mapped_column(String(1024))
    node: Mapped[str | None] = mapped_column(String(63), index=True)
    """The node whose topic it came on, when the topic names one."""
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class FailedMessage(Base):
    """A message one engine's handler could not process: its effects were rolled back alone and the
    rest of the batch committed. An operator inspects it and replays it once the handler is fixed."""

    __tablename__ = "failed_messages"
    __table_args__ = (UniqueConstraint("msg_id", "engine", "handler"), Index("ix_failed_messages_status", "status"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    msg_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    node: Mapped[str] = mapped_column(String(63), index=True)
    type: Mapped[str] = mapped_column(String(16))
    engine: Mapped[str] = mapped_column(String(32))
    handler: Mapped[str] = mapped_column(String(200))
    """The handler's qualified name, e.g. `cloud.fleet.handlers.on_birth` (or a follower's name)."""
    error: Mapped[str] = mapped_column(String(500))
    """One line: the exception type and message."""
    detail: Mapped[str] = mapped_column(Text)
    """The traceback, for the engine's developers."""
    first_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(12), default="failed")
    """failed, replayed (its effects are in), or discarded (an operator decided to drop it)."""
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(108))


class DownlinkCommand(Base):
    """A command to a box (transactional outbox): written in the sender's transaction, published by
    the relay once committed, retried until the box acknowledges it or it expires."""

    __tablename__ = "downlink"
    __table_args__ = (
        Index("ix_downlink_due", "status", "next_attempt_at"),
        Index("ix_downlink_node_type", "node", "type", "status"),
        # Only the commands not yet published: "does this box have one waiting?" stays cheap.
        Index("ix_downlink_pending_node", "node", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    """Also the envelope's `seq`: commands to a box are numbered in the order they were written."""
    msg_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    key: Mapped[str | None] = mapped_column(String(200), unique=True)
    """Optional idempotency key: a second send with the same key is the same command."""
    node: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    retain: Mapped[bool] = mapped_column(Boolean, default=False)
    engine: Mapped[str] = mapped_column(String(32))
    """Which engine sent it."""
    status: Mapped[str] = mapped_column(String(12), default="pending")
    """pending (not published yet), sent (published, no ack yet), delivered (ack ok), failed (ack
    not ok: `detail` says why), expired (no ack in time), superseded (a newer retained command of the
    same type replaced it before it was delivered), cancelled (the box was retired)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    detail: Mapped[str | None] = mapped_column(String(500))
    corr: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    """The message this command answers (a verdict names its scan): the envelope's `corr`."""


class FollowerCursor(Base):
    """How far a follower has read the ledger, committed with the follower's effects."""

    __tablename__ = "follower_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    txid: Mapped[int] = mapped_column(BigInteger, default=0)
    """PostgreSQL only: the transaction id of the last row read (see IngestedMessage.txid)."""
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
