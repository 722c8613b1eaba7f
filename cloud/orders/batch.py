"""Orders taken in and routed in batches: N orders in one transaction, in a handful of round trips
whatever N is (group commit), for callers that have several orders at once (the bench, an import,
an inbox drain, a bus batch).

Measured before this (`bench/routing.py`): an order cost 14 statements, each a round trip to the
server, and on a loaded machine the round trips, not the SQL, were most of an order's time;
committing 10 orders a transaction barely helped, since each still paid its 14 round trips. Here
a batch costs about 10 statements in all on PostgreSQL (a few more on SQLite):

1. the versions of the rules and locations, and the catalogue check of every SKU of the batch;
2. the orders (one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING`) and their lines;
3. the stock of every order's nearest locations (one query for the whole batch), then the
   holders of each SKU of the orders their nearest cannot fill (one more; the locations holding
   all of an order's SKUs are their intersection, `candidates.holding_all`). Planning is the
   same `plan_rule` as `route`, on `BatchPool`: when it needs
   something not read yet it stops (`NeedData`), the batch reads what every stopped order needs in
   one query, and plans again from there. Orders are planned one after the other exactly as if
   routed serially in the batch's order: each sees the stock (and today's capacity) the earlier
   orders of the batch took;
4. one reservation for the whole batch (`reserve`'s conditional `UPDATE`, the quantities of every
   order summed per row, rows locked in (location, sku) order across the batch, in a savepoint on
   PostgreSQL): either every row still has what the batch takes, or nothing is reserved, the
   savepoint gives the locks back, and the batch reads and plans again; after `BATCH_TRIES` it
   locks every stock row of its SKUs in that same order, in one statement, and plans on them. No
   stock lock is ever taken out of order while another is held, so batches and single orders
   cannot deadlock each other (orders routed alone after the batch's reservation — a rule that
   queues, `MAX_PASSES` exhausted — are the exception, as any transaction routing several orders
   one by one is);
5. the assignments, reservations, movements (with each order's own `reserved_after`, as if the
   orders had reserved one after the other), decisions, order states and transitions, and the
   status feed rows of the channels that have one: on PostgreSQL all in one statement of
   data-modifying CTEs (`_write_chain`), each table's rows one JSON array; on SQLite one multi-row
   statement a table; then `assign` commands to the stores' boxes (per assignment, through the
   durable downlink).

Every guarantee of `service.intake` holds per order: the channel order id is the idempotency key;
what cannot be accepted is returned as its `Refused` (for the caller's inbox) and changes nothing;
every decision is stored with its explanation; every transition is recorded. An order's effects
are all written or none: the batch computes everything before writing, and a statement that
fails fails the caller's transaction. Rule sets with checks (hold, merge, new customer) and a
rule that queues take the per-order path for the orders concerned.
"""

from __future__ import annotations

import gc
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import numpy as np
from sqlalchemy import Connection, Table, text
from sqlalchemy.sql import sqltypes

from broker.envelope import MessageType
from cloud.bus import downlink
from cloud.db import insert_for
from cloud.orders import holders, service
from cloud.orders.candidates import (
    _ATP_SQL,
    _HOLDING_ANY,
    _USED_TODAY,
    Locations,
    Pool,
    _arrays,
    holding_all,
    nearest_holding,
    plan_rule,
)
from cloud.orders.holders import Arrays, Holders
from cloud.orders.pgarrays import int_array, text_array
from cloud.orders.routing import COMBINATION_POOL, VECTOR_MAX_K, Candidate, OrderIn, _first_cover
from cloud.orders.rules import RuleError, RuleSet, Unfilled
from cloud.orders.stock import _RESERVE_PG, _RESERVE_SQLITE, _UNRESERVE

__all__ = ["BatchPool", "NeedData", "intake_batch", "intake_one"]

MAX_PASSES = 6
"""Reads a batch may need before an order still short of data is routed on its own (a rule set
trying many rules asks for one more read per rule at most)."""

Pair = tuple[int, str]
_NONE: Arrays = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


class NeedData(Exception):
    """Planning needs stock not read yet: the batch reads it (with every other order's) and plans again."""


