"""The cloud shelf's own SQLite file on the box: the search index, stock figures last seen, orders placed.

The search index is a copy of the catalogue's searchable columns plus each Chinese name's pinyin,
full (`longjing`) and initials (`lj`): a touchscreen has no Chinese input method, so shoppers type
pinyin on the on-screen keyboard. It is rebuilt from the catalogue file whenever the catalogue's
version or epoch moves (a rebuild of 50,000 products takes seconds, off the request path), so the
catalogue component stays the only writer of the catalogue.

Search is prefix search from any word start, as a shopper types: `lon`, `longj`, `jing`, `lj`,
`龙井`, `green tea`, `mug-01` all find 西湖龙井茶 (Longjing green tea, MUG-01). Each product is
an FTS5 document whose tokens are its spellings from every word start, squeezed to letters, digits
and characters (SKU and English by word, Chinese by character, pinyin by syllable, initials by
letter); FTS5's prefix indexes of 1 to 3 characters answer a keystroke from one doclist, so a
query costs milliseconds on 50,000 products instead of a scan. Documents are numbered in a fixed
order (shorter names first): a page is the first rows of the doclist, with the products whose
name, SKU or brand *starts* with what was typed (the `head` column) before the others.

Stock figures are kept per (sku, location) with the time they were fetched: a product page answers
from them when the cloud is unreachable and says how old they are.

The file is shared by the agent's loop (index rebuilds and stock refreshes, in worker threads) and
the local API's threads: one connection per thread, writes serialised by a lock.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Filters", "ShelfDb", "pinyin_elsewhere", "pinyin_keys", "pinyin_many"]

_SEARCH_TABLE = """CREATE VIRTUAL TABLE IF NOT EXISTS shelf_search USING fts5(
    head, rest, tokenize = 'unicode61 remove_diacritics 0', prefix = '1 2 3', detail = column)"""

_SCHEMA_VERSION = 2
"""1: the shelf keyed by SKU, searched by a scan; 2: FTS5 prefix index, the shelf keyed by rank."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shelf (
    rank INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name_en TEXT NOT NULL,
    name_zh TEXT NOT NULL,
    brand TEXT,
    category TEXT,
    price REAL,
    price_text TEXT NOT NULL,
    thumb TEXT
);
CREATE INDEX IF NOT EXISTS shelf_category ON shelf(category, sku);
CREATE INDEX IF NOT EXISTS shelf_brand ON shelf(brand);
CREATE TABLE IF NOT EXISTS pinyin_parts (name_zh TEXT PRIMARY KEY, parts TEXT NOT NULL) WITHOUT ROWID;
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


Part = tuple[str, bool]
"""One piece of a name's pinyin: (text, True) for one character's syllable, (text, False) for a run
of other characters (digits, Latin), kept whole in the initials too."""


def pinyin_parts(name_zh: str) -> list[Part]:
    """A Chinese name's pinyin, lowercase, without tones: 西湖龙井 250克 → xi hu long jing 250 ke."""
    if not name_zh:
        return []
    # Imported here, not at the top: only the short-lived pinyin process pays for its dictionaries.
    from pypinyin import Style, lazy_pinyin

    out: list[Part] = []
    for part in lazy_pinyin(name_zh, style=Style.NORMAL, errors="default"):
        if part.isascii() and part.isalpha() and part.islower():  # one Chinese character's syllable
            out.append((part, True))
        else:
            out.extend((w, False) for w in _words(part))
    return out


def _keys_of(parts: Sequence[Part]) -> tuple[str, str]:
    return "".join(t for t, _ in parts), "".join(t[0] if syl else t for t, syl in parts)


def pinyin_keys(name_zh: str) -> tuple[str, str]:
    """(full, initials) of a Chinese name, lowercase, without tones or spaces: 西湖龙井 → (xihulongjing, xhlj).

    Non-Chinese runs are kept as they are (lowercased), so "LV 龙井" still matches "lvlongjing"."""
    return _keys_of(pinyin_parts(name_zh))


def pinyin_many(names: Sequence[str]) -> list[list[Part]]:
    return [pinyin_parts(n) for n in names]


def pinyin_elsewhere(names: Sequence[str]) -> list[list[Part]]:
    """`pinyin_many` in a short-lived process: pypinyin's dictionaries take about 55 MB once
    loaded, most of the agent's memory budget, and are needed only while new names come in."""
    if not names:
        return []
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(pinyin_many, list(names)).result()


_MAX_KEY = 12
"""Spellings are indexed from each word start up to this many characters (a longer query is cut)."""


_WORD = re.compile(r"[^\W_]+")
_UNIT = re.compile(r"[a-z0-9]+|[^\W_]")


def _squeeze(text: str) -> str:
    """What search compares: lowercase letters, digits and characters only ("Mug-01" → mug01)."""
    return "".join(_WORD.findall(text.lower()))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _units_zh(text: str) -> list[str]:
    """Chinese by character (each one a word start), Latin and digit runs whole."""
    return _UNIT.findall(text.lower())


