"""One typed payload model per message type (the `data` member of the envelope).

Payloads ignore members they do not know, so a box on a newer minor release can talk to an older
cloud; the envelope itself is strict. The engines refine their payloads in later versions of this
module; every change here is a change of the bus contract and goes with its tests.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "AckData",
    "AssignData",
    "BirthData",
    "CatalogData",
    "CatalogFile",
    "CommandData",
    "ConfigData",
    "DeathData",
    "DeviceInfo",
    "FulfilData",
    "FulfilStatus",
    "Fulfilment",
    "HostStateData",
    "OrderData",
    "OrderLine",
    "ParsedCode",
    "Payload",
    "PopData",
    "RebirthData",
    "ScanData",
    "ScanPurpose",
    "ScheduleData",
    "StockData",
    "StockLevel",
    "TelemetryData",
    "VerdictClass",
    "VerdictData",
    "VerdictRule",
]

Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-/]+$")]
Count = Annotated[int, Field(ge=0, lt=2**63)]


class Payload(BaseModel):
    """Base of every payload."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class DeviceInfo(Payload):
    kind: Text
    """'scanner', 'printer', 'display', 'camera', …"""
    model: Text | None = None
    serial: Text | None = None
    state: Text = "ok"
    """'ok', or 'unavailable' (see `detail`); a device the box cannot drive is reported, never dropped."""
    detail: Annotated[str, StringConstraints(max_length=500)] | None = None
    """Why the device is not 'ok' (e.g. 'no answer from 192.168.1.50:9100: connection refused')."""


class BirthData(Payload):
    software_version: Text
    config_hash: Annotated[str, StringConstraints(max_length=128)]
    store: Text
    devices: tuple[DeviceInfo, ...] = ()
    last_seq: Count = 0
    """Highest `seq` the box has assigned so far."""
    pending: Count = 0
    """Messages in the box's outbox not yet acknowledged by the broker."""
    oldest_seq: Count | None = None
    """Lowest `seq` the box still holds (pending or kept for replay); older ones cannot be resent."""


class DeathData(Payload):
    """Set as the MQTT will: the broker publishes it when the box vanishes."""


class ScanPurpose(enum.StrEnum):
    VERIFY = "verify"
    RECEIVE = "receive"
    SELL = "sell"
    RETURN = "return"


class ScanData(Payload):
    code: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The decoded content, GS1 separators included."""
    symbology: Text | None = None
    station: Text
    purpose: ScanPurpose = ScanPurpose.VERIFY


class OrderLine(Payload):
    sku: Sku
    qty: Annotated[int, Field(gt=0, le=10_000)]


class Fulfilment(enum.StrEnum):
    PICKUP = "pickup"
    DELIVERY = "delivery"


class OrderData(Payload):
    order_id: Text
    channel: Text
    lines: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=500)]
    fulfilment: Fulfilment
    contact: Text | None = None
    address: Annotated[str, StringConstraints(max_length=500)] | None = None


class StockLevel(Payload):
    sku: Sku
    on_hand: Annotated[int, Field(ge=0, le=10_000_000)]


class StockData(Payload):
    levels: Annotated[tuple[StockLevel, ...], Field(min_length=1, max_length=5_000)]
    snapshot: bool = False
    """True: these are all the SKUs the store has; absent SKUs are zero."""


class PopData(Payload):
    """Proof of play: one item of a signage timeline was shown."""

    screen: Text
    media_id: Text
    campaign_id: Text | None = None
    started_at: AwareDatetime
    duration_ms: Annotated[int, Field(ge=0, le=86_400_000)]


class FulfilStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    PICKED = "picked"
    READY = "ready"
    HANDED_OVER = "handed_over"
    SHIPPED = "shipped"
    REJECTED = "rejected"


class FulfilData(Payload):
    order_id: Text
    status: FulfilStatus
    note: Annotated[str, StringConstraints(max_length=500)] | None = None


class AckData(Payload):
    """The box's answer to a command it received (the command's `msg_id` is in `corr`)."""

    ok: bool
    detail: Annotated[str, StringConstraints(max_length=500)] | None = None


class TelemetryData(Payload):
    metrics: Annotated[dict[Annotated[str, StringConstraints(max_length=64)], float], Field(max_length=200)]
    devices: Annotated[tuple[DeviceInfo, ...], Field(max_length=64)] = ()
    """The devices' current states (a device that failed since the birth shows here first)."""


class VerdictClass(enum.StrEnum):
    """What a scan at the counter says about the unit (the clerk's screen colours by it)."""

    GENUINE = "genuine"
    UNTRACKED = "untracked"
    """A plain EAN/UPC: a product, not a unit; there is nothing to verify."""
    UNKNOWN_CODE = "unknown_code"
    MALFORMED = "malformed"
    BATCH_OR_EXPIRY_MISMATCH = "batch_or_expiry_mismatch"
    EXPIRED = "expired"
    RECALLED = "recalled"
    ALREADY_SOLD = "already_sold"
    CLONED = "cloned"
    DIVERTED = "diverted"
    NOT_FOR_SALE_HERE = "not_for_sale_here"


