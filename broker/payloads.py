"""One typed payload model per message type (the `data` member of the envelope).

Payloads ignore members they do not know, so a box on a newer minor release can talk to an older
cloud; the envelope itself is strict. The engines refine their payloads in later versions of this
module; every change here is a change of the bus contract and goes with its tests.
"""

from __future__ import annotations

import enum
from datetime import date, time
from typing import Annotated, Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "ALARM_CLASSES",
    "CLERK_ROSTER",
    "TRACE_LISTS",
    "AckData",
    "AssignAction",
    "AssignData",
    "BadUnit",
    "BirthData",
    "CatalogData",
    "CatalogFile",
    "ClerkRef",
    "ClerkRosterArgs",
    "CommandData",
    "ConfigData",
    "ConfigRollback",
    "DeathData",
    "DeviceInfo",
    "FulfilData",
    "FulfilStatus",
    "Fulfilment",
    "HostStateData",
    "ListUnit",
    "MediaRef",
    "OrderData",
    "OrderLine",
    "ParsedCode",
    "Payload",
    "PopData",
    "RebirthData",
    "RecalledBatch",
    "RecalledUnit",
    "RosterClerk",
    "RuleCampaign",
    "RuleDaypart",
    "RuleItem",
    "ScanData",
    "ScanPurpose",
    "ScheduleData",
    "ScheduleItem",
    "SignageLayer",
    "SignageTransition",
    "StockData",
    "StockLevel",
    "StockReason",
    "TelemetryData",
    "TraceListsArgs",
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


class ConfigRollback(Payload):
    """A config the box went back from by itself (it could not reach the cloud in time after applying it)."""

    version: Count
    """The pushed version it left."""
    reason: Annotated[str, StringConstraints(max_length=500)]
    at: AwareDatetime


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
    config_rollback: ConfigRollback | None = None
    """The box's last automatic config rollback, said in every birth after it (the cloud records it once)."""
    commands: Annotated[tuple[Text, ...], Field(max_length=200)] | None = None
    """The `CommandData.name`s this box runs (its components'), so the cloud sends a box only what it
    can do: a kiosk-only box gets no clerk roster nor trace lists to refuse. None: not said (older
    software), and every command is sent as before."""


class DeathData(Payload):
    """Set as the MQTT will: the broker publishes it when the box vanishes."""


class ScanPurpose(enum.StrEnum):
    VERIFY = "verify"
    RECEIVE = "receive"
    SELL = "sell"
    RETURN = "return"
    UNDO = "undo"
    """Undo this station's sale of the unit (within the cloud's undo window): recorded as an event,
    never a deletion."""


class ClerkRef(Payload):
    """The clerk signed in at the box when it acted (PIN sign-in on the box, `edge.clerks`): stamped
    on what the clerk does so the cloud records who did it. Older boxes send none."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True)]
    """The clerk's id on the store's roster (`RosterClerk.id`, as text)."""
    name: Text


class ScanData(Payload):
    code: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The decoded content, GS1 separators included."""
    symbology: Text | None = None
    station: Text
    purpose: ScanPurpose = ScanPurpose.VERIFY
    provisional: VerdictClass | None = None
    """The verdict the box already gave the clerk from its offline cache (rule `offline_cache`), if
    it answered before the cloud could. When the cloud's final verdict differs, it raises an alert
    (a provisional `genuine` that is really `cloned` is the case that matters)."""
    clerk: ClerkRef | None = None
    """Who scanned (the clerk signed in at the station), if anyone was."""


