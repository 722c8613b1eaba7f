"""The message envelope: one JSON object per MQTT message, validated on both ends.

`decode` is the single gate for bytes coming off the bus. It either returns a fully typed
`Envelope` or raises `ContractError` with a `RejectReason` a caller can count and branch on, and a
message naming the input, what was expected and what was found.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from uuid6 import uuid7

from broker import payloads as p
from broker import topics
from broker.topics import MessageType

__all__ = [
    "MAX_DEPTH",
    "MAX_ENVELOPE_BYTES",
    "PAYLOADS",
    "SEQUENCED",
    "VERSION",
    "ContractError",
    "Envelope",
    "MessageType",
    "RejectReason",
    "decode",
    "encode",
    "new_msg_id",
]

VERSION = 1
MAX_ENVELOPE_BYTES = 256 * 1024
"""Largest encoded envelope accepted. Catalogue and media travel over HTTP, not the bus."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted: ours never exceed a handful, and a hostile
`[[[[…` must fail here, not as a RecursionError somewhere downstream."""


PAYLOADS: dict[MessageType, type[p.Payload]] = {
    MessageType.BIRTH: p.BirthData,
    MessageType.DEATH: p.DeathData,
    MessageType.SCAN: p.ScanData,
    MessageType.ORDER: p.OrderData,
    MessageType.STOCK: p.StockData,
    MessageType.POP: p.PopData,
    MessageType.FULFIL: p.FulfilData,
    MessageType.ACK: p.AckData,
    MessageType.TELEMETRY: p.TelemetryData,
    MessageType.VERDICT: p.VerdictData,
    MessageType.ASSIGN: p.AssignData,
    MessageType.CONFIG: p.ConfigData,
    MessageType.SCHEDULE: p.ScheduleData,
    MessageType.CATALOG: p.CatalogData,
    MessageType.COMMAND: p.CommandData,
    MessageType.REBIRTH: p.RebirthData,
    MessageType.STATE: p.HostStateData,
}


SEQUENCED: frozenset[MessageType] = topics.UP - topics.LIFECYCLE
"""The box's durable messages: each gets the next `seq` of its node when it enters the outbox, and the
cloud checks their sequence for gaps. Births and deaths only report the highest seq so far."""


class RejectReason(enum.StrEnum):
    """Why an incoming message was refused; each has its own counter on the receiving side."""

    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    WRONG_VERSION = "wrong_version"
    UNKNOWN_TYPE = "unknown_type"
    SCHEMA = "schema"
    BAD_TOPIC = "bad_topic"
    TOPIC_MISMATCH = "topic_mismatch"
    LIMIT = "limit"
    """Beyond a structural limit: nesting depth, digits of a number."""


class ContractError(ValueError):
    """A message that breaks the bus contract."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def new_msg_id() -> uuid.UUID:
    """A fresh, time-ordered idempotency key (UUIDv7)."""
    return uuid.UUID(bytes=uuid7().bytes)


