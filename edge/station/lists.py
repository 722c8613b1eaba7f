"""The offline lists the cloud pushes to a station, and the provisional verdict they give.

The cloud sends them as a generic command: `MessageType.COMMAND` with
`CommandData(name="trace_lists", args=TraceListsArgs(...).model_dump(mode="json"))`. A version is a
full snapshot of what this store should know, split into `parts` commands (each envelope is at most
256 KiB: about 2,000 units per part); the box swaps a version in only once all its parts are
stored, so a clerk never checks against half a list. Parts of a version older than the one held are
acknowledged and ignored.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from broker.payloads import ParsedCode, VerdictClass, VerdictData, VerdictRule
from edge.station.codes import CodeError, read_code
from edge.station.station_db import ALARMS, StationDb

__all__ = ["LISTS_COMMAND", "BadUnit", "ListUnit", "RecalledBatch", "RecalledUnit", "TraceListsArgs", "offline_verdict"]

LISTS_COMMAND = "trace_lists"

Gtin = Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")]
Serial = Annotated[str, StringConstraints(min_length=1, max_length=20)]
Batch = Annotated[str, StringConstraints(min_length=1, max_length=20)]
Reason = Annotated[str, StringConstraints(max_length=200)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListUnit(_Item):
    """A unit received at this store and not sold (as far as the cloud knows)."""

    gtin: Gtin
    serial: Serial
    batch: Batch | None = None
    expiry: date | None = None


class RecalledUnit(_Item):
    gtin: Gtin
    serial: Serial
    reason: Reason = ""


class RecalledBatch(_Item):
    gtin: Gtin
    batch: Batch
    reason: Reason = ""


class BadUnit(_Item):
    """A unit the cloud already knows to be bad (cloned, diverted, sold, …)."""

    gtin: Gtin
    serial: Serial
    verdict: VerdictClass
    reason: Reason = ""

    @model_validator(mode="after")
    def _alarm(self) -> BadUnit:
        if self.verdict not in ALARMS:
            raise ValueError(f"known_bad verdict {self.verdict.value!r} is not an alarm class")
        return self


class TraceListsArgs(_Item):
    version: Annotated[int, Field(ge=1)]
    """Increases with every snapshot the cloud makes for this store."""
    part: Annotated[int, Field(ge=0)] = 0
    parts: Annotated[int, Field(ge=1, le=100_000)] = 1
    received: Annotated[tuple[ListUnit, ...], Field(max_length=50_000)] = ()
    recalled_units: Annotated[tuple[RecalledUnit, ...], Field(max_length=50_000)] = ()
    recalled_batches: Annotated[tuple[RecalledBatch, ...], Field(max_length=50_000)] = ()
    known_bad: Annotated[tuple[BadUnit, ...], Field(max_length=50_000)] = ()

    @model_validator(mode="after")
    def _part_in_range(self) -> TraceListsArgs:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}: expected 0..{self.parts - 1}")
        return self


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
