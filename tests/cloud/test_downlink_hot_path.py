"""The downlink's hot path, against a real Mosquitto and SQLite and PostgreSQL: a command written in
the ingest transaction is published by that worker right after the commit with no transaction of
its own; one scan → verdict → ack round trip costs two write transactions; a command rolled back
with its handler is never published; an older waiting command keeps its place; and a worker killed
between the commit and the publish loses nothing and sends nothing twice."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import AckData, CommandData, ScanData, VerdictData
from cloud.bus import downlink
from cloud.bus.dispatch import Call, Registry
from cloud.bus.ledger import Incoming, store_batch
from cloud.bus.worker import CloudBus
from cloud.db import write_transaction
from cloud.engines import EXTRA_ENV, load_engines
from cloud.models import DownlinkCommand, FailedMessage, IngestedMessage, Node, Region, Store
from tests.cloud import hand_engine
from tests.cloud.conftest import Box, box, cloud_settings, running, until
from tests.conftest import Broker

HAND = "tests.cloud.hand_engine"
NODE = "st1-k1"


@pytest.fixture
def hands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTRA_ENV, HAND)


def _rows(engine: Engine) -> list[DownlinkCommand]:
    with Session(engine) as s:
        return list(s.scalars(select(DownlinkCommand).order_by(DownlinkCommand.id)))


def _status(engine: Engine, msg_id: object) -> str | None:
    with Session(engine) as s:
        return s.scalar(select(DownlinkCommand.status).where(DownlinkCommand.msg_id == msg_id))


def _received(b: Box, kind: str) -> list[Envelope]:
    return [decode(raw, t) for t, raw in b.received if t.endswith(f"/{kind}")]


def _online(engine: Engine, node: str) -> bool:
    with Session(engine) as s:
        n = s.get(Node, node)
        return bool(n and n.online)


async def _birth_until_online(b: Box, engine: Engine) -> None:
    # The worker may not be subscribed yet: repeat the birth until it is seen.
    for _ in range(100):
        await b.birth()
        try:
            await until(lambda: _online(engine, b.node), timeout=0.3, what="online")
        except AssertionError:
            continue
        # A repeated birth still on its way would land in what the test counts next (a birth wakes
        # the relay, whose claim is counted). A fence behind it, on the same connection: an ack of
        # no command, which changes nothing and wakes nothing; once it is stored, so is every birth.
        fence = b.envelope(MessageType.ACK, AckData(ok=True), corr=uuid.uuid4())
        await b.send(fence)
        await until(functools.partial(_stored, engine, fence.msg_id), what="the fence behind the births")
        return
    raise AssertionError("the worker never saw the box's birth")


def _stored(engine: Engine, msg_id: uuid.UUID) -> bool:
    with engine.connect() as c:
        return c.execute(select(IngestedMessage.msg_id).where(IngestedMessage.msg_id == msg_id)).first() is not None


async def _ack_all(b: Box, kind: str, acked: set[Any]) -> None:
    for cmd in _received(b, kind):
        if cmd.msg_id not in acked:
            acked.add(cmd.msg_id)
            await b.send(b.envelope(MessageType.ACK, AckData(ok=True), corr=cmd.msg_id))


# -- what one round trip costs ---------------------------------------------------------------------


@dataclass
class WriteTransactions:
    """The statements of every committed write transaction on an engine, one list per transaction."""

    committed: list[list[str]] = field(default_factory=list)
    open: dict[int, list[str]] = field(default_factory=dict)
    recording: bool = False

    @staticmethod
    def _key(conn: Any) -> int:
        return id(conn.connection.dbapi_connection)

    def begin(self, conn: Any) -> None:
        if self.recording and conn.get_execution_options().get("omnishelf_write", False):
            self.open[self._key(conn)] = []

    def statement(self, conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        stmts = self.open.get(self._key(conn))
        if stmts is not None:
            stmts.append(" ".join(statement.split()))

    def commit(self, conn: Any) -> None:
        stmts = self.open.pop(self._key(conn), None)
        if stmts is not None:
            self.committed.append(stmts)

    def rollback(self, conn: Any) -> None:
        self.open.pop(self._key(conn), None)


@pytest.fixture
def recorder(engine: Engine) -> Iterator[WriteTransactions]:
    rec = WriteTransactions()
    hooks = (("begin", rec.begin), ("before_cursor_execute", rec.statement), ("commit", rec.commit),
             ("rollback", rec.rollback))
    for name, fn in hooks:
        event.listen(engine, name, fn)
    try:
        yield rec
    finally:
        for name, fn in hooks:
            event.remove(engine, name, fn)


def test_one_scan_to_verdict_round_trip_costs_two_write_transactions(
    broker: Broker, engine: Engine, recorder: WriteTransactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's batch writes the verdict (already marked sent); the worker publishes it with no
    claim and no sent mark; the box's ack is applied in the batch that stores it. Nothing else
    touches the downlink, and the relay publishes nothing."""
    # No retry may fall due while we count, however slow the machine is today.
    monkeypatch.setattr(downlink, "RETRY_BASE_S", 60.0)
    with Session(engine) as s, s.begin():
        store = Store(code="st0001", name="One", region=Region(code="east", name="East"), lat=31.2, lon=121.5,
                      timezone="Asia/Shanghai")
        s.add_all([store, Node(id=NODE, store=store)])

    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine, load_engines())
        async with running(bus), box(broker, NODE) as b:
            await _birth_until_online(b, engine)
            acked: set[Any] = set()
            # A first round trip warms up (and lets whatever the birth set off finish).
            first = await b.scan("0109506000134352217WARM")
            await until(lambda: any(v.corr == first.msg_id for v in _received(b, "verdict")), what="first verdict")
            await _ack_all(b, "verdict", acked)
            await until(lambda: all(r.status == "delivered" for r in _rows(engine) if r.type == "verdict"),
                        what="first verdict acknowledged")
            published = bus.stats.commands_published

            recorder.recording = True
            scan = await b.scan("0109506000134352217COUNT")
            await until(lambda: any(v.corr == scan.msg_id for v in _received(b, "verdict")), what="the verdict")
            (verdict,) = [v for v in _received(b, "verdict") if v.corr == scan.msg_id]
            assert isinstance(verdict.data, VerdictData)
            await _ack_all(b, "verdict", acked)
            await until(lambda: _status(engine, verdict.msg_id) == "delivered", what="the verdict acknowledged")
            recorder.recording = False
            assert bus.stats.commands_published == published + 1
            counted.append(verdict.msg_id)

    counted: list[Any] = []
    asyncio.run(body())
    # The relay may run a claim meanwhile (for something the birth set off, on a loaded machine):
    # not this round trip's cost, as long as it did not take the verdict, whose row says it was
    # published once, as it was written.
    touching = [t for t in recorder.committed if any("downlink" in s for s in t) and not _claim(t)]
    [counted_row] = [r for r in _rows(engine) if r.msg_id == counted[0]]
    assert counted_row.attempts == 1, counted_row.attempts
    summary = [[s[:60] for s in t if "downlink" in s] for t in touching]
    assert len(touching) == 2, f"write transactions touching the downlink: {summary}"
    scan_batch, ack_batch = touching
    for txn in touching:
        assert any("INSERT INTO ingested_messages" in s for s in txn), summary
    # Other engines read the downlink on an ack (signage looks up which schedule it was): only
    # the writes are the bus's.
    assert _downlink_writes(scan_batch) == ["INSERT"], summary
    assert _downlink_writes(ack_batch) == ["UPDATE"], summary
    # The verdict's INSERT decides by itself whether this worker publishes it: no read of the
    # box's readiness before it.
    assert not [q for q in scan_batch if q.startswith("SELECT nodes.id")], summary
    # The ack's batch is the bus's alone (no engine handles the acks of trace's verdicts): the
    # ledger row, the node's seqs and last-seen in one UPDATE (which locks its row: no SELECT …
    # FOR UPDATE before it), the one ack UPDATE, and no savepoint (a batch takes them only when
    # its first try failed). On PostgreSQL all three are one statement, for a batch of one ack.
    if engine.dialect.name == "postgresql":
        assert len(ack_batch) == 1, "\n".join(s[:100] for s in ack_batch)
        assert ack_batch[0].startswith("WITH ins AS (INSERT INTO ingested_messages"), ack_batch[0][:100]
        assert "UPDATE nodes SET seq_contig" in ack_batch[0], ack_batch[0]
        assert "ack AS (UPDATE downlink SET status" in ack_batch[0], ack_batch[0]
        for txn in touching:
            assert txn[0].startswith("WITH ins AS (INSERT INTO ingested_messages"), txn[0][:100]
    else:
        assert len(ack_batch) == 3, "\n".join(s[:100] for s in ack_batch)
        assert ack_batch[1].startswith("UPDATE nodes"), ack_batch[1][:100]


