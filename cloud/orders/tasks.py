"""The orders engine's background work: expire unaccepted reservations (and route again), route
queued orders when due, push ATP changes and deliver the channels' feeds."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from cloud.db import write_transaction
from cloud.engine import TaskContext
from cloud.orders import channels, service
from cloud.orders.stock import MOVES

__all__ = ["TICK_S", "housekeeper", "tick"]

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


class _Cursor:
    """The last stock movement pushed to the ATP feeds (per process; a restart pushes once more)."""

    last: int | None = None


def _due(engine: Engine, now: datetime) -> tuple[bool, bool, int, bool, bool]:
    """Cheap reads first: a write transaction (SQLite's write lock) only when there is work."""
    with engine.connect() as conn:
        expired = conn.execute(select(service.ASSIGN.c.id).where(
            service.ASSIGN.c.state == "routed", service.ASSIGN.c.accept_by <= now).limit(1)).first() is not None
        queued = conn.execute(select(service.ORDERS.c.id).where(service.ORDERS.c.route_after <= now).limit(1)
                              ).first() is not None
        top = conn.execute(select(func.max(MOVES.c.id))).scalar() or 0
        atp_feeds = conn.execute(select(service.CHANNELS.c.name).where(service.CHANNELS.c.atp_url.is_not(None))
                                 .limit(1)).first() is not None
        feed = conn.execute(select(service.FEED.c.id).where(service.FEED.c.status == "pending",
                                                            service.FEED.c.next_attempt_at <= now).limit(1)
                            ).first() is not None
    return expired, queued, int(top), atp_feeds, feed


def tick(engine: Engine, cursor: type[_Cursor] = _Cursor, post: object = http_post) -> dict[str, int]:
    now = datetime.now(UTC)
    expired_due, queued_due, top, atp_feeds, feed_due = _due(engine, now)
    expired = queued = atp = sent = 0
    # One assignment (one order) per transaction: each releases and routes again on its own.
    while expired_due and expired < 500:
        n = service.retrying(engine, lambda conn: service.expire_due(conn, now, limit=1))
        expired += n
        expired_due = n > 0
    if queued_due:
        queued = service.retrying(engine, lambda conn: service.route_queued(conn, now))
    if cursor.last is None or not atp_feeds:
        cursor.last = top
    elif top > cursor.last:
        with write_transaction(engine) as conn:
            skus = sorted(set(conn.execute(select(MOVES.c.sku).where(MOVES.c.id > cursor.last, MOVES.c.id <= top))
                              .scalars()))
            atp = channels.queue_atp(conn, skus, now)
        cursor.last = top
    if feed_due or atp:
        sent = channels.deliver_due(engine, post, now)
    return {"expired": expired, "queued": queued, "atp": atp, "sent": sent}


async def housekeeper(ctx: TaskContext) -> None:
    while True:
        try:
            done = await asyncio.to_thread(tick, ctx.engine)
            if done["expired"] or done["queued"]:
                ctx.wake_relay()
        except Exception:
            log.exception("orders housekeeping round failed; retrying in %.1f s", TICK_S)
        await asyncio.sleep(TICK_S)