@dataclass
class Reads:
    """What a batch has read, shared by its orders' pools, and what they took so far."""

    atp: dict[Pair, int] = field(default_factory=dict)
    """Available to promise as read (a pair read but without a row: 0)."""
    held_by: dict[str, set[int]] = field(default_factory=dict)
    """Per SKU, the locations where it had some available when read (elsewhere every pair read is
    0: most of an order's nearest hold none of its SKUs)."""
    taken: dict[Pair, int] = field(default_factory=dict)
    """Planned by the orders of the batch planned so far."""
    want_pairs: set[Pair] = field(default_factory=set)
    want_groups: list[tuple[tuple[str, ...], list[int]]] = field(default_factory=list)
    """(SKUs, locations): every pair of them (an order's nearest, read without a tuple per pair)."""
    read_groups: dict[tuple[str, ...], set[int]] = field(default_factory=dict)
    """Per SKU set, the locations where each of them was read (a missing pair: no row, nothing there)."""
    holders_all: dict[tuple[str, ...], tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = field(
        default_factory=dict)
    """Per SKU set: the locations that held some of each when read (ascending ids), and their
    available stock of each (a row per location, a column per SKU of the set)."""
    want_all: set[tuple[str, ...]] = field(default_factory=set)
    holders_any: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = field(default_factory=dict)
    """Per SKU: the locations that held some when read (ascending ids), and their available stock."""
    want_any: set[str] = field(default_factory=set)
    used: dict[int, int] = field(default_factory=dict)
    """Assignments today per capped location (as read) …"""
    used_batch: dict[int, int] = field(default_factory=dict)
    """… and those of the batch's orders planned so far."""
    want_used: set[int] = field(default_factory=set)
    cached: dict[str, Arrays] | None = None
    """PostgreSQL: each SKU's holders from the process's cache (`cloud.orders.holders`), brought up
    to date when the batch started planning: the stock of the SKUs in it is taken from there instead
    of read (as a plain read of the holders would have returned it then)."""
    complete: bool = False
    """Every SKU is in `cached` (one missing has no holders)."""
    store: Holders | None = None
    generation: int = 0

    def cached_of(self, sku: str) -> Arrays | None:
        """The SKU's holders from the cache, or None when it must be read."""
        if self.cached is None:
            return None
        got = self.cached.get(sku)
        if got is None and self.complete:
            return _NONE
        return got

    def holding(self, skus: Iterable[str]) -> set[int]:
        """The locations read with some of one of `skus` available."""
        by = self.held_by
        return set().union(*(by.get(s, ()) for s in skus))

    def left(self, loc: int, sku: str) -> int:
        return max(0, self.atp.get((loc, sku), 0) - self.taken.get((loc, sku), 0))

    def left_of(self, sku: str, ids: np.ndarray[Any, Any], atp: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`atp` (of the ascending `ids`, as read) less what the batch's earlier orders took of `sku`
        there (`left` for arrays: a split order's SKU has hundreds of holders at full size)."""
        out = atp
        for (loc, s), qty in self.taken.items():
            if s == sku:
                j = int(np.searchsorted(ids, loc))
                if j < len(ids) and ids[j] == loc:
                    if out is atp:
                        out = atp.copy()
                    out[j] -= qty
        return out


class BatchPool(Pool):
    """A `Pool` reading from the batch's `Reads` (raising `NeedData` for what is not there) instead of
    the database, with the batch's earlier plans taken off."""

    def __init__(self, conn: Connection, locs: Locations, order: OrderIn, now: datetime, k_max: int,
                 reads: Reads) -> None:
        super().__init__(conn, locs, order, now, k_max)
        self.reads = reads

    def lock(self, ids: Sequence[int]) -> None:  # pragma: no cover - batches plan on plain reads only
        raise AssertionError("a batch plans on plain reads; locking tries go through service.route")

    def _read_stock(self, ids: Sequence[int]) -> None:
        todo = [i for i in ids if i not in self._read]
        if not todo:
            return
        reads, skus = self.reads, self.skus
        known = reads.read_groups.get(tuple(skus), ())
        missing = [(i, s) for i in todo if i not in known for s in skus if (i, s) not in reads.atp]
        if missing:
            reads.want_pairs.update(missing)
            raise NeedData
        atp, taken, mine = reads.atp, reads.taken, self._atp
        held = reads.holding(skus)
        # `Reads.left`, inlined (this runs for every candidate of every order), and without the
        # batch's takings when the earlier orders took none of these SKUs (what was read is >= 0).
        took = bool(taken) and not {s for _, s in taken}.isdisjoint(skus)
        for i in todo:
            if i in held:  # elsewhere (most of them) none of the SKUs: no entry, as `_fill` leaves it
                mine[i] = ({s: max(0, atp.get((i, s), 0) - taken.get((i, s), 0)) for s in skus} if took
                           else {s: atp.get((i, s), 0) for s in skus})
        self._read.update(todo)

    def stocked(self, mode: str, k: int, *, lock: bool = False) -> list[Candidate]:
        o = self.order
        if o.fulfilment == "pickup" and o.pickup_location is not None:
            return self.near(k, lock=lock)
        if o.lat is None or o.lon is None or not self.skus:
            return []
        reads, skus, locs = self.reads, self.skus, self.locs
        # In arrays: held when read, and still after the batch's earlier orders (as a serial run would
        # read), in ascending ids as the per-row version sorted them.
        left: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
        """Per SKU: the ids read and what is left there."""
        if mode == "all":
            key = tuple(skus)
            got = reads.holders_all.get(key)
            if got is None:
                reads.want_all.add(key)
                raise NeedData
            held, stock = got
            ok = np.ones(len(held), dtype=bool)
            need = dict(o.lines)
            for n, s in enumerate(skus):
                have = reads.left_of(s, held, stock[:, n])
                ok &= have >= need[s]  # need >= 1: held with some of each, too
                left.append((held, have))
            ids_arr = held[ok]
        else:
            todo = [s for s in skus if s not in reads.holders_any]
            if todo:
                reads.want_any.update(todo)
                raise NeedData
            parts = []
            for s in skus:
                held, stock = reads.holders_any[s]
                have = reads.left_of(s, held, stock)
                parts.append(held[have >= 1])
                left.append((held, have))
            ids_arr = self._union(parts)
        # Only the chosen are marked read (all of a split order's holders, ~400 a SKU at full size,
        # cost more than the rest of its planning), from the holders' arrays: what the holders query
        # did not return for them has nothing available, as far as routing goes.
        chosen, cols = nearest_holding(locs, ids_arr, o.lat, o.lon, k + len(o.excluded),
                                       [(held, np.maximum(have, 0)) for held, have in left], self.origin())
        if not chosen:
            return []
        # (`nearest_holding` gives a figure per chosen in each column: zip's strict checks cost more
        # than the dicts.)
        read, mine = self._read, self._atp
        if len(skus) == 1:
            sku = skus[0]
            for i, figure in zip(chosen, cols[0], strict=False):
                if i not in read:
                    mine[i] = {sku: figure}
        else:
            for i, figures in zip(chosen, zip(*cols, strict=False), strict=False):
                if i not in read:
                    mine[i] = dict(zip(skus, figures, strict=False))
        read.update(chosen)
        return self.of(chosen)

    def of(self, ids: Sequence[int]) -> list[Candidate]:
        capacity, reads = self.locs.capacity, self.reads
        self._read_stock(ids)
        capped = [i for i in ids if i in capacity and i not in self._counted]
        if capped:
            missing = [i for i in capped if i not in reads.used]
            if missing:
                reads.want_used.update(missing)
                raise NeedData
            for i in capped:
                self._used[i] = reads.used[i] + reads.used_batch.get(i, 0)
                self._made.pop(i, None)
            self._near.clear()
            self._counted.update(capped)
        return self._candidates(ids)


# -- the batch's reads -----------------------------------------------------------------------------

_PAIRS = {
    # LATERAL … LIMIT 1: one primary-key lookup per pair (joined plainly, the planner preferred
    # hashing the whole stock table: 45 ms for 2,000 pairs on 50,000 rows, and it grows with them).
    # The pairs go as groups (locations x SKUs, g numbering them), not as one string per pair:
    # dumping thousands of strings into an array cost more client time than the query.
    "postgresql": text(f"""
SELECT s.location_id, s.sku, s.atp FROM unnest(CAST(:gl AS integer[]), CAST(:locs AS integer[])) AS a(g, l)
JOIN unnest(CAST(:gs AS integer[]), CAST(:skus AS varchar[])) AS b(g, k) ON b.g = a.g
CROSS JOIN LATERAL (SELECT s.location_id, s.sku, {_ATP_SQL} AS atp FROM orders_stock s
                    WHERE s.location_id = a.l AND s.sku = b.k LIMIT 1) AS s"""),
    # CROSS JOIN: SQLite walks the groups' pairs and looks each row up by its primary key.
    "sqlite": text(f"""
SELECT s.location_id, s.sku, {_ATP_SQL} FROM json_each(:groups) AS g
CROSS JOIN json_each(g.value, '$[0]') AS l CROSS JOIN json_each(g.value, '$[1]') AS k
CROSS JOIN orders_stock s ON s.location_id = l.value AND s.sku = k.value"""),
}
_DRIVER_SQL: dict[int, tuple[Any, str]] = {}


def _pg(conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
    """Run a fixed PostgreSQL `text()` statement (plain parameters, no expanding ones) through
    `exec_driver_sql`, its SQL compiled once: `execute` looks the statement up in the compile cache
    and processes the parameters again each time (~45 µs of client CPU, and a batch runs ~15).
    Cursor events (the statement counts) see it as any other."""
    got = _DRIVER_SQL.get(id(stmt))
    if got is None:
        got = _DRIVER_SQL[id(stmt)] = (stmt, str(stmt.compile(dialect=conn.dialect)))  # kept: ids stay unique
    return conn.exec_driver_sql(got[1], params)


_KNOWN_SKUS_PG = text("SELECT p.sku FROM unnest(CAST(:skus AS varchar[])) AS w(k) "
                      "CROSS JOIN LATERAL (SELECT sku FROM products WHERE sku = w.k LIMIT 1) AS p")
"""`service._KNOWN_SKUS` with one array parameter: its expanding IN was a new SQL text for every
number of SKUs (compiled, and prepared by the server, for each). A unique-index probe per SKU: as
`sku = ANY(…)`, a table without statistics (the benchmark's, never analysed) was scanned whole, ~0.3 ms
of the server's time a batched order at 5,000 products."""


def _from_cache(reads: Reads) -> None:
    """What the stopped orders asked for that the holders cache has: taken from it, not read."""
    if reads.want_pairs:
        for pair in [p for p in reads.want_pairs if reads.cached_of(p[1]) is not None]:
            ids, atp = reads.cached_of(pair[1])  # type: ignore[misc]
            at = int(np.searchsorted(ids, pair[0]))
            have = int(atp[at]) if at < len(ids) and ids[at] == pair[0] else 0
            reads.atp[pair] = have
            if have >= 1:
                reads.held_by.setdefault(pair[1], set()).add(pair[0])
            reads.want_pairs.discard(pair)
    if reads.want_groups:
        left: list[tuple[tuple[str, ...], list[int]]] = []
        for key, locs in reads.want_groups:
            got = [reads.cached_of(s) for s in key]
            cols = [c for c in got if c is not None]
            if len(cols) < len(got):
                left.append((key, locs))
                continue
            wanted = np.asarray(locs, dtype=np.int64)
            for sku, (ids, atp) in zip(key, cols, strict=True):
                if not len(ids) or not len(wanted):
                    continue
                j = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
                hit = ids[j] == wanted
                if hit.any():
                    found = wanted[hit].tolist()
                    reads.atp.update(zip([(loc, sku) for loc in found], atp[j[hit]].tolist(), strict=True))
                    reads.held_by.setdefault(sku, set()).update(found)
            reads.read_groups.setdefault(key, set()).update(locs)
        reads.want_groups[:] = left
    for key in reads.want_all:
        reads.want_any.update(sku for sku in key if sku not in reads.holders_any)
    for sku in [s for s in reads.want_any if reads.cached_of(s) is not None]:
        reads.holders_any[sku] = reads.cached_of(sku)  # type: ignore[assignment]
        reads.want_any.discard(sku)


def _fetch(conn: Connection, reads: Reads, now: datetime) -> None:
    """Read, in one query per kind, what the stopped orders asked for (what the holders cache has
    taken from it)."""
    dialect = conn.dialect.name
    if reads.cached is not None:
        _from_cache(reads)
    if reads.want_pairs or reads.want_groups:
        pairs = sorted(reads.want_pairs)
        by_loc: dict[int, list[str]] = {}
        for loc, sku in pairs:
            by_loc.setdefault(loc, []).append(sku)
        groups: dict[tuple[str, ...], list[int]] = {}
        for loc, skus in by_loc.items():
            groups.setdefault(tuple(skus), []).append(loc)
        for key, locs in reads.want_groups:
            groups.setdefault(key, []).extend(locs)
        if dialect == "postgresql":
            gl: list[int] = []
            ls: list[int] = []
            params: dict[str, Any] = {"gs": [], "skus": []}
            for g, (group, locs) in enumerate(groups.items()):
                gl += [g] * len(locs)
                ls += locs
                params["gs"] += [g] * len(group)
                params["skus"] += group
            # As array literals: the driver dumps a list element by element, in Python.
            params["gl"], params["locs"] = int_array(gl), int_array(ls)
            params["gs"], params["skus"] = int_array(params["gs"]), text_array(params["skus"])
        else:
            params = {"groups": json.dumps([[locs, group] for group, locs in groups.items()])}
        reads.atp.update(dict.fromkeys(pairs, 0))  # no row: nothing there
        for key, locs in reads.want_groups:
            reads.read_groups.setdefault(key, set()).update(locs)
        got_pairs: Any = (_pg(conn, _PAIRS[dialect], params) if dialect == "postgresql"
                          else conn.execute(_PAIRS[dialect], params))
        for loc, sku, atp in got_pairs.all():
            reads.atp[(loc, sku)] = max(0, int(atp))
            if atp >= 1:
                reads.held_by.setdefault(sku, set()).add(loc)
        reads.want_pairs.clear()
        reads.want_groups.clear()
    # The locations holding all of a SKU set come from each SKU's holders (read with the others' below).
    for key in reads.want_all:
        reads.want_any.update(sku for sku in key if sku not in reads.holders_any)
    if reads.want_any:
        skus = sorted(reads.want_any)
        empty = np.zeros(0, dtype=np.int64)
        for s in skus:
            reads.holders_any[s] = (empty, empty)
        # Rows below 1 are not read: as far as routing goes, none there (`Reads.left` gives 0).
        got_any: Any = (_pg(conn, _HOLDING_ANY[dialect], {"skus": text_array(skus)}) if dialect == "postgresql"
                        else conn.execute(_HOLDING_ANY[dialect], {"skus": json.dumps(skus)}))
        for sku, locs, atp in got_any.all():
            reads.holders_any[sku] = _arrays(dialect, locs, atp)
        if reads.cached is not None and reads.store is not None:
            got = {s: reads.holders_any[s] for s in skus}
            reads.cached.update(got)
            reads.store.add(got, reads.generation)
        reads.want_any.clear()
    for key in sorted(reads.want_all):
        reads.holders_all[key] = holding_all(reads.holders_any, key)
    reads.want_all.clear()
    if reads.want_used:
        capped = sorted(reads.want_used)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        for i in capped:
            reads.used[i] = 0
        for loc, n in conn.execute(_USED_TODAY, {"ids": capped, "day": day}):
            reads.used[int(loc)] = int(n)
        reads.want_used.clear()


# -- the batch's writes ----------------------------------------------------------------------------
# On PostgreSQL each table's rows go as one JSON array in one statement: the driver's executemany
# sends a statement per row (pipelined), and dumping its parameters cost more client CPU than
# everything else a row costs. SQLite's executemany runs in C: kept.
#
# The array is read as `jsonb`: parsed once. Read as `json`, every `->>` parsed its row's text again,
# a decision's whole explanation (~5 KB) once per column: 0.95 of a batch's 3 ms of writes went on
# the decisions' six columns, 0.29 ms read as jsonb. A JSON column's value rides in its row as its
# own text (a JSON string) and is cast from that text: jsonb would have reordered its keys.

_JSON_SQL: dict[tuple[str, str, tuple[str, ...], str, str], tuple[Any, list[Any]]] = {}


def _json_sql(conn: Connection, table: Table, cols: tuple[str, ...], kind: str, suffix: str,
              source: str = "jsonb_array_elements(CAST(:rows AS jsonb)) AS e") -> tuple[Any, list[Any]]:
    """The statement writing JSON rows (`source` yields each as `e`), and each column's bind processor
    (`_as_json_text` for a JSON column: its value goes as its text)."""
    key = (table.name, kind, cols, suffix, source)
    got = _JSON_SQL.get(key)
    if got is None:
        dialect = conn.dialect
        quote = dialect.identifier_preparer.quote
        exprs: list[str] = []
        procs: list[Any] = []
        for n, c in enumerate(cols):
            if c in _PARENT_KEYS:  # a parent's key, compared as text (`kind` "lines")
                exprs.append(f"e ->> {n}")
                procs.append(None)
                continue
            col = table.c["id" if c == "_order" else c]
            typ = col.type.compile(dialect=dialect)
            if isinstance(col.type, sqltypes.JSON):
                exprs.append(f"CAST(e ->> {n} AS {typ})")  # the document from its text, as written
                procs.append(_as_json_text)
            else:
                exprs.append(f"CAST(e ->> {n} AS {typ})")
                procs.append(col.type._cached_bind_processor(dialect))
        if kind == "insert":
            sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in cols)}) "
                   f"SELECT {', '.join(exprs)} FROM {source} {suffix}")
        elif kind == "lines":  # the order's id from the chain's `ordered`, by (channel, channel order id)
            sql = (f"INSERT INTO {quote(table.name)} (order_id, {', '.join(quote(c) for c in cols[2:])}) "
                   f"SELECT o.id, {', '.join(exprs[2:])} FROM {source} "
                   f"JOIN ordered AS o ON o.channel = {exprs[0]} AND o.channel_order_id = {exprs[1]} {suffix}")
        elif kind == "reservations":  # the assignment's id from the chain's `assigned`, by (order, location)
            sql = (f"INSERT INTO {quote(table.name)} (assignment_id, {', '.join(quote(c) for c in cols)}) "
                   f"SELECT a.id, {', '.join(exprs)} FROM {source} "
                   f"JOIN assigned AS a ON a.order_id = {exprs[0]} AND a.location_id = {exprs[1]} {suffix}")
        else:  # update, keyed by `_order` (the first column)
            sets = ", ".join(f"{quote(c)} = {x}" for c, x in zip(cols[1:], exprs[1:], strict=True))
            sql = f"UPDATE {quote(table.name)} AS t SET {sets} FROM {source} WHERE t.id = {exprs[0]}"
        got = _JSON_SQL[key] = (text(sql), procs)
    return got