def _claim(statements: list[str]) -> bool:
    """A relay's claim (its 'sent' mark) is in these statements."""
    return any(s.startswith("UPDATE downlink SET status") and "last_sent_at" in s for s in statements)


@dataclass(frozen=True)
class _Sent:
    payload_name: str
    attempts: int


def _commands(engine: Engine, names: tuple[str, ...]) -> list[_Sent]:
    """The `command` rows named `names`, in the order written."""
    return [_Sent(r.data["name"], r.attempts) for r in _rows(engine)
            if r.type == MessageType.COMMAND.value and r.data.get("name") in names]


def _downlink_writes(statements: list[str]) -> list[str]:
    # On PostgreSQL the ack of a batch of one closes its command in the ledger's own statement.
    return [s.split()[0] if s.startswith(("INSERT INTO downlink", "UPDATE downlink")) else "UPDATE"
            for s in statements if s.startswith(("INSERT INTO downlink", "UPDATE downlink"))
            or "ack AS (UPDATE downlink" in s]


def test_a_command_written_beside_a_running_bus_is_published_by_it_with_no_claim(
    broker: Broker, engine: Engine, recorder: WriteTransactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine's task (or a REST call) in a process whose cloud bus is connected: the command is
    written already marked sent and that bus publishes it after the commit, so the round trip is
    the sender's transaction and the ack's batch. Rolled back, it is never published (a fence sent
    afterwards arrives alone). A transaction that runs no after-commit hooks is left to the relay."""
    monkeypatch.setattr(downlink, "RETRY_BASE_S", 60.0)  # no retry may fall due while we count
    with Session(engine) as s, s.begin():
        s.add(Node(id=NODE))

    def send(name: str, *, fail: bool = False) -> Any:
        with write_transaction(engine) as conn:
            msg_id = downlink.send(conn, NODE, MessageType.COMMAND, CommandData(name=name), engine="t")
            if fail:
                raise RuntimeError("rolled back")
        return msg_id

    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, engine), engine, load_engines())
        async with running(bus), box(broker, NODE) as b:
            await _birth_until_online(b, engine)
            await until(lambda: bus.connected, what="the bus connected")
            acked: set[Any] = set()
            published = bus.stats.commands_published
            recorder.recording = True
            direct = await asyncio.to_thread(send, "direct")
            assert _status(engine, direct) == "sent"  # as it was written
            with pytest.raises(RuntimeError):
                await asyncio.to_thread(send, "rolled back", fail=True)
            fence = await asyncio.to_thread(send, "fence")
            await until(lambda: len(_received(b, "command")) == 2, what="both commands")
            await _ack_all(b, "command", acked)
            await until(lambda: _status(engine, fence) == "delivered" and _status(engine, direct) == "delivered",
                        what="both acknowledged")
            recorder.recording = False
            assert [c.data for c in _received(b, "command")] == [CommandData(name="direct"), CommandData(name="fence")]
            assert bus.stats.commands_published == published + 2

            # Not a write transaction: nothing runs after its commit, so the relay claims it.
            with engine.begin() as conn:
                relayed = downlink.send(conn, NODE, MessageType.COMMAND, CommandData(name="relayed"), engine="t")
            assert _status(engine, relayed) == "pending"
            await until(lambda: len(_received(b, "command")) == 3, what="the relayed command")

    asyncio.run(body())
    # Neither was claimed by the relay: each row says it was published once, as it was written (a
    # claim of something else, set off by the birth on a loaded machine, is not theirs).
    assert [(r.payload_name, r.attempts) for r in _commands(engine, ("direct", "fence"))] == [("direct", 1), ("fence", 1)]
    writes = [_downlink_writes(t) for t in recorder.committed if _downlink_writes(t) and not _claim(t)]
    # The two sends, and the acks' batch or batches (one statement for all of a batch's acks).
    assert sorted(writes) in ([["INSERT"], ["INSERT"], ["UPDATE"], ["UPDATE"]], [["INSERT"], ["INSERT"], ["UPDATE"]]), writes
    # A send is its INSERT alone: the box's readiness is decided in it, not read before.
    sends = [t for t in recorder.committed if _downlink_writes(t) == ["INSERT"]]
    assert [len(t) for t in sends] == [1, 1], sends


class _Publisher:
    """A connected cloud bus of this process, as `downlink` sees one: it records what it is given."""

    connected = True

    def __init__(self) -> None:
        self.published: list[list[downlink.Claimed]] = []

    def publish_committed(self, claimed: list[downlink.Claimed]) -> None:
        self.published.append(claimed)


def test_a_local_send_decides_in_its_insert_whether_this_process_publishes_it(engine: Engine) -> None:
    """Beside a connected bus: a command to an online box with nothing waiting is written `sent` and
    handed to the bus after the commit; to an offline box, or behind a command still waiting, it is
    written `pending` and the relay is woken, in the same transaction as in the next."""
    with Session(engine) as s, s.begin():
        s.add_all([Node(id="st1-k1", online=True), Node(id="st1-k2", online=False), Node(id="st1-k3", online=True)])
    with write_transaction(engine) as conn:  # a command that waits for the relay (not beside a bus)
        waiting = downlink.send(conn, "st1-k3", MessageType.COMMAND, CommandData(name="waiting"), engine="t")
    publisher, woken = _Publisher(), list[bool]()

    def wake() -> None:
        woken.append(True)

    downlink.add_publisher(publisher)
    downlink.add_waker(wake)
    try:
        with write_transaction(engine) as conn:
            ids = {name: downlink.send(conn, node, MessageType.COMMAND, CommandData(name=name), engine="t")
                   for name, node in (("a1", "st1-k1"), ("b1", "st1-k2"), ("a2", "st1-k1"), ("b2", "st1-k2"),
                                      ("c1", "st1-k3"))}
            assert publisher.published == [] and woken == []  # nothing before the commit
        with write_transaction(engine) as conn:
            rolled = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="rolled"), engine="t")
            conn.rollback()
    finally:
        downlink.remove_publisher(publisher)
        downlink.remove_waker(wake)
    [handed] = publisher.published
    assert [(c.node, c.msg_id) for c in handed] == [("st1-k1", ids["a1"]), ("st1-k1", ids["a2"])]
    assert woken, "the relay was not woken for the commands that wait"
    rows = {r.msg_id: r for r in _rows(engine)}
    assert [(rows[ids[n]].status, rows[ids[n]].attempts) for n in ("a1", "a2", "b1", "b2", "c1")] == [
        ("sent", 1), ("sent", 1), ("pending", 0), ("pending", 0), ("pending", 0)]
    assert rows[ids["a1"]].last_sent_at is not None and rows[ids["b1"]].last_sent_at is None
    assert rows[ids["a1"]].next_attempt_at > rows[ids["a1"]].created_at  # its retry, should the publish fail
    assert rows[ids["b1"]].next_attempt_at == rows[ids["b1"]].created_at  # due for the relay at once
    assert rows[waiting].status == "pending" and rolled not in rows


# -- what a handler's failure takes with it --------------------------------------------------------


def test_a_command_rolled_back_with_its_handler_is_never_published(
    broker: Broker, engine: Engine, hands: None
) -> None:
    """Both scans in one batch: the failing handler's savepoint and the batch's first try roll
    back; only the command that committed goes out (a fence: it arrives, the other never does)."""
    async def body() -> None:
        bus = CloudBus(await cloud_settings(broker, engine, BATCH_WAIT_MS=300), engine, load_engines())
        async with running(bus), box(broker, NODE) as b:
            await _birth_until_online(b, engine)
            await asyncio.gather(b.scan("hand-fail-1"), b.scan("hand-ok-1"))
            await until(lambda: bool(_received(b, "command")), what="the command that committed")
            assert [c.data for c in _received(b, "command")] == [CommandData(name="hand-ok-1")]
            rows = _rows(engine)
            assert [r.data["name"] for r in rows if r.type == "command"] == ["hand-ok-1"]
            with Session(engine) as s:
                assert s.scalar(select(FailedMessage.error)) == \
                    "RuntimeError: the hand engine fails after sending for 'hand-fail-1'"

    asyncio.run(body())


# -- who publishes what, in which order --------------------------------------------------------------


def _hand_registry() -> Registry:
    reg = Registry()
    reg.add(MessageType.SCAN, Call("hand", "on_scan", hand_engine.on_scan))
    return reg


def _scan_item(node: str, seq: int, code: str) -> Incoming:
    env = Envelope(type=MessageType.SCAN, node=node, session=1, seq=seq, data=ScanData(code=code, station="s1"))
    return Incoming(f"shelf/v1/up/{node}/scan", encode(env), datetime.now(UTC))


def test_the_worker_publishes_only_to_online_boxes_with_nothing_older_waiting(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        s.add_all([Node(id="st1-k1", online=True), Node(id="st1-k2", online=True), Node(id="st1-k3", online=False)])
    with write_transaction(engine) as conn:  # written elsewhere (an API host): waits for the relay
        older = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="older"), engine="t", now=now)

    out = store_batch(engine, [_scan_item("st1-k1", 1, "hand-a"), _scan_item("st1-k2", 1, "hand-b"),
                               _scan_item("st1-k3", 1, "hand-c")], _hand_registry())

    rows = {r.data["name"]: r for r in _rows(engine)}
    assert [(c.node, c.msg_id) for c in out.publish] == [("st1-k1", rows["hand-a"].msg_id)]
    assert (rows["hand-a"].status, rows["hand-a"].attempts) == ("sent", 1)
    assert rows["hand-a"].last_sent_at is not None and rows["hand-a"].next_attempt_at > now
    env = decode(out.publish[0].payload or b"", out.publish[0].topic)
    assert env.seq == rows["hand-a"].id and env.data == CommandData(name="hand-a")
    assert (rows["hand-b"].status, rows["hand-c"].status) == ("pending", "pending")
    # The relay sends the older one first, then the one behind it.
    with write_transaction(engine) as conn:
        claimed = downlink.claim_due(conn, datetime.now(UTC))
    assert [c.msg_id for c in claimed] == [older, rows["hand-b"].msg_id]
    assert {r.status for r in _rows(engine) if r.node == "st1-k2"} == {"sent"}


def test_acks_of_a_batch_are_applied_together(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        s.add_all([Node(id="st1-k1", online=True), Node(id="st1-k2", online=True)])
    with write_transaction(engine) as conn:
        a = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="a"), engine="t", now=now)
        b = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="b"), engine="t", now=now)
        c = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="c"), engine="t", now=now)
        d = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="d"), engine="t", now=now)
        e = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="e"), engine="t", now=now)
        f = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="f"), engine="t", now=now)
    statements: list[str] = []
    with write_transaction(engine) as conn:
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        applied = downlink.apply_acks(conn, [
            ("st1-k1", a, AckData(ok=True)),
            ("st1-k1", c, AckData(ok=True)),  # another box's command: not this box's to close
            ("st1-k2", d, AckData(ok=False, detail="no paper")),
            ("st1-k2", None, AckData(ok=True)),
            ("st1-k2", e, AckData(ok=True, detail="stored genuine")),
            # Answered twice in one batch (a box that lost its memory of handled commands): the
            # "ok" wins, whichever came first.
            ("st1-k2", f, AckData(ok=False, detail="busy")),
            ("st1-k2", f, AckData(ok=True)),
        ], now)
    assert applied.matched == 4
    assert applied.engines == {("st1-k1", a): "t", ("st1-k2", d): "t", ("st1-k2", e): "t", ("st1-k2", f): "t"}
    assert {r.data["name"]: (r.status, r.detail) for r in _rows(engine)} == {
        "a": ("delivered", None), "b": ("pending", None), "c": ("pending", None), "d": ("failed", "no paper"),
        "e": ("delivered", "stored genuine"), "f": ("delivered", None)}
    # A round trip each on PostgreSQL: the batch's acks in one, and c's sender looked up (not this
    # box's command, so nothing closed it).
    if engine.dialect.name == "postgresql":
        assert [s.split()[0] for s in statements] == ["UPDATE", "SELECT"], statements
    with write_transaction(engine) as conn:  # the same ack again: nothing to close, the engine still known
        again = downlink.apply_acks(conn, [("st1-k1", a, AckData(ok=True)), ("st1-k1", b, AckData(ok=True))], now)
    assert again.matched == 1 and again.engines == {("st1-k1", a): "t", ("st1-k1", b): "t"}
    statements.clear()
    with write_transaction(engine) as conn:  # a batch of one ack (its own statement on PostgreSQL)
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        alone = downlink.apply_acks(conn, [("st1-k2", c, AckData(ok=False))], now)
    assert alone.matched == 1 and alone.engines == {("st1-k2", c): "t"}
    assert {r.data["name"]: (r.status, r.detail) for r in _rows(engine)}["c"] == (
        "failed", "the box refused it without a reason")
    if engine.dialect.name == "postgresql":
        assert [s.split()[0] for s in statements] == ["UPDATE"], statements


def test_an_ack_reaches_only_the_engine_that_sent_the_command(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        s.add(Node(id="st1-k1", online=True))
    with write_transaction(engine) as conn:
        mine = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="mine"), engine="hand", now=now)
        theirs = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="x"), engine="other", now=now)
    seen: list[Any] = []
    reg = Registry()
    reg.add(MessageType.ACK, Call("hand", "on_ack", lambda _ctx, msg: seen.append(msg.corr)))

    def ack(seq: int, corr: Any) -> Incoming:
        env = Envelope(type=MessageType.ACK, node="st1-k1", session=1, seq=seq, corr=corr, data=AckData(ok=True))
        return Incoming("shelf/v1/up/st1-k1/ack", encode(env), datetime.now(UTC))

    out = store_batch(engine, [ack(1, theirs), ack(2, mine), ack(3, None), ack(4, mine)], reg)
    assert out.acks == 2 and seen == [mine, mine]
    assert {r.data["name"]: r.status for r in _rows(engine)} == {"mine": "delivered", "x": "delivered"}


def test_acks_each_alone_in_its_batch_close_as_a_batch_of_them_would(engine: Engine) -> None:
    """A batch of one ack closes its command in the ledger's own statement on PostgreSQL: a refusal
    with its reason, another box's command left open, a repeat still reaching the sender's engine
    (and no other), an ack that came twice stored once."""
    with Session(engine) as s, s.begin():
        s.add_all([Node(id="st1-k1", online=True), Node(id="st1-k2", online=True)])
    with write_transaction(engine) as conn:
        mine = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="mine"), engine="hand")
        refused = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="refused"), engine="hand")
        theirs = downlink.send(conn, "st1-k2", MessageType.COMMAND, CommandData(name="theirs"), engine="hand")
        other = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="other"), engine="other")
    seen: list[Any] = []
    reg = Registry()
    reg.add(MessageType.ACK, Call("hand", "on_ack", lambda _ctx, msg: seen.append(msg.corr)))

    def ack(seq: int, corr: Any, data: AckData) -> Incoming:
        env = Envelope(type=MessageType.ACK, node="st1-k1", session=1, seq=seq, corr=corr, data=data)
        return Incoming("shelf/v1/up/st1-k1/ack", encode(env), datetime.now(UTC))

    batches = [ack(1, mine, AckData(ok=True)), ack(2, refused, AckData(ok=False, detail="no paper")),
               ack(3, theirs, AckData(ok=True)), ack(4, other, AckData(ok=True)), ack(5, mine, AckData(ok=True))]
    outcomes = [store_batch(engine, [item], reg) for item in batches]
    again = store_batch(engine, [batches[0]], reg)  # the broker delivered the first one again
    assert [o.acks for o in outcomes] == [1, 1, 0, 1, 0] and (again.stored, again.duplicates) == (0, 1)
    assert seen == [mine, refused, mine]  # the repeat too; not `other`'s, nor another box's
    assert {r.data["name"]: (r.status, r.detail) for r in _rows(engine)} == {
        "mine": ("delivered", None), "refused": ("failed", "no paper"), "theirs": ("pending", None),
        "other": ("delivered", None)}
    with engine.connect() as c:
        assert c.execute(select(Node.seq_contig).where(Node.id == "st1-k1")).scalar_one() == 5


# -- a worker killed between its commit and its publish --------------------------------------------


def test_a_command_written_in_the_ingest_batch_survives_kill_9_before_its_publish(
    broker: Broker, engine: Engine, tmp_path: Path
) -> None:
    """The handler kills its worker right after the ledger transaction committed (the command row
    says sent; nothing published it). The next worker publishes it once when its retry falls due;
    the scan's redelivery is a duplicate and sends nothing again. A fence command sent afterwards
    arrives after it: by then, a second copy would have arrived too."""
    async def body() -> None:
        settings = await cloud_settings(broker, engine)
        env = {**os.environ, "OMNISHELF_DATABASE_URL": settings.DATABASE_URL, "OMNISHELF_BROKER_URL": broker.url,
               "OMNISHELF_BROKER_USERNAME": "cloud-1",
               "OMNISHELF_BROKER_PASSWORD": settings.BROKER_PASSWORD.get_secret_value(), EXTRA_ENV: HAND}

        def worker(name: str) -> subprocess.Popen[bytes]:
            log = (tmp_path / f"{name}.log").open("ab")
            return subprocess.Popen([sys.executable, "-m", "omnishelf.cli", "cloud", "worker"], env=env, stdout=log,
                                    stderr=log)

        async with box(broker, NODE) as b:
            first = worker("w1")
            try:
                await _birth_until_online(b, engine)
                scan = await b.scan("hand-die-1")
                await until(lambda: first.poll() is not None, timeout=20, what="the worker to kill itself")
                assert first.returncode == -signal.SIGKILL
                (row,) = [r for r in _rows(engine) if r.type == "command"]
                assert (row.status, row.attempts, row.corr) == ("sent", 1, scan.msg_id)
                assert not _received(b, "command")  # its only publisher is dead
                second = worker("w2")
                try:
                    await until(lambda: bool(_received(b, "command")), timeout=30, what="the command after the restart")
                    await b.send(b.envelope(MessageType.ACK, AckData(ok=True), corr=row.msg_id))
                    await until(lambda: _status(engine, row.msg_id) == "delivered", timeout=20, what="delivered")
                    with write_transaction(engine) as conn:
                        fence = downlink.send(conn, NODE, MessageType.COMMAND, CommandData(name="fence"), engine="test")
                    await until(lambda: any(c.msg_id == fence for c in _received(b, "command")), timeout=20,
                                what="the fence command")
                    assert [c.msg_id for c in _received(b, "command")] == [row.msg_id, fence]
                    assert _received(b, "command")[0].seq == row.id
                finally:
                    second.terminate()
                    second.wait(15)
            finally:
                if first.poll() is None:
                    first.kill()

    asyncio.run(body())


def test_a_retry_waits_as_long_as_the_ingest_lags_behind_a_first_attempt_does_not(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        s.add(Node(id="st1-k1", online=True))
    with write_transaction(engine) as conn:
        retry = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="r"), engine="t", now=now)
    with write_transaction(engine) as conn:
        assert [c.msg_id for c in downlink.claim_due(conn, now)] == [retry]
        conn.execute(downlink._DOWNLINK.update().values(next_attempt_at=now))  # its retry falls due now
        first = downlink.send(conn, "st1-k1", MessageType.COMMAND, CommandData(name="f"), engine="t", now=now)
    with write_transaction(engine) as conn:
        assert [c.msg_id for c in downlink.claim_due(conn, now, ack_lag=timedelta(seconds=5))] == [first]
    with write_transaction(engine) as conn:
        later = now + timedelta(seconds=5)
        (again,) = downlink.claim_due(conn, later, ack_lag=timedelta(seconds=5))
    assert (again.msg_id, again.attempts) == (retry, 1)
