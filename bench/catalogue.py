"""Catalogue benchmark: import rate, sync file sizes and apply times on the box, box search latency.

Prints one JSON document. Each figure comes with a baseline measured in the same run:
- import: a bare executemany INSERT of the same rows into a plain table of the same database;
- box apply: a bare executemany INSERT of the same products into a plain SQLite table;
- search: a bare indexed lookup by SKU on the box's own database.

    python -m bench.catalogue [--rows 100000] [--box-rows 50000] [--db URL]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Numeric, String, Table, insert
from sqlalchemy.orm import Session

from cloud.catalogue.files import FileStore
from cloud.catalogue.importer import import_file
from cloud.catalogue.sync import ensure_artifacts
from cloud.db import make_engine, migrate
from cloud.models import Region
from edge.catalogue.store import CatalogueStore
from tests.catalogue.gen import HEADER, gtin_for, product_row, write_csv

TARGETS = {"import_rows_per_s": 5000, "delta_1pct_apply_s": 2.0, "search_p99_ms": 20.0}


def _engine(url: str | None, tmp: Path) -> Any:
    engine = make_engine(url or f"sqlite:///{tmp / 'cloud.db'}")
    migrate(engine)
    with Session(engine) as s, s.begin():
        if s.query(Region).filter_by(code="east").first() is None:
            s.add(Region(code="east", name="East China"))
    return engine


def bench_import(url: str | None, rows: int, tmp: Path) -> dict[str, Any]:
    engine = _engine(url, tmp / "imp")
    src = tmp / "import.csv"
    write_csv(src, rows)
    t = time.perf_counter()
    result = import_file(engine, src, tmp / "imp-cat")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    again = import_file(engine, src, tmp / "imp-cat")
    reimport = time.perf_counter() - t
    # A partial file (one region's price for every product): the rows of existing SKUs that change
    # something read their stored product to merge into (the re-import above needs no read).
    partial = tmp / "partial.csv"
    with partial.open("w", encoding="utf-8") as f:
        f.write("sku,price_east\n")
        f.writelines(f"SKU-{i:07d},{(i % 997) + 0.75:.2f}\n" for i in range(1, rows + 1))
    t = time.perf_counter()
    merged = import_file(engine, partial, tmp / "imp-cat")
    partial_s = time.perf_counter() - t
    # Baseline: the same rows, already parsed, into a bare table (no validation, no upsert, no GTINs).
    bare = Table("bench_bare_products", MetaData(), Column("sku", String(64), primary_key=True),
                 Column("gtin", String(14)), Column("name_en", String(200)), Column("name_zh", String(200)),
                 Column("brand", String(200)), Column("category", String(500)), Column("list_price", Numeric(12, 2)))
    bare.drop(engine, checkfirst=True)
    bare.create(engine)
    with src.open(encoding="utf-8") as f:
        parsed = [{"sku": r["sku"], "gtin": r["gtin"], "name_en": r["name_en"], "name_zh": r["name_zh"],
                   "brand": r["brand"], "category": r["category"], "list_price": r["list_price"]} for r in csv.DictReader(f)]
    t = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, len(parsed), 2000):
            conn.execute(insert(bare), parsed[i : i + 2000])
    baseline = time.perf_counter() - t
    bare.drop(engine)
    engine.dispose()
    return {
        "database": engine.dialect.name,
        "rows": rows,
        "rows_ok": result.rows_ok,
        "seconds": round(ours, 2),
        "rows_per_s": round(rows / ours),
        "reimport_unchanged_s": round(reimport, 2),
        "reimport_changed": again.rows_changed,
        "partial_price_update_s": round(partial_s, 2),
        "partial_price_update_rows_per_s": round(rows / partial_s),
        "partial_price_update_changed": merged.rows_changed,
        "baseline_bare_executemany_rows_per_s": round(rows / baseline),
        "target_rows_per_s": TARGETS["import_rows_per_s"],
    }


def _text_lines(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8")


def bench_box(rows: int, tmp: Path) -> dict[str, Any]:
    engine = _engine(None, tmp / "box-cloud")
    src = tmp / "box.csv"
    write_csv(src, rows)
    cat = tmp / "box-cat"
    import_file(engine, src, cat)
    v1 = ensure_artifacts(engine, cat)
    # 1% of the products change (price), a new version.
    changed = set(random.Random(1).sample(range(1, rows + 1), rows // 100))
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(1, rows + 1):
            w.writerow(product_row(i, price="1234.50" if i in changed else None))
    import_file(engine, src, cat)
    v2 = ensure_artifacts(engine, cat)
    assert v1 is not None and v2 is not None
    files = FileStore(cat)
    snap = files.path(v1.snapshot.sha256).read_bytes()
    delta = files.path(v2.deltas[0].sha256).read_bytes()

    store = CatalogueStore(tmp / "box")
    t = time.perf_counter()
    store.apply(_text_lines(snap), expect_from=0, expect_to=1, region="east")
    snap_s = time.perf_counter() - t
    t = time.perf_counter()
    store.apply(_text_lines(delta), expect_from=1, expect_to=2, region="east")
    delta_s = time.perf_counter() - t
    assert store.version == 2 and store.count() == rows

    # Baseline: the same snapshot's products into a bare table with one index.
    bare = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("CREATE TABLE p (sku TEXT PRIMARY KEY, name_en TEXT, name_zh TEXT, data TEXT)")
    items = [json.loads(line)["p"] for line in gzip.decompress(snap).decode().splitlines()[1:]]
    t = time.perf_counter()
    bare.execute("BEGIN")
    bare.executemany("INSERT INTO p VALUES (?, ?, ?, ?)", [(p["sku"], p["name_en"], p["name_zh"], json.dumps(p)) for p in items])
    bare.execute("COMMIT")
    bare_s = time.perf_counter() - t

    # Search: a mix of what a kiosk types.
    rnd = random.Random(2)
    queries: list[str] = []
    for _ in range(400):
        i = rnd.randint(1, rows)
        queries += [f"SKU-{i:07d}", gtin_for(i), "茶", "红茶", f"绿茶{i}", "mineral", "sauce no. 1", "Brand4", "饼干1"]
    for q in queries[:200]:  # warm the page cache, as a running box has
        store.search(q)
    lat = []
    for q in queries:
        t = time.perf_counter()
        store.search(q)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    base = []
    conn = store._conn()
    for q in queries:
        t = time.perf_counter()
        conn.execute("SELECT * FROM products WHERE sku = ?", (q,)).fetchall()
        base.append((time.perf_counter() - t) * 1000)
    base.sort()

    def pct(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(len(xs) * p))], 3)

    engine.dispose()
    return {
        "products": rows,
        "snapshot_bytes": len(snap),
        "snapshot_apply_s": round(snap_s, 2),
        "baseline_bare_insert_s": round(bare_s, 2),
        "delta_1pct_rows": len(changed),
        "delta_1pct_bytes": len(delta),
        "delta_1pct_apply_s": round(delta_s, 3),
        "target_delta_1pct_apply_s": TARGETS["delta_1pct_apply_s"],
        "box_db_bytes": store.path.stat().st_size,
        "search_queries": len(lat),
        "search_p50_ms": pct(lat, 0.5),
        "search_p99_ms": pct(lat, 0.99),
        "search_max_ms": round(lat[-1], 3),
        "baseline_indexed_lookup_p50_ms": pct(base, 0.5),
        "baseline_indexed_lookup_p99_ms": pct(base, 0.99),
        "target_search_p99_ms": TARGETS["search_p99_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows imported (default 100,000)")
    ap.add_argument("--box-rows", type=int, default=50_000, help="products on the box (default 50,000)")
    ap.add_argument("--db", help="cloud database URL for the import (default: a temporary SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"import": bench_import(args.db, args.rows, tmp), "box": bench_box(args.box_rows, tmp)}
    result["meets_targets"] = {
        "import": result["import"]["rows_per_s"] >= TARGETS["import_rows_per_s"],
        "delta_apply": result["box"]["delta_1pct_apply_s"] < TARGETS["delta_1pct_apply_s"],
        "search_p99": result["box"]["search_p99_ms"] < TARGETS["search_p99_ms"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
