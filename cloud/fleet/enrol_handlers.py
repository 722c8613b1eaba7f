"""Bus handlers of enrolment: a claimed box's first birth ends its claim (audited)."""

from __future__ import annotations

from sqlalchemy import update

from cloud.access.service import audit
from cloud.bus import Context, Message
from cloud.fleet.models import Identity

__all__ = ["on_birth"]


def on_birth(ctx: Context, msg: Message) -> None:
    first = ctx.conn.execute(
        update(Identity)
        .where(Identity.node_id == msg.node, Identity.first_birth_at.is_(None))
        .values(first_birth_at=ctx.now)
    ).rowcount
    if first:
        audit(ctx.orm, f"node:{msg.node}", "node.first_birth", "node", msg.node,
              after={"session": msg.session}, via="bus")