Money = Annotated[float, Field(ge=0, le=10_000_000)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


class OrderLine(Payload):
    sku: Sku
    qty: Annotated[int, Field(gt=0, le=10_000)]
    price: Money | None = None
    """Unit price the shopper pays (before the line's discount)."""
    discount: Money = 0
    """The order's discounts allocated to this line (a total for the line, not per unit)."""


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
    customer: Text | None = None
    lat: Latitude | None = None
    """Delivery address coordinates (geocoding is not the box's job: a delivery needs them)."""
    lon: Longitude | None = None
    pickup_store: Text | None = None
    """Pickup: the store code where the shopper collects; None means the box's own store."""


class StockReason(enum.StrEnum):
    """Why a clerk adjusted a count by hand (`StockLevel.reason` of an adjustment from the station)."""

    DAMAGED = "damaged"
    LOST = "lost"
    FOUND = "found"
    COUNT = "count"
    """A stock count found a different figure."""
    OTHER = "other"


class StockLevel(Payload):
    sku: Sku
    on_hand: Annotated[int, Field(ge=0, le=10_000_000)]
    delta: Annotated[int, Field(ge=-10_000_000, le=10_000_000)] | None = None
    """A change (a counter sale -1, goods in +24) instead of a level: the cloud adds it to its count,
    and `on_hand` is then only the box's own count after it. Not allowed in a snapshot."""
    reason: Annotated[str, StringConstraints(max_length=32)] | None = None
    """What the change was (sale, goods_in, return, adjust; a clerk's adjustment: a `StockReason`)."""
    clerk: ClerkRef | None = None
    """A clerk's adjustment: who made it."""
    note: Annotated[str, StringConstraints(max_length=200)] | None = None
    """A clerk's adjustment: their note."""
    ref: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """A clerk's adjustment: its id on the box (what the station answered the clerk)."""


class StockData(Payload):
    levels: Annotated[tuple[StockLevel, ...], Field(min_length=1, max_length=5_000)]
    snapshot: bool = False
    """True: these are all the SKUs the store has; absent SKUs are zero."""


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class SignageLayer(enum.StrEnum):
    OVERRIDE = "override"
    NORMAL = "normal"
    INTERRUPT = "interrupt"
    DEFAULT = "default"


class PopData(Payload):
    """Proof of play: one item of a signage timeline was shown (sent once per play, through the outbox)."""

    screen: Text
    media_id: Sha256
    """The sha256 of the media shown."""
    campaign_id: Text | None = None
    """None: the default playlist."""
    layer: SignageLayer = SignageLayer.NORMAL
    schedule_version: Count | None = None
    """The version of the schedule the box played from."""
    started_at: AwareDatetime
    """The box's UTC clock when the item appeared (the envelope's `clock_synced` says whether to trust it)."""
    duration_ms: Annotated[int, Field(ge=0, le=86_400_000)]
    """Measured on the box's monotonic clock (a clock step during the play does not change it)."""


class FulfilStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    PICKED = "picked"
    """Picking finished (older boxes): the cloud records it as `picking`."""
    READY = "ready"
    """Ready for pickup."""
    HANDED_OVER = "handed_over"
    """Collected by the shopper (older boxes): the cloud records it as `picked_up`."""
    SHIPPED = "shipped"
    REJECTED = "rejected"
    PICKING = "picking"
    PACKED = "packed"
    PICKED_UP = "picked_up"
    """Collected by the shopper, the pickup code verified by the box."""
    DELIVERED = "delivered"


class FulfilData(Payload):
    order_id: Text
    status: FulfilStatus
    note: Annotated[str, StringConstraints(max_length=500)] | None = None
    assignment: Annotated[int, Field(ge=1, lt=2**63)] | None = None
    """The assignment (from `AssignData.assignment`) the store acts on; one order may be split."""
    carrier: Text | None = None
    tracking: Text | None = None
    clerk: ClerkRef | None = None
    """Who took the step (the clerk signed in at the box), if anyone was."""


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
    CASE_MISMATCH = "case_mismatch"
    """Goods-in of a case: units inside it do not belong to the shipment to this store, or units the
    shipping notice names are not in it (evidence: sscc, units, expected, intruders, missing)."""


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


ALARM_CLASSES: frozenset[VerdictClass] = frozenset(VerdictClass) - {VerdictClass.GENUINE, VerdictClass.UNTRACKED}
"""Verdict classes that stop a sale (the clerk's screen turns red)."""

TRACE_LISTS = "trace_lists"
"""`CommandData.name` of the command carrying a store's offline lists (`args`: `TraceListsArgs`)."""

Gtin14 = Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")]
Gs1Serial = Annotated[str, StringConstraints(min_length=1, max_length=20)]
Reason = Annotated[str, StringConstraints(max_length=200)]


class ListUnit(Payload):
    """A unit received at the store and not sold (as far as the cloud knows)."""

    gtin: Gtin14
    serial: Gs1Serial
    batch: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None
    expiry: date | None = None


class RecalledUnit(Payload):
    gtin: Gtin14
    serial: Gs1Serial
    reason: Reason = ""


class RecalledBatch(Payload):
    gtin: Gtin14
    batch: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    reason: Reason = ""


class BadUnit(Payload):
    """A unit the cloud already knows to be bad (cloned, diverted, mismatched)."""

    gtin: Gtin14
    serial: Gs1Serial
    verdict: VerdictClass
    reason: Reason = ""

    @model_validator(mode="after")
    def _alarm(self) -> BadUnit:
        if self.verdict not in ALARM_CLASSES:
            raise ValueError(f"known_bad verdict {self.verdict.value!r} is not an alarm class")
        return self


class TraceListsArgs(Payload):
    """What a scanning station answers from while the cloud is unreachable, for one store.

    Sent as `CommandData(name=TRACE_LISTS, args=TraceListsArgs(...).model_dump(mode="json"))`. A
    version is a full snapshot split into `parts` commands (an envelope holds at most 256 KiB: about
    2,000 units per part); the box swaps a version in only once it holds all of its parts, so a
    clerk never checks against half a list, and ignores parts of a version older than the one held.
    """

    version: Annotated[int, Field(ge=1, lt=2**63)]
    """Increases with every snapshot the cloud makes for the store."""
    part: Annotated[int, Field(ge=0)] = 0
    """0-based."""
    parts: Annotated[int, Field(ge=1, le=100_000)] = 1
    store: Text | None = None
    received: Annotated[tuple[ListUnit, ...], Field(max_length=50_000)] = ()
    recalled_units: Annotated[tuple[RecalledUnit, ...], Field(max_length=50_000)] = ()
    recalled_batches: Annotated[tuple[RecalledBatch, ...], Field(max_length=50_000)] = ()
    known_bad: Annotated[tuple[BadUnit, ...], Field(max_length=50_000)] = ()

    @model_validator(mode="after")
    def _part_in_range(self) -> TraceListsArgs:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}: expected 0..{self.parts - 1}")
        return self