class Envelope(BaseModel):
    """One bus message. `data` is the payload model that `type` names (see `PAYLOADS`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    v: Literal[1] = 1
    type: MessageType
    msg_id: uuid.UUID = Field(default_factory=new_msg_id)
    node: str
    session: int = Field(ge=0, lt=2**63)
    seq: int = Field(ge=0, lt=2**63)
    ts: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC).astimezone())
    clock_synced: bool = True
    historical: bool = False
    corr: uuid.UUID | None = None
    data: SerializeAsAny[p.Payload]

    @field_validator("node")
    @classmethod
    def _node_id(cls, value: str) -> str:
        try:
            return topics.check_id(value)
        except topics.TopicError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("msg_id")
    @classmethod
    def _uuid7(cls, value: uuid.UUID) -> uuid.UUID:
        if value.version != 7:
            raise ValueError(f"msg_id must be a UUIDv7, got version {value.version}")
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _typed_data(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if kind is None:  # `type` itself failed; its error is reported instead
            return value
        model = PAYLOADS[kind]
        if isinstance(value, model):
            return value
        if isinstance(value, p.Payload):
            raise ValueError(f"data is a {type(value).__name__}, expected {model.__name__} for type {kind!r}")
        return model.model_validate(value)


def encode(envelope: Envelope) -> bytes:
    """The wire form of an envelope (compact JSON, UTF-8)."""
    raw = envelope.model_dump_json().encode()
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise ContractError(
            RejectReason.OVERSIZE,
            f"{envelope.type} message is {len(raw)} bytes, the limit is {MAX_ENVELOPE_BYTES}",
        )
    return raw


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "(message)"
        parts.append(f"field '{where}': {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class _Refused(ValueError):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    # json.loads accepts NaN and ±Infinity by default, which are not JSON (RFC 8259) and which
    # PostgreSQL refuses to store: they must be refused here, at the contract.
    raise _Refused(RejectReason.NOT_JSON, f"payload holds {name}, which is not a JSON number")


def _parse_int(text: str) -> int:
    # Checked as the parser meets each number: cheaper than a walk over the result afterwards.
    if len(text) > 20:
        raise _Refused(RejectReason.LIMIT, f"payload holds an integer of {len(text)} digits, beyond the 64-bit range")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise _Refused(RejectReason.LIMIT, "payload holds an integer outside the 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" overflows to inf without passing through parse_constant
        raise _Refused(RejectReason.NOT_JSON, f"payload holds {text[:40]}, which overflows to {value}")
    return value


def _loads(raw: bytes) -> Any:
    try:
        # Decoded here: json.loads(bytes) would guess UTF-16/32 from a BOM, and the bus is UTF-8.
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_parse_int,
                          parse_float=_parse_float)
    except UnicodeDecodeError as exc:
        raise ContractError(RejectReason.NOT_JSON, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except _Refused as exc:
        raise ContractError(exc.reason, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ContractError(RejectReason.NOT_JSON, f"payload is not JSON ({exc})") from None
    except RecursionError:
        raise ContractError(RejectReason.LIMIT, f"payload is nested deeper than {MAX_DEPTH} levels") from None


def _check_structure(raw: bytes, obj: Any) -> None:
    """Depth, and strings every store accepts (no NUL, no lone surrogate). JSON can only spell those
    characters as escapes and can only nest as deep as it has brackets, so the bytes say when the
    (slower) walk over the parsed value is needed: almost never."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH and b"\\u" not in raw:
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Any = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            items = node
        else:
            if "\x00" in node:
                raise ContractError(RejectReason.SCHEMA, "a string holds a NUL character (\\u0000), which no field allows")
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    raise ContractError(RejectReason.NOT_JSON, "payload holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
            continue
        if depth > MAX_DEPTH:
            raise ContractError(RejectReason.LIMIT, f"payload is nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in items if isinstance(child, dict | list | str))


def decode(raw: bytes, topic: str | None = None) -> Envelope:
    """Validate bytes from the bus (and, when given, that they match the topic they came on).

    Raises `ContractError` and nothing else, whatever the bytes: a receiver may rely on that to
    reject one message without stopping.
    """
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise ContractError(RejectReason.OVERSIZE, f"message is {len(raw)} bytes, the limit is {MAX_ENVELOPE_BYTES}")
    obj = _loads(raw)
    if not isinstance(obj, dict):
        raise ContractError(RejectReason.NOT_OBJECT, f"payload is a JSON {type(obj).__name__}, expected an object")
    _check_structure(raw, obj)
    if "v" not in obj:
        raise ContractError(RejectReason.SCHEMA, "field 'v': missing (the envelope version, expected 1)")
    if obj["v"] != VERSION:
        raise ContractError(RejectReason.WRONG_VERSION, f"envelope version {obj['v']!r:.40}, this side speaks {VERSION}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in PAYLOADS:
        raise ContractError(
            RejectReason.UNKNOWN_TYPE,
            f"message type {kind!r:.60} is unknown; expected one of {', '.join(sorted(PAYLOADS))}",
        )
    try:
        envelope = Envelope.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(RejectReason.SCHEMA, _describe(exc)) from None
    if topic is not None:
        _check_topic(envelope, topic)
    return envelope


def _check_topic(envelope: Envelope, topic: str) -> None:
    try:
        parsed = topics.parse(topic)
    except topics.TopicError as exc:
        raise ContractError(RejectReason.BAD_TOPIC, str(exc)) from None
    expected_type = MessageType.STATE if parsed.direction == "host" else parsed.name
    if envelope.type != expected_type:
        raise ContractError(
            RejectReason.TOPIC_MISMATCH,
            f"a {envelope.type} message arrived on {topic!r}, which carries {expected_type}",
        )
    if envelope.node != parsed.node:
        raise ContractError(
            RejectReason.TOPIC_MISMATCH,
            f"message from node {envelope.node!r} arrived on {parsed.node!r}'s topic {topic!r}",
        )
