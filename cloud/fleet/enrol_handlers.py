"""Bus handlers of enrolment: a claimed box's first birth ends its claim (audited)."""

from __future__ import annotations

from sqlalchemy import insert, update

from cloud.access.models import AuditEntry
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
        # Core, on the handler's connection: the effect and its audit entry commit with the ledger row.
        ctx.conn.execute(insert(AuditEntry).values(
            at=ctx.now, actor=f"node:{msg.node}", action="node.first_birth", object_type="node", object_id=msg.node,
            after={"session": msg.session}, via="bus",
        ))
