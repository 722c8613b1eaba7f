"""The offline lists the cloud pushes to a station, and the provisional verdict they give.

The lists arrive as the `trace_lists` command (`broker.payloads.TraceListsArgs`, the contract
says how versions and parts work); `StationDb` keeps them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from broker.payloads import ParsedCode, VerdictClass, VerdictData, VerdictRule
from edge.station.codes import CodeError, read_code
from edge.station.station_db import StationDb

__all__ = ["offline_verdict"]


def offline_verdict(db: StationDb, scan_id: Any, code: str, symbology: str | None, purpose: str,
                    today: date | None = None) -> VerdictData:
    """The box's best answer from its lists, marked provisional (rule `offline_cache`)."""
    now = datetime.now(UTC)
    today = today or now.astimezone().date()

    def verdict(cls: VerdictClass, message: str, parsed: ParsedCode | None, **evidence: Any) -> VerdictData:
        return VerdictData(scan_id=scan_id, code=code, parsed=parsed, verdict=cls, rule=VerdictRule.OFFLINE_CACHE,
                           message=message[:500], evidence={"list_version": db.list_version, **evidence},
                           provisional=True, decided_at=now)

    try:
        parsed = read_code(code, symbology)
    except CodeError as exc:
        return verdict(VerdictClass.MALFORMED, str(exc), None)
    if parsed.gtin is None or parsed.serial is None:
        if parsed.sscc is not None:
            return verdict(VerdictClass.UNKNOWN_CODE, "a case code (SSCC): the cloud checks its contents when the link is back", parsed)
        return verdict(VerdictClass.UNTRACKED, "a product code, not a unit's: nothing to verify", parsed)
    facts = db.unit(parsed.gtin, parsed.serial, parsed.batch)
    if facts.recalled_unit is not None:
        return verdict(VerdictClass.RECALLED, f"this unit is recalled{': ' + facts.recalled_unit if facts.recalled_unit else ''}",
                       parsed, list="recalled_units")
    if facts.recalled_batch is not None:
        return verdict(VerdictClass.RECALLED,
                       f"batch {parsed.batch} is recalled{': ' + facts.recalled_batch if facts.recalled_batch else ''}",
                       parsed, list="recalled_batches")
    if facts.bad is not None:
        cls, reason = facts.bad
        return verdict(VerdictClass(cls), reason or f"the cloud reported this unit as {cls}", parsed, list="known_bad")
    if parsed.expiry is not None and parsed.expiry < today:
        return verdict(VerdictClass.EXPIRED, f"expired on {parsed.expiry.isoformat()}", parsed)
    if facts.sold and purpose != "return":
        return verdict(VerdictClass.ALREADY_SOLD, "sold at this store before (offline record)", parsed, list="sold_here")
    if facts.received is None:
        return verdict(VerdictClass.NOT_FOR_SALE_HERE, "not among the units this store has received (offline check)", parsed)
    batch, expiry = facts.received
    if (parsed.batch and batch and parsed.batch != batch) or (parsed.expiry and expiry and parsed.expiry.isoformat() != expiry):
        return verdict(VerdictClass.BATCH_OR_EXPIRY_MISMATCH,
                       f"printed batch/expiry {parsed.batch}/{parsed.expiry} differ from the received {batch}/{expiry}",
                       parsed, list="received")
    return verdict(VerdictClass.GENUINE, "received at this store (offline check; the cloud confirms when the link is back)",
                   parsed, list="received")
