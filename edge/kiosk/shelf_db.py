"""The cloud shelf's own SQLite file on the box: the search index, stock figures last seen, orders placed.

The search index is a copy of the catalogue's searchable columns plus each Chinese name's pinyin,
full (`longjing`) and initials (`lj`): a touchscreen has no Chinese input method, so shoppers type
pinyin on the on-screen keyboard. It is rebuilt from the catalogue file whenever the catalogue's
version or epoch moves (a rebuild of 50,000 products takes seconds, off the request path), so the
catalogue component stays the only writer of the catalogue.

Stock figures are kept per (sku, location) with the time they were fetched: a product page answers
from them when the cloud is unreachable and says how old they are.

The file is shared by the agent's loop (index rebuilds and stock refreshes, in worker threads) and
the local API's threads: one connection per thread, writes serialised by a lock.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Filters", "ShelfDb", "pinyin_elsewhere", "pinyin_keys", "pinyin_many"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shelf (
    sku TEXT PRIMARY KEY,
    sku_l TEXT NOT NULL,
    name_en TEXT NOT NULL,
    name_en_l TEXT NOT NULL,
    name_zh TEXT NOT NULL,
    py_full TEXT NOT NULL,
    py_initials TEXT NOT NULL,
    brand TEXT,
    category TEXT,
    price REAL,
    price_text TEXT NOT NULL,
    thumb TEXT,
    hay TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shelf_category ON shelf(category, sku);
CREATE INDEX IF NOT EXISTS shelf_brand ON shelf(brand);
CREATE TABLE IF NOT EXISTS pinyin (name_zh TEXT PRIMARY KEY, full TEXT NOT NULL, initials TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    kind TEXT,
    atp INTEGER NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (sku, location)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stock_location ON stock(location, atp);
CREATE TABLE IF NOT EXISTS placed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    placed_at REAL NOT NULL
);
"""


def pinyin_keys(name_zh: str) -> tuple[str, str]:
    """(full, initials) of a Chinese name, lowercase, without tones or spaces: 西湖龙井 → (xihulongjing, xhlj).

    Non-Chinese runs are kept as they are (lowercased), so "LV 龙井" still matches "lvlongjing"."""
    if not name_zh:
        return "", ""
    # Imported here, not at the top: only the short-lived pinyin process pays for its dictionaries.
    from pypinyin import Style, lazy_pinyin

    full: list[str] = []
    initials: list[str] = []
    for part in lazy_pinyin(name_zh, style=Style.NORMAL, errors="default"):
        if part.isascii() and part.isalpha() and part.islower():  # one Chinese character's syllable
            full.append(part)
            initials.append(part[0])
        else:  # a run of other characters (digits, Latin): kept whole in both spellings
            kept = "".join(c for c in part.lower() if c.isalnum())
            full.append(kept)
            initials.append(kept)
    return "".join(full), "".join(initials)


def pinyin_many(names: Sequence[str]) -> list[tuple[str, str]]:
    return [pinyin_keys(n) for n in names]


def pinyin_elsewhere(names: Sequence[str]) -> list[tuple[str, str]]:
    """`pinyin_many` in a short-lived process: pypinyin's dictionaries take about 55 MB once
    loaded, most of the agent's memory budget, and are needed only while new names come in."""
    if not names:
        return []
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(pinyin_many, list(names)).result()


@dataclass(frozen=True, slots=True)
class Filters:
    """What a shopper narrowed the grid to."""

    query: str = ""
    category: str | None = None
    brand: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock_here: bool = False
    """Only products this store has (its figures last seen) on the shelf."""


FigureRow = tuple[str, str, str | None, int] | tuple[str, str, str | None, int, int | None]
"""(sku, location, kind, atp) or with the on-hand count last."""


@dataclass(frozen=True, slots=True)
class Figure:
    location: str
    kind: str | None
    atp: int
    fetched_at: float
    on_hand: int | None = None
    """None: fetched before on-hand counts were kept, or not sent."""


