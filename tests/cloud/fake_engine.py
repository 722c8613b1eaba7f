"""A fake engine for the seam's tests: it records what the seam hands it, so the tests can count.

Its tables live in their own MetaData (not the product's schema); `create_tables(engine)` makes them.
Loaded into a real `omnishelf cloud worker` with OMNISHELF_EXTRA_ENGINES=tests.cloud.fake_engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from broker.envelope import MessageType
from broker.payloads import CommandData, OrderData, ScanData, StockData
from cloud.bus import Context, Message, newer_clause
from cloud.engine import CliCommand, EngineSpec, Follower, Handler

FAKE = MetaData()
effects = Table(
    "fx_effects", FAKE,
    Column("id", Integer, primary_key=True),
    Column("engine", String(16), nullable=False),
    Column("msg_id", String(36), nullable=False),  # deliberately not unique: duplicates would show
    Column("seq", Integer, nullable=False),
)
latest = Table(
    "fx_latest", FAKE,
    Column("node", String(63), primary_key=True),
    Column("session", Integer),
    Column("seq", Integer),
    Column("on_hand", Integer),
)
flags = Table("fx_flags", FAKE, Column("name", String(32), primary_key=True), Column("value", Integer))
followed = Table(
    "fx_followed", FAKE,
    Column("id", Integer, primary_key=True),
    Column("msg_id", String(36), nullable=False),
)


def create_tables(engine: Engine) -> None:
    FAKE.create_all(engine)


def fixed(conn: object) -> bool:
    row = conn.execute(select(flags.c.value).where(flags.c.name == "poison_fixed")).first()  # type: ignore[attr-defined]
    return bool(row and row.value)


def on_scan(ctx: Context, msg: Message) -> None:
    assert isinstance(msg.data, ScanData)
    # Written first, so a raise below proves its rollback.
    ctx.conn.execute(insert(effects).values(engine="fake-a", msg_id=str(msg.msg_id), seq=msg.seq))
    if msg.data.code.startswith("poison") and not fixed(ctx.conn):
        raise ValueError(f"fake-a cannot handle code {msg.data.code!r}")


def on_stock(ctx: Context, msg: Message) -> None:
    assert isinstance(msg.data, StockData)
    on_hand = msg.data.levels[0].on_hand
    ins = postgresql.insert(latest) if ctx.conn.dialect.name == "postgresql" else sqlite.insert(latest)
    ctx.conn.execute(ins.values(node=msg.node, session=None, seq=None, on_hand=None).on_conflict_do_nothing())
    ctx.conn.execute(
        update(latest)
        .where(latest.c.node == msg.node, newer_clause(latest.c.session, latest.c.seq, msg))
        .values(session=msg.session, seq=msg.seq, on_hand=on_hand)
    )
    ctx.conn.execute(insert(effects).values(engine="stock", msg_id=str(msg.msg_id), seq=msg.seq))


def on_order(ctx: Context, msg: Message) -> None:
    assert isinstance(msg.data, OrderData)
    ctx.send(msg.node, MessageType.COMMAND, CommandData(name="confirm", args={"order": msg.data.order_id}))


def follow(ctx: Context, msgs: Sequence[Message]) -> None:
    for m in msgs:
        if isinstance(m.data, ScanData) and m.data.code == "follower-poison":
            raise RuntimeError("the follower cannot take this one")
        ctx.conn.execute(insert(followed).values(msg_id=str(m.msg_id)))


ENGINE = EngineSpec(
    name="fake-a",
    handlers=(
        Handler(MessageType.SCAN, on_scan),
        Handler(MessageType.STOCK, on_stock),
        Handler(MessageType.ORDER, on_order),
    ),
    followers=(Follower("fake-follower", follow, types=frozenset({MessageType.SCAN}), batch=50),),
    cli=(CliCommand("fake", "tests.cloud.fake_cli", "the fake engine's command (tests)"),),
)
