"""Cloud fixtures: a migrated database per test (SQLite file and PostgreSQL schema), workers, boxes.

PostgreSQL comes from OMNISHELF_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test);
each test gets its own schema (via search_path), new or reset (see `_Migrated`). When the server is not
reachable the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
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


class _Migrated:
    """Migrated databases made once per test process and handed out as new ones.

    Migrating costs about 0.2 s of CPU on SQLite and 1.5-5 s on PostgreSQL (the server's DDL for some
    sixty tables), and some three hundred tests each want a migrated database: together minutes of
    the suite's budget. A test that asks for `engine` gets instead
    - on SQLite, a copy of a file migrated once;
    - on PostgreSQL, a schema migrated once and put back, after each test, into the state migrating
      left it in (every table emptied, the rows the migrations insert written again, every
      sequence set back). A schema whose tables or revision a test changed is dropped instead.
    Either way with a catalogue epoch of its own, as a new database has. A test that asks only for
    `db_url` still gets an empty database, to migrate as it likes."""

    def __init__(self) -> None:
        self.sqlite_template: Path | None = None
        self.free_schemas: list[str] = []
        self.seed: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        """Table → (columns, rows) of the tables that migrating leaves non-empty."""
        self.tables: set[str] = set()
        self.sequences: dict[str, tuple[int, bool]] = {}
        self.head: list[tuple[Any, ...]] = []

    def sqlite(self, tmp_path_factory: pytest.TempPathFactory, target: Path) -> None:
        if self.sqlite_template is None:
            path = tmp_path_factory.mktemp("migrated") / "cloud.db"
            eng = make_engine(f"sqlite:///{path}")
            migrate(eng)
            eng.dispose()  # the last connection to close checkpoints the WAL into the file
            self.sqlite_template = path
        for suffix in ("", "-wal"):
            src = self.sqlite_template.with_name(self.sqlite_template.name + suffix)
            if src.exists():
                shutil.copyfile(src, target.with_name(target.name + suffix))
        with contextlib.closing(sqlite3.connect(target)) as conn, conn:
            conn.execute("UPDATE catalogue_epoch SET epoch = ?", (uuid.uuid4().hex,))

    def postgres_schema(self) -> str:
        if self.free_schemas:
            return self.free_schemas.pop()
        schema = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        eng = make_engine(_schema_url(schema, "migrating"))
        migrate(eng)
        eng.dispose()
        if not self.tables:
            self._remember(schema)
        return schema

    def _remember(self, schema: str) -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            self.tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
            self.head = conn.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchall()
            for table in sorted(self.tables - {"alembic_version"}):
                cur = conn.execute(f'SELECT * FROM "{schema}"."{table}"')
                rows = cur.fetchall()
                if rows:
                    # JSON columns come back as Python values; they go in again as JSON.
                    rows = [tuple(Jsonb(v) if isinstance(v, dict | list) else v for v in row) for row in rows]
                    self.seed[table] = ([d.name for d in cur.description or ()], rows)
            for (name,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,)).fetchall():
                last, called = conn.execute(f'SELECT last_value, is_called FROM "{schema}"."{name}"').fetchone() or (1, False)
                self.sequences[name] = (last, called)

    def give_back(self, schema: str, app: str) -> None:
        """Put `schema` back as migrating left it, for the next test; or drop it if it is changed."""
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            # Whatever this test left connected (an engine never disposed, a worker process killed
            # mid-transaction) would hold locks: its connections carry the test's application name.
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                         "AND pid <> pg_backend_pid()", (app,))
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
            head = conn.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchall() if "alembic_version" in tables else []
            if tables != self.tables or head != self.head:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                return
            try:
                self._reset(conn, schema)
            except psycopg.Error:
                # A role that may not turn triggers off (not a superuser), or a lock never freed:
                # this schema is not reused.
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                return
        self.free_schemas.append(schema)

    def _reset(self, conn: psycopg.Connection[Any], schema: str) -> None:
        """Empty every table, write back the rows migrating wrote, set every sequence back."""
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '10s'")
            # Triggers (foreign keys among them) off: the tables are emptied in any order.
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("".join(f'DELETE FROM "{schema}"."{t}";' for t in sorted(self.tables - {"alembic_version"})))
            for table, (columns, rows) in self.seed.items():
                cols = ", ".join(f'"{c}"' for c in columns)
                marks = ", ".join(["%s"] * len(columns))
                with conn.cursor() as cur:
                    cur.executemany(f'INSERT INTO "{schema}"."{table}" ({cols}) OVERRIDING SYSTEM VALUE VALUES ({marks})', rows)
            if self.sequences:
                conn.execute("SELECT " + ", ".join(f"setval('\"{schema}\".\"{n}\"', {v}, {c})" for n, (v, c) in self.sequences.items()))
            conn.execute(f'UPDATE "{schema}".catalogue_epoch SET epoch = %s', (uuid.uuid4().hex,))


_migrated = _Migrated()


def _schema_url(schema: str, app: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    # The application name is the test's: caches keyed by URL (orders, trace) never see another
    # test's data under a reused schema, and what a test leaves connected can be found and ended.
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}&application_name={app}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    migrated = "engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "cloud.db"
        if migrated:
            _migrated.sqlite(tmp_path_factory, path)
            _premigrated.add(f"sqlite:///{path}")
        yield f"sqlite:///{path}"
        return
    problem = _pg_unreachable()
    if problem:
        pytest.skip(problem)
    app = f"t_{secrets.token_hex(6)}"
    if migrated:
        schema = _migrated.postgres_schema()
        url = _schema_url(schema, app)
        _premigrated.add(url)
        try:
            yield url
        finally:
            _premigrated.discard(url)
            _migrated.give_back(schema, app)
        return
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _schema_url(schema, app)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


_premigrated: set[str] = set()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    if db_url not in _premigrated:
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


async def until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_db(engine: Engine, cond: Callable[[Session], bool], timeout: float = 30.0, what: str = "db") -> None:
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
