"""The ingest worker against a real Mosquitto and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import Envelope, MessageType, RejectReason, decode, encode
from broker.payloads import (
    AckData,
    FulfilData,
    FulfilStatus,
    OrderData,
    OrderLine,
    PopData,
    RebirthData,
    ScanData,
    StockData,
    StockLevel,
    TelemetryData,
)
from cloud.bus.worker import CloudBus
from cloud.db import make_engine
from cloud.models import IngestedMessage, RejectedMessage
from tests.cloud.conftest import box, cloud_settings, node_row, running, until, until_db
from tests.conftest import Broker


def ledger_count(engine: Engine, **where: object) -> int:
    with Session(engine) as s:
        q = select(func.count()).select_from(IngestedMessage)
        for k, v in where.items():
            q = q.where(getattr(IngestedMessage, k) == v)
        return s.scalar(q) or 0


def test_every_message_type_is_stored_once(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            sent = [await b.birth()]
            payloads = [
                (MessageType.SCAN, None),
                (MessageType.ORDER, OrderData(order_id="o1", channel="kiosk", lines=(OrderLine(sku="A-1", qty=2),),
                                               fulfilment="pickup")),
                (MessageType.STOCK, StockData(levels=(StockLevel(sku="A-1", on_hand=5),))),
                (MessageType.POP, PopData(screen="s1", media_id="a" * 64, started_at=datetime.now(UTC), duration_ms=5000)),
                (MessageType.FULFIL, FulfilData(order_id="o1", status=FulfilStatus.READY)),
                (MessageType.ACK, AckData(ok=True)),
                (MessageType.TELEMETRY, TelemetryData(metrics={"cpu": 0.5})),
            ]
            for kind, data in payloads:
                if data is None:
                    sent.append(await b.scan())
                else:
                    env = b.envelope(kind, data)
                    await b.send(env)
                    sent.append(env)
            sent.append(await b.death())
            await until(lambda: worker.stats.stored == len(sent), what="all types stored")
            # The same bytes again (a redelivery or a box resend): stored once.
            again = encode(sent[1])
            await b.raw(topics.up("st1-k1", "scan"), again)
            await b.raw(topics.up("st1-k1", "scan"), again)
            await until(lambda: worker.stats.duplicates == 2, what="duplicates counted")

        assert worker.stats.stored == 9 and worker.stats.rejected_total == 0
        with Session(engine) as s:
            rows = {r.msg_id: r for r in s.scalars(select(IngestedMessage))}
        assert set(rows) == {e.msg_id for e in sent}
        assert {r.type for r in rows.values()} == {t.value for t in topics.UP}
        scan = rows[sent[1].msg_id]
        assert (scan.node, scan.session, scan.seq) == ("st1-k1", 1, 1)
        assert scan.data["code"] == "6901234567892"
        assert scan.ts == sent[1].ts and scan.ts.tzinfo is not None
        assert scan.received_at.tzinfo is not None
        node = node_row(engine, "st1-k1")
        assert node is not None and node.seq_contig == 7 and node.seq_high == 7 and node.lost_seqs == 0
        assert node.last_seen is not None and node.store_id is None

    asyncio.run(body())


def stored_is(worker: CloudBus, n: int) -> Callable[[], bool]:
    return lambda: worker.stats.stored == n


def _mutate(env: Envelope, **changes: object) -> bytes:
    obj = json.loads(encode(env))
    for k, v in changes.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    return json.dumps(obj).encode()


def test_each_malformed_input_is_rejected_counted_and_kept(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            scan_topic = topics.up("st1-k1", "scan")
            good = b.envelope(MessageType.SCAN, b.envelope(MessageType.SCAN, _scan_data()).data)
            poison: list[tuple[RejectReason, str, bytes]] = [
                (RejectReason.NOT_JSON, scan_topic, b"\xff\xfe not json"),
                (RejectReason.NOT_OBJECT, scan_topic, b"[1, 2, 3]"),
                (RejectReason.WRONG_VERSION, scan_topic, _mutate(good, v=2)),
                (RejectReason.UNKNOWN_TYPE, scan_topic, _mutate(good, type="teleport")),
                (RejectReason.OVERSIZE, scan_topic, b"{" + b" " * (300 * 1024) + b"}"),
                (RejectReason.SCHEMA, scan_topic, _mutate(good, session=None)),
                (RejectReason.TOPIC_MISMATCH, topics.up("st1-k1", "order"), encode(good)),
                (RejectReason.TOPIC_MISMATCH, scan_topic, _mutate(good, node="st1-k2")),
            ]
            for i, (reason, topic, raw) in enumerate(poison, start=1):
                await b.raw(topic, raw)
                # The worker keeps consuming: a valid message after each poison one is stored.
                await b.scan(code=f"after-{i}")
                await until(stored_is(worker, i), what=f"message after {reason} poison")

        expected: dict[RejectReason, int] = {}
        for reason, _, _ in poison:
            expected[reason] = expected.get(reason, 0) + 1
        assert {r: n for r, n in worker.stats.rejected.items() if n} == expected
        with Session(engine) as s:
            rejected = list(s.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))
        assert [r.reason for r in rejected] == [reason.value for reason, _, _ in poison]
        assert all(r.detail for r in rejected)
        assert rejected[0].payload == b"\xff\xfe not json"
        assert len(rejected[4].payload) == 64 * 1024  # oversize payload kept truncated
        assert rejected[-1].topic == scan_topic

    asyncio.run(body())


def _scan_data() -> ScanData:
    return ScanData(code="x", station="s1")


def test_birth_and_death_follow_sessions(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            b.session = 2
            await b.birth(data={"software_version": "2.0.0", "devices": [{"kind": "scanner"}]})
            await until(lambda: worker.stats.births == 1, what="birth")
            node = node_row(engine, "st1-k1")
            assert node is not None and node.online and node.session == 2 and node.software_version == "2.0.0"
            assert node.devices == [{"kind": "scanner", "model": None, "serial": None, "state": "ok", "detail": None}]
            assert node.last_birth_at is not None

            await b.death(session=1)  # the will of a connection that has since been replaced
            await until(lambda: worker.stats.stale_deaths == 1, what="stale death")
            assert (node := node_row(engine, "st1-k1")) is not None and node.online

            await b.birth(session=1, data={"software_version": "1.0.0"})  # delayed older birth
            await until(lambda: worker.stats.stale_births == 1, what="stale birth")
            node = node_row(engine, "st1-k1")
            assert node is not None and node.session == 2 and node.software_version == "2.0.0"

            await b.death()
            await until(lambda: worker.stats.deaths == 1, what="death")
            node = node_row(engine, "st1-k1")
            assert node is not None and not node.online and node.last_death_at is not None

    asyncio.run(body())


def _rebirths(received: list[tuple[str, bytes]], node: str) -> list[RebirthData]:
    out = []
    for topic, raw in received:
        if topic == topics.dn(node, MessageType.REBIRTH):
            data = decode(raw, topic).data
            assert isinstance(data, RebirthData)
            out.append(data)
    return out


def test_gap_past_grace_sends_rebirth_with_replay_from(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine, GAP_GRACE_S=0.5), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            await b.birth()  # rebirths go only to boxes that are online
            await b.scan()
            await b.scan()
            b.seq += 1  # seq 3 is lost on the way
            await b.scan()
            await until(lambda: bool(_rebirths(b.received, "st1-k1")), what="rebirth")
            (rebirth,) = _rebirths(b.received, "st1-k1")
            assert rebirth.replay_from == 3 and rebirth.reason == "seq 3 missing"
            # The box may see the command before the worker has the broker's PUBACK for it.
            await until(lambda: worker.stats.rebirths_sent == 1, what="rebirth counted")
            node = node_row(engine, "st1-k1")
            assert node is not None and (node.seq_contig, node.seq_high) == (2, 4)
            assert node.gap_since is not None and node.last_rebirth_at is not None

            # The replay fills the gap.
            await b.scan(seq=3, historical=True)
            await until_db(engine, lambda s: (n := node_row(engine, "st1-k1")) is not None and n.seq_contig == 4,
                           what="gap closed")
            assert (node := node_row(engine, "st1-k1")) is not None and node.gap_since is None

    asyncio.run(body())


def test_gap_filled_within_grace_sends_no_rebirth(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine, GAP_GRACE_S=0.8), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            first = await b.scan()
            third = b.envelope(MessageType.SCAN, first.data, seq=3)
            second = b.envelope(MessageType.SCAN, first.data, seq=2)
            await b.send(third)
            await until(lambda: worker.stats.stored == 2, what="seq 3 stored")
            await b.send(second)  # out of order, as across two workers of a share group
            await until_db(engine, lambda s: (n := node_row(engine, "st1-k1")) is not None and n.seq_contig == 3,
                           what="gap closed")
            # Let more than a grace period pass with the gap checker running.
            await asyncio.sleep(1.2)
            assert _rebirths(b.received, "st1-k1") == [] and worker.stats.rebirths_sent == 0
            assert (node := node_row(engine, "st1-k1")) is not None and node.gap_since is None

    asyncio.run(body())


def test_oldest_seq_in_birth_records_unrecoverable_gap(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine, GAP_GRACE_S=30), engine)
        async with running(worker), box(broker, "st1-k1") as b:
            await b.scan()  # 1
            b.seq += 1  # 2 lost
            await b.scan()  # 3
            b.seq += 2  # 4, 5 lost
            await until(lambda: worker.stats.stored == 2, what="data stored")
            b.session = 2
            await b.birth(data={"oldest_seq": 6, "last_seq": 6, "pending": 1})
            await until(lambda: worker.stats.births == 1, what="birth")
            node = node_row(engine, "st1-k1")
            assert node is not None and node.lost_seqs == 3 and node.seq_contig == 5
            assert worker.stats.lost_seqs == 3
            await b.scan()  # 6, the pending one
            await until_db(engine, lambda s: (n := node_row(engine, "st1-k1")) is not None and n.seq_contig == 6,
                           what="contig advances past the written-off range")
            assert (node := node_row(engine, "st1-k1")) is not None and node.gap_since is None

    asyncio.run(body())


def test_clean_stop_publishes_retained_host_state_offline(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        worker = CloudBus(await cloud_settings(broker, engine), engine)
        state_topic = topics.host_state("cloud-1")

        def states(received: list[tuple[str, bytes]]) -> list[bool]:
            out = []
            for topic, raw in received:
                if topic == state_topic:
                    data = decode(raw, topic).data
                    out.append(bool(getattr(data, "online", None)))
            return out

        async with box(broker, "st1-k1") as b:
            async with running(worker):
                await until(lambda: states(b.received)[-1:] == [True], what="host online")
            await until(lambda: states(b.received)[-1:] == [False], what="host offline")
        # A box connecting later sees the retained offline state.
        async with box(broker, "st1-k2") as late:
            await until(lambda: states(late.received) == [False], what="retained offline")

    asyncio.run(body())


def test_nothing_is_acknowledged_before_commit(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    """A worker whose database fails stores and acknowledges nothing; the broker redelivers to the
    next worker with the same persistent session, which stores each message once."""

    async def body() -> None:
        settings = await cloud_settings(broker, engine)
        broken = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables: every insert fails
        failing = CloudBus(settings, broken)
        async with box(broker, "st1-k1") as b:
            async with running(failing):
                sent = [await b.scan() for _ in range(5)]
                await until(lambda: failing.stats.db_errors >= 1 and failing.stats.received >= 5, what="db failure")
            assert failing.stats.stored == 0
            broken.dispose()
            await b.scan()  # arrives while no worker is connected: queued in the worker's session
            healthy = CloudBus(settings, engine)
            async with running(healthy):
                await until(lambda: ledger_count(engine) == 6, what="redelivered messages stored")
                await b.raw(topics.up("st1-k1", "scan"), encode(sent[0]))  # and a duplicate for good measure
                await until(lambda: healthy.stats.duplicates >= 1, what="duplicate seen")
        assert ledger_count(engine) == 6
        assert {m for m in _msg_ids(engine)} >= {e.msg_id for e in sent}

    asyncio.run(body())


def _msg_ids(engine: Engine) -> list[object]:
    with Session(engine) as s:
        return list(s.scalars(select(IngestedMessage.msg_id)))


def test_two_workers_split_a_burst_and_store_nothing_twice(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        w1 = CloudBus(await cloud_settings(broker, engine, "cloud-1"), engine)
        w2 = CloudBus(await cloud_settings(broker, engine, "cloud-2"), engine)
        async with running(w1), running(w2), box(broker, "st1-k1") as b1, box(broker, "st1-k2") as b2:
            n = 300
            for _ in range(n):
                await asyncio.gather(b1.scan(), b2.scan())
            await until(lambda: ledger_count(engine) == 2 * n, what="burst stored", timeout=30)
            # Each box resends everything (as after a reconnect without PUBACKs): nothing stored twice.
        assert w1.stats.received > 0 and w2.stats.received > 0
        assert w1.stats.stored + w2.stats.stored == 2 * n
        for node in ("st1-k1", "st1-k2"):
            row = node_row(engine, node)
            assert row is not None and row.seq_contig == n and row.seq_high == n

    asyncio.run(body())


@pytest.mark.slow
def test_two_workers_with_resends_store_each_once(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        w1 = CloudBus(await cloud_settings(broker, engine, "cloud-1"), engine)
        w2 = CloudBus(await cloud_settings(broker, engine, "cloud-2"), engine)
        async with running(w1), running(w2), box(broker, "st1-k1") as b:
            envs = [b.envelope(MessageType.SCAN, _scan_data()) for _ in range(2000)]
            raws = [encode(e) for e in envs]
            topic = topics.up("st1-k1", "scan")
            for raw in raws + raws:
                await b.raw(topic, raw)
            await until(lambda: w1.stats.duplicates + w2.stats.duplicates == 2000, timeout=60, what="duplicates")
        assert ledger_count(engine) == 2000

    asyncio.run(body())