def _as_json_text(value: Any) -> str:
    # As SQLAlchemy's JSON type writes a value (None too: JSON's null, not SQL's NULL).
    return json.dumps(value, default=_plain)


_PARENT_KEYS = ("_channel", "_channel_order_id")

_ORDERED = "ON CONFLICT (channel, channel_order_id) DO NOTHING RETURNING id, channel, channel_order_id"
_ORDERS_AND_LINES: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}


def _insert_orders_and_lines(conn: Connection, rows: list[dict[str, Any]], lines: list[dict[str, Any]]) -> Any:
    """PostgreSQL: the batch's new orders and their lines in one statement (the lines of an order
    stored before, whose insert did nothing, are not written); returns the new orders' (id,
    channel, channel order id). `lines` name their order by `_PARENT_KEYS`, in the order their ids
    are to be given."""
    cols, line_cols = _columns(rows, "insert"), _columns(lines, "insert")
    orders_sql, procs = _json_sql(conn, service.ORDERS, cols, "insert", _ORDERED,
                                  "jsonb_array_elements(CAST(:p0 AS jsonb)) AS e")
    lines_sql, line_procs = _json_sql(conn, service.LINES, line_cols, "lines", "ORDER BY x.n",
                                      "jsonb_array_elements(CAST(:p1 AS jsonb)) WITH ORDINALITY AS x(e, n)")
    chain = _ORDERS_AND_LINES.get((cols, line_cols))
    if chain is None:
        chain = _ORDERS_AND_LINES[(cols, line_cols)] = text(
            f"WITH ordered AS ({orders_sql.text}), lined AS ({lines_sql.text}) "
            "SELECT id, channel, channel_order_id FROM ordered")
    return _pg(conn, chain, {"p0": _json_rows(rows, cols, procs), "p1": _json_rows(lines, line_cols, line_procs)})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write(conn: Connection, table: Table, rows: list[dict[str, Any]], *, stmt: Any = None, kind: str = "insert",
           suffix: str = "") -> Any:
    """Insert `rows` into `table` (or, `kind` "update", set their columns on the orders their `_order`
    names), every row naming the same columns; `stmt`: the statement used elsewhere than PostgreSQL."""
    if not rows:
        return []
    if conn.dialect.name != "postgresql":
        return conn.execute(stmt if stmt is not None else table.insert(), rows)
    cols = _columns(rows, kind)
    sql, procs = _json_sql(conn, table, cols, kind, suffix)
    return _pg(conn, sql, {"rows": _json_rows(rows, cols, procs)})


