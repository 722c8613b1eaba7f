"""Response models shared by every engine's API (health, problems); each engine has its own."""

from __future__ import annotations

from pydantic import BaseModel

from cloud.access.web import Problem

__all__ = ["Health", "Problem", "WorkerHealth"]


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
