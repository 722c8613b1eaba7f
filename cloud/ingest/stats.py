"""Counters of one ingest worker (exposed by /health and used by tests and the bench)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from broker.envelope import RejectReason

__all__ = ["IngestStats"]


@dataclass
class IngestStats:
    received: int = 0
    """Messages handed to us by the broker (redeliveries included)."""
    stored: int = 0
    """New ledger rows."""
    duplicates: int = 0
    """Valid messages whose msg_id was already stored."""
    rejected: dict[RejectReason, int] = field(default_factory=lambda: dict.fromkeys(RejectReason, 0))
    births: int = 0
    """Births accepted (not older than the node's known session)."""
    stale_births: int = 0
    deaths: int = 0
    """Deaths that took a node offline."""
    stale_deaths: int = 0
    rebirths_sent: int = 0
    lost_seqs: int = 0
    """Seqs recorded as unrecoverable."""
    batches: int = 0
    db_errors: int = 0
    connects: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["rejected"] = {reason.value: n for reason, n in self.rejected.items()}
        return out