def _columns(rows: list[dict[str, Any]], kind: str) -> tuple[str, ...]:
    cols = tuple(rows[0])
    return ("_order", *(c for c in cols if c != "_order")) if kind == "update" else cols


def _json_rows(rows: list[dict[str, Any]], cols: tuple[str, ...], procs: list[Any]) -> str:
    """`rows` as one JSON array of arrays (`cols` in that order), as `_json_sql`'s statements read them."""
    # A row's values as a tuple (one C call), then only the columns with a bind processor converted:
    # a Python step per cell of every row cost more than the rest of writing it.
    cells = itemgetter(*cols) if len(cols) > 1 else lambda r: (r[cols[0]],)
    todo = [(n, p) for n, p in enumerate(procs) if p is not None]
    if not todo:
        data: list[Any] = [cells(r) for r in rows]
    else:
        data = []
        # Processed datetimes by value: the rows of a batch share one `now` (equal aware datetimes
        # give the same UTC instant through the processor, and `_plain` its text).
        seen: dict[datetime, str] = {}
        for r in rows:
            row = list(cells(r))
            for n, p in todo:
                v = row[n]
                if p is _as_json_text:
                    row[n] = p(v)
                elif v is not None:
                    if isinstance(v, datetime):
                        got = seen.get(v)
                        if got is None:
                            got = seen[v] = _plain(p(v))
                        row[n] = got
                    else:
                        row[n] = p(v)
            data.append(row)
    return json.dumps(data, default=_plain)


