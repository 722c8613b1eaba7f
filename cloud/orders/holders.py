"""Each SKU's holders (the locations with some available, and how many), kept by each worker process
on PostgreSQL and brought up to date before every batch plans, instead of read from `orders_stock`.

At the issue's size a SKU has ~400 holders, each on a heap page of its own: reading them was most of
the database's work for a batched order (~2 ms of its ~3.6), and reading its nearest locations' stock
(a primary-key probe per location and SKU) most of the rest. Here a SKU's holders are read once per
process (every SKU at once when the cache starts, unless the stock table is larger than
`WARM_MAX_BYTES`; then SKU by SKU, `_HOLDING_ANY`, as batches need them), then kept fresh through
`orders_stock_changes` (migration 0018): triggers on `orders_stock` log the key of every row changed,
whoever changes it, with the writing transaction's id. Before planning, `Holders.view` reads the log
after its cursor and reads the rows it names again (primary-key probes: a few per order routed
anywhere since), so that what a batch plans on is what a plain read of the holders would have
returned at that moment:

- the cursor is (txid, id) and moves only over rows of transactions older than every one still
  running (`pg_snapshot_xmin`): any change not seen yet comes after it, as followers read the ledger;
- a row's newest change is its log row with the highest id: a writer logs its change after taking
  the row's lock and keeps the lock until it ends, so the next writer's change, and its log row,
  come after it commits. A row whose changes seen in a refresh are all by transactions that ended
  (below the horizon) takes the figure its newest one logged (migration 0020);
- a row changed by a transaction not known to have ended (committed while an older one still runs,
  or this one's own) is read again instead, and at the next refresh too: if that transaction rolls
  back, its values go. So is a row logged without a figure (before 0020);
- a truncation (a log row without a key), a log too long to catch up with (`CATCH_UP_MAX`), a cache
  idle for longer than `IDLE_S`, or another log table (the database recreated) start it afresh.

Plain reads, as before: the reservation re-checks every row under its lock, and a batch that lost
its races twice locks every row of its SKUs and reads them without this cache. Writes made with
triggers off (`session_replication_role = replica`, as a logical replica applies them) are not
logged: such a database's workers need their caches dropped (`forget`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from cloud.orders.pgarrays import int_array, text_array

__all__ = ["CATCH_UP_MAX", "IDLE_S", "KEEP_S", "WARM_MAX_BYTES", "Holders", "forget", "holders", "prune",
           "sort_changes"]

Pair = tuple[int, str]
Arrays = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]

CATCH_UP_MAX = 20_000
"""Logged changes read at most in one refresh; more (a bulk load, a long pause): start afresh."""
WARM_MAX_BYTES = 512 * 2**20
"""A stock table up to this size (~9 million rows; ~1.5 million holders at the issue's 2 million rows,
~25 MB of arrays) is read whole when a cache starts; a larger one SKU by SKU, as batches need them."""
IDLE_S = 600.0
"""A cache not refreshed for this long starts afresh (the log is pruned after `KEEP_S`)."""

_ATP = "s.on_hand - s.reserved - s.safety"
_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_LOG_OID = "to_regclass('orders_stock_changes')::oid::bigint"
_CHANGES = text(f"""
SELECT NULL::bigint, NULL::bigint, NULL::integer, NULL::varchar, {_HORIZON}, {_LOG_OID}
UNION ALL
(SELECT c.txid, c.id, c.location_id, c.sku, c.atp, NULL FROM orders_stock_changes c
 WHERE (c.txid, c.id) > (CAST(:txid AS bigint), CAST(:id AS bigint)) ORDER BY c.txid, c.id
 LIMIT CAST(:limit AS integer))""")
"""The horizon and the log's table, then the rows after the cursor: one statement, one snapshot."""
_PRESENT = text(f"SELECT {_HORIZON}, {_LOG_OID}, pg_relation_size('orders_stock')")
_PROBE = text(f"""
SELECT s.location_id, s.sku, s.atp FROM unnest(CAST(:locs AS integer[]), CAST(:skus AS varchar[])) AS w(l, k)
CROSS JOIN LATERAL (SELECT s.location_id, s.sku, {_ATP} AS atp FROM orders_stock s
                    WHERE s.location_id = w.l AND s.sku = w.k LIMIT 1) AS s""")
_ALL = text(f"""
SELECT NULL::varchar, NULL::integer[], NULL::integer[], {_HORIZON}, {_LOG_OID}
UNION ALL
(SELECT s.sku, array_agg(s.location_id), array_agg({_ATP}), NULL, NULL FROM orders_stock s
 WHERE {_ATP} >= 1 GROUP BY s.sku)""")
