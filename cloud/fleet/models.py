"""Tables of the fleet's enrolment: enrolment tokens, box identities, config pushes.

(`regions`, `stores` and `nodes` are the core's, in cloud.models.) Migration 0009 creates these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloud.models import Base, Store, UtcDateTime

__all__ = ["ConfigPush", "EnrolToken", "Identity", "NodeConfigState", "NodeTag"]


class EnrolToken(Base):
    """A single-use, short-lived permission to claim one box for one store in one role.

    Only a hash of the secret is kept: the console shows the token once, when it is made."""

    __tablename__ = "fleet_enrol_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 (hex) of the token: the token is 32 random bytes, so no slow hash is needed."""
    hint: Mapped[str] = mapped_column(String(16))
    """The token's first characters, to tell tokens apart in lists and the audit log."""
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    used_serial: Mapped[str | None] = mapped_column(String(64))
    node_id: Mapped[str | None] = mapped_column(String(63))
    """The node the claim that used this token created."""
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(200))

    store: Mapped[Store] = relationship()


class Identity(Base):
    """A box's broker identity: its node id (= MQTT username and client id), the hardware it was
    claimed on, and the state its credential should have on the broker."""

    __tablename__ = "fleet_identities"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    public_key: Mapped[str] = mapped_column(String(64))
    """The box's X25519 public key (base64), to which its broker password was sealed."""
    status: Mapped[str] = mapped_column(String(16))
    """`active`, `revoked` (credential disabled; may be re-enabled) or `retired` (deleted for good)."""
    broker_synced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The broker confirmed the state `status` asks for; false: the reconciler keeps trying."""
    credential_version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("fleet_enrol_tokens.id"))
    enrolled_at: Mapped[datetime] = mapped_column(UtcDateTime)
    enrolled_by: Mapped[str] = mapped_column(String(200))
    first_birth_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """When the box first came online with this identity (the end of its claim)."""
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    pending_password: Mapped[str | None] = mapped_column(String(100))
    """A rotation in flight: the next password, wrapped under a key derived from the broker admin
    secret (`BrokerAdmin.wrap_pending`), kept only until the broker has it (it is set on the broker
    once the box acknowledged receiving it, then erased)."""
    pending_command_id: Mapped[str | None] = mapped_column(String(36))
    """The downlink command that carried the sealed next password to the box."""


class ConfigPush(Base):
    """One versioned configuration sent to one box, and what the box said about it."""

    __tablename__ = "fleet_config_pushes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(String(63), index=True)
    version: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(128))
    batch: Mapped[str | None] = mapped_column(String(36), index=True)
    """The bulk push this one belongs to (its id), if any."""
    status: Mapped[str] = mapped_column(String(16))
    """`pending`, `applied`, `rejected`, `rolled_back` or `superseded`."""
    field: Mapped[str | None] = mapped_column(String(200))
    """For `rejected`: the config field the box named."""
    detail: Mapped[str | None] = mapped_column(String(500))
    command_id: Mapped[str | None] = mapped_column(String(36), index=True)
    """msg_id of the downlink command that carries it."""
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NodeConfigState(Base):
    """Per box: the config version HQ wants, the one the box runs, and its last rollback."""

    __tablename__ = "fleet_node_config"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    desired_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    desired_hash: Mapped[str | None] = mapped_column(String(128))
    applied_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_rollback_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_rollback_version: Mapped[int | None] = mapped_column(Integer)
    last_rollback_reason: Mapped[str | None] = mapped_column(String(500))


class NodeTag(Base):
    """A label HQ gives boxes to address them together (config pushes to a tag)."""

    __tablename__ = "fleet_node_tags"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
