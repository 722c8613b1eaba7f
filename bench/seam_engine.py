"""Engines for bench/bus.py, loaded into the worker with OMNISHELF_EXTRA_ENGINES.

`bench.seam_engine` adds one trivial handler per message type a box sends (what the seam itself
costs: the savepoint, the call, the Message), and a task that sends commands to one box at a
steady rate when OMNISHELF_BENCH_COMMANDS=<count>:<per second>:<node> is set (the command round
trip: written in a transaction, relayed, handled and acknowledged by the box, ack stored).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

from sqlalchemy import select

from broker import topics
from broker.envelope import MessageType
from broker.payloads import CommandData
from cloud.bus import Context, Message, downlink
from cloud.db import write_transaction
from cloud.engine import EngineSpec, Handler, Task, TaskContext
from cloud.models import Node


def nothing(ctx: Context, msg: Message) -> None:
    """The cheapest handler there is: the seam's own cost."""


async def send_commands(ctx: TaskContext) -> None:
    spec = os.environ.get("OMNISHELF_BENCH_COMMANDS")
    if not spec:
        await asyncio.Event().wait()  # nothing to do; stay idle rather than be restarted
    count, rate, node = spec.split(":") if spec else ("0", "1", "")
    started = datetime.now(UTC)
    # The box must be online, and this worker consuming: the box's row says online from before
    # this worker started (the box stayed connected), and commands sent before this worker
    # subscribed waited for it (their round trips measured its start, 1-1.5 s, not the path). The
    # box births again when a cloud host comes online; once this worker stored that, it consumes.
    while True:
        with ctx.engine.connect() as conn:
            row = conn.execute(select(Node.online, Node.last_seen).where(Node.id == node)).first()
        if row is not None and row.online and row.last_seen is not None and row.last_seen >= started:
            break
        await asyncio.sleep(0.05)
    start = time.perf_counter()
    for i in range(int(count)):
        delay = start + i / float(rate) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.to_thread(_send, ctx, node, i)
    await asyncio.Event().wait()


def _send(ctx: TaskContext, node: str, i: int) -> None:
    with write_transaction(ctx.engine) as conn:
        downlink.send(conn, node, MessageType.COMMAND, CommandData(name="bench", args={"i": i}), engine="bench")


ENGINE = EngineSpec(
    name="bench",
    handlers=tuple(Handler(t, nothing) for t in sorted(topics.UP - topics.LIFECYCLE)),
    tasks=(Task("bench-commands", send_commands),),
)
