"""The stock ledger per (SKU, location): on hand, reserved, safety stock, and every movement.

Available to promise (ATP) = on hand - reserved - safety, never shown below zero. Store boxes feed
`on_hand` through `stock` messages (order-safe: a message older than the one a row came from never
overwrites it); warehouses through REST/CSV. Reservations change `reserved` under row locks
(`reserve`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, func, or_, select, text, update

from cloud.db import insert_for
from cloud.orders.models import Location, Movement, StockRow

__all__ = ["LevelIn", "Shortage", "StockError", "apply_deltas", "apply_levels", "atp_rows", "low_stock", "parse_csv",
           "reserve"]

STOCK: Table = StockRow.__table__  # type: ignore[assignment]
MOVES: Table = Movement.__table__  # type: ignore[assignment]
LOCS: Table = Location.__table__  # type: ignore[assignment]


class StockError(ValueError):
    """A stock input that cannot be applied; the message names the row, field and value."""


@dataclass(frozen=True)
class LevelIn:
    sku: str
    on_hand: int | None = None
    safety: int | None = None
    min_level: int | None = None


def _older(pos: tuple[int, int] | None) -> Any:
    if pos is None:
        return True
    s, q = pos
    return or_(STOCK.c.pos_session.is_(None), STOCK.c.pos_session < s, and_(STOCK.c.pos_session == s, STOCK.c.pos_seq < q))


def apply_levels(conn: Connection, location_id: int, levels: Sequence[LevelIn], *, source: str, now: datetime,
                 pos: tuple[int, int] | None = None, snapshot: bool = False, kind: str = "level") -> int:
    """Set on hand (and safety / minimum when given) for `levels` at `location_id`; with `snapshot`,
    SKUs not listed go to zero. `pos` (session, seq) makes it order-safe. Returns rows changed."""
    changed = 0
    listed = {lv.sku for lv in levels}
    existing = {
        r.sku: r for r in conn.execute(
            select(STOCK).where(STOCK.c.location_id == location_id, STOCK.c.sku.in_(listed))
        )
    } if listed else {}
    missing = [lv for lv in levels if lv.sku not in existing]
    if missing:
        conn.execute(
            insert_for(conn, STOCK).on_conflict_do_nothing(index_elements=["location_id", "sku"]),
            [{"location_id": location_id, "sku": lv.sku, "on_hand": 0, "reserved": 0, "safety": 0} for lv in missing],
        )
    later = _deltas_after(conn, location_id, pos) if pos is not None else {}
    for lv in levels:
        values: dict[str, Any] = {"updated_at": now}
        if lv.safety is not None:
            values["safety"] = lv.safety
        if lv.min_level is not None:
            values["min_level"] = lv.min_level
        where = [STOCK.c.location_id == location_id, STOCK.c.sku == lv.sku]
        if lv.on_hand is not None:
            values["on_hand"] = lv.on_hand
            if pos is not None:
                # The store's changes newer than this level were applied already: keep them on top.
                values["on_hand"] = max(0, lv.on_hand + later.get(lv.sku, 0))
                values |= {"pos_session": pos[0], "pos_seq": pos[1]}
                where.append(_older(pos))
        row = conn.execute(
            update(STOCK).where(*where).values(**values).returning(STOCK.c.on_hand, STOCK.c.reserved)
        ).first()
        if row is None:
            continue
        changed += 1
        before = existing.get(lv.sku)
        delta = row.on_hand - (before.on_hand if before is not None else 0)
        if delta or lv.on_hand is not None:
            conn.execute(MOVES.insert().values(
                location_id=location_id, sku=lv.sku, at=now, kind="snapshot" if snapshot else kind,
                on_hand_delta=delta, reserved_delta=0, on_hand_after=row.on_hand, reserved_after=row.reserved,
                source=source[:200],
            ))
    if snapshot:
        stale = conn.execute(
            update(STOCK)
            .where(STOCK.c.location_id == location_id, STOCK.c.sku.not_in(listed), STOCK.c.on_hand != 0, _older(pos))
            .values(on_hand=0, updated_at=now, **({"pos_session": pos[0], "pos_seq": pos[1]} if pos else {}))
            .returning(STOCK.c.sku, STOCK.c.reserved)
        ).all()
        for r in stale:
            conn.execute(MOVES.insert().values(
                location_id=location_id, sku=r.sku, at=now, kind="snapshot", on_hand_delta=0, reserved_delta=0,
                on_hand_after=0, reserved_after=r.reserved, source=f"{source} (absent from the snapshot)"[:200],
            ))
        changed += len(stale)
    return changed


def _deltas_after(conn: Connection, location_id: int, pos: tuple[int, int]) -> dict[str, int]:
    """Per SKU, the sum of the store's deltas newer than `pos` already applied (a late, older level
    keeps them on top of itself)."""
    s, q = pos
    return {sku: int(n) for sku, n in conn.execute(
        select(MOVES.c.sku, func.sum(MOVES.c.on_hand_delta)).where(
            MOVES.c.location_id == location_id, MOVES.c.kind == "delta",
            or_(MOVES.c.pos_session > s, and_(MOVES.c.pos_session == s, MOVES.c.pos_seq > q)))
        .group_by(MOVES.c.sku))}


def apply_deltas(conn: Connection, location_id: int, deltas: Sequence[tuple[str, int, str | None]], *, source: str,
                 now: datetime, pos: tuple[int, int], extras: Sequence[Mapping[str, Any]] | None = None) -> int:
    """A store's changes (sku, delta, reason) at `pos`: added to on hand unless a level at least as
    new is already there (it counted them). `extras[i]`: what the ledger row of the i-th change also
    records (a clerk's adjustment: reason, clerk_id, clerk_name, note, ref). Returns rows changed."""
    changed = 0
    for i, (sku, delta, reason) in enumerate(deltas):
        extra = dict(extras[i]) if extras is not None else {}
        conn.execute(insert_for(conn, STOCK).on_conflict_do_nothing(index_elements=["location_id", "sku"]),
                     [{"location_id": location_id, "sku": sku, "on_hand": 0, "reserved": 0, "safety": 0}])
        row = conn.execute(
            update(STOCK).where(STOCK.c.location_id == location_id, STOCK.c.sku == sku, _older(pos))
            .values(on_hand=func.max(STOCK.c.on_hand + delta, 0) if conn.dialect.name == "sqlite"
                    else func.greatest(STOCK.c.on_hand + delta, 0), updated_at=now)
            .returning(STOCK.c.on_hand, STOCK.c.reserved)
        ).first()
        if row is None:
            continue
        changed += 1
        conn.execute(MOVES.insert().values(
            location_id=location_id, sku=sku, at=now, kind="delta", on_hand_delta=delta, reserved_delta=0,
            on_hand_after=row.on_hand, reserved_after=row.reserved, source=_delta_source(source, reason, extra),
            pos_session=pos[0], pos_seq=pos[1], **extra))
    return changed


def _delta_source(source: str, reason: str | None, extra: Mapping[str, Any]) -> str:
    who = f" by {extra['clerk_name']}" if extra.get("clerk_name") else ""
    return f"{source} ({reason or 'change'}){who}"[:200]


class Shortage(Exception):
    """A row no longer has what the plan took from it (stock moved since it was read): plan again."""


# PostgreSQL: every row of the order in ONE statement. The CTE locks them in (location, sku) order,
# the order every transaction takes stock rows in, so concurrent orders queue instead of deadlocking;
# the UPDATE then takes only rows that still have the quantity (re-checked on the newest version of
# a row another transaction changed meanwhile). The arrays keep the text the same for every order,
# so the server prepares it once per connection.
_RESERVE_PG = text("""
WITH want AS (
    SELECT * FROM unnest(CAST(:locs AS integer[]), CAST(:skus AS varchar[]), CAST(:qtys AS integer[]))
        AS w(location_id, sku, qty)
), locked AS (
    SELECT s.location_id, s.sku FROM orders_stock s
    JOIN want w ON w.location_id = s.location_id AND w.sku = s.sku
    ORDER BY s.location_id, s.sku FOR UPDATE OF s
)
UPDATE orders_stock s SET reserved = s.reserved + w.qty
FROM want w JOIN locked l ON l.location_id = w.location_id AND l.sku = w.sku
WHERE s.location_id = w.location_id AND s.sku = w.sku AND s.on_hand - s.reserved - s.safety >= w.qty
RETURNING s.location_id, s.sku, s.on_hand, s.reserved
""")
# SQLite: one writer holds the database (no lock order to keep); the rows come as one JSON array so
# that the text, and so the prepared statement, is the same for every order.
_RESERVE_SQLITE = text("""
WITH want AS (SELECT value ->> 0 AS location_id, value ->> 1 AS sku, value ->> 2 AS qty FROM json_each(:rows))
UPDATE orders_stock SET reserved = orders_stock.reserved + want.qty FROM want
WHERE orders_stock.location_id = want.location_id AND orders_stock.sku = want.sku
  AND orders_stock.on_hand - orders_stock.reserved - orders_stock.safety >= want.qty
RETURNING location_id, sku, on_hand, reserved
""")
_UNRESERVE = update(STOCK).where(STOCK.c.location_id == bindparam("l"), STOCK.c.sku == bindparam("s")).values(
    reserved=STOCK.c.reserved - bindparam("q"))
_MOVE = MOVES.insert()


def reserve(conn: Connection, order_id: int, allocation: dict[int, list[tuple[str, int]]], now: datetime) -> None:
    """Add `allocation` (location → [(sku, qty)]) to `reserved` where every row still has it, and
    record the movements; else raise `Shortage` with nothing reserved (PostgreSQL: the savepoint is
    rolled back, locks included; SQLite, one writer: what was taken is given back)."""
    wanted = sorted((loc, sku, qty) for loc, lines in allocation.items() for sku, qty in lines)
    if not wanted:
        return
    if conn.dialect.name == "postgresql":
        # In a savepoint: a lost race must give back the row locks it took, not only the quantities.
        # Kept, they would be held while the next try locks other rows, out of the fixed order: a
        # deadlock with a router doing the same the other way round.
        attempt = conn.begin_nested()
        got = conn.execute(_RESERVE_PG, {"locs": [w[0] for w in wanted], "skus": [w[1] for w in wanted],
                                         "qtys": [w[2] for w in wanted]}).all()
        if len(got) < len(wanted):
            attempt.rollback()
            taken = {(r[0], r[1]) for r in got}
            raise Shortage(next(f"{sku} at location {loc}" for loc, sku, _ in wanted if (loc, sku) not in taken))
        attempt.commit()
    else:
        got = conn.execute(_RESERVE_SQLITE, {"rows": json.dumps(wanted)}).all()
    if len(got) < len(wanted):
        taken = {(r[0], r[1]) for r in got}
        back = [{"l": loc, "s": sku, "q": qty} for loc, sku, qty in wanted if (loc, sku) in taken]
        if back:
            conn.execute(_UNRESERVE, back)
        short = next(f"{sku} at location {loc}" for loc, sku, _ in wanted if (loc, sku) not in taken)
        raise Shortage(short)
    qty = {(loc, sku): q for loc, sku, q in wanted}
    conn.execute(_MOVE, [
        {"location_id": r[0], "sku": r[1], "at": now, "kind": "reserve", "on_hand_delta": 0,
         "reserved_delta": qty[(r[0], r[1])], "on_hand_after": r[2], "reserved_after": r[3],
         "source": f"order:{order_id}"} for r in sorted(got, key=lambda r: (r[0], r[1]))])


def atp_expr() -> Any:
    return STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.safety


def atp_rows(conn: Connection, *, sku: str | None = None, location_ids: Iterable[int] | None = None,
             limit: int = 500, offset: int = 0) -> list[dict[str, Any]]:
    stmt = select(STOCK, LOCS.c.code, LOCS.c.kind, LOCS.c.region, LOCS.c.store_id).join(
        LOCS, LOCS.c.id == STOCK.c.location_id)
    if sku:
        stmt = stmt.where(STOCK.c.sku == sku)
    if location_ids is not None:
        stmt = stmt.where(STOCK.c.location_id.in_(list(location_ids)))
    rows = conn.execute(stmt.order_by(STOCK.c.sku, LOCS.c.code).limit(limit).offset(offset)).all()
    return [_row(r) for r in rows]


def _row(r: Any) -> dict[str, Any]:
    atp = max(0, r.on_hand - r.reserved - r.safety)
    return {"sku": r.sku, "location": r.code, "kind": r.kind, "region": r.region, "on_hand": r.on_hand,
            "reserved": r.reserved, "safety": r.safety, "atp": atp, "min_level": r.min_level,
            "low": r.min_level is not None and atp < r.min_level,
            "updated_at": r.updated_at.isoformat() if r.updated_at else None}


def low_stock(conn: Connection, location_ids: Iterable[int] | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Rows whose ATP is below their configured minimum."""
    stmt = (
        select(STOCK, LOCS.c.code, LOCS.c.kind, LOCS.c.region, LOCS.c.store_id)
        .join(LOCS, LOCS.c.id == STOCK.c.location_id)
        .where(STOCK.c.min_level.is_not(None), func.max(atp_expr(), 0) < STOCK.c.min_level
               if conn.dialect.name == "sqlite" else func.greatest(atp_expr(), 0) < STOCK.c.min_level)
    )
    if location_ids is not None:
        stmt = stmt.where(STOCK.c.location_id.in_(list(location_ids)))
    return [_row(r) for r in conn.execute(stmt.order_by(STOCK.c.sku, LOCS.c.code).limit(limit))]


CSV_COLUMNS = ("location", "sku", "on_hand", "safety", "min_level")


def _int(value: str, field: str, line: int, *, optional: bool) -> int | None:
    value = value.strip()
    if not value:
        if optional:
            return None
        raise StockError(f"line {line}: {field} is empty: expected a whole number ≥ 0")
    try:
        n = int(value)
    except ValueError:
        raise StockError(f"line {line}: {field} {value!r} is not a whole number") from None
    if not 0 <= n <= 10_000_000:
        raise StockError(f"line {line}: {field} {n} is outside 0..10000000")
    return n


def parse_csv(text: str) -> dict[str, list[LevelIn]]:
    """`location,sku,on_hand[,safety][,min_level]` rows (a header line) → levels per location code.
    Refuses the whole file on the first bad row, naming its line."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"location", "sku", "on_hand"} <= set(reader.fieldnames):
        raise StockError(f"stock CSV header is {reader.fieldnames!r}: expected location,sku,on_hand[,safety][,min_level]")
    out: dict[str, list[LevelIn]] = {}
    for i, row in enumerate(reader, start=2):
        loc, sku = (row.get("location") or "").strip(), (row.get("sku") or "").strip()
        if not loc or not sku:
            raise StockError(f"line {i}: location and sku are required")
        out.setdefault(loc, []).append(LevelIn(
            sku=sku, on_hand=_int(row.get("on_hand") or "", "on_hand", i, optional=False),
            safety=_int(row.get("safety") or "", "safety", i, optional=True),
            min_level=_int(row.get("min_level") or "", "min_level", i, optional=True),
        ))
    return out
