"""The error report: (row, field, problem, value), the value being the user's input as text; a bad
image of any kind is a row error, never a stopped import. Both databases."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

import gs1
from cloud.catalogue.importer import import_file, report_rows
from cloud.catalogue.models import CatalogueImport

GOOD = "6901234567892"
OTHER = "690000000005" + gs1.check_digit("690000000005")
FULL_WIDTH = "".join(chr(0xFF10 + int(d)) for d in GOOD)  # GOOD in full-width digits


def _image(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt)
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((400, 300), 50).convert("RGB").save(out, "JPEG")
    return out.getvalue()


PICTURES = {
    "notes.png": b"not an image",
    "empty.png": b"",
    "cut.jpg": _jpeg()[:15000],
    "cut.png": _image((400, 300))[:300],
    "bomb.png": _image((20000, 20000), "1"),  # 400 Mpx in ~50 kB: PIL refuses to open it
    "anim.gif": _image((100, 100), "P", "GIF"),
}

CSV_HEAD = "sku,gtin,name_en,name_zh,list_price,price_east,images,notes\n"

# (case, file name, content, report rows; a problem starting with "re:" is a regular expression)
CASES: list[tuple[str, str, str, list[tuple[int, str, str, str]]]] = [
    ("a file that is no image", "i.csv", CSV_HEAD + "A,,a,甲,1,,notes.png,\n",
     [(1, "images", "image 'notes.png' is not an image: expected JPEG, PNG or WebP, found 12 bytes starting "
                    "6e 6f 74 20 61 6e 20 69", "notes.png")]),
    ("an empty image file", "i.csv", CSV_HEAD + "A,,a,甲,1,,empty.png,\n",
     [(1, "images", "image 'empty.png' is not an image: expected JPEG, PNG or WebP, found an empty file", "empty.png")]),
    ("a JPEG cut short", "i.csv", CSV_HEAD + "A,,a,甲,1,,cut.jpg,\n",
     [(1, "images", r"re:image 'cut\.jpg' cannot be decoded: image file is truncated .*", "cut.jpg")]),
    ("a PNG cut short", "i.csv", CSV_HEAD + "A,,a,甲,1,,cut.png,\n",
     [(1, "images", r"re:image 'cut\.png' is not a readable image \(.+\)", "cut.png")]),
    ("a decompression bomb", "i.csv", CSV_HEAD + "A,,a,甲,1,,bomb.png,\n",
     [(1, "images", "image 'bomb.png' has too many pixels: each side must be 32-8000 px", "bomb.png")]),
    ("a GIF", "i.csv", CSV_HEAD + "A,,a,甲,1,,anim.gif,\n",
     [(1, "images", "image 'anim.gif' is GIF: use JPEG, PNG or WebP", "anim.gif")]),
    ("a wrong check digit among several GTINs", "g.csv", CSV_HEAD + f"A,{GOOD}| 6901234567893 ,a,甲,1,,,\n",
     [(1, "gtin", "Invalid GTIN check digit for '6901234567893': Expected 2, got 3.", "6901234567893")]),
    ("letters in a GTIN", "g.csv", CSV_HEAD + "A,69012345678a2,a,甲,1,,,\n",
     [(1, "gtin", "GTIN '69012345678a2' must be 8, 12, 13 or 14 digits", "69012345678a2")]),
    ("full-width digits are no GTIN", "g.csv", CSV_HEAD + f"A,{FULL_WIDTH},a,甲,1,,,\n",
     [(1, "gtin", f"GTIN '{FULL_WIDTH}' must be 8, 12, 13 or 14 digits", FULL_WIDTH)]),
    ("a price that is no number", "p.csv", CSV_HEAD + "A,,a,甲,twelve,,,\n",
     [(1, "list_price", "'twelve' is not a price (expected e.g. 12.50)", "twelve")]),
    ("a region price as written", "p.csv", CSV_HEAD.replace("price_east", "price_north") + "A,,a,甲,1,7,,\n",
     [(1, "price_north", "unknown region 'north' (known: east, south)", "7")]),
    ("an unknown column with a value", "c.csv", CSV_HEAD + "A,,a,甲,1,,,remember me\n",
     [(1, "notes", "Extra inputs are not permitted", "remember me")]),
    ("a GTIN of another SKU, as written", "o.csv", CSV_HEAD + f"A,{OTHER},a,甲,1,,,\nB,{OTHER},b,乙,1,,,\n",
     [(2, "gtin", f"GTIN 0{OTHER} already belongs to SKU A in this file", OTHER)]),
    ("json: a GTIN given as a number", "n.jsonl", json.dumps({"sku": "A", "gtins": [6901234567892], "name_en": "a",
                                                               "name_zh": "甲", "list_price": 1}) + "\n",
     [(1, "gtins.0", "Input should be a valid string", "6901234567892")]),
    ("json: a list price given as true", "t.jsonl", json.dumps({"sku": "A", "name_en": "a", "name_zh": "甲",
                                                                 "list_price": True}) + "\n",
     [(1, "list_price", "True is not a price (expected e.g. 12.50)", "true")]),
    ("json: an array element that is no object", "a.json", '[{"sku": "A", "name_en": "a", "name_zh": "甲", '
                                                            '"list_price": 1}, true, "x", [1]]',
     [(2, "-", "expected a JSON object, found true", "true"), (3, "-", "expected a JSON object, found a string", "x"),
      (4, "-", "expected a JSON object, found an array", "[1]")]),
    ("json: a line that is no object", "l.jsonl", "null\n",
     [(1, "-", "expected a JSON object, found null", "null")]),
]


@pytest.mark.parametrize(("name", "text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_report_names_row_field_problem_and_the_users_value(
    cat_engine: Engine, tmp_path: Path, name: str, text: str, expected: list[tuple[int, str, str, str]],
) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for picture, data in PICTURES.items():
        (pics / picture).write_bytes(data)
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    result = import_file(cat_engine, src, tmp_path / "cat", image_dir=pics)
    assert "<_io." not in result.report_path.read_text(encoding="utf-8")
    got = [(e.row, e.field, e.problem, e.value) for e in report_rows(result.report_path)]
    assert len(got) == len(expected), got
    for (row, field, problem, value), want in zip(got, expected, strict=True):
        if want[2].startswith("re:"):
            assert re.fullmatch(want[2][3:], problem), problem
            problem = want[2]
        assert (row, field, problem, value) == want
    with cat_engine.connect() as conn:
        assert conn.scalar(select(CatalogueImport.status)) == "done"
    assert not list((tmp_path / "cat" / "files").glob("*/*")) or result.rows_ok  # a refused image leaves no file


def test_an_unexpected_error_marks_the_import_failed(cat_engine: Engine, tmp_path: Path) -> None:
    with cat_engine.begin() as conn:
        conn.execute(text("DROP TABLE product_gtins"))  # the database fails under the import
    src = tmp_path / "a.csv"
    src.write_text("sku,name_en,name_zh,list_price\nA,a,甲,1\n", encoding="utf-8")
    with pytest.raises(DBAPIError):
        import_file(cat_engine, src, tmp_path / "cat")
    with cat_engine.connect() as conn:
        status, detail = conn.execute(select(CatalogueImport.status, CatalogueImport.detail)).one()
    assert status == "failed"
    assert detail is not None and detail.startswith("stopped by an unexpected error: ") and "product_gtins" in detail
