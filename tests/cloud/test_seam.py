"""The engine seam with fake engines, against a real Mosquitto and a real database (SQLite and
PostgreSQL): handlers run exactly once, a poison message for one engine stops nobody and can be
replayed (console service and CLI), two workers keep an order-safe state, followers read every
message once, and a committed command survives a kill -9 of the worker."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import MessageType, decode, encode
from broker.payloads import AckData, CommandData, OrderData, OrderLine, ScanData, StockData, StockLevel
from cloud.access.scope import Principal, Role, Scope
from cloud.bus import Context, downlink
from cloud.bus.worker import CloudBus
from cloud.db import write_transaction
from cloud.engines import EXTRA_ENV, load_engines
from cloud.fleet import service
from cloud.models import DownlinkCommand, FailedMessage, Region
from tests.cloud import fake_engine
from tests.cloud.conftest import box, cloud_settings, running, until
from tests.conftest import Broker

EXTRA = "tests.cloud.fake_engine,tests.cloud.fake_engine_b"
OPERATOR = Principal(kind="user", id=1, name="ops", role=Role.ADMIN, scope=Scope(all=True))


@pytest.fixture
def fakes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake_engine.create_tables(engine)
    monkeypatch.setenv(EXTRA_ENV, EXTRA)  # replays look the handlers up in the engine list
    return engine


def engines() -> Any:
    return (*load_engines(),)


def effects(engine: Engine, who: str) -> Counter[str]:
    with Session(engine) as s:
        rows = s.execute(select(fake_engine.effects.c.msg_id).where(fake_engine.effects.c.engine == who)).scalars()
        return Counter(rows)


def scan(code: str) -> ScanData:
    return ScanData(code=code, station="s1")


def test_handlers_run_once_per_message_however_often_it_is_delivered(broker: Broker, fakes: Engine) -> None:
    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, fakes), fakes, engines())
        async with running(bus), box(broker, "st1-k1") as b:
            sent = [await b.scan(code=f"c{i}") for i in range(20)]
            for env in sent[:5]:  # the same bytes again: a redelivery or a box resend
                await b.raw(topics.up("st1-k1", "scan"), encode(env))
            marker = await b.scan(code="marker")  # a fence: handled after everything above
            await until(lambda: effects(fakes, "fake-b")[str(marker.msg_id)] == 1, what="marker handled")
            await until(lambda: bus.stats.stored == 21, what="batch counted")
        for who in ("fake-a", "fake-b"):
            got = effects(fakes, who)
            assert {str(e.msg_id) for e in sent} <= set(got), who
            assert set(got.values()) == {1}, f"{who} ran a handler twice: {got.most_common(3)}"
        assert bus.stats.duplicates == 5 and bus.stats.handler_failures == 0

    asyncio.run(body())


def test_a_poison_message_for_one_engine_stops_nobody_and_replays_once(broker: Broker, fakes: Engine, tmp_path: Path) -> None:
    async def body() -> tuple[str, str]:
        bus = CloudBus(await cloud_settings(broker, fakes), fakes, engines())
        async with running(bus), box(broker, "st1-k1") as b:
            before = await b.scan(code="good-1")
            poison = await b.scan(code="poison-1")
            after = await b.scan(code="good-2")
            await until(lambda: effects(fakes, "fake-b")[str(after.msg_id)] == 1, what="message after the poison")
            # Counted once the commit is back on the event loop, a moment after the rows are visible.
            await until(lambda: bus.stats.stored == 3, what="batch counted")
            assert bus.stats.handler_failures == 1
        return str(before.msg_id), str(poison.msg_id)

    before, poison = asyncio.run(body())
    assert effects(fakes, "fake-b")[poison] == 1, "the other engine handled the poison message"
    assert effects(fakes, "fake-a")[poison] == 0, "the failing handler's effects were rolled back"
    assert effects(fakes, "fake-a")[before] == 1
    with Session(fakes) as s:
        (failed,) = s.scalars(select(FailedMessage)).all()
    assert (failed.engine, failed.status, failed.attempts) == ("fake-a", "failed", 1)
    assert failed.handler == "tests.cloud.fake_engine.on_scan"
    assert failed.error == "ValueError: fake-a cannot handle code 'poison-1'"
    assert "Traceback" in failed.detail and str(failed.msg_id) == poison

    # Replaying before the fix fails again (and says so); after the fix it applies exactly once.
    (again,) = service.replay_failed(fakes, OPERATOR, [failed.id])
    assert (again.outcome, again.error) == ("failed", "ValueError: fake-a cannot handle code 'poison-1'")
    with write_transaction(fakes) as conn:
        conn.execute(insert(fake_engine.flags).values(name="poison_fixed", value=1))

    env = {**os.environ, "OMNISHELF_DATABASE_URL": fakes.url.render_as_string(hide_password=False), EXTRA_ENV: EXTRA}
    listed = _cli(env, "fleet", "failed", "list")
    assert f"{failed.id:>6}  st1-k1" in listed.stdout and "ValueError: fake-a cannot handle" in listed.stdout
    shown = _cli(env, "fleet", "failed", "show", str(failed.id))
    assert "poison-1" in shown.stdout and "Traceback" in shown.stdout
    replayed = _cli(env, "fleet", "failed", "replay", str(failed.id))
    assert replayed.stdout.strip() == f"#{failed.id}: replayed", replayed.stderr
    twice = _cli(env, "fleet", "failed", "replay", str(failed.id), check=False)
    assert twice.returncode == 1 and f"#{failed.id}: skipped" in twice.stdout
    assert effects(fakes, "fake-a")[poison] == 1
    with Session(fakes) as s:
        row = s.get(FailedMessage, failed.id)
        assert row is not None and (row.status, row.attempts) == ("replayed", 2) and row.resolved_by == "cli:" + _user()
    bad = _cli(env, "fleet", "failed", "show", "999", check=False)
    assert bad.returncode == 2 and "No failed message #999" in bad.stderr


def _user() -> str:
    import getpass

    return getpass.getuser()


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "omnishelf.cli", *args], env=env, capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_two_workers_with_shuffled_delivery_keep_the_newest_state(broker: Broker, fakes: Engine) -> None:
    async def body() -> tuple[CloudBus, CloudBus]:
        w1 = CloudBus(await cloud_settings(broker, fakes, "cloud-1"), fakes, engines())
        w2 = CloudBus(await cloud_settings(broker, fakes, "cloud-2"), fakes, engines())
        async with running(w1), running(w2), box(broker, "st1-k1") as b:
            envs = [b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(sku="A-1", on_hand=i),)))
                    for i in range(1, 81)]
            random.Random(7).shuffle(envs)
            for env in envs:
                await b.send(env)
            await until(lambda: sum(effects(fakes, "stock").values()) == 80, timeout=30, what="all stock handled")
        return w1, w2

    w1, w2 = asyncio.run(body())
    assert w1.stats.stored > 0 and w2.stats.stored > 0, "both workers took a share"
    with Session(fakes) as s:
        row = s.execute(select(fake_engine.latest)).one()
        order = list(s.execute(select(fake_engine.effects.c.seq).where(fake_engine.effects.c.engine == "stock")
                               .order_by(fake_engine.effects.c.id)).scalars())
    assert order != sorted(order), "the messages were handled out of order (else this test proves nothing)"
    assert (row.seq, row.on_hand) == (80, 80), "an older message overwrote a newer one"


def test_followers_read_every_message_once_and_set_aside_a_poison(broker: Broker, fakes: Engine) -> None:
    async def body() -> None:
        s1 = await cloud_settings(broker, fakes, "cloud-1", FOLLOWER_POLL_S=0.1)
        s2 = await cloud_settings(broker, fakes, "cloud-2", FOLLOWER_POLL_S=0.1)
        w1, w2 = CloudBus(s1, fakes, engines()), CloudBus(s2, fakes, engines())
        async with running(w1), running(w2), box(broker, "st1-k1") as b:
            for i in range(120):
                await b.scan(code="follower-poison" if i == 60 else f"f{i}")
            await b.send(b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(sku="A", on_hand=1),))))
            await until(lambda: _followed(fakes) == 119 and _failed_followers(fakes) == 1, timeout=30,
                        what="the follower caught up")

    asyncio.run(body())
    with Session(fakes) as s:
        ids = list(s.execute(select(fake_engine.followed.c.msg_id)).scalars())
        (f,) = s.scalars(select(FailedMessage).where(FailedMessage.engine == "fake-a")).all()
    assert len(ids) == len(set(ids)) == 119, "a message was fed to the follower twice"
    assert f.handler == "fake-follower" and f.error == "RuntimeError: the follower cannot take this one"


def _followed(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(fake_engine.followed)) or 0)


def _failed_followers(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(FailedMessage).where(FailedMessage.handler == "fake-follower")) or 0)


def test_a_handler_sends_a_command_in_its_transaction_and_the_ack_closes_it(broker: Broker, fakes: Engine) -> None:
    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, fakes), fakes, engines())
        async with running(bus), box(broker, "st1-k1") as b:
            await b.birth()
            order = OrderData(order_id="o-1", channel="kiosk", lines=(OrderLine(sku="A-1", qty=1),), fulfilment="pickup")
            await b.send(b.envelope(MessageType.ORDER, order))
            await until(lambda: bool(_commands(b.received)), what="the command the handler sent")
            (cmd,) = _commands(b.received)
            assert cmd.data == CommandData(name="confirm", args={"order": "o-1"}) and cmd.seq >= 1
            await b.send(b.envelope(MessageType.ACK, AckData(ok=True), corr=cmd.msg_id))
            await until(lambda: _status(fakes, cmd.msg_id) == "delivered", what="the ack recorded")
            await until(lambda: bus.stats.acks == 1, what="the ack counted")

    asyncio.run(body())


def _commands(received: list[tuple[str, bytes]]) -> list[Any]:
    return [decode(raw, t) for t, raw in received if t.endswith("/command")]


def _status(engine: Engine, msg_id: object) -> str | None:
    with Session(engine) as s:
        return s.scalar(select(DownlinkCommand.status).where(DownlinkCommand.msg_id == msg_id))


def test_a_committed_command_survives_kill_9_of_the_worker(broker: Broker, fakes: Engine, tmp_path: Path) -> None:
    """Killed between the commit of a command and its publication (the worker is killed before the
    command is committed, so it cannot have published it; freezing it with SIGSTOP instead could
    leave it holding SQLite's write lock): the next worker publishes it, the box gets it once."""
    async def body() -> None:
        settings = await cloud_settings(broker, fakes)
        env = {**os.environ, "OMNISHELF_DATABASE_URL": settings.DATABASE_URL, "OMNISHELF_BROKER_URL": broker.url,
               "OMNISHELF_BROKER_USERNAME": "cloud-1", "OMNISHELF_BROKER_PASSWORD": settings.BROKER_PASSWORD.get_secret_value(),
               EXTRA_ENV: EXTRA}

        def worker(name: str) -> subprocess.Popen[bytes]:
            log = (tmp_path / f"{name}.log").open("ab")
            return subprocess.Popen([sys.executable, "-m", "omnishelf.cli", "cloud", "worker"], env=env, stdout=log,
                                    stderr=log)

        async with box(broker, "st1-k1") as b:
            first = worker("w1")
            try:
                await _birth_until_online(b, fakes)
                first.kill()
                first.wait(10)
                with write_transaction(fakes) as conn:
                    msg_id = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="ping"), engine="test",
                                           now=datetime.now(UTC))
                assert _status(fakes, msg_id) == "pending" and not _commands(b.received)
                second = worker("w2")
                try:
                    await until(lambda: bool(_commands(b.received)), timeout=20, what="command after the restart")
                    await b.send(b.envelope(MessageType.ACK, AckData(ok=True), corr=msg_id))
                    await until(lambda: _status(fakes, msg_id) == "delivered", timeout=20, what="delivered")
                    assert [c.msg_id for c in _commands(b.received)] == [msg_id]
                finally:
                    second.terminate()
                    second.wait(15)
            finally:
                if first.poll() is None:
                    first.kill()

    asyncio.run(body())