def _from_each_start(units: Sequence[str]) -> list[str]:
    joined = "".join(units)
    out, at = [], 0
    for u in units:
        out.append(joined[at:at + _MAX_KEY])
        at += len(u)
    return out


def search_tokens(sku: str, name_en: str, name_zh: str, brand: str, parts: Sequence[Part]) -> tuple[str, str]:
    """(head, rest): a product's spellings from their first word, and from every later word start."""
    spellings = (_words(sku), _words(name_en), _units_zh(name_zh), [t for t, _ in parts],
                 [t[0] if syl else t for t, syl in parts], _words(brand))
    head: dict[str, None] = {}
    rest: dict[str, None] = {}
    for units in spellings:
        starts = _from_each_start(units)
        if starts:
            head[starts[0]] = None
            rest.update(dict.fromkeys(starts[1:]))
    for t in head:
        rest.pop(t, None)
    return " ".join(head), " ".join(rest)


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


class ShelfDb:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all_conns: list[sqlite3.Connection] = []
        with self._write_lock:
            conn = self._conn()
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) < _SCHEMA_VERSION:
                # An index of an older layout is dropped and built again from the catalogue (its
                # stock figures and orders placed are kept: their tables did not change).
                conn.executescript("DROP TABLE IF EXISTS shelf; DROP TABLE IF EXISTS pinyin;"
                                   " DROP TABLE IF EXISTS shelf_search; DELETE FROM meta WHERE key = 'indexed';"
                                   if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
                                   else "")
            conn.executescript(_SCHEMA)
            conn.execute(_SEARCH_TABLE)
            if "on_hand" not in {r["name"] for r in conn.execute("PRAGMA table_info(stock)")}:
                # Files from before the clerk's station asked for it: figures fetched from now on carry it.
                conn.execute("ALTER TABLE stock ADD COLUMN on_hand INTEGER")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

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
        conn = self._conn()
        # A product whose names and brand did not change keeps its tokens from the index in use.
        held = {r[0]: (tuple(r[1:4]), r[4], r[5]) for r in conn.execute(
            "SELECT s.sku, s.name_en, s.name_zh, coalesce(s.brand, ''), m.head, m.rest FROM shelf s"
            " JOIN shelf_search m ON m.rowid = s.rank")}
        todo = [r for r in rows if (held.get(r[0]) or ((),))[0] != (r[1] or "", r[2] or "", r[3] or "")]
        names = {str(r[2] or "") for r in todo}
        known = {r[0]: [(t, bool(y)) for t, y in json.loads(r[1])]
                 for r in conn.execute("SELECT name_zh, parts FROM pinyin_parts") if r[0] in names}
        new_names = sorted(names - set(known))
        fresh = dict(zip(new_names, pinyin_elsewhere(new_names), strict=True))
        reuse = {r[0] for r in rows} - {r[0] for r in todo}
        # The fixed order pages come in: shorter names first (the likelier match), then by SKU.
        rows.sort(key=lambda r: (len(r[2] or "") + len(r[1] or ""), r[0]))
        shelf: list[tuple[Any, ...]] = []
        search: list[tuple[int, str, str]] = []
        for rank, (sku, name_en, name_zh, brand, category, price, data) in enumerate(rows, 1):
            try:
                images = json.loads(data).get("images") or []
                thumb = images[0].get("thumb") if images and isinstance(images[0], dict) else None
            except (ValueError, AttributeError):
                thumb = None  # a malformed entry still shows, without a picture
            shelf.append((rank, sku, name_en or "", name_zh or "", brand, category, _price(price), str(price), thumb))
            if sku in reuse:
                search.append((rank, held[sku][1], held[sku][2]))
            else:
                parts = known.get(name_zh or "") or fresh[name_zh or ""]
                search.append((rank, *search_tokens(sku, name_en or "", name_zh or "", brand or "", parts)))
        before = {r[1]: tuple(r) for r in conn.execute("SELECT * FROM shelf")}
        if len(before) == len(shelf) and all(before.get(row[1], (None,))[0] == row[0] for row in shelf):
            self._update_in_place(before, shelf, search, {r[0] for r in todo}, fresh, identity)
            return len(shelf)
        with self._writing(fresh, identity) as conn:
            conn.execute("DELETE FROM shelf")
            # Dropped and made again: FTS5 deletes row by row, and that took longer than the build.
            conn.execute("DROP TABLE shelf_search")
            conn.execute(_SEARCH_TABLE)
            conn.executemany("INSERT INTO shelf VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", shelf)
            conn.executemany("INSERT INTO shelf_search(rowid, head, rest) VALUES (?, ?, ?)", search)
        with self._write_lock:
            # One segment per prefix length instead of many small ones: keystrokes read one b-tree each.
            self._conn().execute("INSERT INTO shelf_search(shelf_search) VALUES ('optimize')")
        return len(shelf)

    def _update_in_place(self, before: dict[str, tuple[Any, ...]], shelf: list[tuple[Any, ...]],
                         search: list[tuple[int, str, str]], renamed: set[str], fresh: dict[str, list[Part]],
                         identity: str) -> None:
        """The same products in the same order (a price, a picture or a category changed, or a name
        for one as long): only the rows that differ are written, and only the renamed products'
        search rows. Rebuilding every time cost a box 20-50 s of CPU for each catalogue update."""
        changed = [row for row in shelf if before[row[1]] != row]
        tokens = [(rank, head, rest) for (rank, head, rest), row in zip(search, shelf, strict=True) if row[1] in renamed]
        with self._writing(fresh, identity) as conn:
            conn.executemany("UPDATE shelf SET sku = ?, name_en = ?, name_zh = ?, brand = ?, category = ?, price = ?,"
                             " price_text = ?, thumb = ? WHERE rank = ?", [(*row[1:], row[0]) for row in changed])
            conn.executemany("DELETE FROM shelf_search WHERE rowid = ?", [(rank,) for rank, _h, _r in tokens])
            conn.executemany("INSERT INTO shelf_search(rowid, head, rest) VALUES (?, ?, ?)", tokens)

    @contextlib.contextmanager
    def _writing(self, fresh: dict[str, list[Part]], identity: str) -> Iterator[sqlite3.Connection]:
        """One write transaction for an index change, which also keeps the new names' pinyin and
        records the catalogue indexed: all of it or nothing."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.executemany("INSERT OR IGNORE INTO pinyin_parts(name_zh, parts) VALUES (?, ?)",
                                 [(n, json.dumps(v, ensure_ascii=False)) for n, v in fresh.items()])
                self._set_meta(conn, "indexed", identity)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def page(self, f: Filters, here: str, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total matching, one page): when searching, products whose spellings start with the query
        first, then those with a later word that does, each in the index's fixed order; else by
        category and SKU."""
        where: list[str] = []
        args: list[Any] = []
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
        join, join_args = "", []
        if f.in_stock_here:
            join, join_args = " JOIN stock h ON h.sku = s.sku AND h.location = ? AND h.atp > 0", [here]
        conn = self._conn()
        q = _squeeze(f.query)[:_MAX_KEY]
        if f.query.strip() and not q:
            return 0, []  # only punctuation typed: nothing spells like that
        if not q:
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            total = int(conn.execute(f"SELECT count(*) FROM shelf s{join}{clause}", [*join_args, *args]).fetchone()[0])
            ranks = [r[0] for r in conn.execute(f"SELECT s.rank FROM shelf s{join}{clause} ORDER BY s.category, s.sku"
                                                " LIMIT ? OFFSET ?", [*join_args, *args, limit, offset])]
        else:
            total, ranks = self._search(conn, q, join, join_args, where, args, limit, offset)
        if not ranks:
            return total, []
        got = {r["rank"]: r for r in conn.execute(
            "SELECT s.*, (SELECT atp FROM stock WHERE sku = s.sku AND location = ?) AS here_atp FROM shelf s"
            f" WHERE s.rank IN ({','.join('?' * len(ranks))})", [here, *ranks])}
        return total, [{
            "sku": r["sku"], "name_en": r["name_en"], "name_zh": r["name_zh"], "brand": r["brand"],
            "category": r["category"], "price": r["price_text"], "thumb": r["thumb"], "here": r["here_atp"],
        } for r in (got[k] for k in ranks if k in got)]

    @staticmethod
    def _search(conn: sqlite3.Connection, q: str, join: str, join_args: list[Any], where: list[str], args: list[Any],
                limit: int, offset: int) -> tuple[int, list[int]]:
        token = f'"{q}"*'  # squeezed: letters, digits and characters only, nothing FTS5 would parse
        head = f"{{head}} : {token}"
        # Without filters the index alone answers; with them each match is joined to its product.
        frm = f"FROM shelf_search m JOIN shelf s ON s.rank = m.rowid{join}" if where or join else "FROM shelf_search m"
        cond = "".join(f" AND {w}" for w in where)

        def count(match: str) -> int:
            return int(conn.execute(f"SELECT count(*) {frm} WHERE shelf_search MATCH ?{cond}",
                                    [*join_args, match, *args]).fetchone()[0])

        def ranks(match: str, n: int, skip: int) -> list[int]:
            return [int(r[0]) for r in conn.execute(
                f"SELECT m.rowid {frm} WHERE shelf_search MATCH ?{cond} ORDER BY m.rowid LIMIT ? OFFSET ?",
                [*join_args, match, *args, n, skip])]

        total = count(token)
        if total == 0:
            return 0, []
        first = count(head)
        out = ranks(head, limit, offset) if offset < first else []
        if len(out) < limit and total > first:
            out += ranks(f"{token} NOT {head}", limit - len(out), max(0, offset - first))
        return total, out

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