# -- the batch -------------------------------------------------------------------------------------


@dataclass
class _Entry:
    n: int
    order: service.OrderInput
    id: int
    code: str | None
    head: Any
    want: OrderIn
    pending: list[dict[str, Any]]
    nearest: list[int] | None = None
    outcome: tuple[Any, ...] = ("alone",)
    """("routed", group, rule, plan, tried) | ("unfulfillable", group name, explanation, reason) | ("alone",)"""


_INSERT_ORDERS: dict[str, Any] = {}
_ASSIGNED = service.ASSIGN.insert().returning(service.ASSIGN.c.id, service.ASSIGN.c.order_id,
                                              service.ASSIGN.c.location_id)


def _insert_orders(conn: Connection) -> Any:
    stmt = _INSERT_ORDERS.get(conn.dialect.name)
    if stmt is None:
        o = service.ORDERS
        stmt = _INSERT_ORDERS[conn.dialect.name] = insert_for(conn, o).on_conflict_do_nothing(
            index_elements=["channel", "channel_order_id"]).returning(o.c.id, o.c.channel, o.c.channel_order_id)
    return stmt


def _decide(pool: BatchPool, ruleset: RuleSet, order: OrderIn) -> tuple[Any, ...]:
    """What `service.route` decides for a new order on its first, optimistic try (no reservation)."""
    try:
        group = ruleset.group_for(order.channel)
    except RuleError as exc:
        return ("unfulfillable", None, {"error": str(exc)}, str(exc))
    tried: list[dict[str, Any]] = []
    for rule in group.rules:
        p = plan_rule(pool, rule)
        tried.append({"rule": rule.name, "assignment": rule.assignment, "note": p.note,
                      "candidates": p.shown(), "considered": p.considered})
        if p.filled:
            return ("routed", group, rule, p, tried)
        if rule.unfilled is Unfilled.NEXT_RULE:
            continue
        if rule.unfilled is Unfilled.QUEUE:
            return ("alone",)
        break
    return ("unfulfillable", group.name, {"group": group.name, "rules": tried}, service._why(order, tried))


def _reserve(conn: Connection, wanted: dict[Pair, int]) -> dict[Pair, tuple[int, int]] | None:
    """Reserve the batch's quantities (summed per row) if every row still has them: (on hand,
    reserved) after, per row; else None with nothing reserved and no lock kept."""
    rows = sorted((loc, sku, qty) for (loc, sku), qty in wanted.items())
    if conn.dialect.name == "postgresql":
        # A savepoint of our own, not `begin_nested` (its bookkeeping cost twice the two statements):
        # opened and closed here, around one statement.
        conn.exec_driver_sql("SAVEPOINT orders_batch_reserve")
        got = _pg(conn, _RESERVE_PG, {"locs": int_array([r[0] for r in rows]),
                                      "skus": text_array([r[1] for r in rows]),
                                      "qtys": int_array([r[2] for r in rows])}).all()
        if len(got) < len(rows):
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT orders_batch_reserve")
            conn.exec_driver_sql("RELEASE SAVEPOINT orders_batch_reserve")
            return None
        conn.exec_driver_sql("RELEASE SAVEPOINT orders_batch_reserve")
    else:
        got = conn.execute(_RESERVE_SQLITE, {"rows": json.dumps(rows)}).all()
        if len(got) < len(rows):
            back = [{"l": r[0], "s": r[1], "q": wanted[(r[0], r[1])]} for r in got]
            if back:
                conn.execute(_UNRESERVE, back)
            return None
    return {(int(r[0]), str(r[1])): (int(r[2]), int(r[3])) for r in got}


def intake_one(conn: Connection, order: service.OrderInput, *, actor: str, now: datetime | None = None,
               source_node: str | None = None) -> service.IntakeResult:
    """`service.intake` on this path, as a batch of one: the same answer and decision (raises
    `Refused` likewise), in about half the statements and CPU (at the issue's size on PostgreSQL,
    one order a transaction: 313-337 orders/s against 140-144, p50 2.9 against 6.6 ms). For the
    intakes that get one order at a time: the REST API, the channels' webhooks, the call centre."""
    result = intake_batch(conn, [order], actor=actor, now=now, source_node=source_node)[0]
    if isinstance(result, service.Refused):
        raise result
    return result


def intake_batch(conn: Connection, orders: Sequence[service.OrderInput], *, actor: str,
                 now: datetime | None = None, source_node: str | None = None
                 ) -> list[service.IntakeResult | service.Refused]:
    """`service.intake` for several orders in the caller's transaction, in a few statements for the
    whole batch (see the module's docstring). Returns, per order in the same order, its result or
    the `Refused` it got (nothing of it written: the caller keeps it in the inbox)."""
    # Without the cyclic collector meanwhile, as `cloud.trace` commissions: a batch's thousands of
    # rows, candidates and explanation dicts live until it ends and are in no cycle (reference
    # counting frees them), but were walked by a young-generation pass every few orders and moved
    # up to be walked again (~6% of a batch's CPU).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _intake_batch(conn, orders, actor=actor, now=now, source_node=source_node)
    finally:
        if enabled:
            gc.enable()


