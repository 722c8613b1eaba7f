"""Ingest never wedges, and the cloud's view of the fleet does not depend on one worker (real
Mosquitto, real worker, SQLite and PostgreSQL). Each case is a class of input or failure found by
an attacker's test; a good message after each proves ingest went on."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import RebirthData, ScanData
from cloud.api import create_app
from cloud.bus.ledger import BatchOutcome, GapPolicy, Incoming, check_gaps, store_batch
from cloud.bus.worker import CloudBus
from cloud.models import DownlinkCommand, IngestedMessage, Node, RejectedMessage
from tests.cloud.conftest import Box, box, cloud_settings, node_row, running, until
from tests.conftest import Broker


def _poison(b: Box) -> list[tuple[str, bytes, str]]:
    good = json.loads(encode(b.envelope(MessageType.SCAN, (b.envelope(MessageType.SCAN, _scan()).data))))
    huge_int = json.dumps(good).replace('"seq": ' + str(good["seq"]), '"seq": ' + "7" * 5000).encode()
    nan = json.dumps(good).replace('"seq": ' + str(good["seq"]), '"seq": NaN').encode()
    year_one = json.dumps(good | {"ts": "0001-01-01T00:00:00+14:00"}).encode()
    return [
        # (topic, payload, the reason it is kept aside with)
        (topics.up(b.node, "scan"), b"[" * 100_000, "limit"),
        (topics.up(b.node, "scan"), huge_int, "limit"),
        (topics.up(b.node, "scan"), nan, "not_json"),
        (topics.up(b.node, "telemetry"), json.dumps(good | {"type": "telemetry", "data": {"metrics": {"x": 1e999}}}).replace(
            "Infinity", "1e999").encode(), "not_json"),
        # Valid at the contract, refused while storing (year 0 in UTC): isolated, not a wedged batch.
        (topics.up(b.node, "scan"), year_one, "store_failed"),
    ]


def _scan() -> Any:
    from broker.payloads import ScanData

    return ScanData(code="x", station="s1")


def test_no_input_wedges_ingest(broker: Broker, engine: Engine) -> None:
    async def body() -> CloudBus:
        bus = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(bus), box(broker, "st1-k1") as b:
            cases = _poison(b)
            for i, (topic, payload, _reason) in enumerate(cases, start=1):
                await b.raw(topic, payload)
                await b.scan(code=f"after-{i}")
                await until(lambda i=i: bus.stats.stored == i, what=f"good message after poison {i}")  # type: ignore[misc]
        return bus

    bus = asyncio.run(body())
    with Session(engine) as s:
        kept = [(r.reason, r.node) for r in s.scalars(select(RejectedMessage).order_by(RejectedMessage.id))]
    assert [k[0] for k in kept] == ["limit", "limit", "not_json", "not_json", "store_failed"]
    assert {k[1] for k in kept} == {"st1-k1"}
    assert bus.stats.rejected["store_failed"] == 1 and bus.stats.db_errors == 0


def test_a_different_message_under_a_stored_msg_id_is_a_conflict(broker: Broker, engine: Engine) -> None:
    async def body() -> CloudBus:
        bus = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(bus), box(broker, "st1-k1") as b:
            first = await b.scan(code="original")
            forged = first.model_copy(update={"data": first.data.model_copy(update={"code": "forged"})})
            await b.raw(topics.up("st1-k1", "scan"), encode(forged))
            await b.raw(topics.up("st1-k1", "scan"), encode(first.model_copy(update={"historical": True})))  # a replay
            await until(lambda: bus.stats.duplicates == 2, what="both duplicates seen")
        return bus

    bus = asyncio.run(body())
    assert bus.stats.conflicts == 1, "the replay (same content, historical) is no conflict; the forgery is"
    with Session(engine) as s:
        (row,) = s.scalars(select(RejectedMessage)).all()
    assert row.reason == "conflict" and "different data" in row.detail and b"forged" in row.payload


def _rebirths(received: list[tuple[str, bytes]]) -> list[RebirthData]:
    out = []
    for topic, raw in received:
        if topic.endswith("/rebirth"):
            data = decode(raw, topic).data
            assert isinstance(data, RebirthData)
            out.append(data)
    return out


def test_rebirths_back_off_go_only_to_online_boxes_and_give_up_with_an_alert(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        settings = await cloud_settings(broker, engine, GAP_GRACE_S=0.2, REBIRTH_MAX=3, REBIRTH_BACKOFF_CAP_S=0.8)
        bus = CloudBus(settings, engine)
        async with running(bus), box(broker, "st1-k1") as online, box(broker, "st1-k2") as offline:
            await online.birth()
            for b in (online, offline):
                await b.scan()
                b.seq += 1  # lost
                await b.scan()
            await until(lambda: (n := node_row(engine, "st1-k1")) is not None and n.gap_abandoned_at is not None,
                        timeout=20, what="gap abandoned")
            node = node_row(engine, "st1-k1")
            assert node is not None and node.rebirths == 3
            assert [r.replay_from for r in _rebirths(online.received)] == [2, 2, 2]
            # The box that never said hello got nothing, although its gap is just as old.
            assert _rebirths(offline.received) == []
            quiet = node_row(engine, "st1-k2")
            assert quiet is not None and quiet.rebirths == 0 and quiet.seq_high > quiet.seq_contig

    asyncio.run(body())


def test_rebirth_intervals_double_up_to_the_cap_and_then_the_cloud_gives_up(engine: Engine) -> None:
    """The schedule itself, in cloud time (the test above shows it on a real bus but is too fast to
    tell a growing interval from a fixed one): checked every second, a gap gets its rebirths after
    the grace period, then after 5, 10, 20 and 30 s (the cap), and after `max_rebirths` none more."""
    policy = GapPolicy(grace_s=5.0, max_rebirths=5, backoff_cap_s=30.0)
    t0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    with Session(engine) as s:
        for node, online in (("st1-k1", True), ("st1-k2", False)):
            s.add(Node(id=node, online=online, session=1, seq_contig=1, seq_high=3, gap_since=t0))
        s.commit()
    sent: list[tuple[int, str, int]] = []
    for second in range(131):
        for due in check_gaps(engine, policy, t0 + timedelta(seconds=second)):
            sent.append((second, due.node, due.attempt))
    assert sent == [(5, "st1-k1", 1), (10, "st1-k1", 2), (20, "st1-k1", 3), (40, "st1-k1", 4), (70, "st1-k1", 5)]
    intervals = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
    assert intervals == [5, 10, 20, 30], "each wait doubles the one before, up to backoff_cap_s"
    with Session(engine) as s:
        k1, k2 = (s.get(Node, n) for n in ("st1-k1", "st1-k2"))
        assert k1 is not None and k2 is not None
        # Given up one (capped) interval after the last rebirth went unanswered.
        assert k1.rebirths == 5 and k1.gap_abandoned_at == t0 + timedelta(seconds=100)
        assert k2.rebirths == 0 and k2.gap_abandoned_at is None, "an offline box is not asked (nor given up on)"
        commands = s.scalars(select(DownlinkCommand).order_by(DownlinkCommand.id)).all()
    assert [(c.node, c.type, c.data["replay_from"]) for c in commands] == [("st1-k1", "rebirth", 2)] * 5
    # Each rebirth expires when the next one is due, so a box that comes back late gets the newest only.
    assert [(c.expires_at or c.created_at) - c.created_at for c in commands] == [
        timedelta(seconds=d) for d in (5, 10, 20, 30, 30)]


def test_a_decoder_bug_keeps_the_message_aside_and_ingest_goes_on(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """`decode` promises ContractError only; anything else it raises (a bug on our side) must not
    take the batch down: the message is kept as `unexpected` with the error, the next one stored."""
    from broker.envelope import decode as real_decode

    def buggy(payload: bytes, topic: str) -> Envelope:
        if b"trips-the-bug" in payload:
            raise KeyError("a decoder bug")
        return real_decode(payload, topic)

    monkeypatch.setattr("cloud.bus.ledger.decode", buggy)

    def scan(seq: int, code: str) -> tuple[Envelope, Incoming]:
        env = Envelope(type="scan", node="st1-k1", session=1, seq=seq, data=ScanData(code=code, station="s1"))
        return env, Incoming(topics.up("st1-k1", "scan"), encode(env), datetime.now(UTC))

    (_, bad), (good, good_item) = scan(1, "trips-the-bug"), scan(2, "fine")
    out = store_batch(engine, [bad, good_item])
    assert out.rejected == {"unexpected": 1} and out.stored == 1
    with Session(engine) as s:
        (row,) = s.scalars(select(RejectedMessage)).all()
        stored = s.scalars(select(IngestedMessage.msg_id)).all()
    assert (row.reason, row.node, row.topic) == ("unexpected", "st1-k1", topics.up("st1-k1", "scan"))
    assert row.detail == "KeyError: 'a decoder bug'" and row.payload == bad.payload
    assert stored == [good.msg_id]


def test_health_says_failing_after_three_failed_batches_in_a_row(
    broker: Broker, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that answers pings but fails every batch: the worker reconnects between tries (so
    it is never `stalled`), and /health must still say it is failing until a batch commits."""
    real_store = store_batch
    calls = 0
    release = threading.Event()

    def failing_three_times(*args: Any, **kwargs: Any) -> BatchOutcome:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OperationalError("INSERT INTO ingested_messages ...", {}, Exception("the disk is full"))
        release.wait(30)  # the fourth try holds here while the test looks at /health
        return real_store(*args, **kwargs)

    monkeypatch.setattr("cloud.bus.worker.store_batch", failing_three_times)

    async def body() -> None:
        settings = await cloud_settings(broker, engine, INGEST_STALL_S=300)
        app = create_app(settings, run_worker=True, engine=engine)
        with TestClient(app) as client:
            bus = app.state.bus
            await until(lambda: bus.consuming, what="bus connected")
            async with box(broker, "st1-k1") as b:
                assert _status(client) == (200, "ok")
                await b.scan()
                answer: dict[str, Any] = {}

                def failing() -> bool:
                    r = client.get("/health")
                    answer.update(r.json())
                    return bool(r.status_code == 503 and answer["worker"]["status"] == "failing")

                await until(failing, timeout=20, what="failing")
                assert answer["status"] == "unavailable"
                assert answer["worker"]["failing_batches"] == 3 and "the disk is full" in answer["worker"]["last_error"]
                release.set()
                await until(lambda: _status(client) == (200, "ok"), timeout=20, what="healthy again")
                # (A connection lost meanwhile would redeliver the scan once more: a duplicate, not a failure.)
                assert bus.stats.stored == 1 and bus.stats.failing_batches == 0 and calls >= 4

    try:
        asyncio.run(body())
    finally:
        release.set()