class AssignAction(enum.StrEnum):
    ASSIGN = "assign"
    WITHDRAW = "withdraw"
    """The order moved on (reservation expired, cancelled, re-routed): the store must not fulfil it."""


class AssignData(Payload):
    order_id: Text
    lines: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=500)]
    fulfilment: Fulfilment
    assignment: Annotated[int, Field(ge=1, lt=2**63)] | None = None
    """The cloud's assignment id: one order split across stores has one per store."""
    action: AssignAction = AssignAction.ASSIGN
    accept_by: AwareDatetime | None = None
    """The reservation expires (and the order is routed elsewhere) unless accepted by then."""
    pickup_code_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Pickup: the box verifies the shopper's code against this hash (the code itself never travels)."""
    customer: Text | None = None
    contact: Text | None = None
    address: Annotated[str, StringConstraints(max_length=500)] | None = None
    channel: Text | None = None


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


Duration = Annotated[float, Field(gt=0, le=86_400)]
CampaignId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]


class SignageTransition(Payload):
    """How an item comes on screen. Optional everywhere: a box that predates transitions ignores the
    field (payloads ignore unknown keys) and cuts, which is what an item without one means."""

    kind: Annotated[str, StringConstraints(pattern="^(cut|fade)$")]
    ms: Annotated[int, Field(ge=0, le=5000)] = 0
    """The transition's length; 0 for a cut."""


class ScheduleItem(Payload):
    """One slot of a screen's timeline: exact UTC instants, and the store-local start alongside."""

    media: Sha256
    start: AwareDatetime
    end: AwareDatetime
    layer: SignageLayer
    campaign: CampaignId | None = None
    """None: the default playlist."""
    local_start: AwareDatetime | None = None
    """`start` in the store's zone (for people; the box plays by `start`)."""
    transition: SignageTransition | None = None


class RuleItem(Payload):
    media: Sha256
    duration_s: Duration
    transition: SignageTransition | None = None


class RuleDaypart(Payload):
    weekdays: Annotated[tuple[Annotated[int, Field(ge=0, le=6)], ...], Field(min_length=1, max_length=7)]
    """0 = Monday … 6 = Sunday: the days a slot starts on."""
    start: time
    end: time
    """`end <= start`: the slot crosses midnight."""


