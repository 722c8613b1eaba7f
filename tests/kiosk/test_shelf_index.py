"""The box's search index on its own (no agent): prefix search from every word start in every
spelling, the order of a page, filters with a query, and an index of the old layout rebuilt."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.kiosk.shelf_db import Filters, ShelfDb, pinyin_parts, search_tokens
from tests.kiosk.conftest import product, seed_catalogue

CATALOGUE = [
    product("TEA-LJ-250", "Longjing green tea 250 g", "西湖龙井茶 250克", "168.00"),
    product("TEA-LJ-50", "Longjing tea 50 g", "龙井 50克", "48.00", brand="Hangzhou Tea"),
    product("MUG-01", "Celadon tea mug", "青瓷茶杯", "260.00", brand="Longquan", category="Home > Kitchen"),
    product("RICE-WC-5KG", "Wuchang rice 5 kg", "五常大米 5公斤", "89.90", brand="Wuchang", category="Food > Rice"),
    product("CUP-LV", "LV cup", "LV 杯子", "20.00", brand="Other", category="Home > Kitchen"),
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShelfDb]:
    tmp = tmp_path_factory.mktemp("shelf")
    seed_catalogue(tmp / "cat", CATALOGUE)
    shelf = ShelfDb(tmp / "kiosk.db")
    assert shelf.rebuild(tmp / "cat" / "catalogue.db", "e:1") == len(CATALOGUE)
    yield shelf
    shelf.close()


def found(db: ShelfDb, query: str, **filters: object) -> list[str]:
    total, items = db.page(Filters(query=query, **filters), "st1", 50, 0)  # type: ignore[arg-type]
    assert total == len(items)
    return [i["sku"] for i in items]


SEARCHES = [
    # (typed, found in this order): names that start with it first, then shorter names first
    ("l", ["CUP-LV", "MUG-01", "TEA-LJ-50", "TEA-LJ-250"]),
    ("lj", ["TEA-LJ-50", "TEA-LJ-250"]),             # initials, and the SKU's second word
    ("long", ["MUG-01", "TEA-LJ-50", "TEA-LJ-250"]),  # pinyin, English and the brand Longquan
    ("longjing", ["TEA-LJ-50", "TEA-LJ-250"]),
    ("jing", ["TEA-LJ-50", "TEA-LJ-250"]),            # a later syllable
    ("xhlj", ["TEA-LJ-250"]),
    ("龙井", ["TEA-LJ-50", "TEA-LJ-250"]),           # characters, from a later one too
    ("井茶", ["TEA-LJ-250"]),
    ("green tea", ["TEA-LJ-250"]),                   # spaces and punctuation do not matter
    ("Green-Tea", ["TEA-LJ-250"]),
    ("tea", ["TEA-LJ-50", "TEA-LJ-250", "MUG-01"]),  # SKUs start with it; the mug's third word
    ("mug-01", ["MUG-01"]),
    ("lvbeizi", ["CUP-LV"]),                          # Latin runs kept whole in the pinyin
    ("lvbz", ["CUP-LV"]),
    ("dami", ["RICE-WC-5KG"]),
    ("ongjing", []),                                   # not from a word start
    ("zzzz", []),
    ("--", []),                                        # punctuation only
]


@pytest.mark.parametrize(("typed", "skus"), SEARCHES)
def test_search_finds_every_spelling_from_any_word_start(db: ShelfDb, typed: str, skus: list[str]) -> None:
    assert found(db, typed) == skus


def test_filters_narrow_a_search_and_pages_do_not_overlap(db: ShelfDb) -> None:
    assert found(db, "l", category="Home") == ["CUP-LV", "MUG-01"]
    assert found(db, "l", max_price=50.0) == ["CUP-LV", "TEA-LJ-50"]
    assert found(db, "long", brand="Longquan") == ["MUG-01"]
    pages = [db.page(Filters(query="l"), "st1", 1, offset) for offset in range(5)]
    assert [t for t, _ in pages] == [4] * 5
    assert [i["sku"] for _, items in pages for i in items] == found(db, "l")


def test_a_keystroke_reads_the_index_not_the_shelf(db: ShelfDb) -> None:
    conn = db._conn()
    plan = " ".join(str(r[3]) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT m.rowid FROM shelf_search m WHERE shelf_search MATCH ? ORDER BY m.rowid LIMIT 40",
        ('"l"*',)))
    assert "VIRTUAL TABLE INDEX" in plan and "SCAN shelf" not in plan, plan


def test_search_tokens_start_at_every_word() -> None:
    head, rest = search_tokens("TEA-LJ-250", "Green tea", "龙井茶", "West Lake", pinyin_parts("龙井茶"))
    assert head.split() == ["tealj250", "greentea", "龙井茶", "longjingcha", "ljc", "westlake"]
    assert set(rest.split()) == {"lj250", "250", "tea", "井茶", "茶", "jingcha", "cha", "jc", "c", "lake"}


def test_an_index_of_the_old_layout_is_dropped_and_built_again(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "kiosk.db")
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('indexed', 'e:1');"
        "CREATE TABLE shelf (sku TEXT PRIMARY KEY, hay TEXT NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE pinyin (name_zh TEXT PRIMARY KEY, full TEXT NOT NULL, initials TEXT NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE placed (seq INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,"
        " placed_at REAL NOT NULL);"
        "INSERT INTO placed(order_id, body, placed_at) VALUES ('k1-1', '{}', 0);")
    old.commit()
    old.close()
    db = ShelfDb(tmp_path / "kiosk.db")
    try:
        assert db.indexed is None  # so the component rebuilds it from the catalogue
        assert [o["order_id"] for o in db.placed()] == ["k1-1"]
        seed_catalogue(tmp_path / "cat", CATALOGUE)
        db.rebuild(tmp_path / "cat" / "catalogue.db", "e:2")
        assert found(db, "lj") == ["TEA-LJ-50", "TEA-LJ-250"]
    finally:
        db.close()


def test_a_rebuild_replaces_what_was_indexed(tmp_path: Path) -> None:
    db = ShelfDb(tmp_path / "kiosk.db")
    try:
        seed_catalogue(tmp_path / "v1", CATALOGUE)
        db.rebuild(tmp_path / "v1" / "catalogue.db", "e:1")
        # One product gone, one new, one renamed (its tokens are made again; the others' are kept).
        renamed = product("RICE-WC-5KG", "Northeast rice 5 kg", "东北大米 5公斤", "89.90", brand="Wuchang")
        seed_catalogue(tmp_path / "v2", [*CATALOGUE[1:3], renamed, *CATALOGUE[4:],
                                         product("TEA-BL-1", "Keemun black tea", "祁门红茶", "45.00")])
        assert db.rebuild(tmp_path / "v2" / "catalogue.db", "e:2") == len(CATALOGUE)
        assert (db.indexed, found(db, "xhlj"), found(db, "qmhc"), db.count()) == ("e:2", [], ["TEA-BL-1"], len(CATALOGUE))
        assert (found(db, "dbdm"), found(db, "northeast"), found(db, "wcdm")) == (["RICE-WC-5KG"], ["RICE-WC-5KG"], [])
        assert found(db, "lj") == ["TEA-LJ-50"] and found(db, "lvbz") == ["CUP-LV"]
    finally:
        db.close()


def test_an_update_that_keeps_the_order_writes_only_what_changed(tmp_path: Path) -> None:
    db = ShelfDb(tmp_path / "kiosk.db")
    try:
        shelf = [*CATALOGUE, *(product(f"SNACK-{i:03d}", f"Sesame snack no. {i}", f"芝麻小吃 {i} 号", "9.50")
                               for i in range(200))]
        seed_catalogue(tmp_path / "v1", shelf)
        db.rebuild(tmp_path / "v1" / "catalogue.db", "e:1")
        by_sku = {p["sku"]: p for p in shelf}
        # A price change, and a rename to names as long as before: every product keeps its place.
        rice = by_sku["RICE-WC-5KG"]
        assert (len(rice["name_en"]), len(rice["name_zh"])) == (len("Dongbei rice 5 kg"), len("东北大米 5公斤"))
        v2 = {**by_sku, "RICE-WC-5KG": {**rice, "name_en": "Dongbei rice 5 kg", "name_zh": "东北大米 5公斤"},
              "CUP-LV": {**by_sku["CUP-LV"], "list_price": "1.00"}}
        seed_catalogue(tmp_path / "v2", list(v2.values()))
        writes = db._conn().total_changes
        assert db.rebuild(tmp_path / "v2" / "catalogue.db", "e:2") == len(shelf)
        # Two shelf rows, the renamed product's search row (out and in, with FTS5's own rows) and
        # the meta; a rebuild writes every product's two rows again.
        in_place = db._conn().total_changes - writes
        # The new names are found, the old one's pinyin is not (the brand, Wuchang, is still its brand).
        assert (db.indexed, found(db, "dbdm"), found(db, "dongbei"), found(db, "wcdm")) == (
            "e:2", ["RICE-WC-5KG"], ["RICE-WC-5KG"], [])
        seed_catalogue(tmp_path / "v3", [*v2.values(), product("NEW-1", "New", "新", "1.00")])
        writes = db._conn().total_changes
        db.rebuild(tmp_path / "v3" / "catalogue.db", "e:3")
        assert in_place < 30 < 2 * len(shelf) < db._conn().total_changes - writes
        assert db.item("CUP-LV")["price"] == 1.0  # type: ignore[index]
        assert found(db, "lj") == ["TEA-LJ-50", "TEA-LJ-250"]  # the others' tokens untouched
    finally:
        db.close()
