"""Request and response bodies of the fleet API (separate from the ORM classes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CommandPublic",
    "FailedDetail",
    "FailedPublic",
    "NodeDetail",
    "NodePublic",
    "NodeUpdate",
    "RegionCreate",
    "RegionPublic",
    "RegionUpdate",
    "ReplayOutcome",
    "ReplayRequest",
    "StoreCreate",
    "StorePublic",
    "StoreUpdate",
]

Code = Annotated[str, Field(min_length=1, max_length=32)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Lat = Annotated[float, Field(ge=-90, le=90)]
Lon = Annotated[float, Field(ge=-180, le=180)]
Tz = Annotated[str, Field(min_length=1, max_length=64, description="IANA time zone, e.g. Asia/Shanghai")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromOrm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RegionPublic(_FromOrm):
    id: int
    code: str
    name: str


class RegionCreate(_Strict):
    code: Code
    name: Name


class RegionUpdate(_Strict):
    name: Name


class StorePublic(BaseModel):
    id: int
    code: str
    name: str
    region: str
    """Region code."""
    lat: float
    lon: float
    timezone: str


class StoreCreate(_Strict):
    code: Code
    name: Name
    region: Code
    lat: Lat
    lon: Lon
    timezone: Tz


class StoreUpdate(_Strict):
    name: Name | None = None
    region: Code | None = None
    lat: Lat | None = None
    lon: Lon | None = None
    timezone: Tz | None = None


class NodePublic(BaseModel):
    id: str
    store: str | None
    """Code of the store the node belongs to; null for a node not (yet) assigned."""
    online: bool
    session: int | None
    last_seen: datetime | None
    software_version: str | None
    config_hash: str | None
    seq_contig: int
    seq_high: int
    lost_seqs: int


class NodeDetail(NodePublic):
    devices: list[dict[str, Any]] | None
    last_birth_at: datetime | None
    last_death_at: datetime | None
    gap_since: datetime | None
    last_rebirth_at: datetime | None
    rebirths: int
    gap_abandoned_at: datetime | None
    retired_at: datetime | None
    commands: dict[str, int]
    """Commands to this box by state (pending, sent, delivered, failed, expired, superseded, cancelled)."""


class NodeUpdate(_Strict):
    """Give `store` to move the box, or `retired: true` to take it out of service."""

    store: Code | None = None
    retired: bool | None = None


class CommandPublic(_FromOrm):
    id: int
    msg_id: uuid.UUID
    node: str
    type: str
    engine: str
    status: str
    retain: bool
    created_at: datetime
    expires_at: datetime | None
    attempts: int
    last_sent_at: datetime | None
    acked_at: datetime | None
    detail: str | None


class FailedPublic(_FromOrm):
    id: int
    msg_id: uuid.UUID
    node: str
    type: str
    engine: str
    handler: str
    error: str
    first_failed_at: datetime
    last_failed_at: datetime
    attempts: int
    status: str
    resolved_at: datetime | None
    resolved_by: str | None


class FailedDetail(FailedPublic):
    detail: str
    """The traceback."""
    message: dict[str, Any] | None
    """The ledger row of the message (its data), if still there."""


class ReplayRequest(_Strict):
    ids: Annotated[list[Annotated[int, Field(ge=1, le=2**63 - 1)]], Field(min_length=1, max_length=1000)]


class ReplayOutcome(BaseModel):
    id: int
    outcome: str
    """replayed, failed (again: see `error`), skipped (not failed any more) or unknown."""
    error: str | None
