"""A second fake engine on the same message type: it must keep working when fake-a fails."""

from __future__ import annotations

from sqlalchemy import insert

from broker.envelope import MessageType
from cloud.bus import Context, Message
from cloud.engine import EngineSpec, Handler
from tests.cloud.fake_engine import effects


def on_scan(ctx: Context, msg: Message) -> None:
    ctx.conn.execute(insert(effects).values(engine="fake-b", msg_id=str(msg.msg_id), seq=msg.seq))


ENGINE = EngineSpec(name="fake-b", handlers=(Handler(MessageType.SCAN, on_scan),))
