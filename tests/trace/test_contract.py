"""The bus contract's additions for traceability (additive): `ScanPurpose.UNDO`, `ScanData.provisional`
(the box's offline answer), and a verdict envelope whose `corr` is the scan's msg_id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from broker import topics
from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import ParsedCode, ScanData, ScanPurpose, VerdictClass, VerdictData, VerdictRule


def test_scan_with_a_provisional_verdict_round_trips() -> None:
    scan = ScanData(code="]d2010950600013435221X", station="till-1", purpose=ScanPurpose.UNDO,
                    provisional=VerdictClass.GENUINE)
    env = Envelope(type=MessageType.SCAN, node="st0001-k1", session=1, seq=1, data=scan)
    back = decode(encode(env), topics.up("st0001-k1", "scan"))
    assert back.data == scan


def test_a_scan_from_an_older_box_has_no_provisional() -> None:
    raw = (b'{"v":1,"type":"scan","msg_id":"01937a4e-0000-7000-8000-000000000009","node":"st0001-k1","session":1,'
           b'"seq":1,"ts":"2026-11-24T09:30:00+08:00","clock_synced":true,"historical":false,"corr":null,'
           b'"data":{"code":"4006381333931","station":"till-1","purpose":"sell"}}')
    data = decode(raw, topics.up("st0001-k1", "scan")).data
    assert isinstance(data, ScanData) and data.provisional is None and data.purpose is ScanPurpose.SELL


def test_a_verdict_names_its_scan_in_corr() -> None:
    scan_id = uuid.uuid4()
    verdict = VerdictData(scan_id=scan_id, code="x", parsed=ParsedCode(form="ean", gtin="04006381333931"),
                          verdict=VerdictClass.UNTRACKED, rule=VerdictRule.PLAIN_PRODUCT_CODE,
                          decided_at=datetime.now(UTC))
    env = Envelope(type=MessageType.VERDICT, node="st0001-k1", session=0, seq=7, corr=scan_id, data=verdict)
    back = decode(encode(env), topics.dn("st0001-k1", MessageType.VERDICT))
    assert back.corr == scan_id and back.data == verdict
