"""The signage engine on the bus: proof of play counted once, schedule acknowledgements recorded,
and the refresher that keeps every screen's schedule current.

Both handlers run in the ledger transaction of a newly stored message (see `cloud.bus.message`):
a `pop` redelivered by the broker or re-sent by a box after a lost PUBACK is stored once, so it is
counted once; an implausible one is counted as dropped instead, once too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import insert, or_, select, update

from broker.payloads import AckData, PopData
from cloud.access.service import write_session
from cloud.bus.message import Context, Message
from cloud.engine import TaskContext
from cloud.models import DownlinkCommand, Node, Store
from cloud.signage import service
from cloud.signage.models import Play, ScreenState

__all__ = ["on_ack", "on_pop", "refresher"]

log = logging.getLogger(__name__)
REFRESH_POLL_S = 30.0


def on_pop(ctx: Context, msg: Message) -> None:
    # Core statements on `ctx.conn`, not `ctx.orm`: see the note on `Context.orm` in the report of
    # this engine (an ORM session opened inside the handler's savepoint drops its changes on close).
    data = msg.data
    assert isinstance(data, PopData)
    conn = ctx.conn
    reason = service.implausible(conn, msg.node, data.screen, data.started_at, data.duration_ms, msg.received_at)
    if reason is not None:
        service.drop(conn, msg.node, reason, ctx.now)
        return
    store = conn.execute(
        select(Store.id, Store.region_id, Store.timezone).join(Node, Node.store_id == Store.id).where(Node.id == msg.node)
    ).one_or_none()
    zone = ZoneInfo(store.timezone) if store else UTC
    conn.execute(insert(Play).values(
        msg_id=str(msg.msg_id), node=msg.node, screen=data.screen, store_id=store.id if store else None,
        region_id=store.region_id if store else None, campaign=data.campaign_id, media=data.media_id,
        layer=data.layer.value, schedule_version=data.schedule_version, started_at=data.started_at,
        duration_ms=data.duration_ms, day=data.started_at.astimezone(zone).date().isoformat(),
    ))


def on_ack(ctx: Context, msg: Message) -> None:
    """A box answered a `schedule`: record which version it plays (or why it refused)."""
    ack = msg.data
    assert isinstance(ack, AckData)
    if msg.corr is None:
        return
    conn = ctx.conn
    row = conn.execute(
        select(DownlinkCommand.type, DownlinkCommand.node, DownlinkCommand.data).where(
            DownlinkCommand.msg_id == uuid.UUID(str(msg.corr)))
    ).one_or_none()
    if row is None or row.type != "schedule" or row.node != msg.node:
        return
    version = int(row.data["version"])
    # One command carries every screen of the box: each screen's row gets its own timeline's hash.
    parts = [row.data, *(row.data.get("screens") or [])]
    for part in parts:
        mine = (ScreenState.node == msg.node) & (ScreenState.screen == part.get("screen", "main"))
        if not ack.ok:
            conn.execute(update(ScreenState).where(mine).values(
                refused=f"version {version}: {ack.detail or 'no reason given'}"[:2000]))
            continue
        # Acks may be handled out of order: an older version never replaces a newer one.
        conn.execute(update(ScreenState).where(
            mine, or_(ScreenState.playing_version.is_(None), ScreenState.playing_version <= version)
        ).values(playing_version=version, playing_hash=part.get("timeline_hash"), playing_since=msg.received_at,
                 refused=None))


async def refresher(ctx: TaskContext) -> None:
    """Send the current publication to screens that lack it or whose 48 h window is aging."""

    def once() -> int:
        with write_session(ctx.engine) as session, session.begin():
            return service.refresh(session, datetime.now(UTC))

    while True:
        try:
            if await asyncio.to_thread(once) > 0:
                ctx.wake_relay()
        except Exception:
            log.exception("signage refresh round failed; retrying in %.0f s", REFRESH_POLL_S)
        await asyncio.sleep(REFRESH_POLL_S)