def _price(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ShelfDb:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all_conns: list[sqlite3.Connection] = []
        with self._write_lock:
            conn = self._conn()
            conn.executescript(_SCHEMA)
            if "on_hand" not in {r["name"] for r in conn.execute("PRAGMA table_info(stock)")}:
                # Files from before the clerk's station asked for it: figures fetched from now on carry it.
                conn.execute("ALTER TABLE stock ADD COLUMN on_hand INTEGER")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            # Everything here can be rebuilt (index) or fetched again (stock); orders placed are in
            # the outbox, whose durability does not depend on this file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            self._all_conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._all_conns:
            conn.close()
        self._all_conns.clear()
        self._local = threading.local()

    def _meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (key, value))

    # -- the search index ------------------------------------------------------------------------

    @property
    def indexed(self) -> str | None:
        """The catalogue identity (`epoch:version`) the index was built from."""
        return self._meta("indexed")

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM shelf").fetchone()[0])

    def rebuild(self, catalogue: Path, identity: str) -> int:
        """Replace the index with the catalogue file's products, in one transaction; returns the count."""
        src = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=10)
        try:
            rows = src.execute("SELECT sku, name_en, name_zh, brand, category, price, data FROM products").fetchall()
        finally:
            src.close()
        # pypinyin costs about a millisecond a name (its phrase dictionary picks the reading of each
        # character in context): names seen before keep their spelling from the cache, so after the
        # first build a catalogue update only pays for its new names.
        known = {r[0]: (r[1], r[2]) for r in self._conn().execute("SELECT name_zh, full, initials FROM pinyin")}
        new_names = sorted({str(r[2] or "") for r in rows} - set(known))
        fresh = dict(zip(new_names, pinyin_elsewhere(new_names), strict=True))
        out: list[tuple[Any, ...]] = []
        for sku, name_en, name_zh, brand, category, price, data in rows:
            try:
                images = json.loads(data).get("images") or []
                thumb = images[0].get("thumb") if images and isinstance(images[0], dict) else None
            except (ValueError, AttributeError):
                thumb = None  # a malformed entry still shows, without a picture
            full, initials = known.get(name_zh or "") or fresh[name_zh or ""]
            # Every spelling in one lowercase string: a search is one instr() a row, not six LIKEs.
            hay = "\x1f".join((sku.lower(), (name_en or "").lower(), name_zh or "", full, initials, (brand or "").lower()))
            out.append((sku, sku.lower(), name_en or "", (name_en or "").lower(), name_zh or "", full, initials,
                        brand, category, _price(price), str(price), thumb, hay))
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM shelf")
                conn.executemany("INSERT INTO shelf VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out)
                conn.executemany("INSERT OR IGNORE INTO pinyin(name_zh, full, initials) VALUES (?, ?, ?)",
                                 [(n, f, i) for n, (f, i) in fresh.items()])
                self._set_meta(conn, "indexed", identity)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return len(out)

    def page(self, f: Filters, here: str, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total matching, one page): by relevance when searching, else by category and SKU."""
        where: list[str] = []
        args: list[Any] = []
        order = "s.category, s.sku"
        order_args: list[Any] = []
        q = f.query.strip().lower()
        if q:
            pat = _like(q)
            compact = q.replace(" ", "")
            # Pinyin is typed with or without spaces between syllables ("long jing", "longjing").
            where.append("(instr(s.hay, ?) > 0 OR instr(s.hay, ?) > 0)")
            args += [q, compact]
            # Names that start with what was typed (in any of its spellings) first, then shorter names.
            order = ("(s.sku_l = ? OR s.name_en_l LIKE ? ESCAPE '\\' OR s.name_zh LIKE ? ESCAPE '\\'"
                     " OR s.py_full LIKE ? ESCAPE '\\' OR s.py_initials LIKE ? ESCAPE '\\') DESC,"
                     " length(s.name_zh) + length(s.name_en), s.sku")
            order_args = [q, pat + "%", pat + "%", _like(compact) + "%", _like(compact) + "%"]
        if f.category:
            where.append("s.category >= ? AND s.category < ?")
            args += [f.category, f.category + "\U0010ffff"]
        if f.brand:
            where.append("s.brand = ?")
            args.append(f.brand)
        if f.min_price is not None:
            where.append("s.price >= ?")
            args.append(f.min_price)
        if f.max_price is not None:
            where.append("s.price <= ?")
            args.append(f.max_price)
        join = ""
        if f.in_stock_here:
            join = " JOIN stock h ON h.sku = s.sku AND h.location = ? AND h.atp > 0"
            args = [here, *args]
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        conn = self._conn()
        total = int(conn.execute(f"SELECT count(*) FROM shelf s{join}{clause}", args).fetchone()[0])
        rows = conn.execute(
            f"SELECT s.*, (SELECT atp FROM stock WHERE sku = s.sku AND location = ?) AS here_atp FROM shelf s{join}{clause}"
            f" ORDER BY {order} LIMIT ? OFFSET ?", [here, *args, *order_args, limit, offset]).fetchall()
        return total, [{
            "sku": r["sku"], "name_en": r["name_en"], "name_zh": r["name_zh"], "brand": r["brand"],
            "category": r["category"], "price": r["price_text"], "thumb": r["thumb"], "here": r["here_atp"],
        } for r in rows]

    def brands(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT brand, count(*) FROM shelf WHERE brand IS NOT NULL AND brand != '' GROUP BY brand ORDER BY brand")
        return [{"brand": b, "products": n} for b, n in rows]

    def categories(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT category, count(*) FROM shelf WHERE category IS NOT NULL GROUP BY category ORDER BY category")
        return [{"path": c, "products": n} for c, n in rows]

    def item(self, sku: str) -> dict[str, Any] | None:
        r = self._conn().execute("SELECT sku, name_en, name_zh, price, price_text FROM shelf WHERE sku = ?", (sku,)).fetchone()
        return None if r is None else dict(r)

    # -- stock figures -----------------------------------------------------------------------------

    def put_figures(self, rows: Iterable[FigureRow], *, replace_location: str | None = None,
                    replace_sku: str | None = None, at: float | None = None) -> None:
        """Store (sku, location, kind, atp[, on_hand]) figures fetched at `at`; `replace_*` first drops what that
        location (a full listing of one store) or that SKU (all locations of one product) held."""
        stamp = time.time() if at is None else at
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if replace_location is not None:
                    conn.execute("DELETE FROM stock WHERE location = ?", (replace_location,))
                if replace_sku is not None:
                    conn.execute("DELETE FROM stock WHERE sku = ?", (replace_sku,))
                conn.executemany(
                    "INSERT INTO stock(sku, location, kind, atp, fetched_at, on_hand) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(sku, location) DO UPDATE SET kind = excluded.kind, atp = excluded.atp, "
                    "fetched_at = excluded.fetched_at, on_hand = excluded.on_hand",
                    [(r[0], r[1], r[2], r[3], stamp, r[4] if len(r) > 4 else None) for r in rows])
                if replace_sku is not None:
                    self._set_meta(conn, "sku_fetched:" + replace_sku, str(stamp))
                if replace_location is not None:
                    self._set_meta(conn, "location_fetched:" + replace_location, str(stamp))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def figures(self, sku: str) -> tuple[list[Figure], float | None]:
        """The figures held for one product, and when they were fetched (None: never)."""
        rows = self._conn().execute("SELECT location, kind, atp, fetched_at, on_hand FROM stock WHERE sku = ?",
                                    (sku,)).fetchall()
        stamps = [float(v) for v in (self._meta("sku_fetched:" + sku),) if v] + [float(r["fetched_at"]) for r in rows]
        return ([Figure(r["location"], r["kind"], int(r["atp"]), float(r["fetched_at"]),
                        None if r["on_hand"] is None else int(r["on_hand"])) for r in rows],
                (max(stamps) if stamps else None))

    # -- orders placed -----------------------------------------------------------------------------

    def place(self, order_id: str, body: dict[str, Any]) -> int:
        with self._write_lock:
            cur = self._conn().execute("INSERT INTO placed(order_id, body, placed_at) VALUES (?, ?, ?)",
                                       (order_id, json.dumps(body, ensure_ascii=False), time.time()))
            return int(cur.lastrowid or 0)

    def next_number(self) -> int:
        row = self._conn().execute("SELECT coalesce(max(seq), 0) + 1 FROM placed").fetchone()
        return int(row[0])

    def placed(self, limit: int = 50) -> Sequence[dict[str, Any]]:
        rows = self._conn().execute("SELECT order_id, body, placed_at FROM placed ORDER BY seq DESC LIMIT ?", (limit,))
        return [{"order_id": r[0], **json.loads(r[1]), "placed_at": r[2]} for r in rows]
