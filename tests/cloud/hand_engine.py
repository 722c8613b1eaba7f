"""A test engine for the downlink's hot path: its scan handler sends a command, and by the code
scanned it can then fail (the command must roll back with it) or kill its own process right after
the ledger transaction committed, before the worker could publish what it wrote."""

from __future__ import annotations

import os
import signal

from broker.envelope import MessageType
from broker.payloads import CommandData, ScanData
from cloud.bus import Context, Message
from cloud.db import after_commit
from cloud.engine import EngineSpec, Handler


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_scan(ctx: Context, msg: Message) -> None:
    assert isinstance(msg.data, ScanData)
    code = msg.data.code
    if not code.startswith("hand-"):
        return
    ctx.send(msg.node, MessageType.COMMAND, CommandData(name=code), corr=msg.msg_id)
    if code.startswith("hand-fail"):
        raise RuntimeError(f"the hand engine fails after sending for {code!r}")
    if code.startswith("hand-die"):
        after_commit(ctx.conn, _die)


ENGINE = EngineSpec(name="hand", handlers=(Handler(MessageType.SCAN, on_scan),))