class RuleCampaign(Payload):
    """A campaign as the box needs it to extend its horizon (already targeted to this screen)."""

    id: CampaignId
    layer: Annotated[SignageLayer, Field(description="override, normal or interrupt")]
    priority: Annotated[int, Field(ge=0, le=1000)] = 0
    items: Annotated[tuple[RuleItem, ...], Field(min_length=1, max_length=500)]
    start_date: date | None = None
    end_date: date | None = None
    dayparts: Annotated[tuple[RuleDaypart, ...], Field(max_length=50)] = ()
    sov_s: Annotated[int, Field(ge=0, le=1800)] = 0


class MediaRef(Payload):
    """A media file the screen may need: fetched over HTTP, trusted only if it hashes to `sha256`."""

    sha256: Sha256
    size: Count
    mime: Text
    path: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^/[A-Za-z0-9/._\-]*$")]


class ScheduleData(Payload):
    """A screen's timeline (retained; the latest wins) and the rules it was expanded from.

    `items` is the head of the cloud's expansion from `valid_from`, as much of it as fits in one
    message; the box expands `campaigns` + `default` itself (the same code, `signage_rules`),
    checks that it gets `items` and `timeline_hash` (the digest of the whole window's plan:
    `signage_rules.Plan.digest`), and keeps expanding past `valid_until` while it is offline."""

    version: Count
    timeline_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    screen: Text = "main"
    timezone: Text = "UTC"
    """The store's IANA zone: dayparts are wall times there."""
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    items: Annotated[tuple[ScheduleItem, ...], Field(max_length=2000)] = ()
    campaigns: Annotated[tuple[RuleCampaign, ...], Field(max_length=200)] = ()
    default: Annotated[tuple[RuleItem, ...], Field(max_length=500)] = ()
    media: Annotated[tuple[MediaRef, ...], Field(max_length=1000)] = ()
    screens: Annotated[tuple[ScheduleData, ...], Field(max_length=15)] = ()
    """A box driving several screens gets one schedule for all (one retained `schedule` per box):
    this one is its first screen's, `screens` the others' (each a whole schedule, the same
    version, no nested `screens`). A box that predates it ignores the field and plays the first."""

    @model_validator(mode="after")
    def _window(self) -> ScheduleData:
        if self.valid_until <= self.valid_from:
            raise ValueError(f"valid_until {self.valid_until.isoformat()} must be after valid_from {self.valid_from.isoformat()}")
        previous = None
        for item in self.items:
            if item.end <= item.start:
                raise ValueError(f"item at {item.start.isoformat()} ends at {item.end.isoformat()}, not after it starts")
            if previous is not None and item.start < previous:
                raise ValueError(f"items must be in time order without overlap: one starts at {item.start.isoformat()}, before the previous one ends at {previous.isoformat()}")
            previous = item.end
        names = [self.screen, *(s.screen for s in self.screens)]
        if len(set(names)) != len(names):
            raise ValueError(f"screens must have distinct names, got {', '.join(names)}")
        if any(s.screens for s in self.screens):
            raise ValueError("a screen's schedule inside `screens` carries no further `screens`")
        return self


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


CLERK_ROSTER = "clerk_roster"
"""`CommandData.name` of the command carrying a store's clerks (`args`: `ClerkRosterArgs`)."""


class RosterClerk(Payload):
    """One clerk of the store, as the box needs it to sign them in offline (never the PIN itself)."""

    id: Annotated[int, Field(ge=1, lt=2**63)]
    name: Text
    staff_number: Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True)] | None = None
    pin_hash: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    """`broker.pins` format; the box refuses the roster if a hash's parameters are out of bounds."""
    active: bool = True


class ClerkRosterArgs(Payload):
    """The whole roster of one store (a full snapshot, never a delta).

    Sent as `CommandData(name=CLERK_ROSTER, args=ClerkRosterArgs(...).model_dump(mode="json"))` to
    every box of the store when a clerk changes and on each box's birth. The box swaps it in whole
    and ignores a version older than the one it holds.
    """

    version: Annotated[int, Field(ge=1, lt=2**63)]
    """Increases with every change to the store's clerks."""
    store: Text
    """The store's code: a box refuses the roster of another store."""
    clerks: Annotated[tuple[RosterClerk, ...], Field(max_length=500)] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> ClerkRosterArgs:
        ids = [c.id for c in self.clerks]
        if len(ids) != len(set(ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"clerk ids must be unique in a roster: {dup} appear more than once")
        return self
