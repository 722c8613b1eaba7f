"""Where routing looks: the location index each process keeps, and one order's candidate locations
with their stock, loaded in as few queries as its rules need.

The index (every location, its zone, and a `cKDTree` of the active ones) is loaded once per process
and checked on every routing against `orders_versions` (`locations`), which each change of a
location bumps in its own transaction: an edit on any host is seen by the next order everywhere,
and no order reloads thousands of locations. That version is read in the same query as the rule
set's (`versions`), so the check costs no extra round trip.

A `Pool` holds what one routing run has read: the k nearest locations' stock of the order's SKUs
comes from ONE primary-key `IN` query (the largest k any rule asks for; each rule takes its first
k), and only when those cannot fill the order does a second query look, through the stock table's
SKU index, for the nearest locations that hold the SKUs. Plain reads: `reserve` (in
`cloud.orders.stock`) re-checks under its row locks, and after a lost race the pool forgets what
it read.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, cast

import numpy as np
from sqlalchemy import Connection, Table, bindparam, func, select, text, update

from cloud.db import insert_for
from cloud.orders.geo import SpatialIndex, Zone, unit_vectors
from cloud.orders.models import Assignment, Location, RuleSetRow, StockRow, VersionRow
from cloud.orders.routing import Candidate, OrderIn, Plan, km_from, km_to, plan
from cloud.orders.rules import Rule

__all__ = ["INDEX_TTL_S", "Locations", "Pool", "bump_locations", "invalidate_locations", "locations", "plan_rule",
           "versions"]

LOCS: Table = Location.__table__  # type: ignore[assignment]
STOCK: Table = StockRow.__table__  # type: ignore[assignment]
ASSIGN: Table = Assignment.__table__  # type: ignore[assignment]
RULESETS: Table = RuleSetRow.__table__  # type: ignore[assignment]
VERSIONS: Table = VersionRow.__table__  # type: ignore[assignment]

LOCATIONS = "locations"
INDEX_TTL_S = 300.0
"""Reloaded after this even at the same version: a location edited by hand in SQL (not through
the API, CLI or a box) is seen within it."""

# Built once: constructing SQLAlchemy statements per order cost as much as running them.
_ATP = STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.safety
_VERSIONS = select(
    select(func.max(RULESETS.c.version)).scalar_subquery(),
    select(VERSIONS.c.version).where(VERSIONS.c.name == LOCATIONS).scalar_subquery(),
)
_STOCK_OF = select(STOCK.c.location_id, STOCK.c.sku, _ATP).where(
    STOCK.c.location_id.in_(bindparam("ids", expanding=True)), STOCK.c.sku.in_(bindparam("skus", expanding=True)))
_STOCK_OF_LOCKED = _STOCK_OF.order_by(STOCK.c.location_id, STOCK.c.sku).with_for_update()
"""The same rows locked in the one fixed order every transaction locks stock rows in."""
_STOCK_OF_PG = text("SELECT location_id, sku, on_hand - reserved - safety FROM orders_stock "
                    "WHERE location_id = ANY(CAST(:ids AS integer[])) AND sku = ANY(CAST(:skus AS varchar[]))")
_STOCK_OF_LOCKED_PG = text(f"{_STOCK_OF_PG.text} ORDER BY location_id, sku FOR UPDATE")
"""On PostgreSQL the same, the ids as one array literal: an expanding IN of 64 ids made a new SQL
text for every order, rendered, sent and parsed again (a third of an order's statement time)."""


def _stock_of(conn: Connection, ids: Sequence[int], skus: list[str], *, lock: bool = False) -> Any:
    if conn.dialect.name == "postgresql":
        return conn.execute(_STOCK_OF_LOCKED_PG if lock else _STOCK_OF_PG,
                            {"ids": "{" + ",".join(map(str, ids)) + "}", "skus": skus})
    return conn.execute(_STOCK_OF_LOCKED if lock else _STOCK_OF, {"ids": list(ids), "skus": skus})
_USED_TODAY = select(ASSIGN.c.location_id, func.count()).where(
    ASSIGN.c.location_id.in_(bindparam("ids", expanding=True)), ASSIGN.c.created_at >= bindparam("day"),
    ASSIGN.c.state.not_in(("rejected", "expired", "withdrawn"))).group_by(ASSIGN.c.location_id)


_ATP_SQL = "s.on_hand - s.reserved - s.safety"
# One row per SKU, its locations and their stock as two arrays: a split order's SKU has ~400 holders
# at full size, and turning each into a Python row cost more than its planning.
_HOLDING_ANY = {
    "postgresql": text(f"SELECT s.sku, array_agg(s.location_id), array_agg({_ATP_SQL}) FROM orders_stock s "
                       f"WHERE s.sku = ANY(CAST(:skus AS varchar[])) AND {_ATP_SQL} >= 1 GROUP BY s.sku"),
    "sqlite": text(f"SELECT s.sku, json_group_array(s.location_id), json_group_array({_ATP_SQL}) "
                   f"FROM json_each(:skus) AS w CROSS JOIN orders_stock s ON s.sku = w.value "
                   f"WHERE {_ATP_SQL} >= 1 GROUP BY s.sku"),
}
"""Per SKU: the locations holding some, with their stock of it."""


def _arrays(dialect: str, locs: Any, atp: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """An aggregate's two arrays, as numpy, in ascending location ids (never below 0 available)."""
    if dialect != "postgresql":
        locs, atp = json.loads(locs), json.loads(atp)
    ids = np.asarray(locs, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.maximum(np.asarray(atp, dtype=np.int64)[order], 0)


def holding_all(per: Mapping[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], skus: Sequence[str]
                ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The locations holding some of each of `skus` (ascending ids) and their stock of each (a
    column per SKU), from each SKU's holders as `_HOLDING_ANY` and `_arrays` give them.

    Intersected here rather than by a query of its own: that one scanned every SKU's holders again
    (a random heap page each, ~400 a SKU at full size) and joined back to the stock table by
    location (every row of each location found), ~8 ms of the server's time for a batch's order."""
    empty = np.zeros(0, dtype=np.int64)
    cols = [per.get(s, (empty, empty)) for s in skus]
    ids = cols[0][0] if cols else empty
    for held, _ in cols[1:]:
        ids = np.intersect1d(ids, held, assume_unique=True)
    if not len(ids):
        return empty, np.zeros((0, len(cols)), dtype=np.int64)
    return ids, np.stack([atp[np.searchsorted(held, ids)] for held, atp in cols], axis=1)


def versions(conn: Connection) -> tuple[int | None, int]:
    """(the newest rule set's version or None, the locations' version) in one query."""
    rules, locs = conn.execute(_VERSIONS).one()
    return (None if rules is None else int(rules)), int(locs or 0)


def bump_locations(conn: Connection) -> None:
    """Record, in the caller's transaction, that locations changed: every process reloads its index."""
    done = conn.execute(update(VERSIONS).where(VERSIONS.c.name == LOCATIONS)
                        .values(version=VERSIONS.c.version + 1)).rowcount
    if not done:
        conn.execute(insert_for(conn, VERSIONS).values(name=LOCATIONS, version=1)
                     .on_conflict_do_update(index_elements=["name"], set_={"version": VERSIONS.c.version + 1}))
    invalidate_locations()


@dataclass(frozen=True)
class Locations:
    """Every location of one database as this process last loaded it."""

    version: int
    loaded: float
    index: SpatialIndex
    """The active locations."""
    base: dict[int, Candidate]
    """id → the location as a candidate without stock."""
    capacity: dict[int, int]
    meta: dict[int, tuple[str | None, int | None]]
    """id → (its box, its fleet store id)."""
    by_code: dict[str, int]
    rows: dict[int, int]
    """id → its row in `vectors`."""
    vectors: np.ndarray[Any, Any]
    """Unit vectors of every location (distances to the holders of stock found by SKU)."""
    row_of: np.ndarray[Any, Any]
    """id → its row in `vectors`, -1 for no location (`rows` for arrays of ids at once)."""
    active_of: np.ndarray[Any, Any]
    """id → whether that location is active."""
    plain: frozenset[int]
    """The active locations without a delivery zone (`plan` looks at them one by one only when they
    hold some of the order)."""
    lat_of: np.ndarray[Any, Any]
    lon_of: np.ndarray[Any, Any]
    """Each location's coordinates, by its row in `vectors` (distances without a Python step each)."""
    axes: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]
    """`vectors`' three columns, each contiguous (numpy's sum over a row of three cost 3x the rest)."""


_NO_STOCK: Mapping[str, int] = MappingProxyType({})
"""A location's stock as loaded (none: `Pool` reads it per order)."""

_cache: dict[str, Locations] = {}
_cache_lock = threading.Lock()


def invalidate_locations() -> None:
    with _cache_lock:
        _cache.clear()


def _db_key(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True) + str(conn.engine.url.query)


def locations(conn: Connection, version: int | None = None) -> Locations:
    """The location index, reloaded when `version` (from `versions`; read here when not given) is
    not the one it was loaded at."""
    if version is None:
        version = versions(conn)[1]
    key = _db_key(conn)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit.version == version and time.monotonic() - hit.loaded < INDEX_TTL_S:
        return hit
    loaded = _load(conn, version)
    with _cache_lock:
        _cache[key] = loaded
    return loaded


def _load(conn: Connection, version: int) -> Locations:
    base: dict[int, Candidate] = {}
    capacity: dict[int, int] = {}
    meta: dict[int, tuple[str | None, int | None]] = {}
    for r in conn.execute(select(LOCS).order_by(LOCS.c.id)):
        meta[r.id] = (r.node, r.store_id)
        zone = None
        if r.zone_radius_km is not None or r.zone_polygon:
            zone = Zone(r.lat, r.lon, r.zone_radius_km, tuple(tuple(p) for p in r.zone_polygon) if r.zone_polygon else None)
        # The kinds and regions as one object each, and one empty stock for all: a location copied with
        # its stock (`Pool._make`, for every holder chosen) touches each object it shares, and a
        # location's own are rarely in the cache.
        base[r.id] = Candidate(id=r.id, code=r.code, kind=sys.intern(r.kind),
                               region=None if r.region is None else sys.intern(r.region), lat=r.lat, lon=r.lon,
                               atp=_NO_STOCK, zone=zone, priority=r.priority or 0, cost=r.cost or 0.0,
                               active=bool(r.active))
        if r.capacity_per_day is not None:
            capacity[r.id] = r.capacity_per_day
    active = [c for c in base.values() if c.active]
    ids = list(base)
    vectors = unit_vectors([base[i].lat for i in ids], [base[i].lon for i in ids]) if ids else np.zeros((0, 3))
    row_of = np.full(max(ids, default=0) + 1, -1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    active_of = np.zeros(len(row_of), dtype=bool)
    active_of[[c.id for c in active]] = True
    return Locations(version=version, loaded=time.monotonic(),
                     index=SpatialIndex([c.id for c in active], [c.lat for c in active], [c.lon for c in active]),
                     base=base, capacity=capacity, meta=meta, by_code={c.code: c.id for c in base.values()},
                     rows={i: n for n, i in enumerate(ids)}, vectors=vectors, row_of=row_of, active_of=active_of,
                     plain=frozenset(c.id for c in active if c.zone is None),
                     lat_of=np.array([base[i].lat for i in ids], dtype=float),
                     lon_of=np.array([base[i].lon for i in ids], dtype=float),
                     axes=(np.ascontiguousarray(vectors[:, 0]), np.ascontiguousarray(vectors[:, 1]),
                           np.ascontiguousarray(vectors[:, 2])))


def nearest_holding(locs: Locations, ids: np.ndarray[Any, Any], lat: float, lon: float, n: int,
                    columns: Sequence[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
                    origin: np.ndarray[Any, Any] | None = None) -> tuple[list[int], list[list[int]]]:
    """The `n` nearest of `ids` that are active locations, nearest first, and for each column
    (a SKU's holders in ascending id and their figures) the figure of each of them: 0 where the
    column has no row for it. `origin`: `unit_vectors(lat, lon)`, when known."""
    if len(ids) and int(ids.max()) >= len(locs.row_of):
        ids = ids[ids < len(locs.row_of)]
    ids = ids[locs.active_of[ids]]  # (an active location has a row)
    if not len(ids):
        return [], []
    if origin is None:
        origin = unit_vectors(lat, lon)
    rows = locs.row_of[ids]
    x, y, z = locs.axes
    dx, dy, dz = x[rows] - origin[0], y[rows] - origin[1], z[rows] - origin[2]
    # `np.linalg.norm(vectors[rows] - origin, axis=1)` as it computes it (the squares summed in
    # column order), a column at a time.
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    if len(d) > 2 * n:
        # Sorting only those within the n-th distance (ties kept in id order, as the stable sort of
        # them all would): a split order's SKU has thousands of holders at full size.
        near = (d <= np.partition(d, n - 1)[n - 1]).nonzero()[0]
        chosen = ids[near[d[near].argsort(kind="stable")[:n]]]
    else:
        chosen = ids[d.argsort(kind="stable")[:n]]
    # (Array methods rather than numpy's functions, which wrap them in Python; columns of the same
    # holders, as every SKU's of a set's holders, looked up once.)
    figures: list[list[int]] = []
    last: np.ndarray[Any, Any] | None = None
    j = hit = chosen
    for held, values in columns:
        if not len(held):
            figures.append([0] * len(chosen))
            continue
        if held is not last:
            j = np.minimum(held.searchsorted(chosen), len(held) - 1)
            hit = held[j] == chosen
            last = held
        figures.append(np.where(hit, values[j], 0).tolist())
    return chosen.tolist(), figures


class Pool:
    """One order's candidates and their stock of its SKUs, as read during one routing run."""

    def __init__(self, conn: Connection, locs: Locations, order: OrderIn, now: datetime, k_max: int) -> None:
        self.conn = conn
        self.locs = locs
        self.order = order
        self.now = now
        self.k_max = k_max
        self.skus = sorted({s for s, _ in order.lines})
        self.total = locs.index.size
        """How many active locations there are (fewer candidates than this: there are more to look at)."""
        self._nearest: list[int] | None = None
        self._atp: dict[int, Mapping[str, int]] = {}
        self._read: set[int] = set()
        """Locations whose stock of the order's SKUs was read (a missing row: none there)."""
        self._used: dict[int, int] = {}
        self._counted: set[int] = set()
        self._made: dict[int, Candidate] = {}
        """Candidates built from what was read: each rule's passes look at the same nearest locations."""
        self._near: dict[int, list[Candidate]] = {}
        """`near(k)` as last returned (cleared with `_made`)."""
        self._listed: dict[int, tuple[list[Candidate], list[int], list[int]]] = {}
        """id of a list `_candidates` returned → (that list, its locations' ids, the positions of
        those `plan` must look at: some stock of the order, inactive or zoned)."""
        self._km: dict[int, tuple[Sequence[Candidate], list[float | None]]] = {}
        """id of a list of candidates → (that list, `distances` of it): the rules' passes share
        the nearest."""
        self._origin: np.ndarray[Any, Any] | None = None

    def distances(self, cands: Sequence[Candidate]) -> list[float | None]:
        """`routing._distances` of `cands` (from the locations' coordinates when the pool listed them)."""
        o = self.order
        if o.lat is None or o.lon is None:
            return [None] * len(cands)
        known = self._km.get(id(cands))
        if known is not None and known[0] is cands:
            return known[1]
        listed = self._listed.get(id(cands))
        out: list[float | None]
        if listed is not None and listed[0] is cands:
            if not cands:
                return []
            locs = self.locs
            rows = locs.row_of[np.array(listed[1], dtype=np.int64)]
            out = cast(list[float | None], km_from(o.lat, o.lon, locs.lat_of[rows], locs.lon_of[rows]))
        else:
            out = cast(list[float | None], km_to(o.lat, o.lon, cands))
        self._km[id(cands)] = (cands, out)  # the list kept: its id is not reused meanwhile
        return out

    def special(self, cands: Sequence[Candidate]) -> list[int] | None:
        """The positions in `cands` `plan` must look at one by one (see `_listed`), None when the
        pool did not list them."""
        listed = self._listed.get(id(cands))
        return listed[2] if listed is not None and listed[0] is cands else None

    def origin(self) -> np.ndarray[Any, Any]:
        """`unit_vectors` of the order's place."""
        if self._origin is None:
            self._origin = unit_vectors(self.order.lat, self.order.lon)
        return self._origin

    def forget(self) -> None:
        """Stock moved under us (a lost race): read it again next time."""
        self._atp.clear()
        self._read.clear()
        self._made.clear()
        self._near.clear()

    def nearest_ids(self, k: int) -> list[int]:
        """The `k` nearest active locations (only the pickup store for a pickup order that names one)."""
        o = self.order
        if o.fulfilment == "pickup" and o.pickup_location is not None:
            return [o.pickup_location] if o.pickup_location in self.locs.base else []
        if o.lat is None or o.lon is None:
            return []
        if self._nearest is None or len(self._nearest) < min(k, self.total):
            self._nearest = self.locs.index.nearest(o.lat, o.lon, max(k, self.k_max))
        return self._nearest[:k]

    def near(self, k: int, *, lock: bool = False) -> list[Candidate]:
        """The `k` nearest (see `nearest_ids`) with their stock; `lock`: their stock rows locked."""
        if not lock and k in self._near:
            return self._near[k]
        ids = self.nearest_ids(k)
        if lock:
            self.lock(ids)
        elif self._nearest is not None:
            # One query for the nearest `k_max`: a later rule (or a retry) asking for fewer reads nothing.
            self._read_stock(self._nearest)
        got = self.of(ids)
        if not lock:
            self._near[k] = got
        return got

    def stocked(self, mode: str, k: int, *, lock: bool = False) -> list[Candidate]:
        """The `k` nearest active locations holding the order ("all": every line's quantity; "any":
        some of one line), found through the stock table's SKU index."""
        o = self.order
        if o.fulfilment == "pickup" and o.pickup_location is not None:
            return self.near(k, lock=lock)
        if o.lat is None or o.lon is None or not self.skus:
            return []
        conn, skus, locs = self.conn, self.skus, self.locs
        dialect = conn.dialect.name
        # One row per SKU, its holders and their stock as two arrays (a SKU has ~400 holders at full
        # size: a Python row each cost more than the rest of the order's planning).
        per: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
        for sku, held, atp in conn.execute(_HOLDING_ANY[dialect], {
                "skus": skus if dialect == "postgresql" else json.dumps(skus)}).all():
            per[sku] = _arrays(dialect, held, atp)
        empty = np.zeros(0, dtype=np.int64)
        cols = [per.get(s, (empty, empty)) for s in skus]
        if mode == "all":
            ids_arr, stock_all = holding_all(per, skus)
            if len(ids_arr):
                need = dict(o.lines)
                ok = np.ones(len(ids_arr), dtype=bool)
                for n, s in enumerate(skus):
                    ok &= stock_all[:, n] >= need[s]
                ids_arr = ids_arr[ok]
        else:
            ids_arr = self._union([held for held, _ in cols])
        # Only the chosen are marked read: for them, what the holders query did not return has
        # nothing available, as far as routing goes ("any" omits what is below 1).
        chosen, stock = nearest_holding(locs, ids_arr, o.lat, o.lon, k + len(o.excluded), cols, self.origin())
        if not chosen:
            return []
        for n, i in enumerate(chosen):
            if i not in self._read:
                self._atp[i] = {s: col[n] for s, col in zip(skus, stock, strict=True)}
                self._read.add(i)
                self._made.pop(i, None)
        if lock:
            self.lock(chosen)
        return self.of(chosen)

    @staticmethod
    def _union(parts: Sequence[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
        """The ids in any of `parts` (each ascending), ascending, each once: `np.unique` of them
        concatenated, by a sort and a comparison with the neighbour (its hashing cost ~10x that on a
        split order's few thousand ids)."""
        if not parts:
            return np.zeros(0, dtype=np.int64)
        ids = np.concatenate(parts)
        ids.sort()
        if len(ids) < 2:
            return ids
        keep = np.empty(len(ids), dtype=bool)
        keep[0] = True
        np.not_equal(ids[1:], ids[:-1], out=keep[1:])
        return ids[keep]

    def lock(self, ids: Sequence[int]) -> None:
        """Lock the stock rows of `ids` (PostgreSQL; in the fixed order) and read them again."""
        if not ids:
            return
        if self.conn.dialect.name != "postgresql":
            self._read_stock(ids)  # the write transaction holds SQLite's write lock already
            return
        for i in ids:
            self._read.discard(i)
            self._atp.pop(i, None)
            self._made.pop(i, None)
        self._near.clear()
        self._fill(_stock_of(self.conn, sorted(set(ids)), self.skus, lock=True), ids)

    def _read_stock(self, ids: Sequence[int]) -> None:
        todo = sorted({i for i in ids if i not in self._read})
        if todo:
            self._fill(_stock_of(self.conn, todo, self.skus), todo)

    def _fill(self, rows: Any, ids: Sequence[int]) -> None:
        for loc, sku, atp in rows:
            got = self._atp.get(loc)
            if got is None:
                got = self._atp[loc] = {}
            got[sku] = max(0, int(atp))  # type: ignore[index]  # a dict: only `_fill` makes them here
        self._read.update(ids)

    def of(self, ids: Sequence[int]) -> list[Candidate]:
        """`ids` as candidates with their stock (read already) and capacity left today."""
        capacity = self.locs.capacity
        self._read_stock(ids)
        capped = [i for i in ids if i in capacity and i not in self._counted]
        if capped:
            day = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
            for loc_id, n in self.conn.execute(_USED_TODAY, {"ids": capped, "day": day}):
                self._used[loc_id] = int(n)
            self._counted.update(capped)
            for i in capped:
                self._made.pop(i, None)
            self._near.clear()
        return self._candidates(ids)

    def _candidates(self, ids: Sequence[int]) -> list[Candidate]:
        """`ids` as candidates, from the stock and today's use already read (listed in `_listed`)."""
        made, base, atp, capacity, plain = self._made, self.locs.base, self._atp, self.locs.capacity, self.locs.plain
        out: list[Candidate] = []
        got: list[int] = []
        special: list[int] = []
        for i in ids:
            if i in atp or i in capacity:
                c = made.get(i)
                if c is None:
                    b = base.get(i)
                    if b is None:
                        continue
                    c = self._make(i, b)
                if c.atp or i not in plain:
                    special.append(len(out))
            else:
                # The commonest case, without a call (one per candidate of every pass cost more than
                # the rest of building the list): nothing of the order there, no capacity to count.
                c = base.get(i)
                if c is None:
                    continue
                if i not in plain:
                    special.append(len(out))
            out.append(c)
            got.append(i)
        self._listed[id(out)] = (out, got, special)  # the list kept: its id is not reused meanwhile
        return out

    def _make(self, i: int, b: Candidate) -> Candidate:
        """Location `i` (`b` as loaded) with the stock read and its capacity left today."""
        cap = self.locs.capacity.get(i)
        atp = self._atp.get(i)
        # The location as loaded with its stock and capacity left: a copy of its fields (the
        # dataclass's frozen __init__ sets them one by one, and this runs for every holder chosen).
        c: Candidate = object.__new__(Candidate)
        fields = c.__dict__
        fields.update(b.__dict__)
        fields["atp"] = atp or {}
        fields["capacity_left"] = None if cap is None else cap - self._used.get(i, 0)
        self._made[i] = c
        return c


def _may_fill(order: OrderIn, cands: Sequence[Candidate], rule: Rule) -> bool:
    """False when `plan` surely cannot fill the order from `cands`: none holds all of it (single),
    or no `max_locations` of them hold it (partial: for some SKU, not even the most any that many
    hold). Only those with some stock count: `cands` may be just those."""
    lines = order.lines
    if rule.assignment == "single":
        for c in cands:
            atp = c.atp
            if atp:  # (most have none of the order's SKUs)
                for s, q in lines:
                    if atp.get(s, 0) < q:
                        break
                else:
                    return True
        return False
    held = [atp for atp in (c.atp for c in cands) if atp]
    most = rule.max_locations
    for s, q in lines:
        figures = [atp.get(s, 0) for atp in held]
        if len(figures) > most:
            figures.sort(reverse=True)
            del figures[most:]
        if sum(figures) < q:
            return False
    if len(held) > most:
        # Each SKU is held by one of the locations that hold it: not even the `most` holding the most
        # SKUs hold them all, and no `most` can (a split order whose nearest each hold one of its SKUs).
        kinds = sorted((sum(1 for s, _ in lines if atp.get(s, 0) > 0) for atp in held), reverse=True)
        if sum(kinds[:most]) < len(lines):
            return False
    return True


def plan_rule(pool: Pool, rule: Rule, *, lock: bool = False, only: Sequence[int] | None = None) -> Plan:
    """What `rule` does with the pool's order: among the rule's k nearest locations, else among the
    k nearest that hold the order (`only`: among these locations). `lock`: plan on locked rows, so
    that the plan holds until commit (after lost races)."""
    order = pool.order
    if only is not None:
        if lock:
            pool.lock(only)
        cands = pool.of(only)
        return plan(order, cands, rule, pool.distances(cands), pool.special(cands))
    cands = pool.near(rule.candidates, lock=lock)
    further = len(cands) < pool.total and order.lat is not None
    special = pool.special(cands)
    # A pass that cannot fill the order, when the next one replaces its plan, is not planned (nor explained).
    if not further or _may_fill(order, cands if special is None else [cands[n] for n in special], rule):
        p = plan(order, cands, rule, pool.distances(cands), special)
    else:
        p = Plan(rule=rule.name)
    if not p.filled and further:
        # The nearest lack stock: the nearest among those that hold it.
        cands = pool.stocked("all" if rule.assignment == "single" else "any", rule.candidates, lock=lock)
        p = plan(order, cands, rule, pool.distances(cands), pool.special(cands))
    return p
