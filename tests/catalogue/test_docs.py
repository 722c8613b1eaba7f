"""docs/catalogue.md's examples are true: its CSV, JSON and JSON Lines files import (over the demo
seed, whose GTINs they must not collide with) and do what the text says; its report line is what
the importer writes."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path

from PIL import Image
from sqlalchemy import Engine

from cloud.catalogue import service
from cloud.catalogue.importer import import_file
from cloud.seed import seed

DOC = Path(__file__).resolve().parents[2] / "docs" / "catalogue.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_examples_import_and_do_what_the_text_says(cat_engine: Engine, tmp_path: Path) -> None:
    seed(cat_engine)
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("lj-front.jpg", "lj-back.jpg"):
        out = io.BytesIO()
        Image.new("RGB", (300, 300), "green").save(out, "JPEG")
        (pics / name).write_bytes(out.getvalue())
    (csv_text,), (json_text,), (jsonl_text,) = blocks("csv"), blocks("json"), blocks("jsonl")
    results = []
    for name, text in (("example.csv", csv_text), ("example.json", json_text), ("example.jsonl", jsonl_text)):
        (tmp_path / name).write_text(text, encoding="utf-8")
        results.append(import_file(cat_engine, tmp_path / name, tmp_path / "cat", image_dir=pics))
    assert [(r.rows_ok, r.rows_failed, r.rows_changed) for r in results] == [(2, 0, 2), (2, 0, 0), (2, 0, 2)]

    tea = service.get_product(cat_engine, "TEA-LJ-250")  # the seed's, updated by the examples
    assert (tea.status, tea.brand, tea.category, tea.prices, len(tea.images)) == ("discontinued", "West Lake", "Food > Tea",
                                                                                  {"east": Decimal("158.00")}, 2)
    watch = service.get_product(cat_engine, "WATCH-01")
    assert (watch.brand, watch.prices, watch.gtins) == (None, {"east": Decimal("849.00")}, ["06970000000017", "00000012345670"])


def test_the_report_example_is_what_the_importer_writes(cat_engine: Engine, tmp_path: Path) -> None:
    (line,) = re.findall(r"`(100,gtin,[^`]+)`", DOC.read_text(encoding="utf-8"))
    ((_, _, _, value),) = csv.reader([line])
    rows = "".join(f"S{i},n,名,1,{'' if i < 100 else value}\n" for i in range(1, 101))
    (tmp_path / "p.csv").write_text("sku,name_en,name_zh,list_price,gtin\n" + rows, encoding="utf-8")
    result = import_file(cat_engine, tmp_path / "p.csv", tmp_path / "cat")
    assert result.report_path.read_text(encoding="utf-8").splitlines()[1:] == [line]
