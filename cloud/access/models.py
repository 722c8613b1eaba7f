"""Tables of cloud.access: users, their region/store grants, console sessions, API keys, audit log.

Secrets are never stored: passwords as argon2 hashes, session tokens and API keys as sha256 of a
high-entropy random value (a fast hash is enough when the input cannot be guessed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, ForeignKey, Integer, String, Table, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloud.models import Base, BigId, Region, Store, UtcDateTime

__all__ = ["ApiKey", "AuditEntry", "LoginThrottle", "User", "WebSession"]

USERNAME_MAX = 64
NAME_MAX = 100
SOURCE_MAX = 64
"""A client address or IPv6 /64 as text (at most 43 characters), or a proxy's literal name."""

user_regions = Table(
    "user_regions",
    Base.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("region_id", ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True),
)
user_stores = Table(
    "user_stores",
    Base.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
)
api_key_regions = Table(
    "api_key_regions",
    Base.metadata,
    Column("api_key_id", ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("region_id", ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True),
)
api_key_stores = Table(
    "api_key_stores",
    Base.metadata,
    Column("api_key_id", ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    regions: Mapped[list[Region]] = relationship(secondary=user_regions, order_by=Region.code)
    stores: Mapped[list[Store]] = relationship(secondary=user_stores, order_by=Store.code)


class LoginThrottle(Base):
    """Failed sign-ins counted per (account, source), per source and per account, in the database so
    that every API replica sees the same counts.

    `account` is the username as typed, whether or not such a user exists: unknown and existing
    names are counted and locked alike, so the answers never tell which names exist.
    """

    __tablename__ = "login_throttle"
    __table_args__ = (UniqueConstraint("scope", "account", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(8))
    """`pair` (account from one source), `source` (all accounts) or `account` (all sources)."""
    account: Mapped[str] = mapped_column(String(USERNAME_MAX))
    """The username typed; '' for a `source` row."""
    source: Mapped[str] = mapped_column(String(SOURCE_MAX))
    """The client address (an IPv6 client's /64); '' for an `account` row."""
    failures: Mapped[int] = mapped_column(Integer)
    """Failed attempts since the count last started, including attempts being checked right now."""
    last_failure_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebSession(Base):
    """A console sign-in: the cookie holds a random token, this row its hash (so sign-out is real)."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)

    user: Mapped[User] = relationship()


class ApiKey(Base):
    """A machine client's credential: `osk_<prefix>_<secret>`; only its sha256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(NAME_MAX + 8))
    """The actor, as in the audit log (`user:NAME`, `cli:OSUSER`)."""
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    regions: Mapped[list[Region]] = relationship(secondary=api_key_regions, order_by=Region.code)
    stores: Mapped[list[Store]] = relationship(secondary=api_key_stores, order_by=Store.code)


class AuditEntry(Base):
    """One change: who (user or API key, by name so the entry outlives them), when, what, before/after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(NAME_MAX + 8), index=True)
    """`user:<username>`, `key:<name>`, `cli:<os user>`, or `source:<address>` for what an
    unauthenticated client caused (a sign-in lockout)."""
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32), index=True)
    object_id: Mapped[str] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    detail: Mapped[str | None] = mapped_column(Text)
    via: Mapped[str] = mapped_column(String(16))
    """`console`, `api` or `cli`."""
