"""Counters of one cloud bus (exposed by /health and used by tests and the bench)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from broker.envelope import RejectReason

__all__ = ["BusStats"]


@dataclass
class BusStats:
    received: int = 0
    """Messages handed to us by the broker (redeliveries included)."""
    stored: int = 0
    """New ledger rows."""
    duplicates: int = 0
    """Valid messages whose msg_id was already stored (redeliveries: harmless)."""
    conflicts: int = 0
    """Duplicates whose content differed from the stored message (kept aside as `conflict`)."""
    rejected: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in RejectReason})
    """By reason: the contract's reasons, plus `unexpected`, `store_failed` and `conflict`."""
    births: int = 0
    """Births accepted (not older than the node's known session)."""
    stale_births: int = 0
    deaths: int = 0
    """Deaths that took a node offline."""
    stale_deaths: int = 0
    rebirths_sent: int = 0
    lost_seqs: int = 0
    """Seqs recorded as unrecoverable."""
    handler_failures: int = 0
    """Engine handler (or follower) calls that raised: in the failed list."""
    node_state_errors: int = 0
    acks: int = 0
    """Box acknowledgements matched to a command."""
    commands_published: int = 0
    commands_refused: int = 0
    """Commands the broker refused or that no longer encode: marked failed."""
    commands_expired: int = 0
    followed: int = 0
    """Messages fed to followers."""
    batches: int = 0
    db_errors: int = 0
    failing_batches: int = 0
    """Batches failed in a row (0 after a commit)."""
    connects: int = 0
    last_commit: float = 0.0
    """time.monotonic() of the last committed batch (0: none yet)."""
    last_batch_ms: float = 0.0
    last_error: str | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("last_commit")
        return out
