"""Cloud fixtures: a migrated database per test (SQLite file and PostgreSQL schema), workers, boxes.

PostgreSQL comes from OMNISHELF_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test);
each test gets its own schema (via search_path) that is dropped afterwards. When the server is not
reachable the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from broker import topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection, Will
from broker.envelope import Envelope, MessageType, encode
from broker.payloads import BirthData, DeathData, Payload, ScanData
from cloud.bus.worker import CloudBus
from cloud.db import make_engine, migrate
from cloud.models import Node
from cloud.settings import Settings
from tests.conftest import PG_URL, Broker

_pg_problem: list[str] = []


def _pg_unreachable() -> str | None:
    if not _pg_problem:
        try:
            with psycopg.connect(PG_URL, connect_timeout=3):
                _pg_problem.append("")
        except psycopg.Error as exc:
            _pg_problem.append(f"PostgreSQL at {PG_URL} unreachable ({str(exc).strip().splitlines()[0]})")
    return _pg_problem[0] or None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    problem = _pg_unreachable()
    if problem:
        pytest.skip(problem)
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


async def login_ready(broker: Broker, user: str, password: str, timeout: float = 5.0) -> None:
    """Wait until Mosquitto has re-read its password file (a SIGHUP reload is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = MqttConnection(BrokerAddress.from_url(broker.url), user, password)
        try:
            await conn.connect()
            await conn.disconnect()
            return
        except BusAuthError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def cloud_settings(broker: Broker, engine: Engine, host: str = "cloud-1", **overrides: Any) -> Settings:
    """Settings for a worker `host` on this broker and database (its credential registered)."""
    password = broker.add_cloud(host)
    await login_ready(broker, host, password)
    values: dict[str, Any] = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "BROKER_URL": broker.url,
        "BROKER_USERNAME": host,
        "BROKER_PASSWORD": password,
        "GAP_GRACE_S": 0.6,
        "KEEPALIVE_S": 5,
    }
    values.update(overrides)
    return Settings(**values)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_db(engine: Engine, cond: Callable[[Session], bool], timeout: float = 10.0, what: str = "db") -> None:
    def check() -> bool:
        with Session(engine) as s:
            return cond(s)

    await until(check, timeout, what)


def node_row(engine: Engine, node: str) -> Node | None:
    with Session(engine) as s:
        return s.scalars(select(Node).where(Node.id == node)).one_or_none()


@contextlib.asynccontextmanager
async def running(worker: CloudBus) -> AsyncIterator[CloudBus]:
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.consuming or task.done(), what="worker to connect")
        if task.done():
            task.result()
        yield worker
    finally:
        await worker.stop()
        await task


@dataclass
class Box:
    """A store box as the cloud sees it: publishes envelopes as `node` over its own connection."""

    node: str
    conn: MqttConnection
    session: int = 1
    seq: int = 0
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def envelope(self, type_: MessageType, data: Payload, *, seq: int | None = None, **kw: Any) -> Envelope:
        if seq is None:
            if type_ in (MessageType.BIRTH, MessageType.DEATH):
                seq = self.seq
            else:
                self.seq += 1
                seq = self.seq
        return Envelope(type=type_, node=self.node, session=kw.pop("session", self.session), seq=seq, data=data, **kw)

    async def send(self, env: Envelope) -> bytes:
        raw = encode(env)
        await self.raw(topics.up(self.node, env.type.value), raw)
        return raw

    async def raw(self, topic: str, payload: bytes) -> None:
        await asyncio.wait_for(self.conn.publish(topic, payload), 5)

    async def scan(self, code: str = "6901234567892", **kw: Any) -> Envelope:
        env = self.envelope(MessageType.SCAN, ScanData(code=code, station="s1"), **kw)
        await self.send(env)
        return env

    async def birth(self, **kw: Any) -> Envelope:
        data = {"software_version": "1.0.0", "config_hash": "abc", "store": "st0001", "last_seq": self.seq}
        data.update(kw.pop("data", {}))
        env = self.envelope(MessageType.BIRTH, BirthData(**data), **kw)
        await self.send(env)
        return env

    async def death(self, **kw: Any) -> Envelope:
        env = self.envelope(MessageType.DEATH, DeathData(), **kw)
        await self.send(env)
        return env


@contextlib.asynccontextmanager
async def box(broker: Broker, node: str, *, subscribe: bool = True) -> AsyncIterator[Box]:
    password = broker.add_node(node)
    await login_ready(broker, node, password)
    b: Box | None = None

    def on_message(msg: Any) -> None:
        if b is not None:
            b.received.append((msg.topic, bytes(msg.payload)))

    death = Envelope(type=MessageType.DEATH, node=node, session=1, seq=0, data=DeathData())
    conn = MqttConnection(
        BrokerAddress.from_url(broker.url),
        node,
        password,
        will=Will(topics.death(node), encode(death)),
        on_message=on_message,
    )
    b = Box(node, conn)
    await conn.connect()
    if subscribe:
        await conn.subscribe([topics.node_dn_filter(node), topics.host_state_filter()])
    try:
        yield b
    finally:
        await conn.disconnect()