def test_health_goes_unhealthy_while_ingest_stalls(broker: Broker, tmp_path: Any) -> None:
    from cloud.db import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = make_engine(url)
    migrate(engine)
    release = threading.Event()
    locked = threading.Event()

    def hold_the_write_lock() -> None:
        db = sqlite3.connect(tmp_path / "cloud.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        db.execute("ROLLBACK")
        db.close()

    async def body() -> None:
        settings = await cloud_settings(broker, engine, INGEST_STALL_S=0.5)
        app = create_app(settings, run_worker=True, engine=engine)
        with TestClient(app) as client:
            bus = app.state.bus
            await until(lambda: bus.consuming, what="bus connected")
            async with box(broker, "st1-k1") as b:
                assert client.get("/health").json()["worker"]["status"] == "ok"
                holder = threading.Thread(target=hold_the_write_lock)
                holder.start()
                locked.wait(5)
                await b.scan()
                await until(lambda: _status(client) == (503, "stalled"), timeout=10, what="stalled")
                release.set()
                holder.join()
                await until(lambda: _status(client) == (200, "ok"), timeout=20, what="healthy again")
                assert bus.stats.stored == 1

    try:
        asyncio.run(body())
    finally:
        release.set()
        engine.dispose()


def _status(client: TestClient) -> tuple[int, str]:
    r = client.get("/health")
    return r.status_code, r.json()["worker"]["status"]


def test_a_stopped_worker_neither_delays_data_nor_hides_a_death(broker: Broker, engine: Engine) -> None:
    async def body() -> None:
        w1 = CloudBus(await cloud_settings(broker, engine, "cloud-1"), engine)
        w2 = CloudBus(await cloud_settings(broker, engine, "cloud-2"), engine)
        async with running(w1):
            async with running(w2):
                pass  # w2 joined the share group and left it cleanly
            async with box(broker, "st1-k1") as b:
                await b.birth()
                sent = [await b.scan() for _ in range(40)]
                # All of it now, from w1 alone: nothing waits in w2's (ended) session.
                await until(lambda: w1.stats.stored >= 41, timeout=5, what="everything stored by the remaining worker")
                assert w2.stats.stored == 0 and sent
                # A worker that vanishes without a clean stop keeps its session; a death still
                # reaches the other worker, because every worker subscribes to deaths itself.
                w3 = CloudBus(await cloud_settings(broker, engine, "cloud-3"), engine)
                task = asyncio.create_task(w3.run())
                await until(lambda: w3.consuming, what="w3 connected")
                assert w3._conn is not None
                w3._conn.abort()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await b.death()
                await until(lambda: (n := node_row(engine, "st1-k1")) is not None and not n.online, timeout=5,
                            what="the box marked offline")

    asyncio.run(body())

