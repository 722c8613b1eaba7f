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

from sqlalchemy import select
from sqlalchemy.orm import joinedload

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
    data = msg.data
    assert isinstance(data, PopData)
    s = ctx.orm
    reason = service.implausible(s, msg.node, data.screen, data.started_at, data.duration_ms, msg.received_at)
    if reason is not None:
        service.drop(s, msg.node, reason, ctx.now)
        return
    node = s.scalars(select(Node).options(joinedload(Node.store)).where(Node.id == msg.node)).one_or_none()
    store: Store | None = node.store if node else None
    zone = ZoneInfo(store.timezone) if store else UTC
    s.add(Play(
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
    row = ctx.conn.execute(
        select(DownlinkCommand.type, DownlinkCommand.node, DownlinkCommand.data).where(
            DownlinkCommand.msg_id == uuid.UUID(str(msg.corr)))
    ).one_or_none()
    if row is None or row.type != "schedule" or row.node != msg.node:
        return
    s = ctx.orm
    state = s.get(ScreenState, msg.node)
    if state is None:
        return
    version = int(row.data["version"])
    if not ack.ok:
        state.refused = f"version {version}: {ack.detail or 'no reason given'}"[:2000]
        return
    if state.playing_version is None or version >= state.playing_version:
        state.playing_version, state.playing_hash = version, row.data.get("timeline_hash")
        state.playing_since, state.refused = msg.received_at, None


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
