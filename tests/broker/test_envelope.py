from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import payloads as p
from broker import topics
from broker.envelope import (
    MAX_ENVELOPE_BYTES,
    PAYLOADS,
    ContractError,
    Envelope,
    MessageType,
    RejectReason,
    decode,
    encode,
    new_msg_id,
)
from tests.broker.samples import NOW, SAMPLES


def topic_for(kind: MessageType, node: str) -> str:
    if kind == MessageType.STATE:
        return topics.host_state(node)
    if kind in topics.UP:
        return topics.up(node, kind.value)
    return topics.dn(node, kind.value)


def make(kind: MessageType, **over: object) -> Envelope:
    fields: dict[str, object] = dict(type=kind, node="st0001-k1", session=17, seq=90412, ts=NOW, data=SAMPLES[kind])
    fields.update(over)
    return Envelope(**fields)


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(PAYLOADS) == set(MessageType)


@pytest.mark.parametrize("kind", list(MessageType))
def test_round_trip(kind: MessageType) -> None:
    env = make(kind)
    raw = encode(env)
    back = decode(raw, topic_for(kind, "st0001-k1"))
    assert back == env
    assert type(back.data) is PAYLOADS[kind]
    assert json.loads(raw)["ts"] == "2026-11-24T09:30:00.123000+08:00"


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def valid_obj(**over: object) -> dict[str, object]:
    obj: dict[str, object] = json.loads(encode(make(MessageType.SCAN)))
    obj.update(over)
    return obj


def raw_of(obj: object) -> bytes:
    return json.dumps(obj).encode()


REJECTS = [
    ("not json", b"{oops", RejectReason.NOT_JSON, "payload is not JSON (Expecting property name"),
    ("not utf-8", b"\xff\xfe{}", RejectReason.NOT_JSON, "payload is not UTF-8 (invalid start byte at byte 0)"),
    ("deep nesting", b"[" * 100_000, RejectReason.LIMIT, "nested deeper than 32 levels"),
    ("nesting beyond the limit", raw_of(valid_obj(data=_nested(40))), RejectReason.LIMIT, "nested deeper than 32 levels"),
    ("5,000-digit integer", b'{"v": 1, "seq": ' + b"9" * 5000 + b"}", RejectReason.LIMIT, "an integer of 5000 digits, beyond the 64-bit range"),
    ("integer beyond 64 bits", raw_of(valid_obj(data={"code": "x", "station": "s", "n": 2**64})), RejectReason.LIMIT,
     "integer outside the 64-bit range"),
    ("NaN", raw_of(valid_obj()).replace(b'"seq": 90412', b'"seq": NaN'), RejectReason.NOT_JSON, "holds NaN, which is not a JSON number"),
    ("Infinity", b'{"v": 1, "x": -Infinity}', RejectReason.NOT_JSON, "holds -Infinity, which is not a JSON number"),
    ("overflowing float", b'{"v": 1, "x": 1e999}', RejectReason.NOT_JSON, "overflows to inf"),
    ("lone surrogate", b'{"v": 1, "x": "\\ud800"}', RejectReason.NOT_JSON, "lone UTF-16 surrogate"),
    ("NUL in a string", raw_of(valid_obj(data={"code": "a\u0000b", "station": "s"})), RejectReason.SCHEMA,
     "a string holds a NUL character"),
    ("type not a string", raw_of(valid_obj(type=["scan"])), RejectReason.UNKNOWN_TYPE, "message type ['scan'] is unknown"),
    ("array", b"[1, 2]", RejectReason.NOT_OBJECT, "payload is a JSON list, expected an object"),
    ("no version", raw_of({"type": "scan"}), RejectReason.SCHEMA, "field 'v': missing"),
    ("version 2", raw_of(valid_obj(v=2)), RejectReason.WRONG_VERSION, "envelope version 2, this side speaks 1"),
    (
        "unknown type",
        raw_of(valid_obj(type="teleport")),
        RejectReason.UNKNOWN_TYPE,
        "message type 'teleport' is unknown",
    ),
    (
        "missing fields",
        raw_of({k: v for k, v in valid_obj().items() if k not in ("seq", "session")}),
        RejectReason.SCHEMA,
        "field 'session': Field required; field 'seq': Field required",
    ),
    (
        "payload field",
        raw_of(valid_obj(data={"code": "x"})),
        RejectReason.SCHEMA,
        "field 'data.station': Field required",
    ),
    (
        "extra member",
        raw_of(valid_obj(colour="red")),
        RejectReason.SCHEMA,
        "field 'colour': Extra inputs are not permitted",
    ),
    (
        "empty clerk id",
        raw_of(valid_obj(data={"code": "x", "station": "s", "clerk": {"id": " ", "name": "Mei Chen"}})),
        RejectReason.SCHEMA,
        "field 'data.clerk.id': String should have at least 1 character",
    ),
    (
        "clerk without a name",
        raw_of(valid_obj(data={"code": "x", "station": "s", "clerk": {"id": "7"}})),
        RejectReason.SCHEMA,
        "field 'data.clerk.name': Field required",
    ),
    ("bad node id", raw_of(valid_obj(node="St/1")), RejectReason.SCHEMA, "Invalid node id 'St/1'"),
    ("uuid4 msg_id", raw_of(valid_obj(msg_id=str(uuid.uuid4()))), RejectReason.SCHEMA, "msg_id must be a UUIDv7"),
    (
        "naive ts",
        raw_of(valid_obj(ts="2026-11-24T09:30:00")),
        RejectReason.SCHEMA,
        "field 'ts': Input should have timezone info",
    ),
    (
        "negative seq",
        raw_of(valid_obj(seq=-1)),
        RejectReason.SCHEMA,
        "field 'seq': Input should be greater than or equal to 0",
    ),
    (
        "oversize",
        raw_of(valid_obj(data={"code": "x", "station": "s", "pad": "y" * MAX_ENVELOPE_BYTES})),
        RejectReason.OVERSIZE,
        "bytes, the limit is 262144",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "message"), [r[1:] for r in REJECTS], ids=[r[0] for r in REJECTS])