def _intake_batch(conn: Connection, orders: Sequence[service.OrderInput], *, actor: str, now: datetime | None,
                  source_node: str | None) -> list[service.IntakeResult | service.Refused]:
    now = now or service._now()
    version, ruleset, locs = service.routing_state(conn)
    results: list[service.IntakeResult | service.Refused | None] = [None] * len(orders)
    if ruleset.checks:
        # Checks read each order's history (a new customer, an earlier order to merge with): one by one.
        for n, o in enumerate(orders):
            try:
                results[n] = service.intake(conn, o, actor=actor, now=now, source_node=source_node)
            except service.Refused as refused:
                results[n] = refused
        return [r for r in results if r is not None]
    skus = sorted({ln.sku for o in orders for ln in o.lines})
    known: set[str] = set()
    if skus:
        found_skus: Any = (_pg(conn, _KNOWN_SKUS_PG, {"skus": text_array(skus)}) if conn.dialect.name == "postgresql"
                           else conn.execute(service._KNOWN_SKUS, {"skus": skus}))
        known = set(found_skus.scalars())
    region = None
    if source_node:
        region = conn.execute(service._NODE_REGION, {"node": source_node}).scalar()
    rows: list[dict[str, Any]] = []
    accepted: list[tuple[int, service.OrderInput, int | None, str | None]] = []
    for n, o in enumerate(orders):
        try:
            pickup = service.check(conn, o, locs, known=known)
        except service.Refused as refused:
            found = conn.execute(service._EXISTING, {"channel": o.channel, "channel_order_id": o.channel_order_id}).first()
            results[n] = (service.IntakeResult(found.id, found.state, False, found.pickup_code) if found is not None
                          else refused)
            continue
        code = f"{secrets.randbelow(10**6):06d}" if o.fulfilment == "pickup" else None
        rows.append({
            "channel": o.channel, "channel_order_id": o.channel_order_id, "state": "received",
            "fulfilment": o.fulfilment, "customer": o.customer, "contact": o.contact, "address": o.address,
            "lat": o.lat, "lon": o.lon, "pickup_location_id": pickup, "pickup_code": code,
            "amount": sum(Decimal(str(ln.price)) * ln.qty - Decimal(str(ln.discount)) for ln in o.lines),
            "source_node": source_node, "region": region, "created_at": now, "updated_at": now,
            "raw": o.model_dump(mode="json")})
        accepted.append((n, o, pickup, code))
    pg = conn.dialect.name == "postgresql"
    if rows and pg:
        # The lines of each channel order's first occurrence: the one its insert keeps.
        firsts: dict[tuple[str, str], service.OrderInput] = {}
        for _, o, _, _ in accepted:
            firsts.setdefault((o.channel, o.channel_order_id), o)
        written = _insert_orders_and_lines(conn, rows, [
            {"_channel": o.channel, "_channel_order_id": o.channel_order_id, "line_no": i, "sku": ln.sku,
             "qty": ln.qty, "price": ln.price, "discount": ln.discount}
            for o in firsts.values() for i, ln in enumerate(o.lines, start=1)])
    else:
        written = _write(conn, service.ORDERS, rows, stmt=_insert_orders(conn), suffix=_ORDERED) if rows else []
    new_ids = {(r[1], r[2]): int(r[0]) for r in written}
    entries: list[_Entry] = []
    again: list[tuple[int, service.OrderInput]] = []
    for n, o, pickup, code in accepted:
        oid = new_ids.pop((o.channel, o.channel_order_id), None)
        if oid is None:  # stored before (or twice in this batch): answered as stored, after the batch
            again.append((n, o))
            continue
        head = service._Head(id=oid, state="received", channel=o.channel, fulfilment=o.fulfilment,
                             customer=o.customer, contact=o.contact, address=o.address, pickup_code=code)
        want = OrderIn(id=oid, channel=o.channel, fulfilment=o.fulfilment,
                       lines=tuple((ln.sku, ln.qty) for ln in o.lines), lat=o.lat, lon=o.lon, pickup_location=pickup)
        pending = [service.transition_row(oid, None, "received", actor=actor, reason=f"received from {o.channel}",
                                          now=now)]
        entries.append(_Entry(n, o, oid, code, head, want, pending))
    if entries and not pg:
        _write(conn, service.LINES, [
            {"order_id": e.id, "line_no": i, "sku": ln.sku, "qty": ln.qty, "price": ln.price, "discount": ln.discount}
            for e in entries for i, ln in enumerate(e.order.lines, start=1)])
    if entries:
        _route(conn, entries, version, ruleset, locs, now)
    for e in entries:
        results[e.n] = service.IntakeResult(e.id, e.head.state, True, e.code)
    for n, o in again:
        found = conn.execute(service._EXISTING, {"channel": o.channel, "channel_order_id": o.channel_order_id}).one()
        results[n] = service.IntakeResult(found.id, found.state, False, found.pickup_code)
    return [r for r in results if r is not None]


BATCH_TRIES = 2
"""Optimistic tries of a batch (plan on plain reads, reserve if every row still has it); then it
locks every stock row of its SKUs, in (location, sku) order, and plans on them."""

_LOCK_SKUS = text("SELECT location_id, sku FROM orders_stock WHERE sku = ANY(CAST(:skus AS varchar[])) "
                  "ORDER BY location_id, sku FOR UPDATE")


