"""The orders engine's background work: expire unaccepted reservations (and route again), route
queued orders when due, push ATP changes and deliver the channels' feeds.

The ATP feed follows the stock movements by a durable cursor (a row of `follower_cursors`, named
`orders-atp-feed`), moved in the transaction that queues the feed messages: a restart or a second
worker neither pushes a change twice nor skips one. On PostgreSQL, movements are read in commit
order as followers read the ledger (`cloud.bus.followers`): by (txid, id), only those of
transactions older than every one still running, so a movement committed late with a smaller id
is not skipped. The first step starts at the present (history is not pushed), and with no channel
taking an ATP feed the cursor moves on without pushing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select, text, tuple_, update

from cloud.db import insert_for, write_transaction
from cloud.engine import TaskContext
from cloud.models import FollowerCursor
from cloud.orders import channels, holders, service
from cloud.orders.stock import MOVES

__all__ = ["ATP_BATCH", "ATP_CURSOR", "TICK_S", "atp_step", "housekeeper", "tick"]

log = logging.getLogger(__name__)

TICK_S = 1.0
FEED_TIMEOUT_S = 10.0


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=FEED_TIMEOUT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


ATP_CURSOR = "orders-atp-feed"
ATP_BATCH = 5000
"""Movements read per step (a step queues one message per channel for their SKUs)."""
_CURSORS: Table = FollowerCursor.__table__  # type: ignore[assignment]
_HORIZON = text("(pg_snapshot_xmin(pg_current_snapshot())::text::bigint)")
"""PostgreSQL: transactions below this id have all ended (see cloud.bus.followers)."""


def _after(conn: Connection, txid: int, last_id: int) -> Any:
    """The condition on movements not read yet by a cursor at (txid, last_id)."""
    if conn.dialect.name == "postgresql":
        return (tuple_(MOVES.c.txid, MOVES.c.id) > tuple_(txid, last_id)) & (MOVES.c.txid < _HORIZON)
    return MOVES.c.id > last_id


def _present(conn: Connection) -> tuple[int, int]:
    """A cursor position before every movement still to come (what is older is history)."""
    if conn.dialect.name == "postgresql":
        # Everything of the transactions below the horizon, and nothing of those at or above it.
        return int(conn.execute(select(_HORIZON)).scalar_one()) - 1, 2**62
    return 0, int(conn.execute(select(func.max(MOVES.c.id))).scalar() or 0)


def _atp_due(conn: Connection) -> bool:
    row = conn.execute(select(_CURSORS.c.txid, _CURSORS.c.last_id).where(_CURSORS.c.name == ATP_CURSOR)).first()
    if row is None:
        return True  # the cursor starts
    return conn.execute(select(MOVES.c.id).where(_after(conn, int(row.txid), int(row.last_id))).limit(1)
                        ).first() is not None


def atp_step(engine: Engine, now: datetime) -> tuple[int, bool]:
    """Queue the ATP feed messages for the movements after the cursor, and move it, in one
    transaction. Returns (messages queued, more movements may be waiting)."""
    with write_transaction(engine) as conn:
        stmt = select(_CURSORS.c.txid, _CURSORS.c.last_id, _CURSORS.c.processed).where(_CURSORS.c.name == ATP_CURSOR)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)  # one worker at a time; the others skip this round
        cur = conn.execute(stmt).first()
        if cur is None:
            txid, last_id = _present(conn)
            # Another worker starting it at the same moment: its row stands (and this one skips).
            conn.execute(insert_for(conn, _CURSORS).values(name=ATP_CURSOR, txid=txid, last_id=last_id, processed=0,
                                                           updated_at=now).on_conflict_do_nothing(index_elements=["name"]))
            return 0, False
        feeds = conn.execute(select(service.CHANNELS.c.name).where(service.CHANNELS.c.atp_url.is_not(None))
                             .limit(1)).first() is not None
        if not feeds:
            txid, last_id = _present(conn)
            conn.execute(update(_CURSORS).where(_CURSORS.c.name == ATP_CURSOR).values(
                txid=txid, last_id=last_id, updated_at=now))
            return 0, False
        order = (MOVES.c.txid, MOVES.c.id) if conn.dialect.name == "postgresql" else (MOVES.c.id,)
        rows = conn.execute(select(MOVES.c.txid, MOVES.c.id, MOVES.c.sku).where(
            _after(conn, int(cur.txid), int(cur.last_id))).order_by(*order).limit(ATP_BATCH)).all()
        if not rows:
            return 0, False
        queued = channels.queue_atp(conn, sorted({r.sku for r in rows}), now)
        last = rows[-1]
        conn.execute(update(_CURSORS).where(_CURSORS.c.name == ATP_CURSOR).values(
            txid=last.txid or 0, last_id=last.id, processed=cur.processed + len(rows), updated_at=now))
        return queued, len(rows) == ATP_BATCH


def _due(engine: Engine, now: datetime) -> tuple[bool, bool, bool, bool]:
    """Cheap reads first: a write transaction (SQLite's write lock) only when there is work."""
    with engine.connect() as conn:
        expired = conn.execute(select(service.ASSIGN.c.id).where(
            service.ASSIGN.c.state == "routed", service.ASSIGN.c.accept_by <= now).limit(1)).first() is not None
        queued = conn.execute(select(service.ORDERS.c.id).where(service.ORDERS.c.route_after <= now).limit(1)
                              ).first() is not None
        atp = _atp_due(conn)
        feed = conn.execute(select(service.FEED.c.id).where(service.FEED.c.status == "pending",
                                                            service.FEED.c.next_attempt_at <= now).limit(1)
                            ).first() is not None
    return expired, queued, atp, feed


def tick(engine: Engine, post: object = http_post) -> dict[str, int]:
    now = datetime.now(UTC)
    expired_due, queued_due, atp_due, feed_due = _due(engine, now)
    expired = queued = atp = sent = 0
    # One assignment (one order) per transaction: each releases and routes again on its own.
    while expired_due and expired < 500:
        n = service.retrying(engine, lambda conn: service.expire_due(conn, now, limit=1))
        expired += n
        expired_due = n > 0
    if queued_due:
        queued = service.retrying(engine, lambda conn: service.route_queued(conn, now))
    more, rounds = atp_due, 0
    while more and rounds < 10:
        n, more = atp_step(engine, now)
        atp += n
        rounds += 1
    if feed_due or atp:
        sent = channels.deliver_due(engine, post, now)
    global _pruned_at
    if engine.dialect.name == "postgresql" and time.monotonic() - _pruned_at >= PRUNE_EVERY_S:
        with write_transaction(engine) as conn:
            holders.prune(conn)
        _pruned_at = time.monotonic()
    return {"expired": expired, "queued": queued, "atp": atp, "sent": sent}


PRUNE_EVERY_S = 300.0
"""How often the housekeeper prunes the stock changes the holders caches read (`holders.prune`)."""
_pruned_at = -PRUNE_EVERY_S


async def housekeeper(ctx: TaskContext) -> None:
    while True:
        try:
            done = await asyncio.to_thread(tick, ctx.engine)
            if done["expired"] or done["queued"]:
                ctx.wake_relay()
        except Exception:
            log.exception("orders housekeeping round failed; retrying in %.1f s", TICK_S)
        await asyncio.sleep(TICK_S)
