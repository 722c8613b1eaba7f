"""Bus handlers of cloud.staff: a box's `birth` gets it its store's current roster (a
`clerk_roster` command, `broker.payloads.ClerkRosterArgs`), so a box that was offline, replaced or
moved to the store holds the clerks who may sign in there."""

from __future__ import annotations

from cloud.bus import Context, Message
from cloud.staff.service import roster_args, send_roster

__all__ = ["on_birth"]


def on_birth(ctx: Context, msg: Message) -> None:
    store_id = ctx.store_of(msg.node)
    if store_id is None:
        return
    args = roster_args(ctx.conn, store_id)
    if args is None:
        return  # the store never had a clerk: nothing to hold, no command to wait for
    send_roster(ctx.conn, msg.node, args, now=ctx.now, engine=ctx.engine, birth=str(msg.msg_id))
