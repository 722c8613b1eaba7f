"""Bulk import of product master data: streamed, validated per row, upserted in batches.

A row is validated completely (fields, GTIN check digits, GTINs not owned by another SKU, images
readable and acceptable) before anything of it is written; a batch of valid rows is then written
in one transaction (product and GTINs together), so a row is either stored whole or not at all and
one bad row never stops the others. Each problem goes to the CSV report as (row, field, problem,
value). Rows whose normalised content did not change are skipped, so re-importing a file creates
no new catalogue version.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, any_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloud.catalogue.files import FileStore, ImageError, ImageInfo, read_image_source
from cloud.catalogue.models import CatalogueImport, CatalogueVersion, ImageFile, product_gtins, products
from cloud.catalogue.schema import ProductRow, row_from_csv
from cloud.db import write_transaction
from cloud.models import Region

__all__ = ["BATCH_ROWS", "ImportError_", "ImportResult", "RowError", "import_file", "iter_records", "next_version", "stamp_unversioned"]

log = logging.getLogger(__name__)

BATCH_ROWS = 2000
_READ_CHUNK = 1 << 16


class ImportError_(ValueError):
    """The file as a whole cannot be imported (unreadable, unknown format, no header)."""


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str
    problem: str
    value: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    import_id: int
    rows_ok: int
    rows_failed: int
    rows_changed: int
    version: int | None
    report_path: Path


# -- reading ---------------------------------------------------------------------------------------


def _iter_csv(f: IO[str]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.DictReader(f)
    if not reader.fieldnames:
        raise ImportError_("the CSV file is empty: expected a header line (sku,gtin,name_en,name_zh,list_price,...)")
    missing = {"sku", "name_en", "name_zh", "list_price"} - {n.strip() for n in reader.fieldnames}
    if missing:
        raise ImportError_(f"the CSV header lacks column(s) {', '.join(sorted(missing))}")
    for n, record in enumerate(reader, start=1):
        try:
            yield n, row_from_csv(record)
        except ValueError as exc:
            yield n, RowError(n, "-", str(exc), "")


def _iter_json_lines(f: IO[str]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    n = 0
    for line in f:
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, RowError(n, "-", f"not JSON: {exc.msg} at column {exc.colno}", line.strip()[:200])
            continue
        yield n, obj if isinstance(obj, dict) else RowError(n, "-", "expected a JSON object", line.strip()[:200])


def _iter_json_array(f: IO[str]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Objects of a top-level JSON array, decoded one at a time (the file is never loaded whole)."""
    decoder = json.JSONDecoder()
    buf = f.read(_READ_CHUNK).lstrip()
    if not buf.startswith("["):
        raise ImportError_("a .json file must hold one array of product objects (or use .jsonl, one object a line)")
    pos, n, eof = 1, 0, False
    while True:
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or eof:
                break
            chunk = f.read(_READ_CHUNK)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
        if pos >= len(buf):
            raise ImportError_(f"the JSON array ends early after object {n} (missing ']')")
        if buf[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if not eof:
                chunk = f.read(_READ_CHUNK)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            raise ImportError_(f"JSON object {n + 1} is malformed: {exc.msg}; the rest of the file is unreadable") from None
        n += 1
        yield n, obj if isinstance(obj, dict) else RowError(n, "-", "expected a JSON object", str(obj)[:200])
        buf, pos = buf[end:], 0
        if len(buf) < _READ_CHUNK and not eof:
            chunk = f.read(_READ_CHUNK)
            eof = not chunk
            buf += chunk


def iter_records(path: Path) -> tuple[str, Iterator[tuple[int, dict[str, Any] | RowError]]]:
    """(format, records numbered from 1) of a CSV, JSON array or JSON Lines file."""
    suffix = path.suffix.lower()
    fmt = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
    if fmt is None:
        raise ImportError_(f"unknown file type {suffix!r}: expected .csv, .json, .jsonl or .ndjson")
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportError_(f"cannot open {path}: {exc.strerror}") from None

    def gen() -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        with f:
            reader = {"csv": _iter_csv, "json": _iter_json_array, "jsonl": _iter_json_lines}[fmt]
            try:
                yield from reader(f)
            except UnicodeDecodeError as exc:
                raise ImportError_(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    return fmt, gen()


# -- validating ------------------------------------------------------------------------------------


_CSV_FIELD = {"gtins": "gtin", "prices": "price_", "attributes": "attr_"}


def _pydantic_errors(n: int, exc: ValidationError, csv_names: bool) -> list[RowError]:
    out = []
    for err in exc.errors(include_url=False):
        parts = [str(x) for x in err["loc"]]
        if csv_names and parts and parts[0] in _CSV_FIELD:
            # Name the column the user sees in the file: gtin, price_east, attr_size.
            head = _CSV_FIELD[parts[0]]
            parts = [head + parts[1]] if head.endswith("_") and len(parts) > 1 else [head.rstrip("_")]
        loc = ".".join(parts) or "-"
        value = err.get("input")
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        out.append(RowError(n, loc, str(err["msg"]).removeprefix("Value error, "), text[:200]))
    return out


@dataclass(slots=True)
class _Valid:
    n: int
    row: ProductRow
    images: list[dict[str, str]]
    infos: list[ImageInfo]
    row_hash: str


class _Importer:
    def __init__(self, engine: Engine, store: FileStore, image_dir: Path | None, csv_names: bool) -> None:
        self.engine = engine
        self.csv_names = csv_names
        self.store = store
        self.image_dir = image_dir
        self.image_cache: dict[str, ImageInfo | ImageError] = {}
        self.gtin_owner: dict[str, str] = {}
        """GTIN → SKU of the rows accepted so far in this file (a GTIN may not move within a file)."""
        with engine.connect() as conn:
            self.regions = set(conn.scalars(select(Region.code)))
        self.insert: Callable[..., Any] = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )

    def among(self, column: Any, values: list[Any]) -> Any:
        """`column IN values`; on PostgreSQL one array parameter (`= ANY`), because psycopg parses
        a statement with thousands of placeholders anew on every execution."""
        if self.engine.dialect.name == "postgresql":
            return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
        return column.in_(values)

    def image(self, ref: str) -> ImageInfo:
        cached = self.image_cache.get(ref)
        if cached is None:
            try:
                cached = self.store.put_image(read_image_source(ref, self.image_dir), f"image {ref!r}")
            except ImageError as exc:
                cached = exc
            self.image_cache[ref] = cached
        if isinstance(cached, ImageError):
            raise cached
        return cached

    def validate(self, n: int, record: dict[str, Any]) -> _Valid | list[RowError]:
        try:
            row = ProductRow.model_validate(record)
        except ValidationError as exc:
            return _pydantic_errors(n, exc, self.csv_names)
        errors: list[RowError] = []
        for region in row.prices:
            if region not in self.regions:
                known = ", ".join(sorted(self.regions)) or "none defined yet"
                errors.append(RowError(n, f"price_{region}", f"unknown region {region!r} (known: {known})", str(row.prices[region])))
        for gtin in row.gtins:
            owner = self.gtin_owner.get(gtin)
            if owner is not None and owner != row.sku:
                errors.append(RowError(n, "gtin", f"GTIN {gtin} already belongs to SKU {owner} in this file", gtin))
        images: list[dict[str, str]] = []
        infos: list[ImageInfo] = []
        for ref in row.images:
            try:
                info = self.image(ref)
            except ImageError as exc:
                errors.append(RowError(n, "images", str(exc), ref))
                continue
            infos.append(info)
            images.append({"sha256": info.sha256, "thumb": info.thumb_sha256})
        if errors:
            return errors
        # pydantic serialises fields in declaration order, so equal rows give equal bytes.
        digest = hashlib.sha256(row.model_dump_json(exclude={"images"}).encode())
        digest.update("|".join(i["sha256"] for i in images).encode())
        row_hash = digest.hexdigest()
        return _Valid(n, row, images, infos, row_hash)

    def write_batch(self, batch: list[_Valid], version: int) -> tuple[int, list[RowError]]:
        """Store the changed rows of `batch`; (rows changed, rows refused by a database-side check)."""
        # Later rows of the same SKU in one batch win, as they would across batches.
        by_sku: dict[str, _Valid] = {}
        for v in batch:
            by_sku[v.row.sku] = v
        errors: list[RowError] = []
        now = datetime.now(UTC)
        with write_transaction(self.engine) as conn:
            existing = {
                sku: (pid, h)
                for sku, pid, h in conn.execute(
                    select(products.c.sku, products.c.id, products.c.row_hash).where(self.among(products.c.sku, list(by_sku)))
                )
            }
            changed = [v for sku, v in by_sku.items() if sku not in existing or existing[sku][1] != v.row_hash]
            if not changed:
                return 0, errors
            all_gtins = [g for v in changed for g in v.row.gtins]
            owners: dict[str, str] = {}
            for i in range(0, len(all_gtins), 5000):
                chunk = all_gtins[i : i + 5000]
                owners.update(
                    (gtin, sku)
                    for gtin, sku in conn.execute(
                        select(product_gtins.c.gtin, products.c.sku)
                        .join(products, products.c.id == product_gtins.c.product_id)
                        .where(self.among(product_gtins.c.gtin, chunk))
                    ).all()
                )
            ok: list[_Valid] = []
            for v in changed:
                taken = [g for g in v.row.gtins if owners.get(g, v.row.sku) != v.row.sku]
                if taken:
                    errors.extend(
                        RowError(v.n, "gtin", f"GTIN {g} already belongs to SKU {owners[g]} in the catalogue", g)
                        for g in taken
                    )
                else:
                    ok.append(v)
            if not ok:
                return 0, errors
            self._store(conn, ok, version, now)
        return len(ok), errors

    def _store(self, conn: Connection, rows: list[_Valid], version: int, now: datetime) -> None:
        infos = {i.sha256: i for v in rows for i in v.infos}
        if infos:
            stmt = self.insert(ImageFile.__table__).on_conflict_do_nothing(index_elements=["sha256"])
            conn.execute(
                stmt,
                [
                    {"sha256": i.sha256, "mime": i.mime, "width": i.width, "height": i.height, "size": i.size,
                     "thumb_sha256": i.thumb_sha256, "thumb_size": i.thumb_size}
                    for i in infos.values()
                ],
            )
        values = [
            {
                "sku": v.row.sku,
                "gtin": v.row.gtins[0] if v.row.gtins else None,
                "gtins": v.row.gtins,
                "name_en": v.row.name_en,
                "name_zh": v.row.name_zh,
                "desc_en": v.row.desc_en,
                "desc_zh": v.row.desc_zh,
                "brand": v.row.brand,
                "category": v.row.category,
                "list_price": v.row.list_price,
                "region_prices": {k: str(p) for k, p in v.row.prices.items()},
                "attributes": v.row.attributes,
                "images": v.images,
                "status": v.row.status,
                "serialised": v.row.serialised,
                "version": version,
                "row_hash": v.row_hash,
                "updated_at": now,
            }
            for v in rows
        ]
        if self.engine.dialect.name == "postgresql":
            ids = _pg_copy_upsert(conn, values)
        else:
            stmt = self.insert(products)
            stmt = stmt.on_conflict_do_update(
                index_elements=["sku"], set_={c: stmt.excluded[c] for c in values[0] if c != "sku"}
            )
            conn.execute(stmt, values)
            ids = {
                sku: pid
                for sku, pid in conn.execute(
                    select(products.c.sku, products.c.id).where(products.c.sku.in_([v.row.sku for v in rows]))
                )
            }
        conn.execute(delete(product_gtins).where(self.among(product_gtins.c.product_id, list(ids.values()))))
        gtin_rows = [{"gtin": g, "product_id": ids[v.row.sku]} for v in rows for g in v.row.gtins]
        if gtin_rows and self.engine.dialect.name == "postgresql":
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur, cur.copy("COPY product_gtins (gtin, product_id) FROM STDIN") as copy:
                for g in gtin_rows:
                    copy.write_row((g["gtin"], g["product_id"]))
        elif gtin_rows:
            conn.execute(insert(product_gtins), gtin_rows)


_PG_COLUMNS = (
    ("sku", "text"), ("gtin", "text"), ("gtins", "json"), ("name_en", "text"), ("name_zh", "text"),
    ("desc_en", "text"), ("desc_zh", "text"), ("brand", "text"), ("category", "text"), ("list_price", "numeric"),
    ("region_prices", "json"), ("attributes", "json"), ("images", "json"), ("status", "text"),
    ("serialised", "boolean"), ("version", "bigint"), ("row_hash", "text"), ("updated_at", "timestamptz"),
)


def _pg_copy_upsert(conn: Connection, values: list[dict[str, Any]]) -> dict[str, int]:
    """PostgreSQL: COPY the batch into a temporary table, then one INSERT … ON CONFLICT from it.

    psycopg's executemany sends one statement per row (measured 3.5k rows/s for 100,000 rows);
    COPY plus one set-based upsert is several times faster.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    names = [n for n, _ in _PG_COLUMNS]
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS catalogue_batch ("
            + ", ".join(f"{n} {t}" for n, t in _PG_COLUMNS)
            + ") ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY catalogue_batch ({', '.join(names)}) FROM STDIN") as copy:
            for v in values:
                copy.write_row([
                    json.dumps(v[n], ensure_ascii=False) if t == "json" else v[n] for n, t in _PG_COLUMNS
                ])
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "sku")
        cur.execute(
            f"INSERT INTO products ({', '.join(names)}) SELECT {', '.join(names)} FROM catalogue_batch "
            f"ON CONFLICT (sku) DO UPDATE SET {updates} RETURNING sku, id"
        )
        ids = {str(sku): int(pid) for sku, pid in cur.fetchall()}
        cur.execute("DELETE FROM catalogue_batch")
    return ids


def next_version(conn: Connection) -> int:
    """One more than any version in use (products may carry a version an interrupted import left)."""
    top = max(
        conn.scalar(select(func.max(CatalogueVersion.version))) or 0,
        conn.scalar(select(func.max(products.c.version))) or 0,
    )
    return int(top) + 1


def stamp_unversioned(conn: Connection, source: str) -> int | None:
    """Give products written outside an import (seed, old rows) a catalogue version so they sync."""
    count = conn.scalar(select(func.count()).select_from(products).where(products.c.version == 0)) or 0
    if not count:
        return None
    version = next_version(conn)
    conn.execute(update(products).where(products.c.version == 0).values(version=version))
    conn.execute(
        insert(CatalogueVersion).values(version=version, created_at=datetime.now(UTC), source=source, changed=count, removed=0)
    )
    return version


def _write_report(path: Path) -> tuple[IO[str], Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("w", encoding="utf-8", newline="")
    w = csv.writer(f)
    w.writerow(["row", "field", "problem", "value"])
    return f, w


def import_file(
    engine: Engine,
    path: Path,
    catalogue_dir: Path,
    *,
    image_dir: Path | None = None,
    progress: Callable[[int], object] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ImportResult:
    """Import one CSV / JSON / JSON Lines file; see the module docstring for the guarantees.

    `progress(n)` is called with the number of rows read since the previous call.
    Raises `ImportError_` when the file as a whole is unusable (nothing is written then).
    """
    fmt, records = iter_records(path)
    store = FileStore(catalogue_dir)
    imp = _Importer(engine, store, image_dir, fmt == "csv")
    started = datetime.now(UTC)
    with write_transaction(engine) as conn:
        import_id = int(
            conn.execute(
                insert(CatalogueImport).values(
                    file=str(path), format=fmt, started_at=started, status="running",
                    rows_ok=0, rows_failed=0, rows_changed=0,
                ).returning(CatalogueImport.id)
            ).scalar_one()
        )
        version = next_version(conn)
    report_path = catalogue_dir / "reports" / f"import-{import_id}.csv"
    report_f, report = _write_report(report_path)
    ok = failed = changed = 0
    failed_rows: set[int] = set()
    batch: list[_Valid] = []

    def flush() -> None:
        nonlocal ok, changed
        n_changed, refused = imp.write_batch(batch, version)
        changed += n_changed
        bad = {e.row for e in refused}
        for e in refused:
            report.writerow([e.row, e.field, e.problem, e.value])
        failed_rows.update(bad)
        ok += sum(1 for v in batch if v.n not in bad)
        batch.clear()

    try:
        pending = 0
        for n, record in records:
            pending += 1
            if progress is not None and pending >= 1000:
                progress(pending)
                pending = 0
            result = record if isinstance(record, RowError) else imp.validate(n, record)
            if isinstance(result, _Valid):
                for g in result.row.gtins:
                    imp.gtin_owner.setdefault(g, result.row.sku)
                batch.append(result)
                if len(batch) >= batch_rows:
                    flush()
                continue
            errs = [result] if isinstance(result, RowError) else result
            for e in errs:
                report.writerow([e.row, e.field, e.problem, e.value])
            failed_rows.add(n)
        if batch:
            flush()
        if progress is not None and pending:
            progress(pending)
    except ImportError_ as exc:
        report_f.close()
        _finish(engine, import_id, ok, len(failed_rows), changed, version if changed else None, report_path, "failed", str(exc))
        raise
    finally:
        report_f.close()
    failed = len(failed_rows)
    _finish(engine, import_id, ok, failed, changed, version if changed else None, report_path, "done", None)
    log.info("import %d of %s: %d ok, %d failed, %d changed, version %s", import_id, path, ok, failed, changed, version if changed else "-")
    return ImportResult(import_id, ok, failed, changed, version if changed else None, report_path)


def _finish(
    engine: Engine, import_id: int, ok: int, failed: int, changed: int, version: int | None,
    report_path: Path, status: str, detail: str | None,
) -> None:
    now = datetime.now(UTC)
    with write_transaction(engine) as conn:
        if version is not None:
            conn.execute(
                insert(CatalogueVersion).values(version=version, created_at=now, source=f"import {import_id}", changed=changed, removed=0)
            )
        conn.execute(
            update(CatalogueImport).where(CatalogueImport.id == import_id).values(
                finished_at=now, status=status, rows_ok=ok, rows_failed=failed, rows_changed=changed,
                version=version, report_path=str(report_path), detail=detail,
            )
        )


def report_rows(path: Path) -> list[RowError]:
    """Read a report back (console, tests)."""
    with path.open(encoding="utf-8", newline="") as f:
        return [RowError(int(r["row"]), r["field"], r["problem"], r["value"]) for r in csv.DictReader(f)]