def _lock_skus(conn: Connection, entries: list[_Entry]) -> None:
    """Lock every stock row of the batch's SKUs, in the one order every transaction locks stock rows
    in (PostgreSQL; SQLite's writer holds the database). Taken in one statement, with no stock lock
    held before it (the lost tries' savepoints gave theirs back): the batch cannot deadlock with
    another router, and nothing it reads can move until it commits. Heavy (every location holding
    those SKUs), so only after the optimistic tries lost their races."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_SKUS, {"skus": sorted({s for e in entries for s, _ in e.want.lines})})


def _plan(conn: Connection, entries: list[_Entry], ruleset: RuleSet, locs: Locations, now: datetime, *,
          cached: bool = True) -> None:
    """Each entry's outcome, exactly as routing the orders one after the other in the batch's order
    would decide it, on the batch's reads (read in a few rounds).

    A round plans the orders in turn until one needs something not read yet; the orders after it
    are planned too, but only to learn what they will need (their outcomes are planned again next
    round, on top of that order's). Then everything asked for is read at once."""
    reads = Reads()
    store = holders.holders(conn) if cached else None
    got = store.view(conn) if store is not None else None
    if got is not None:
        reads.cached, reads.complete, reads.generation = got
        reads.store = store
    final_taken: dict[Pair, int] = {}
    final_used: dict[int, int] = {}
    done = 0
    # What every order needs, read before the first round: its nearest locations' stock (the
    # nearest of the orders wanting as many found in one query of the index).
    k_maxes: dict[str, int | None] = {}
    """Per channel, the most candidates its group's rules ask for (None: no group)."""
    for channel in {e.want.channel for e in entries}:
        try:
            k_maxes[channel] = max(r.candidates for r in ruleset.group_for(channel).rules)
        except RuleError:
            k_maxes[channel] = None
    near: list[tuple[_Entry, tuple[str, ...], int]] = []
    for e in entries:
        want = e.want
        skus = sorted({s for s, _ in want.lines})
        if want.fulfilment == "pickup" and want.pickup_location is not None:
            reads.want_pairs.update((want.pickup_location, s) for s in skus)
        elif want.lat is not None and want.lon is not None and skus:
            k_max = k_maxes[want.channel]
            if k_max is None:
                continue
            near.append((e, tuple(skus), k_max))
    for k in {k for _, _, k in near}:
        some = [e for e, _, k_e in near if k_e == k]
        found = locs.index.nearest_many([e.want.lat for e in some], [e.want.lon for e in some],  # type: ignore[misc]
                                        k)
        for e, ids in zip(some, found, strict=True):
            e.nearest = ids
    for e, skus_e, _ in near:
        reads.want_groups.append((skus_e, e.nearest))  # type: ignore[arg-type]
    _fetch(conn, reads, now)
    # Then, in one more read rather than in rounds of their own after planning: the locations holding
    # all the SKUs of the orders none of whose nearest can fill, and the holders of each SKU of the
    # orders whose nearest cannot even cover it together (they will be split further out). Only a
    # guess at what planning will ask for: what it misses, it asks for (`NeedData`).
    atp = reads.atp
    for e in entries:
        want = e.want
        if e.nearest is None:
            continue
        held_at = reads.holding(s for s, _ in want.lines)
        held = [i for i in e.nearest if i in held_at]
        if any(all(atp.get((i, s), 0) >= q for s, q in want.lines) for i in held):
            continue
        skus = sorted({s for s, _ in want.lines})
        reads.want_all.add(tuple(skus))
        if not _nearest_cover(want, held, atp, ruleset):
            reads.want_any.update(s for s in skus if s not in reads.holders_any)
    if reads.want_all or reads.want_any:
        _fetch(conn, reads, now)
    for _ in range(MAX_PASSES):
        reads.taken, reads.used_batch = dict(final_taken), dict(final_used)
        stopped = False
        for idx in range(done, len(entries)):
            e = entries[idx]
            pool = BatchPool(conn, locs, e.want, now, k_maxes[e.want.channel] or 1, reads)
            pool._nearest = e.nearest
            try:
                outcome = _decide(pool, ruleset, e.want)
            except NeedData:
                stopped = True
                continue
            finally:
                e.nearest = pool._nearest
            _take(outcome, reads.taken, reads.used_batch)
            if not stopped:
                e.outcome = outcome
                _take(outcome, final_taken, final_used)
                done = idx + 1
        if not stopped:
            return
        _fetch(conn, reads, now)
    for e in entries[done:]:
        e.outcome = ("alone",)


def _nearest_cover(want: OrderIn, held: list[int], atp: dict[Pair, int], ruleset: RuleSet) -> bool:
    """Whether the order's nearest holders (nearest first) look able to fill it split, as a partial
    rule plans it (the fewest of its best-sorted, up to `max_locations`): a guess for reading
    ahead, no more (filters and sorts are not looked at)."""
    lines = want.lines
    rows = [[atp.get((i, s), 0) for s, _ in lines] for i in held]
    rows = [r for r in rows if any(r)][:COMBINATION_POOL]
    if not rows:
        return False
    have = np.array(rows, dtype=np.int64)
    need = np.array([q for _, q in lines], dtype=np.int64)
    if not bool((have.sum(axis=0) >= need).all()):
        return False
    most = max((r.max_locations for r in ruleset.group_for(want.channel).rules if r.assignment == "partial"),
               default=0)
    if any(_first_cover(have, need, k) is not None for k in range(1, min(most, 2, len(rows)) + 1)):
        return True
    # Three or more: a cube of combinations, dearer than the guess is worth when there are many.
    return most >= 3 and (len(rows) > 8 or any(
        _first_cover(have, need, k) is not None for k in range(3, min(most, VECTOR_MAX_K, len(rows)) + 1)))


def _take(outcome: tuple[Any, ...], taken: dict[Pair, int], used: dict[int, int]) -> None:
    if outcome[0] != "routed":
        return
    for loc, lines in outcome[3].allocation.items():
        used[loc] = used.get(loc, 0) + 1
        for sku, qty in lines:
            taken[(loc, sku)] = taken.get((loc, sku), 0) + qty


def _route(conn: Connection, entries: list[_Entry], version: int, ruleset: RuleSet, locs: Locations,
           now: datetime) -> None:
    after: dict[Pair, tuple[int, int]] | None = None
    for attempt in range(BATCH_TRIES + 1):
        if attempt == BATCH_TRIES:
            _lock_skus(conn, entries)
        # The last try plans on the rows it locked, read from the table (not from the holders cache).
        _plan(conn, entries, ruleset, locs, now, cached=attempt < BATCH_TRIES)
        routed = [e for e in entries if e.outcome[0] == "routed"]
        wanted: dict[Pair, int] = {}
        for e in routed:
            for loc, lines in e.outcome[3].allocation.items():
                for sku, qty in lines:
                    wanted[(loc, sku)] = wanted.get((loc, sku), 0) + qty
        after = _reserve(conn, wanted) if wanted else {}
        if after is not None:
            break
        # Stock moved since it was read (the savepoint gave every lock back): read and plan again.
    if after is None:  # pragma: no cover - every row it could read was locked for the last try
        for e in routed:
            e.outcome = ("alone",)
        routed = []
        after = {}
    fed = service._feed_channels(conn)
    feed: list[dict[str, Any]] = []

    def fed_row(e: _Entry, from_state: str | None, to: str, reason: str) -> None:
        if e.order.channel in fed:  # as `service.set_state` queues it for the channel's status feed
            feed.append({"channel": e.order.channel, "kind": "status", "status": "pending", "attempts": 0,
                         "next_attempt_at": now, "created_at": now,
                         "body": {"order": e.order.channel_order_id, "omnishelf_id": e.id, "from": from_state,
                                  "state": to, "reason": reason, "at": now.isoformat(), "carrier": None,
                                  "tracking": None}})

    def record(e: _Entry, to: str, reason: str, actor: str) -> None:
        e.pending.append(service.transition_row(e.id, e.head.state, to, actor=actor, reason=reason, now=now))
        fed_row(e, e.head.state, to, reason)
        e.head = replace(e.head, state=to)

    for e in entries:
        fed_row(e, None, "received", f"received from {e.order.channel}")
    w = _routed_rows(routed, after, version, ruleset, locs, now, record)
    decisions: list[dict[str, Any]] = []
    unfilled: list[dict[str, Any]] = []
    for e in entries:
        if e.outcome[0] != "unfulfillable":
            continue
        _, _group, explanation, reason = e.outcome
        decisions.append({"order_id": e.id, "at": now, "ruleset_version": version, "outcome": "unfulfillable",
                          "rule": None, "explanation": explanation | {"reason": reason}})
        record(e, "unfulfillable", reason, "system:router")
        unfilled.append({"_order": e.id, "state": "unfulfillable", "updated_at": now})
    alone = [e for e in entries if e.outcome[0] == "alone"]
    transitions_now = conn.dialect.name == "postgresql" and not alone
    if conn.dialect.name == "postgresql":
        # In one statement: the rows of every table after the reservation. The transitions too, unless
        # orders routed alone still add theirs.
        made = _write_chain(conn, [
            ("assigned", service.ASSIGN, w.assignments, "insert"),
            ("reserved", service.RESV, w.reservations, "reservations"),
            ("moved", service.MOVES, w.moves, "insert"),
            ("decided", service.DECIDE, w.decisions + decisions, "insert"),
            ("routed", service.ORDERS, w.updates, "update"),
            ("unfilled", service.ORDERS, unfilled, "update"),
            ("fed", service.FEED, feed, "insert"),
            ("moved_on", service.TRANS, [t for e in entries for t in e.pending] if transitions_now else [], "insert"),
        ])
        _send_assignments(conn, w, made, locs, now)
    else:
        made = {(int(r.order_id), int(r.location_id)): int(r.id) for r in _write(
            conn, service.ASSIGN, w.assignments, stmt=_ASSIGNED, suffix="RETURNING id, order_id, location_id")}
        _write(conn, service.RESV, [{"assignment_id": made[(r["order_id"], r["location_id"])], **r}
                                    for r in w.reservations])
        _write(conn, service.MOVES, w.moves)
        _send_assignments(conn, w, made, locs, now)
        _write(conn, service.DECIDE, w.decisions)
        _write(conn, service.ORDERS, w.updates, stmt=service._UPDATE_ORDER, kind="update")
        if decisions:
            _write(conn, service.DECIDE, decisions)
            _write(conn, service.ORDERS, unfilled, stmt=service._UPDATE_ORDER, kind="update")
        if feed:
            _write(conn, service.FEED, feed)
    for e in alone:
        state = service.route(conn, e.id, actor="system:router", now=now, rules=(version, ruleset), locs=locs,
                              known=(e.head, e.want, []), pending=e.pending)
        e.head = replace(e.head, state=state)
    if not transitions_now:
        _write(conn, service.TRANS, [t for e in entries for t in e.pending])


@dataclass
class _Routed:
    """The rows the routed orders of a batch write."""

    assignments: list[dict[str, Any]] = field(default_factory=list)
    owners: list[tuple[_Entry, int, list[tuple[str, int]]]] = field(default_factory=list)
    """Per assignment, in the same order: its order, location and lines."""
    reservations: list[dict[str, Any]] = field(default_factory=list)
    """Without their assignment's id: matched by (order, location) when written."""
    moves: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    accept_by: datetime | None = None


def _routed_rows(routed: list[_Entry], after: dict[Pair, tuple[int, int]], version: int, ruleset: RuleSet,
                 locs: Locations, now: datetime, record: Any) -> _Routed:
    """The assignments, reservations, movements, decisions and states of the routed orders (their
    transitions recorded through `record`)."""
    w = _Routed()
    if not routed:
        return w
    accept_by = w.accept_by = now + timedelta(minutes=ruleset.accept_minutes)
    # Each order's movements say what `reserved` became with its own reservation, as if the orders
    # had reserved one after the other (in the batch's order): the last one's is the row's value now.
    still: dict[Pair, int] = {}
    for e in routed:
        for loc, lines in e.outcome[3].allocation.items():
            for sku, qty in lines:
                still[(loc, sku)] = still.get((loc, sku), 0) + qty
    for e in routed:
        for loc, lines in sorted(e.outcome[3].allocation.items()):
            w.assignments.append({"order_id": e.id, "location_id": loc, "node": locs.meta.get(loc, (None, None))[0],
                                  "state": "routed", "lines": [[s, q] for s, q in lines], "created_at": now,
                                  "accept_by": accept_by})
            w.owners.append((e, loc, lines))
            for sku, qty in sorted(lines):
                on_hand, reserved = after[(loc, sku)]
                still[(loc, sku)] -= qty
                w.moves.append({"location_id": loc, "sku": sku, "at": now, "kind": "reserve", "on_hand_delta": 0,
                                "reserved_delta": qty, "on_hand_after": on_hand,
                                "reserved_after": reserved - still[(loc, sku)], "source": f"order:{e.id}"})
    w.reservations = [{"order_id": e.id, "location_id": loc, "sku": s, "qty": q, "status": "active", "created_at": now}
                      for e, loc, lines in w.owners for s, q in lines]
    for e in routed:
        _, group, rule, p, tried = e.outcome
        w.decisions.append({"order_id": e.id, "at": now, "ruleset_version": version, "outcome": "routed",
                            "rule": rule.name, "explanation": {"group": group.name, "rules": tried}})
        first = min(p.allocation)
        w.updates.append({"_order": e.id, "state": "routed", "updated_at": now,
                          "store_id": locs.meta.get(first, (None, None))[1],
                          "region": locs.base[first].region if first in locs.base else None,
                          "route_after": None, "queued_since": None})
        where = ", ".join(sorted(locs.base[i].code for i in p.allocation if i in locs.base))
        record(e, "routed", f"rule {rule.name!r}: assigned to {where}", "system:router")
    return w


def _send_assignments(conn: Connection, w: _Routed, made: dict[tuple[int, int], int], locs: Locations,
                      now: datetime) -> None:
    """Each assignment to a location with a box, to the box (`assign`, through the durable downlink)."""
    for e, loc, lines in w.owners:
        node = locs.meta.get(loc, (None, None))[0]
        if node and w.accept_by is not None:
            aid = made[(e.id, loc)]
            msg = downlink.send(conn, node, MessageType.ASSIGN,
                                service._assign_data(conn, e.head, aid, lines, w.accept_by), engine=service.ENGINE,
                                expires_in=w.accept_by - now, key=f"orders-assign-{aid}", now=now)
            conn.execute(service.ASSIGN.update().where(service.ASSIGN.c.id == aid).values(command=msg))


_CHAINS: dict[tuple[Any, ...], Any] = {}


def _write_chain(conn: Connection, parts: list[tuple[str, Table, list[dict[str, Any]], str]]
                 ) -> dict[tuple[int, int], int]:
    """PostgreSQL: the batch's writes after its reservation as one statement of data-modifying CTEs
    (a round trip each cost more of a batch's time than its rows), each table's rows as one JSON
    array as `_write` sends them; returns the assignments' ids by (order, location). Parts without
    rows are left out; the reservations take their assignment's id from `assigned`."""
    todo = [(name, table, rows, kind, _columns(rows, "update" if kind == "update" else "insert"))
            for name, table, rows, kind in parts if rows]
    if not todo:
        return {}
    key = tuple((name, table.name, kind, cols) for name, table, _, kind, cols in todo)
    params: dict[str, Any] = {}
    pieces: list[str] = []
    for n, (name, table, rows, kind, cols) in enumerate(todo):
        if kind == "reservations":
            # In the rows' order (their ids as `_write` gave them), whatever order the join yields.
            stmt, procs = _json_sql(conn, table, cols, kind, "ORDER BY x.n",
                                    f"jsonb_array_elements(CAST(:p{n} AS jsonb)) WITH ORDINALITY AS x(e, n)")
        else:
            stmt, procs = _json_sql(conn, table, cols, kind, "RETURNING id, order_id, location_id"
                                    if name == "assigned" else "", f"jsonb_array_elements(CAST(:p{n} AS jsonb)) AS e")
        params[f"p{n}"] = _json_rows(rows, cols, procs)
        pieces.append(f"{name} AS ({stmt.text})")
    chain = _CHAINS.get(key)
    if chain is None:
        last = "SELECT id, order_id, location_id FROM assigned" if todo[0][0] == "assigned" else "SELECT 1"
        chain = _CHAINS[key] = text(f"WITH {', '.join(pieces)} {last}")
    if todo[0][0] != "assigned":
        _pg(conn, chain, params)
        return {}
    return {(int(r[1]), int(r[2])): int(r[0]) for r in _pg(conn, chain, params).all()}

