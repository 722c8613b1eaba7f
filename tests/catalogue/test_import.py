"""Bulk import: per-row errors, nothing half-written, idempotent re-import, images, CLI."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, func, select

from cloud.catalogue.files import FileStore
from cloud.catalogue.importer import ImportError_, import_file, report_rows
from cloud.catalogue.models import CatalogueImport, CatalogueVersion, ImageFile, product_gtins, products
from omnishelf.cli import main
from tests.catalogue.gen import HEADER, gtin_for, product_row, write_csv


def count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [20_000, pytest.param(100_000, marks=pytest.mark.slow)], ids=["20k", "100k"])
def test_rows_with_1_percent_broken(cat_engine: Engine, tmp_path: Path, n: int) -> None:
    """`make test` imports 20,000 rows (a minute of the suite's budget for 100,000 taught nothing
    more: the import works in batches of a few thousand); `pytest -m slow` runs the 100,000."""
    src = tmp_path / "products.csv"
    broken = write_csv(src, n, broken_every=100)
    started = time.perf_counter()
    first = import_file(cat_engine, src, tmp_path / "cat")
    elapsed = time.perf_counter() - started
    assert (first.rows_ok, first.rows_failed, first.rows_changed) == (n - len(broken), len(broken), n - len(broken))
    assert first.version == 1
    # Every broken row is reported with its row number and the field at fault.
    reported = {(e.row, e.field) for e in report_rows(first.report_path)}
    assert reported == set(broken.items())
    # Nothing half-written: no broken SKU is stored, and every stored product has its GTIN.
    with cat_engine.connect() as conn:
        stored = set(conn.scalars(select(products.c.sku)))
        assert not {f"SKU-{r:07d}" for r in broken} & stored
        assert len(stored) == n - len(broken)
        assert conn.scalar(select(func.count()).select_from(product_gtins)) == n - len(broken)
        east = conn.scalar(select(products.c.region_prices).where(products.c.sku == "SKU-0000001"))
        assert east == {"east": "1.25"}
    # Same file again: nothing changes, no new version.
    second = import_file(cat_engine, src, tmp_path / "cat")
    assert (second.rows_ok, second.rows_failed, second.rows_changed, second.version) == (n - len(broken), len(broken), 0, None)
    assert count(cat_engine, CatalogueVersion) == 1
    with cat_engine.connect() as conn:
        assert set(conn.scalars(select(products.c.version).distinct())) == {1}
        history = conn.execute(select(CatalogueImport.status, CatalogueImport.version).order_by(CatalogueImport.id)).all()
    assert [tuple(h) for h in history] == [("done", 1), ("done", None)]
    print(f"imported {n} rows in {elapsed:.1f} s ({n / elapsed:.0f} rows/s)")


def test_changed_rows_get_a_new_version_and_discontinued_ones_stay_for_tombstones(cat_engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    write_csv(src, 10)
    import_file(cat_engine, src, tmp_path / "cat")
    rows = [product_row(i) for i in range(1, 11)]
    rows[2][6] = "99.00"
    rows[4][10] = "discontinued"
    with src.open("w", encoding="utf-8") as f:
        f.write(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    again = import_file(cat_engine, src, tmp_path / "cat")
    assert (again.rows_changed, again.version) == (2, 2)
    with cat_engine.connect() as conn:
        changed = {sku: status for sku, status in conn.execute(select(products.c.sku, products.c.status).where(products.c.version == 2))}
    assert changed == {"SKU-0000003": "active", "SKU-0000005": "discontinued"}


def test_gtin_owned_by_another_sku_is_refused(cat_engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    a = {"sku": "A", "gtins": [gtin_for(1)], "name_en": "A", "name_zh": "甲", "list_price": "1"}
    src.write_text(json.dumps(a) + "\n")
    import_file(cat_engine, src, tmp_path / "cat")
    b = {"sku": "B", "gtins": [gtin_for(1)], "name_en": "B", "name_zh": "乙", "list_price": 2}
    c = {"sku": "C", "gtins": [gtin_for(2)], "name_en": "C", "name_zh": "丙", "list_price": 3.5}
    d = {"sku": "D", "gtins": [gtin_for(2)], "name_en": "D", "name_zh": "丁", "list_price": 3}
    src.write_text("\n".join(json.dumps(x) for x in (b, c, d)) + "\n[1]\n")
    result = import_file(cat_engine, src, tmp_path / "cat")
    errors = report_rows(result.report_path)
    errors.sort(key=lambda e: e.row)  # refusals found when a batch is written come after the others
    assert [(e.row, e.field) for e in errors] == [(1, "gtin"), (3, "gtin"), (4, "-")]
    assert "belongs to SKU A in the catalogue" in errors[0].problem
    assert "belongs to SKU C in this file" in errors[1].problem
    with cat_engine.connect() as conn:
        assert sorted(conn.scalars(select(products.c.sku))) == ["A", "C"]


def test_json_array_is_streamed_and_errors_named(cat_engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "erp.json"
    items = [
        {"sku": f"J{i}", "gtins": [gtin_for(i)], "name_en": f"Item {i}", "name_zh": f"商品{i}", "list_price": "5.5",
         "prices": {"south": "5.00"}, "attributes": {"size": "M"}, "desc_zh": "描述" * 50}
        for i in range(3000)  # several 64 KiB read chunks
    ]
    items[10]["prices"] = {"north": "1.00"}
    items[20]["list_price"] = "1.234"
    src.write_text(json.dumps(items, ensure_ascii=False))
    result = import_file(cat_engine, src, tmp_path / "cat")
    assert (result.rows_ok, result.rows_failed) == (2998, 2)
    errors = report_rows(result.report_path)
    assert [(e.row, e.field) for e in errors] == [(11, "price_north"), (21, "list_price")]
    assert "unknown region 'north' (known: east, south)" in errors[0].problem
    assert "more than 2 decimals" in errors[1].problem


def test_truncated_json_array_is_reported_and_prior_rows_kept(cat_engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "cut.json"
    src.write_text('[{"sku":"X1","name_en":"a","name_zh":"b","list_price":"1"}, {"sku":"X2","name_en":')
    with pytest.raises(ImportError_, match="object 2 is malformed"):
        import_file(cat_engine, src, tmp_path / "cat")
    with cat_engine.connect() as conn:
        assert conn.scalar(select(CatalogueImport.status)) == "failed"


def png(size: tuple[int, int], colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def test_images_from_a_folder_are_checked_stored_by_hash_with_one_thumbnail(cat_engine: Engine, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "a.png").write_bytes(png((400, 300)))
    (pics / "same-as-a.png").write_bytes(png((400, 300)))
    (pics / "tiny.png").write_bytes(png((8, 8)))
    (pics / "notes.png").write_text("not an image")
    src = tmp_path / "p.csv"
    rows = [product_row(1, images="a.png|same-as-a.png"), product_row(2, images="tiny.png"),
            product_row(3, images="notes.png"), product_row(4, images="missing.png"), product_row(5, images="../p.csv")]
    src.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    result = import_file(cat_engine, src, tmp_path / "cat", image_dir=pics)
    assert (result.rows_ok, result.rows_failed) == (1, 4)
    problems = {e.row: e.problem for e in report_rows(result.report_path)}
    assert "8x8 px" in problems[2] and "not an image: expected JPEG, PNG or WebP, found 12 bytes" in problems[3]
    assert "not found" in problems[4] and "outside the image folder" in problems[5]
    with cat_engine.connect() as conn:
        images: list[dict[str, str]] = conn.scalar(select(products.c.images).where(products.c.sku == "SKU-0000001")) or []
        files = conn.execute(select(ImageFile)).all()
    assert len(images) == 2 and images[0] == images[1]  # same bytes, one stored file
    assert len(files) == 1 and (files[0].width, files[0].height, files[0].mime) == (400, 300, "image/png")
    store = FileStore(tmp_path / "cat")
    with Image.open(store.path(images[0]["thumb"])) as thumb:
        assert max(thumb.size) == 256
    assert store.path(images[0]["sha256"]).read_bytes() == png((400, 300))


def test_cli_import_reports_and_exits(cat_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", cat_engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("OMNISHELF_CATALOGUE_DIR", str(tmp_path / "cat"))
    src = tmp_path / "p.csv"
    write_csv(src, 300, broken_every=100)
    assert main(["catalogue", "import", str(src)]) == 0
    out = capsys.readouterr()
    assert "297 rows ok (297 changed), 3 rows failed; new catalogue version 1" in out.out
    assert "error report:" in out.out and "rows" in out.err  # the progress bar
    assert main(["catalogue", "version"]) == 0
    assert "catalogue version 1" in capsys.readouterr().out
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    assert main(["catalogue", "import", str(tmp_path / "x.xlsx")]) == 2
    assert "unknown file type '.xlsx'" in capsys.readouterr().err
    assert main(["catalogue", "import", str(tmp_path / "nope.csv")]) == 2
    (tmp_path / "bad.csv").write_text("name_en,name_zh\nA,b\n")
    assert main(["catalogue", "import", str(tmp_path / "bad.csv"), "--no-progress"]) == 2
    assert "lacks column sku (found: name_en, name_zh)" in capsys.readouterr().err


def test_sync_files_of_old_versions_are_pruned(cat_engine: Engine, tmp_path: Path) -> None:
    from cloud.catalogue.sync import ensure_artifacts

    src = tmp_path / "a.csv"
    files = FileStore(tmp_path / "cat")
    anns = []
    for v in range(1, 4):
        rows = [product_row(i, price=f"{v}.00") for i in range(1, 6)]
        src.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
        assert import_file(cat_engine, src, tmp_path / "cat").version == v
        ann = ensure_artifacts(cat_engine, tmp_path / "cat", keep=16)
        assert ann is not None and ann.version == v and [d.from_version for d in ann.deltas] == list(range(v - 1, 0, -1))
        anns.append(ann)
    assert not files.path(anns[0].snapshot.sha256).exists()  # version 1: two versions old
    assert files.path(anns[1].snapshot.sha256).exists()  # version 2: a box may still be fetching it
    assert all(files.path(f.sha256).exists() for f in (anns[2].snapshot, *anns[2].deltas))


def test_a_stored_file_is_on_disk_before_its_name_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database row naming a file commits after `put`: after a power cut the name must not
    point at bytes the disk never got (boxes would refuse the file by its hash)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = FileStore(tmp_path)
    sha = store.put(b"bytes of an image")
    assert events == ["fsync", "replace"]
    assert store.path(sha).read_bytes() == b"bytes of an image"
    store.put(b"bytes of an image")  # already there: nothing written again
    assert events == ["fsync", "replace"]