async def _birth_until_online(b: Any, engine: Engine) -> None:
    # The worker may not be subscribed yet: repeat the birth until it is seen.
    for _ in range(100):
        await b.birth()
        try:
            await until(lambda: _online(engine, b.node), timeout=0.3, what="online")
            return
        except AssertionError:
            continue
    raise AssertionError("the worker never saw the box's birth")


def _online(engine: Engine, node: str) -> bool:
    from cloud.models import Node

    with Session(engine) as s:
        n = s.get(Node, node)
        return bool(n and n.online)


def _stored(engine: Engine, msg_id: object) -> bool:
    from cloud.models import IngestedMessage

    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(IngestedMessage).where(IngestedMessage.msg_id == msg_id)) == 1



def test_orm_changes_a_handler_makes_are_kept_with_its_savepoint(engine: Engine) -> None:
    """`ctx.orm` writes into the handler's savepoint: kept when the handler returns, rolled back
    with the savepoint when it raises (the session must not open and drop a savepoint of its own)."""
    with write_transaction(engine) as conn:
        with conn.begin_nested():
            ctx = Context(conn, "t", datetime.now(UTC))
            ctx.orm.add(Region(code="orm-kept", name="kept"))
            ctx.finish()
        with pytest.raises(RuntimeError), conn.begin_nested():
            ctx = Context(conn, "t", datetime.now(UTC))
            ctx.orm.add(Region(code="orm-dropped", name="dropped"))
            ctx.orm.flush()
            ctx.discard()
            raise RuntimeError("the handler failed")
    with engine.connect() as conn:
        codes = conn.execute(select(Region.code).where(Region.code.like("orm-%"))).scalars().all()
    assert codes == ["orm-kept"]