_EMPTY = np.zeros(0, dtype=np.int64)


def arrays(locs: Any, atp: Any) -> Arrays:
    """A SKU's holders as two aggregated arrays → numpy, in ascending location ids."""
    ids = np.asarray(locs, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.maximum(np.asarray(atp, dtype=np.int64)[order], 0)


Change = tuple[int, int, int, str, int | None]
"""A logged change: (txid, log id, location, SKU, what the row had available after, if logged)."""


def sort_changes(changes: list[Change], horizon: int, cursor: tuple[int, int], running: set[Pair]
                 ) -> tuple[tuple[int, int], set[Pair], dict[Pair, int], set[Pair]]:
    """What a refresh makes of the changes logged after `cursor` (in (txid, log id) order), read
    with the oldest running transaction's id `horizon`, `running` the rows changed by transactions
    not known to have ended at the last refresh: (the new cursor; the rows changed by transactions
    not known to have ended now; each row whose figure the log gives; the rows to read again)."""
    dirty = set(running)
    running_now: set[Pair] = set()
    newest: dict[Pair, tuple[int, int]] = {}  # per row, the (log id, figure) of its newest change
    for txid, cid, loc, sku, atp in changes:
        pair = (loc, sku)
        if txid < horizon:  # its transaction ended: nothing below it can come any more
            cursor = (txid, cid)
            if atp is None:
                dirty.add(pair)
            else:
                seen = newest.get(pair)
                if seen is None or cid > seen[0]:
                    newest[pair] = (cid, atp)
        else:
            running_now.add(pair)
            dirty.add(pair)
    return cursor, running_now, {p: max(0, v) for p, (_, v) in newest.items() if p not in dirty}, dirty


class Holders:
    """One database's holders as this process last brought them up to date."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.per: dict[str, Arrays] = {}
        """Per SKU read (or `complete`: every SKU), its holders' ids (ascending) and what each has."""
        self.complete = False
        """Every SKU is in `per` (a SKU without holders: not in it, and none anywhere)."""
        self.cursor: tuple[int, int] | None = None
        self.log: int | None = None
        """The log table's oid when the cursor was set (another one: the database was recreated)."""
        self.running: set[Pair] = set()
        """Keys logged by transactions not known to have ended at the last refresh: read again at the next."""
        self.refreshed = 0.0
        self.generation = 0
        """Counts refreshes: a SKU read in a transaction is added only if no other refresh came since."""

    def _reset(self, horizon: int, log: int | None) -> None:
        self.per, self.complete, self.running = {}, False, set()
        self.cursor, self.log = (horizon - 1, 2**62), log  # everything below the horizon is in what is read next

    def view(self, conn: Connection) -> tuple[dict[str, Arrays], bool, int] | None:
        """Bring the cache up to date in `conn`'s transaction: (its holders per SKU as of now, a copy
        of the mapping that later refreshes do not change (the arrays are never changed in place);
        whether every SKU is in it; the generation for `add`). None: no log table (not used)."""
        with self.lock:
            if self.cursor is None or time.monotonic() - self.refreshed > IDLE_S or not self._catch_up(conn):
                horizon, log, size = conn.execute(_PRESENT).one()
                if log is None:
                    self.cursor = None
                    return None
                if size <= WARM_MAX_BYTES:
                    self._warm(conn)
                else:
                    self._reset(int(horizon), int(log))
            self.refreshed = time.monotonic()
            self.generation += 1
            return dict(self.per), self.complete, self.generation

    def _catch_up(self, conn: Connection) -> bool:
        """Read the changes after the cursor again; False: start afresh instead."""
        assert self.cursor is not None
        rows = conn.execute(_CHANGES, {"txid": self.cursor[0], "id": self.cursor[1], "limit": CATCH_UP_MAX + 1}).all()
        horizon, log = int(rows[0][4]), rows[0][5]
        changes = rows[1:]
        # More than a refresh reads: start afresh (a row's newest change could be beyond the limit).
        if log is None or int(log) != self.log or len(changes) > CATCH_UP_MAX or any(r[2] is None for r in changes):
            return False
        self.cursor, self.running, known, dirty = sort_changes(
            [(int(r[0]), int(r[1]), int(r[2]), str(r[3]), None if r[4] is None else int(r[4])) for r in changes],
            horizon, self.cursor, self.running)
        self._set(known)
        self._probe(conn, sorted(dirty))
        return True

    def _probe(self, conn: Connection, pairs: list[Pair]) -> None:
        """Read the rows `pairs` (sorted) again and put what they have now into `per`."""
        pairs = [p for p in pairs if p[1] in self.per or self.complete]
        if not pairs:
            return
        got = {(int(r[0]), str(r[1])): int(r[2]) for r in conn.execute(_PROBE, {
            "locs": int_array(p[0] for p in pairs), "skus": text_array([p[1] for p in pairs])})}
        self._set({p: got.get(p, 0) for p in pairs})

    def _set(self, values: dict[Pair, int]) -> None:
        """Put what rows have now (0: nothing, or no such row) into `per`: new arrays for each SKU
        changed, never changed in place (a `view` handed out keeps what it saw)."""
        by_sku: dict[str, list[tuple[int, int]]] = {}
        for (loc, sku), have in sorted(values.items()):
            if sku in self.per or self.complete:
                by_sku.setdefault(sku, []).append((loc, have))
        for sku, now in by_sku.items():
            ids, atp = self.per.get(sku, (_EMPTY, _EMPTY))
            if len(ids):
                # Most changes: a holder's figure, still a holder (a reservation): a copy with those
                # figures changed (the `isin` and sort below cost ~20 us a SKU, and a batch's refresh
                # meets every SKU the other workers reserved since).
                at = [int(i) for i in np.searchsorted(ids, [loc for loc, _ in now])]
                if all(j < len(ids) and ids[j] == loc and v >= 1 for j, (loc, v) in zip(at, now, strict=True)):
                    new = atp.copy()
                    for j, (_, v) in zip(at, now, strict=True):
                        new[j] = v
                    self.per[sku] = (ids, new)
                    continue
            locs = np.array([loc for loc, _ in now], dtype=np.int64)
            figures = np.array([v for _, v in now], dtype=np.int64)
            keep = ~np.isin(ids, locs, assume_unique=True)
            held = figures >= 1
            new_ids = np.concatenate([ids[keep], locs[held]])
            new_atp = np.concatenate([atp[keep], figures[held]])
            order = np.argsort(new_ids, kind="stable")
            if len(new_ids):
                self.per[sku] = (new_ids[order], new_atp[order])
            else:
                self.per.pop(sku, None)

    def add(self, got: dict[str, Arrays], generation: int) -> None:
        """SKUs' holders read (`_HOLDING_ANY`) after the `view` of `generation`, in its transaction:
        kept unless another refresh came since (it may have passed changes of theirs unread)."""
        with self.lock:
            if generation == self.generation and not self.complete:
                self.per.update(got)

    def _warm(self, conn: Connection) -> None:
        """Read every SKU's holders at once (~2 s of a worker's first batch at the issue's size)."""
        rows = conn.execute(_ALL).all()
        self._reset(int(rows[0][3]), None if rows[0][4] is None else int(rows[0][4]))
        self.per = {str(sku): arrays(locs, atp) for sku, locs, atp, _, _ in rows[1:]}
        self.complete = True


KEEP_S = 3600.0
"""Logged changes older than this are pruned (`prune`). A worker refreshes within `IDLE_S` or starts
afresh, so it reads every change unless the transaction that wrote it stayed open for longer than
`KEEP_S - IDLE_S` (50 minutes) before committing."""
_PRUNE = text(f"DELETE FROM orders_stock_changes WHERE at < clock_timestamp() - make_interval(secs => :keep) "
              f"AND txid < {_HORIZON}")


def prune(conn: Connection) -> int:
    """Delete the logged changes older than `KEEP_S` (PostgreSQL; the orders housekeeper's)."""
    if conn.dialect.name != "postgresql":
        return 0
    return int(conn.execute(_PRUNE, {"keep": KEEP_S}).rowcount)


_caches: dict[str, Holders] = {}
_caches_lock = threading.Lock()


def _key(conn: Connection) -> str:
    return str(conn.engine.url.render_as_string(hide_password=True))  # its query too: each schema its own cache


def holders(conn: Connection) -> Holders | None:
    """This process's holders cache for `conn`'s database (PostgreSQL only; None elsewhere)."""
    if conn.dialect.name != "postgresql":
        return None
    key = _key(conn)
    with _caches_lock:
        got = _caches.get(key)
        if got is None:
            got = _caches[key] = Holders()
    return got


def forget() -> None:
    """Drop every cache (the next batch starts afresh)."""
    with _caches_lock:
        _caches.clear()
