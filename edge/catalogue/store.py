"""The box's catalogue: one SQLite file (WAL) with products, GTINs, full-text index and image cache.

Search needs no word segmenter: FTS5's `trigram` tokenizer finds any substring of 3+ characters in
Chinese and English alike. Trigrams cannot serve 1-2 character queries, which are common in Chinese
(茶, 大米), so the 1- and 2-character grams of the Chinese name are kept in an indexed table too.
Ranking: exact SKU or GTIN first, then names that start with the query, then other matches (bm25).

A sync file (format: `broker.syncfile`) is applied in one transaction: a failed or corrupt file
leaves the previous version whole. The catalogue's epoch (its identity, see `CatalogData.epoch`) is
stored with the version: versions only compare within one epoch. The store is shared by the asyncio agent (writes, in a worker thread) and the local API's
threads (reads): each thread has its own connection; writes are serialised by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from broker.syncfile import DelLine, ProductRecord, PutLine, SyncFileError, SyncHeader, parse_header, parse_line

__all__ = ["CatalogueStore", "CorruptSyncFile", "SyncHeader"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    sku_l TEXT NOT NULL,
    name_en TEXT NOT NULL,
    name_en_l TEXT NOT NULL,
    name_zh TEXT NOT NULL,
    brand TEXT,
    category TEXT,
    price TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS products_sku_l ON products(sku_l);
CREATE INDEX IF NOT EXISTS products_name_en_l ON products(name_en_l);
CREATE INDEX IF NOT EXISTS products_name_zh ON products(name_zh);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE TABLE IF NOT EXISTS gtins (gtin TEXT PRIMARY KEY, product_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gtins_product ON gtins(product_id);
CREATE TABLE IF NOT EXISTS grams (gram TEXT NOT NULL, product_id INTEGER NOT NULL, PRIMARY KEY (gram, product_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grams_product ON grams(product_id);
CREATE VIRTUAL TABLE IF NOT EXISTS products_fts USING fts5(
    sku, name_en, name_zh, brand, content='products', content_rowid='id', tokenize='trigram'
);
CREATE TRIGGER IF NOT EXISTS products_ai AFTER INSERT ON products WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'bulk') BEGIN
    INSERT INTO products_fts(rowid, sku, name_en, name_zh, brand) VALUES (new.id, new.sku, new.name_en, new.name_zh, new.brand);
END;
CREATE TRIGGER IF NOT EXISTS products_ad AFTER DELETE ON products WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'bulk') BEGIN
    INSERT INTO products_fts(products_fts, rowid, sku, name_en, name_zh, brand) VALUES ('delete', old.id, old.sku, old.name_en, old.name_zh, old.brand);
END;
CREATE TRIGGER IF NOT EXISTS products_au AFTER UPDATE ON products WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'bulk') BEGIN
    INSERT INTO products_fts(products_fts, rowid, sku, name_en, name_zh, brand) VALUES ('delete', old.id, old.sku, old.name_en, old.name_zh, old.brand);
    INSERT INTO products_fts(rowid, sku, name_en, name_zh, brand) VALUES (new.id, new.sku, new.name_en, new.name_zh, new.brand);
END;
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- thumb or full
    state TEXT NOT NULL,           -- want (not on disk) or ok (on disk, verified)
    size INTEGER NOT NULL DEFAULT 0,
    last_access REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_state ON images(state, kind, last_access);
"""

_PREFIX_END = "\U0010ffff"
_SUBSTRING_POOL = 500


class CorruptSyncFile(ValueError):
    """A sync file whose content does not match what was announced; nothing of it was applied."""


def _is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80


def _grams(name: str) -> set[str]:
    chars = [c for c in name if _is_cjk(c)]
    text = "".join(c if _is_cjk(c) else " " for c in name)
    out = set(chars)
    out.update(text[i : i + 2] for i in range(len(text) - 1) if " " not in text[i : i + 2])
    return out


def _items(lines: Iterator[str]) -> Iterator[tuple[int, PutLine | DelLine]]:
    """The body's lines parsed, with their line numbers in the file (the header is line 1)."""
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            yield n, parse_line(line)
        except SyncFileError as exc:
            raise CorruptSyncFile(f"sync file line {n} is malformed ({exc})") from None


def _price(p: ProductRecord, region: str | None) -> str:
    return (p.prices.get(region) or p.list_price) if region else p.list_price


class CatalogueStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "catalogue.db"
        self.image_dir = self.directory / "images"
        self.image_dir.mkdir(exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._conn().executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            # The catalogue can always be fetched again: a power cut may lose the last apply, never corrupt.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def version(self) -> int:
        return int(self._meta("version") or 0)

    @property
    def region(self) -> str | None:
        return self._meta("region") or None

    @property
    def epoch(self) -> str | None:
        """The epoch of the catalogue held (None: none held, or from a cloud without epochs)."""
        return self._meta("epoch") or None

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM products").fetchone()[0])

    # -- applying ----------------------------------------------------------------------------------

    def apply(
        self, lines: Iterable[str], *, expect_from: int, expect_to: int, region: str | None, epoch: str | None = None
    ) -> SyncHeader:
        """Apply one sync file (JSON lines, header first) in one transaction.

        Raises `CorruptSyncFile` if the file is not the announced one (versions, epoch) or not well
        formed; the store is then unchanged.
        """
        it = iter(lines)
        try:
            header = parse_header(next(it))
        except StopIteration:
            raise CorruptSyncFile("sync file is empty: expected a header line") from None
        except SyncFileError as exc:
            raise CorruptSyncFile(f"sync file line 1: {exc}") from None
        if header.to_version != expect_to or (header.kind == "delta" and header.from_version != expect_from):
            raise CorruptSyncFile(
                f"sync file is {header.kind} {header.from_version}->{header.to_version}, expected {expect_from}->{expect_to}"
            )
        if epoch is not None and header.epoch is not None and header.epoch != epoch:
            raise CorruptSyncFile(f"sync file is of catalogue epoch {header.epoch}, expected {epoch}")
        if header.kind == "delta" and header.from_version != self.version:
            raise CorruptSyncFile(f"delta from {header.from_version} does not apply to local version {self.version}")
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if header.kind == "snapshot":
                    self._apply_snapshot(conn, it, region)
                else:
                    self._apply_lines(conn, it, region)
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [("version", str(header.to_version)), ("region", region or ""), ("epoch", epoch or header.epoch or "")],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return header

    def _apply_snapshot(self, conn: sqlite3.Connection, lines: Iterator[str], region: str | None) -> None:
        # Row-by-row index maintenance of 50,000 deletes and inserts costs seconds; the triggers
        # stand aside ('bulk') and the full-text index is rebuilt once at the end instead. The
        # tables start empty, so products get their ids here and go in by executemany, in chunks.
        conn.execute("INSERT INTO meta(key, value) VALUES ('bulk', '1')")
        conn.execute("DELETE FROM products")
        conn.execute("DELETE FROM gtins")
        conn.execute("DELETE FROM grams")
        seen: set[str] = set()
        products: list[tuple[Any, ...]] = []
        gtins: list[tuple[str, int]] = []
        grams: list[tuple[str, int]] = []
        images: list[tuple[str, str]] = []

        def flush() -> None:
            conn.executemany("INSERT INTO products(id, sku, sku_l, name_en, name_en_l, name_zh, brand, category, price, data)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", products)
            conn.executemany("INSERT OR REPLACE INTO gtins(gtin, product_id) VALUES (?, ?)", gtins)
            conn.executemany("INSERT OR IGNORE INTO grams(gram, product_id) VALUES (?, ?)", grams)
            conn.executemany("INSERT OR IGNORE INTO images(sha256, kind, state) VALUES (?, ?, 'want')", images)
            for batch in (products, gtins, grams, images):
                batch.clear()

        for pid, (n, item) in enumerate(_items(lines), start=1):
            if not isinstance(item, PutLine):
                raise CorruptSyncFile(f"sync file line {n} deletes {item.sku!r}: a snapshot only puts products")
            p = item.p
            if p.sku in seen:
                raise CorruptSyncFile(f"sync file line {n} puts SKU {p.sku!r} a second time: a snapshot holds each once")
            seen.add(p.sku)
            products.append((pid, p.sku, p.sku.lower(), p.name_en, p.name_en.lower(), p.name_zh, p.brand, p.category,
                             _price(p, region), p.model_dump_json()))
            gtins.extend((g, pid) for g in p.gtins)
            grams.extend((g, pid) for g in _grams(p.name_zh))
            images.extend([(im.thumb, "thumb") for im in p.images] + [(im.sha256, "full") for im in p.images])
            if len(products) >= 2000:
                flush()
        flush()
        conn.execute("INSERT INTO products_fts(products_fts) VALUES ('rebuild')")
        conn.execute("DELETE FROM meta WHERE key = 'bulk'")

    def _apply_lines(self, conn: sqlite3.Connection, lines: Iterator[str], region: str | None, fresh: bool = False) -> None:
        for _, item in _items(lines):
            if isinstance(item, PutLine):
                self._put(conn, item.p, region, fresh)
            else:
                self._delete(conn, item.sku)

    def _put(self, conn: sqlite3.Connection, p: ProductRecord, region: str | None, fresh: bool) -> None:
        sku = p.sku
        price = _price(p, region)
        name_en, name_zh = p.name_en, p.name_zh
        if not fresh:
            old = conn.execute("SELECT id FROM products WHERE sku = ?", (sku,)).fetchone()
            if old is not None:
                conn.execute("DELETE FROM gtins WHERE product_id = ?", (old[0],))
                conn.execute("DELETE FROM grams WHERE product_id = ?", (old[0],))
        pid = conn.execute(
            "INSERT INTO products(sku, sku_l, name_en, name_en_l, name_zh, brand, category, price, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sku) DO UPDATE SET sku_l = excluded.sku_l, "
            "name_en = excluded.name_en, name_en_l = excluded.name_en_l, name_zh = excluded.name_zh, "
            "brand = excluded.brand, category = excluded.category, price = excluded.price, data = excluded.data "
            "RETURNING id",
            (sku, sku.lower(), name_en, name_en.lower(), name_zh, p.brand, p.category, price, p.model_dump_json()),
        ).fetchone()[0]
        conn.executemany("INSERT OR REPLACE INTO gtins(gtin, product_id) VALUES (?, ?)", [(g, pid) for g in p.gtins])
        conn.executemany("INSERT OR IGNORE INTO grams(gram, product_id) VALUES (?, ?)", [(g, pid) for g in _grams(name_zh)])
        if p.images:
            conn.executemany(
                "INSERT OR IGNORE INTO images(sha256, kind, state) VALUES (?, ?, 'want')",
                [(im.thumb, "thumb") for im in p.images] + [(im.sha256, "full") for im in p.images],
            )

    def _delete(self, conn: sqlite3.Connection, sku: str) -> None:
        row = conn.execute("SELECT id FROM products WHERE sku = ?", (sku,)).fetchone()
        if row is None:
            return
        conn.execute("DELETE FROM gtins WHERE product_id = ?", (row[0],))
        conn.execute("DELETE FROM grams WHERE product_id = ?", (row[0],))
        conn.execute("DELETE FROM products WHERE id = ?", (row[0],))

    # -- reading -----------------------------------------------------------------------------------

    @staticmethod
    def _summary(row: sqlite3.Row) -> dict[str, Any]:
        data = json.loads(row["data"])
        return {
            "sku": row["sku"],
            "name_en": row["name_en"],
            "name_zh": row["name_zh"],
            "brand": row["brand"],
            "category": row["category"],
            "price": row["price"],
            "gtins": data.get("gtins") or [],
            "thumb": (data.get("images") or [{}])[0].get("thumb"),
        }

    def product(self, sku: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT price, data FROM products WHERE sku = ?", (sku,)).fetchone()
        if row is None:
            return None
        out: dict[str, Any] = json.loads(row["data"])
        out["price"] = row["price"]
        return out

    def products(self, *, category: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        if category:
            rows = self._conn().execute(
                "SELECT * FROM products WHERE category >= ? AND category < ? ORDER BY category, sku LIMIT ? OFFSET ?",
                (category, category + _PREFIX_END, limit, offset),
            )
        else:
            rows = self._conn().execute("SELECT * FROM products ORDER BY sku LIMIT ? OFFSET ?", (limit, offset))
        return [self._summary(r) for r in rows]

    def categories(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT category, count(*) FROM products WHERE category IS NOT NULL GROUP BY category ORDER BY category"
        )
        return [{"path": c, "products": n} for c, n in rows]

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Products matching `query`: exact SKU/GTIN first, then name prefix, then substring."""
        q = query.strip()
        if not q:
            return []
        conn = self._conn()
        ql = q.lower()
        ids: list[int] = []
        seen: set[int] = set()

        def take(rows: Iterable[Any]) -> None:
            for (pid,) in rows:
                if pid not in seen and len(ids) < limit:
                    seen.add(pid)
                    ids.append(pid)

        take(conn.execute("SELECT id FROM products WHERE sku_l = ?", (ql,)))
        if q.isdigit() and len(q) in (8, 12, 13, 14):
            take(conn.execute("SELECT product_id FROM gtins WHERE gtin = ?", (q.zfill(14),)))
        if len(ids) < limit:
            end = ql + _PREFIX_END
            take(conn.execute(
                "SELECT id FROM (SELECT id, name_en_l AS k FROM products WHERE name_en_l >= ? AND name_en_l < ? "
                "UNION ALL SELECT id, name_zh FROM products WHERE name_zh >= ? AND name_zh < ? "
                "UNION ALL SELECT id, sku_l FROM products WHERE sku_l >= ? AND sku_l < ?) ORDER BY length(k), k LIMIT ?",
                (ql, end, q, q + _PREFIX_END, ql, end, limit),
            ))
        if len(ids) < limit:
            if len(q) >= 3:
                phrase = '"' + q.replace('"', '""') + '"'
                # Ranked among the first _SUBSTRING_POOL matches only: bm25 over every match of a common
                # term ('water' in 10,000 names) alone costs more than the 20 ms budget of a keystroke.
                take(conn.execute(
                    "SELECT p.id FROM (SELECT rowid AS id FROM products_fts WHERE products_fts MATCH ? LIMIT ?) m "
                    "JOIN products p ON p.id = m.id ORDER BY length(p.name_en) + length(p.name_zh), p.id LIMIT ?",
                    (phrase, _SUBSTRING_POOL, limit * 2),
                ))
            elif all(_is_cjk(c) for c in q):
                take(conn.execute(
                    "SELECT p.id FROM (SELECT product_id AS id FROM grams WHERE gram = ? LIMIT ?) m "
                    "JOIN products p ON p.id = m.id ORDER BY length(p.name_zh), p.id LIMIT ?",
                    (q, _SUBSTRING_POOL, limit * 2),
                ))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        by_id = {r["id"]: r for r in conn.execute(f"SELECT * FROM products WHERE id IN ({marks})", ids)}
        return [self._summary(by_id[i]) for i in ids if i in by_id]

    # -- image cache -------------------------------------------------------------------------------

    def wanted_images(self, limit: int = 50) -> list[tuple[str, float]]:
        """(sha256, last access) not on disk yet: recently asked-for first, then thumbnails."""
        rows = self._conn().execute(
            "SELECT sha256, last_access FROM images WHERE state = 'want' ORDER BY last_access DESC, kind = 'full' LIMIT ?",
            (limit,),
        )
        return [(r[0], float(r[1])) for r in rows]

    def image_path(self, sha256: str) -> Path:
        return self.image_dir / sha256[:2] / sha256

    def image_stored(self, sha256: str, size: int) -> None:
        with self._write_lock:
            self._conn().execute("UPDATE images SET state = 'ok', size = ? WHERE sha256 = ?", (size, sha256))

    def image_later(self, sha256: str) -> None:
        """To the back of the fetch queue (the cloud could not serve it this time)."""
        with self._write_lock:
            self._conn().execute("UPDATE images SET last_access = -1 WHERE sha256 = ? AND state = 'want'", (sha256,))

    def image_forget(self, sha256: str) -> None:
        """Back to 'want' (its file was evicted or found missing)."""
        with self._write_lock:
            self._conn().execute("UPDATE images SET state = 'want', size = 0 WHERE sha256 = ?", (sha256,))

    def image_ok(self, sha256: str) -> bool:
        """True if the image is on disk and verified; records the access for LRU either way."""
        conn = self._conn()
        # While a sync file is being applied the writer holds the lock for seconds; a kiosk showing
        # an image must not wait for that, so the LRU stamp is skipped then (it is only a hint).
        if self._write_lock.acquire(blocking=False):
            try:
                conn.execute("UPDATE images SET last_access = ? WHERE sha256 = ?", (time.time(), sha256))
            finally:
                self._write_lock.release()
        row = conn.execute("SELECT state FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return row is not None and row[0] == "ok"

    def image_state(self, sha256: str) -> str | None:
        """'ok', 'want' or None (unknown), without counting as a use."""
        row = self._conn().execute("SELECT state FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else str(row[0])

    def image_bytes_used(self) -> int:
        return int(self._conn().execute("SELECT coalesce(sum(size), 0) FROM images WHERE state = 'ok'").fetchone()[0])

    def lru_images(self, older_than: float, limit: int = 100) -> list[tuple[str, int]]:
        """Cached images used before `older_than`, least recently used first."""
        rows = self._conn().execute(
            "SELECT sha256, size FROM images WHERE state = 'ok' AND last_access < ? ORDER BY last_access LIMIT ?",
            (older_than, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    def image_counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, count(*) FROM images GROUP BY state")
        return {str(s): int(n) for s, n in rows}
