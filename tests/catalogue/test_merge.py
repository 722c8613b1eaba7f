"""Partial rows: a column (CSV) or key (JSON) left out keeps the stored value, an empty one clears
it; required fields only for a new SKU; unchanged merged result → no new version. Both databases
(the PostgreSQL variant goes through the COPY + set-based upsert path)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, select, update

from cloud.catalogue import service
from cloud.catalogue.importer import ImportResult, import_file, report_rows
from cloud.catalogue.models import CatalogueVersion, product_gtins, products
from cloud.seed import seed

BASE_CSV = (
    "sku,gtin,name_en,name_zh,desc_en,brand,category,list_price,price_east,price_south,attr_size,attr_colour,"
    "status,serialised,images\n"
    "TEA-1,6901234567892,Longjing tea,龙井茶,Spring harvest,West Lake,Food > Tea,168.00,158.00,160.00,250 g,green,"
    "active,no,a.png\n"
)


def _picture() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(out, "PNG")
    return out.getvalue()


def run(engine: Engine, tmp: Path, name: str, text: str) -> ImportResult:
    pics = tmp / "pics"
    pics.mkdir(exist_ok=True)
    (pics / "a.png").write_bytes(_picture())
    src = tmp / name
    src.write_text(text, encoding="utf-8")
    return import_file(engine, src, tmp / "cat", image_dir=pics)


def product(engine: Engine, sku: str = "TEA-1") -> dict[str, Any]:
    return service.get_product(engine, sku).model_dump(exclude={"version"})


def versions(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(CatalogueVersion.version)).all())


def gtin_rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(
            (g, s) for g, s in conn.execute(
                select(product_gtins.c.gtin, products.c.sku).join(products, products.c.id == product_gtins.c.product_id)
            )
        )


def jsonl(*objects: dict[str, Any]) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


FULL_JSON = {
    "sku": "TEA-1", "gtins": ["06901234567892"], "name_en": "Longjing tea", "name_zh": "龙井茶", "desc_en": "Spring harvest",
    "desc_zh": None, "brand": "West Lake", "category": "Food>Tea", "list_price": 168, "prices": {"south": "160", "east": "158.0"},
    "attributes": {"colour": "green", "size": "250 g"}, "images": ["a.png"], "status": "active", "serialised": False,
}

# (case, file name, file content, changes to the stored product (None: nothing changes), report rows)
CASES: list[tuple[str, str, str, dict[str, Any] | None, list[tuple[int, str, str, str]]]] = [
    ("csv: a discontinue row keeps brand, category, prices, images", "d.csv", "sku,status\nTEA-1,discontinued\n",
     {"status": "discontinued"}, []),
    ("csv: empty cells clear optional fields", "c.csv", "sku,brand,desc_en,category\nTEA-1,,,\n",
     {"brand": None, "desc_en": None, "category": None}, []),
    ("csv: a price column updates its region and keeps the others", "p.csv", "sku,price_east\nTEA-1,150\n",
     {"prices": {"east": "150.00", "south": "160.00"}}, []),
    ("csv: an empty price cell removes that region only", "p.csv", "sku,price_south\nTEA-1,\n",
     {"prices": {"east": "158.00"}}, []),
    ("csv: an attribute column updates that attribute only", "a.csv", "sku,attr_size,attr_origin\nTEA-1,500 g,Hangzhou\n",
     {"attributes": {"size": "500 g", "colour": "green", "origin": "Hangzhou"}}, []),
    ("csv: an empty attribute cell removes it", "a.csv", "sku,attr_colour\nTEA-1,\n", {"attributes": {"size": "250 g"}}, []),
    ("csv: an empty gtin cell clears the GTINs", "g.csv", "sku,gtin\nTEA-1,\n", {"gtins": []}, []),
    ("csv: an empty images cell clears the images", "i.csv", "sku,images\nTEA-1,\n", {"images": []}, []),
    ("csv: a present gtin replaces the list", "g.csv", "sku,gtin\nTEA-1,12345670|6901234567892\n",
     {"gtins": ["00000012345670", "06901234567892"]}, []),
    ("csv: the values already stored change nothing", "s.csv", "sku,brand,price_east,attr_size\nTEA-1,West Lake,158,250 g\n",
     None, []),
    ("csv: cleared status and serialised are their defaults", "s.csv", "sku,status,serialised\nTEA-1,,\n", None, []),
    ("csv: columns in another order change nothing", "o.csv",
     "images,serialised,status,attr_colour,attr_size,price_south,price_east,list_price,category,brand,desc_en,name_zh,name_en,gtin,sku\n"
     "a.png,no,active,green,250 g,160.00,158.00,168.00,Food > Tea,West Lake,Spring harvest,龙井茶,Longjing tea,6901234567892,TEA-1\n",
     None, []),
    ("csv: clearing name_en is refused", "n.csv", "sku,name_en,brand\nTEA-1, ,Other\n", None,
     [(1, "name_en", "name_en of TEA-1 cannot be cleared: expected a value, found an empty one "
                     "(leave the column out to keep 'Longjing tea')", " ")]),
    ("csv: clearing list_price is refused", "l.csv", "sku,list_price\nTEA-1,\n", None,
     [(1, "list_price", "list_price of TEA-1 cannot be cleared: expected a value, found an empty one "
                        "(leave the column out to keep '168.00')", "")]),
    ("csv: a new SKU without list_price is refused", "new.csv", "sku,name_en,name_zh\nNEW-1,New,新\n", None,
     [(1, "list_price", "list_price is required for a new SKU (NEW-1 is not in the catalogue yet): "
                        "expected a value, found no list_price column", "")]),
    ("csv: a new SKU with an empty list_price is refused", "new.csv", "sku,name_en,name_zh,list_price\nNEW-1,New,新,\n", None,
     [(1, "list_price", "list_price is required for a new SKU (NEW-1 is not in the catalogue yet): "
                        "expected a value, found an empty value", "")]),
    ("json: a discontinue object keeps the rest", "d.jsonl", jsonl({"sku": "TEA-1", "status": "discontinued"}),
     {"status": "discontinued"}, []),
    ("json: null and empty string clear", "c.jsonl", jsonl({"sku": "TEA-1", "brand": None, "category": "", "desc_en": None}),
     {"brand": None, "category": None, "desc_en": None}, []),
    ("json: prices merge key by key, null removes one", "p.jsonl",
     jsonl({"sku": "TEA-1", "prices": {"south": None, "east": "150"}}), {"prices": {"east": "150.00"}}, []),
    ("json: prices null removes them all", "p.jsonl", jsonl({"sku": "TEA-1", "prices": None}), {"prices": {}}, []),
    ("json: an empty attributes object mentions no key", "a.jsonl", jsonl({"sku": "TEA-1", "attributes": {}}), None, []),
    ("json: attributes \"\" removes them all", "a.jsonl", jsonl({"sku": "TEA-1", "attributes": ""}), {"attributes": {}}, []),
    ("json: empty lists and strings clear", "l.jsonl", jsonl({"sku": "TEA-1", "gtins": [], "images": "", "desc_en": ""}),
     {"gtins": [], "images": [], "desc_en": None}, []),
    ("json: a whole object equal to the CSV row changes nothing", "f.json", json.dumps([FULL_JSON], ensure_ascii=False),
     None, []),
    ("json: two objects of one SKU apply in order", "two.jsonl",
     jsonl({"sku": "TEA-1", "brand": "B2"}, {"sku": "TEA-1", "status": "discontinued"}),
     {"brand": "B2", "status": "discontinued"}, []),
    ("json: clearing name_zh is refused", "n.jsonl", jsonl({"sku": "TEA-1", "name_zh": None}), None,
     [(1, "name_zh", "name_zh of TEA-1 cannot be cleared: expected a value, found an empty one "
                     "(leave the key out to keep '龙井茶')", "")]),
    ("json: a new SKU without list_price is refused", "new.jsonl", jsonl({"sku": "NEW-2", "name_en": "x", "name_zh": "乙"}), None,
     [(1, "list_price", "list_price is required for a new SKU (NEW-2 is not in the catalogue yet): "
                        "expected a value, found no list_price key", "")]),
]


@pytest.mark.parametrize(("name", "text", "changes", "errors"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_partial_rows_merge_into_the_stored_product(
    cat_engine: Engine, tmp_path: Path, name: str, text: str, changes: dict[str, Any] | None,
    errors: list[tuple[int, str, str, str]],
) -> None:
    assert run(cat_engine, tmp_path, "base.csv", BASE_CSV).version == 1
    before = product(cat_engine)
    assert before["prices"] == {"east": 158, "south": 160} and len(before["images"]) == 1  # the base is what the cases assume

    result = run(cat_engine, tmp_path, name, text)
    assert [(e.row, e.field, e.problem, e.value) for e in report_rows(result.report_path)] == errors
    assert (result.rows_changed, result.version) == ((1, 2) if changes is not None else (0, None))
    after = product(cat_engine)
    expected = before | (changes or {})
    assert json.loads(json.dumps(after, default=str)) == json.loads(json.dumps(expected, default=str))
    assert not any(p.sku.startswith("NEW") for p in service.list_products(cat_engine, service.ProductQuery()).items)
    assert gtin_rows(cat_engine) == sorted((g, "TEA-1") for g in after["gtins"])

    # The same file again: nothing changes, no version.
    again = run(cat_engine, tmp_path, name, text)
    assert (again.rows_changed, again.version) == (0, None)
    assert versions(cat_engine) == (2 if changes is not None else 1)
    assert product(cat_engine) == after


def test_new_sku_gets_defaults_for_what_it_leaves_out(cat_engine: Engine, tmp_path: Path) -> None:
    result = run(cat_engine, tmp_path, "new.csv", "sku,name_en,name_zh,list_price\nNEW-1,New,新,1.5\n")
    assert (result.rows_ok, result.rows_changed, result.version) == (1, 1, 1)
    assert product(cat_engine, "NEW-1") == {
        "sku": "NEW-1", "gtins": [], "name_en": "New", "name_zh": "新", "desc_en": None, "desc_zh": None, "brand": None,
        "category": None, "attributes": {}, "list_price": 1.5, "prices": {}, "images": [], "serialised": False,
        "status": "active",
    }


def test_a_row_refused_for_a_new_sku_does_not_stop_a_later_complete_row_of_it(cat_engine: Engine, tmp_path: Path) -> None:
    text = jsonl({"sku": "NEW-3", "brand": "B"}, {"sku": "NEW-3", "name_en": "n", "name_zh": "新", "list_price": "2"},
                 {"sku": "NEW-3", "status": "discontinued"})
    result = run(cat_engine, tmp_path, "seq.jsonl", text)
    assert (result.rows_ok, result.rows_failed, result.rows_changed) == (2, 1, 1)
    assert [(e.row, e.field) for e in report_rows(result.report_path)] == [(1, "name_en"), (1, "name_zh"), (1, "list_price")]
    stored = product(cat_engine, "NEW-3")
    assert (stored["brand"], stored["status"], stored["list_price"]) == (None, "discontinued", 2)


def test_partial_rows_across_batches_and_a_stale_hash(cat_engine: Engine, tmp_path: Path) -> None:
    """Many partial rows (several batches) merge into stored rows; rows hashed by an older importer
    are recognised as unchanged by content, then re-hashed so the next import is quick."""
    rows = "".join(f"S{i},Name {i},名{i},{i}.00,{i}.50,Brand{i}\n" for i in range(1, 4501))
    assert run(cat_engine, tmp_path, "full.csv", "sku,name_en,name_zh,list_price,price_east,brand\n" + rows).version == 1
    with cat_engine.begin() as conn:
        conn.execute(update(products).values(row_hash="from an older importer"))
    unchanged = run(cat_engine, tmp_path, "full.csv", "sku,name_en,name_zh,list_price,price_east,brand\n" + rows)
    assert (unchanged.rows_ok, unchanged.rows_changed, unchanged.version) == (4500, 0, None)
    with cat_engine.connect() as conn:
        assert "from an older importer" not in set(conn.scalars(select(products.c.row_hash)))

    partial = run(cat_engine, tmp_path, "price.csv", "sku,price_east\n" + "".join(f"S{i},{i}.75\n" for i in range(1, 4501, 2)))
    assert (partial.rows_ok, partial.rows_changed, partial.version) == (2250, 2250, 2)
    p1, p2 = product(cat_engine, "S4499"), product(cat_engine, "S4500")
    assert (p1["prices"], p1["brand"], p1["list_price"]) == ({"east": 4499.75}, "Brand4499", 4499)
    assert (p2["prices"], p2["brand"]) == ({"east": 4500.5}, "Brand4500")


def test_partial_row_on_a_seeded_product_keeps_its_gtin(cat_engine: Engine, tmp_path: Path) -> None:
    """The seed writes products directly (no row hash); older seeds left no GTIN list either."""
    seed(cat_engine)
    with cat_engine.begin() as conn:
        conn.execute(update(products).where(products.c.sku == "TEA-LJ-250").values(gtins=None))
    before = product(cat_engine, "TEA-LJ-250")
    assert before["gtins"] == ["06901234567892"]
    result = run(cat_engine, tmp_path, "d.csv", "sku,status\nTEA-LJ-250,discontinued\n")
    assert (result.rows_changed, result.rows_failed) == (1, 0)
    assert product(cat_engine, "TEA-LJ-250") == before | {"status": "discontinued"}
    assert ("06901234567892", "TEA-LJ-250") in gtin_rows(cat_engine)


def test_short_and_long_rows_are_refused_whole(cat_engine: Engine, tmp_path: Path) -> None:
    """A missing cell would read as 'keep' and an extra one has no column: the row is refused."""
    run(cat_engine, tmp_path, "base.csv", BASE_CSV)
    result = run(cat_engine, tmp_path, "bad.csv", "sku,brand,status\nTEA-1,Other\nTEA-1,Other,active,x\n")
    assert [(e.row, e.field, e.problem, e.value) for e in report_rows(result.report_path)] == [
        (1, "-", "the row has 2 cells, the header has 3 columns", "TEA-1,Other"),
        (2, "-", "the row has 4 cells, the header has 3 columns", "TEA-1,Other,active,x"),
    ]
    assert product(cat_engine)["brand"] == "West Lake"
