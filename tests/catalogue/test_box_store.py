"""The box's catalogue store: atomic apply, search (Chinese and English, prefix and substring)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from edge.catalogue.store import CatalogueStore, CorruptSyncFile
from tests.catalogue.gen import gtin_for


def prod(sku: str, en: str, zh: str, *, gtin: str | None = None, price: str = "10.00", **kw: Any) -> dict[str, Any]:
    return {"sku": sku, "gtins": [gtin.zfill(14)] if gtin else [], "name_en": en, "name_zh": zh, "desc_en": None,
            "desc_zh": None, "brand": kw.get("brand"), "category": kw.get("category"), "attributes": {},
            "list_price": price, "prices": kw.get("prices", {}), "images": [], "serialised": False}


def lines(kind: str, frm: int, to: int, ops: list[dict[str, Any]]) -> list[str]:
    return [json.dumps({"format": 1, "kind": kind, "from": frm, "to": to})] + [json.dumps(o, ensure_ascii=False) for o in ops]


CATALOGUE = [
    prod("TEA-LJ-250", "Longjing green tea 250 g", "西湖龙井茶 250克", gtin="06901234567892", category="Food > Tea",
         prices={"east": "150.00"}, price="168.00"),
    prod("TEA-BL-100", "Black tea 100 g", "祁门红茶 100克", category="Food > Tea"),
    prod("RICE-WC-5KG", "Wuchang rice 5 kg", "五常大米 5公斤", category="Food > Rice"),
    prod("TEAPOT-1", "Teapot, clay", "紫砂茶壶", category="Home"),
    prod("GREEN-1", "Greenhouse tomatoes", "温室番茄", category="Food > Veg"),
    prod("CUP-TEA", "Cup", "杯子", gtin=gtin_for(42)),
]


@pytest.fixture
def store(tmp_path: Path) -> CatalogueStore:
    s = CatalogueStore(tmp_path / "cat")
    s.apply(lines("snapshot", 0, 1, [{"op": "put", "p": p} for p in CATALOGUE]), expect_from=0, expect_to=1, region="east")
    return s


def skus(results: list[dict[str, Any]]) -> list[str]:
    return [r["sku"] for r in results]


def test_snapshot_applies_with_the_region_price(store: CatalogueStore) -> None:
    assert store.version == 1 and store.count() == len(CATALOGUE)
    tea = store.product("TEA-LJ-250")
    assert tea is not None and tea["price"] == "150.00"  # the east override, not the list price
    assert store.product("TEA-BL-100")["price"] == "10.00"  # type: ignore[index]
    assert {c["path"]: c["products"] for c in store.categories()}["Food > Tea"] == 2


@pytest.mark.parametrize(
    ("query", "expected_first", "must_contain"),
    [
        ("茶", None, {"TEA-LJ-250", "TEA-BL-100", "TEAPOT-1"}),  # 1 CJK char: gram index
        ("红茶", "TEA-BL-100", {"TEA-BL-100"}),  # 2 CJK chars, in the middle of the name
        ("龙井茶", "TEA-LJ-250", {"TEA-LJ-250"}),  # 3+ chars: trigram substring
        ("西湖", "TEA-LJ-250", {"TEA-LJ-250"}),  # Chinese prefix
        ("green", "GREEN-1", {"GREEN-1", "TEA-LJ-250"}),  # prefix (Greenhouse) before substring (… green tea)
        ("GREEN TEA", "TEA-LJ-250", {"TEA-LJ-250"}),  # case-insensitive substring
        ("te", None, {"TEA-BL-100", "TEA-LJ-250", "TEAPOT-1"}),  # short latin: SKU/name prefix
        ("tea", "TEAPOT-1", {"TEAPOT-1", "TEA-LJ-250", "TEA-BL-100", "CUP-TEA"}),
    ],
)
def test_search(store: CatalogueStore, query: str, expected_first: str | None, must_contain: set[str]) -> None:
    found = skus(store.search(query))
    assert must_contain <= set(found), found
    if expected_first is not None:
        assert found[0] == expected_first, found


def test_exact_sku_and_gtin_rank_first(store: CatalogueStore) -> None:
    # 'CUP-TEA' also matches 'tea' by substring elsewhere; the exact SKU wins regardless of case.
    assert skus(store.search("cup-tea"))[0] == "CUP-TEA"
    assert skus(store.search("6901234567892"))[0] == "TEA-LJ-250"  # GTIN-13 finds the stored GTIN-14
    assert skus(store.search(gtin_for(42)))[0] == "CUP-TEA"
    assert store.search("nothing-like-this") == []


def test_delta_upserts_and_deletes(store: CatalogueStore) -> None:
    ops: list[dict[str, Any]] = [
        {"op": "put", "p": prod("TEA-BL-100", "Black tea 100 g", "滇红茶 100克", price="12.00")},
        {"op": "del", "sku": "RICE-WC-5KG"},
        {"op": "put", "p": prod("NEW-1", "Oolong", "乌龙茶")},
    ]
    store.apply(lines("delta", 1, 2, ops), expect_from=1, expect_to=2, region="east")
    assert store.version == 2
    assert store.product("RICE-WC-5KG") is None and store.search("大米") == []
    assert skus(store.search("滇红")) == ["TEA-BL-100"] and store.search("祁门") == []  # FTS follows the update
    assert "NEW-1" in skus(store.search("乌龙"))


def test_corrupt_delta_leaves_the_previous_version_whole(store: CatalogueStore) -> None:
    ops = [json.dumps({"op": "del", "sku": "TEA-LJ-250"}), "{not json"]
    with pytest.raises(CorruptSyncFile, match="line 3"):
        store.apply([lines("delta", 1, 2, [])[0], *ops], expect_from=1, expect_to=2, region="east")
    assert store.version == 1 and store.product("TEA-LJ-250") is not None
    assert skus(store.search("龙井"))[0] == "TEA-LJ-250"


def test_delta_for_another_version_is_refused(store: CatalogueStore) -> None:
    with pytest.raises(CorruptSyncFile, match="does not apply to local version 1"):
        store.apply(lines("delta", 5, 6, []), expect_from=5, expect_to=6, region="east")
    with pytest.raises(CorruptSyncFile, match="expected 1->3"):
        store.apply(lines("delta", 1, 2, []), expect_from=1, expect_to=3, region="east")
    assert store.version == 1


def test_gzip_round_trip_from_cloud_format(tmp_path: Path) -> None:
    # The cloud writes gzip'd JSON lines; the box reads them as text lines.
    data = gzip.compress("\n".join(lines("snapshot", 0, 3, [{"op": "put", "p": CATALOGUE[0]}])).encode())
    s = CatalogueStore(tmp_path / "c2")
    s.apply(io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8"), expect_from=0, expect_to=3, region=None)
    assert s.version == 3 and s.product("TEA-LJ-250")["price"] == "168.00"  # type: ignore[index]
