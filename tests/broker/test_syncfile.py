"""The catalogue sync-file format shared by the cloud (writer) and the box (reader)."""

from __future__ import annotations

import pytest

from broker.syncfile import (
    DelLine,
    ProductRecord,
    PutLine,
    SyncFileError,
    SyncHeader,
    encode_header,
    encode_line,
    parse_header,
    parse_line,
)

RECORD = ProductRecord(
    sku="TEA-LJ-250", gtins=("06901234567892",), name_en="Longjing tea", name_zh="西湖龙井茶", list_price="168.00",
    prices={"east": "158.00"}, images=(), attributes={"weight": "250 g"},
)


def test_round_trip() -> None:
    header = SyncHeader(kind="delta", from_version=3, to_version=4, epoch="0" * 32)
    assert encode_header(header) == '{"format":1,"kind":"delta","from":3,"to":4,"epoch":"00000000000000000000000000000000"}'
    assert parse_header(encode_header(header)) == header
    for line in (PutLine(p=RECORD), DelLine(sku="OLD-1")):
        text = encode_line(line)
        assert parse_line(text) == line
    assert "西湖龙井茶" in encode_line(PutLine(p=RECORD))


BAD_LINES = [
    ('{"op": "put"}', "field 'put.p': Field required"),
    ('{"op": "move", "sku": "A"}', "field '(line)': Input tag 'move' found using 'op' does not match"),
    ('{"op": "del", "sku": "a b"}', "field 'del.sku': String should match pattern"),
    ('{"op": "put", "p": {"sku": "A", "name_en": "a", "name_zh": "b", "list_price": 12.5}}',
     "field 'put.p.list_price': Input should be a valid string"),
    ('{"op": "put", "p": {"sku": "A", "name_en": "a", "name_zh": "b", "list_price": "1", "gtins": ["123"]}}',
     "field 'put.p.gtins.0': String should match pattern"),
    ("not json", "field '(line)': Invalid JSON"),
]


@pytest.mark.parametrize(("text", "message"), BAD_LINES)
def test_bad_lines_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SyncFileError) as info:
        parse_line(text)
    assert str(info.value).startswith(message)


def test_bad_header() -> None:
    with pytest.raises(SyncFileError, match="not a sync file header"):
        parse_header('{"format": 2, "kind": "snapshot", "from": 0, "to": 1}')