class VerdictRule(enum.StrEnum):
    """The rule that decided the verdict (one verdict class may come from several rules)."""

    COMMISSIONED_UNIT = "commissioned_unit"
    """genuine: commissioned, received by a store, not sold, no alarm."""
    DUPLICATE_SCAN = "duplicate_scan"
    """The same unit scanned again at the same station inside the tolerance window: answered like the first."""
    RETURN_ACCEPTED = "return_accepted"
    PLAIN_PRODUCT_CODE = "plain_product_code"
    NEVER_COMMISSIONED = "never_commissioned"
    PARSE_ERROR = "parse_error"
    ATTRIBUTES_DIFFER = "attributes_differ"
    EXPIRY_PASSED = "expiry_passed"
    BATCH_RECALLED = "batch_recalled"
    UNIT_RECALLED = "unit_recalled"
    SOLD_BEFORE = "sold_before"
    DECOMMISSIONED = "decommissioned"
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    WRONG_REGION = "wrong_region"
    NEVER_RECEIVED = "never_received"
    OFFLINE_CACHE = "offline_cache"
    """Provisional, decided on the box from its cache while the cloud was unreachable."""


class ParsedCode(Payload):
    """A scanned code as the GS1 facade (`gs1`) read it: the unit's identity and printed attributes."""

    form: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    """How it was written: element_string, hri, digital_link, epc_urn, ean."""
    gtin: Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")] | None = None
    serial: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None
    batch: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None
    expiry: date | None = None
    sscc: Annotated[str, StringConstraints(pattern=r"^[0-9]{18}$")] | None = None
    epc: Annotated[str, StringConstraints(max_length=200)] | None = None
    """The unit's EPC URN (`urn:epc:id:sgtin:…` or `…:sscc:…`), the key the cloud stores events under."""


class VerdictData(Payload):
    """The cloud's (or, provisionally, the box's) answer to one `scan`; the envelope's `corr` is the
    scan's msg_id, so a station matches them without parsing."""

    scan_id: UUID
    """The scan's msg_id (also the envelope's `corr`), kept in the payload for the box's local API."""
    code: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The code as scanned."""
    parsed: ParsedCode | None = None
    """None only when the code could not be read (`malformed`)."""
    verdict: VerdictClass
    rule: VerdictRule
    message: Annotated[str, StringConstraints(max_length=500)] = ""
    """The reason in plain words, for the clerk ("sold in Chengdu 30 minutes ago")."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """Which events, locations, distances and times the rule used (shape per rule)."""
    provisional: bool = False
    decided_at: AwareDatetime


class AssignData(Payload):
    order_id: Text
    lines: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=500)]
    fulfilment: Fulfilment


class ConfigData(Payload):
    """A whole box config (firmware_config, as the file's mapping) pushed by HQ. The box validates
    it, applies it and acks `applied vN` or refuses naming the field; with `rollback_after_s`, a box
    that cannot reach the cloud that long after applying goes back to its last good config by itself
    (and acks the push again: `rolled back vN: …`)."""

    config_hash: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    config: dict[str, Any]
    version: Count = 0
    """The push's version for this box (increasing); 0: unversioned."""
    rollback_after_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)] = 0
    """0: no automatic rollback."""
    credential: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """Credential rotation: the node's next broker password sealed to the box's own key
    (`broker.sealing`). The box keeps its connection, offers the new password to its bus client and
    acks; the cloud then switches the broker over, and the box's next login uses the new one."""


class ScheduleData(Payload):
    version: Count
    valid_from: datetime
    valid_until: datetime
    items: tuple[dict[str, Any], ...] = ()


class CatalogFile(Payload):
    """A catalogue sync file: fetched over HTTP from the cloud, verified against `sha256`."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^/[A-Za-z0-9/._\-]*$")]
    """URL path on the cloud API, e.g. /catalogue/files/<sha256>."""
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: Count
    from_version: Count = 0
    """The version a delta applies to; 0 for a snapshot."""


class CatalogData(Payload):
    """The newest catalogue version (retained): the box fetches the delta from its own version,
    or the snapshot when it is further behind than every delta offered."""

    version: Count
    epoch: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    """The catalogue's identity: versions count within one epoch. A new database starts a new epoch
    (and counts from 1 again), so a box holding another epoch resyncs from the snapshot whatever
    the numbers say."""
    delta_from: Count | None = None
    region: Text | None = None
    """The region whose price overrides apply to this box's store."""
    snapshot: CatalogFile | None = None
    deltas: Annotated[tuple[CatalogFile, ...], Field(max_length=1000)] = ()


class CommandData(Payload):
    name: Text
    args: dict[str, Any] = Field(default_factory=dict)


class RebirthData(Payload):
    """Ask a box to publish its birth again and, if `replay_from` is set, to resend what it still
    holds from that `seq` on (the cloud saw a gap)."""

    reason: Text
    replay_from: Count | None = None


class HostStateData(Payload):
    online: bool
