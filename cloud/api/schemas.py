"""Response models of the API, separate from the ORM classes (Base → Public)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from cloud.access.web import Problem

__all__ = ["Health", "NodeDetail", "NodePublic", "Problem", "RegionPublic", "StorePublic", "WorkerHealth"]


class _FromOrm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RegionBase(_FromOrm):
    code: str
    name: str


class RegionPublic(RegionBase):
    id: int


class StoreBase(_FromOrm):
    code: str
    name: str
    lat: float
    lon: float
    timezone: str


class StorePublic(StoreBase):
    id: int
    region: str
    """Region code."""


class NodeBase(_FromOrm):
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


class NodePublic(NodeBase):
    pass


class NodeDetail(NodeBase):
    devices: list[dict[str, object]] | None
    last_birth_at: datetime | None
    last_death_at: datetime | None
    gap_since: datetime | None
    last_rebirth_at: datetime | None


class WorkerHealth(BaseModel):
    host: str
    status: str
    """ok; disconnected (from the broker: boxes hold their outboxes meanwhile); stalled (a received
    message has waited longer than OMNISHELF_INGEST_STALL_S without a commit); failing (3 batches
    in a row failed in the database)."""
    connected: bool
    backlog: int
    """Messages received and not yet committed."""
    oldest_pending_s: float
    last_commit_age_s: float | None
    failing_batches: int
    last_error: str | None
    counters: dict[str, object]


class Health(BaseModel):
    status: str
    """'ok', or 'unavailable' when the database does not answer or ingest is stalled or failing."""
    database: str
    worker: WorkerHealth | None
    """Null when this process runs no ingest worker."""