def test_rejections_name_the_problem(raw: bytes, reason: RejectReason, message: str) -> None:
    with pytest.raises(ContractError) as info:
        decode(raw)
    assert info.value.reason is reason
    assert message in info.value.detail


def test_topic_must_match_type_and_node() -> None:
    raw = encode(make(MessageType.SCAN))
    with pytest.raises(ContractError) as info:
        decode(raw, topics.up("st0001-k1", "order"))
    assert info.value.reason is RejectReason.TOPIC_MISMATCH
    assert info.value.detail == "a scan message arrived on 'shelf/v1/up/st0001-k1/order', which carries order"
    with pytest.raises(ContractError) as info:
        decode(raw, topics.up("st0002-k1", "scan"))
    assert (
        info.value.detail == "message from node 'st0001-k1' arrived on 'st0002-k1''s topic 'shelf/v1/up/st0002-k1/scan'"
    )
    with pytest.raises(ContractError) as info:
        decode(raw, "elsewhere/x")
    assert info.value.reason is RejectReason.BAD_TOPIC


def test_encode_refuses_oversize() -> None:
    env = make(
        MessageType.COMMAND,
        data=SAMPLES[MessageType.COMMAND].model_copy(update={"args": {"x": "y" * MAX_ENVELOPE_BYTES}}),
    )
    with pytest.raises(ContractError) as info:
        encode(env)
    assert info.value.reason is RejectReason.OVERSIZE


def test_data_must_match_type() -> None:
    with pytest.raises(ValueError, match="data is a ScanData, expected OrderData"):
        make(MessageType.ORDER, data=SAMPLES[MessageType.SCAN])


def test_msg_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_msg_id() for _ in range(100)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids, key=lambda u: u.bytes)
    assert len(set(ids)) == 100


def test_the_clerk_travels_on_scan_fulfil_and_stock_and_older_boxes_send_none() -> None:
    mei = p.ClerkRef(id="7", name="Mei Chen")
    for kind, data in ((MessageType.SCAN, SAMPLES[MessageType.SCAN].model_copy(update={"clerk": mei})),
                       (MessageType.FULFIL, SAMPLES[MessageType.FULFIL].model_copy(update={"clerk": mei})),
                       (MessageType.STOCK, p.StockData(levels=(p.StockLevel(
                           sku="TEA-1", on_hand=6, delta=-2, reason=p.StockReason.DAMAGED.value, clerk=mei,
                           note="dropped", ref="adj-1"),)))):
        env = Envelope(type=kind, node="st0001-k1", session=1, seq=1, data=data)
        assert decode(encode(env)).data == data
    older = decode(raw_of(valid_obj(data={"code": "c", "station": "s"}))).data
    assert isinstance(older, p.ScanData) and older.clerk is None


def test_payloads_ignore_unknown_members_for_forward_compatibility() -> None:
    obj = valid_obj(data={"code": "c", "station": "s", "added_in_v1_5": True})
    assert decode(raw_of(obj)).data == SAMPLES[MessageType.SCAN].model_copy(
        update={"code": "c", "station": "s", "symbology": None}
    )


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_an_envelope_or_a_contract_error(raw: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode(raw, topics.up("st0001-k1", "scan"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


@given(st.dictionaries(st.sampled_from(["v", "type", "msg_id", "node", "session", "seq", "ts", "data", "corr"]), _json))
@settings(max_examples=300, deadline=None)
def test_any_json_object_gives_an_envelope_or_a_contract_error(obj: dict[str, object]) -> None:
    raw = json.dumps(obj, allow_nan=True).encode()
    with contextlib.suppress(ContractError):
        decode(raw, topics.up("st0001-k1", "scan"))


def test_payloads_refuse_non_finite_numbers() -> None:
    from broker.payloads import TelemetryData

    with pytest.raises(ValueError, match="finite number"):
        TelemetryData(metrics={"cpu": float("nan")})
