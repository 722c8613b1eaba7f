"""Bus benchmark: prints JSON figures next to a bare-paho baseline measured in the same run.

    python -m bench.bus [--db sqlite|postgresql] [--quick]

1. baseline: bare paho QoS 1 publisher process → Mosquitto → subscriber process (throughput) and a
   request/response round trip;
2. ingest: box (outbox + bus client, this process) → Mosquitto → `omnishelf cloud worker` (its own
   process) → database: throughput, again with a trivial engine handler per message type (the
   seam's cost: three alternating rounds without and with, the median of their ratios), again with a poison message from another box after every 1,000 good ones, the time
   from a poison message to the next good one stored, and p50/p99 box→database latency at a
   steady 500 msg/s;
   then commands at 200/s: written in a transaction in the worker, relayed, handled and acknowledged
   by the box, the ack stored (p50/p99, next to the bare request/response round trip);
3. drain: 100,000 messages queued in the outbox while the cloud is away, then sent after it returns;
4. the edge agent's resident memory when idle (`omnishelf edge run`, no devices).

Latency is measured from the moment `publish()` is called on the box to the moment the row is
visible in the database, by a watcher polling the ledger every 2 ms from a process of its own (the
resolution is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from bench.baseline import bare_qos1, bare_round_trip, percentiles_ms
from broker import topics
from broker.client import BrokerAddress, MqttConnection
from broker.envelope import Envelope, MessageType, encode
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.payloads import ScanData
from broker.runtime import freeze_startup_objects
from edge.bus import BusClient
from edge.outbox import Outbox
from firmware_config import BrokerConfig, LocalApiConfig, NodeConfig, write_config

NODE = "bench-box"
TARGETS = {
    "ingest_ratio_to_bare_qos1": ">= 0.5",
    "ingest_with_handlers_to_without": ">= 0.9",
    "command_round_trip_p99_ms_at_200_per_s": "< 20",
    "p99_box_to_db_ms_at_500_msg_s": "< 20",
    "outbox_drain_msg_s": ">= 5000",
    "edge_idle_rss_mb": "< 60",
}


class _Watcher:
    """Polls the database from a process of its own and records when things first become visible.

    Not a thread of this process: this process is the box being measured, and a watcher polling
    every 2 ms in it took a tenth to a fifth of its GIL (py-spy), in the way of what it measured.
    `time.perf_counter()` is CLOCK_MONOTONIC, the same clock in both processes."""

    def __init__(self, kind: str, url: str, interval: float) -> None:
        ctx = mp.get_context("spawn")
        self._interval = ctx.Value("d", interval)
        self._top = ctx.Value("q", 0)
        self._ok = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_watch, args=(kind, url, self._interval, self._top, self._ok, self._stop, child),
                                 daemon=True)
        self._final: dict[int, float] | None = None

    def start(self) -> None:
        self._proc.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "ready":
            raise RuntimeError("the database watcher did not start")

    @property
    def interval(self) -> float:
        return float(self._interval.value)

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval.value = seconds

    @property
    def seen(self) -> dict[int, float]:
        """What was seen so far, and when (asks the watcher: not for a tight loop)."""
        if self._final is not None:
            return self._final
        self._pipe.send("seen")
        seen: dict[int, float] = self._pipe.recv()
        return seen

    def stop(self) -> None:
        if self._final is None and self._proc.is_alive():
            self._final = self.seen
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


class LedgerWatcher(_Watcher):
    """Records when each seq of NODE first becomes visible in the database (perf_counter)."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__("ledger", url, interval)

    @property
    def max_seq(self) -> int:
        return int(self._top.value)


class AckWatcher(_Watcher):
    """Records, per command, the time from its creation (`created_at`, written in the sender's
    transaction) to when its acknowledged state is first visible in the database."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__("acks", url, interval)

    @property
    def count(self) -> int:
        return int(self._top.value)

    @property
    def ok(self) -> int:
        return int(self._ok.value)


def _watch(kind: str, url: str, interval: Any, top: Any, ok: Any, stop: Any, pipe: Any) -> None:
    engine = sa.create_engine(url)
    seen: dict[int, float] = {}
    # The driver itself, in autocommit: every poll sees the latest commits without a ROLLBACK
    # round trip, and no SQLAlchemy layer in between. Through SQLAlchemy (a statement and a
    # rollback per poll) the watcher took a seventh of a core and its server process as much
    # again, on the two cores it shares with what it measures.
    raw = engine.raw_connection()
    driver = raw.driver_connection
    if engine.dialect.name == "postgresql":
        driver.autocommit = True  # type: ignore[union-attr]
        mark = "%s"
    else:
        driver.isolation_level = None  # type: ignore[union-attr]
        mark = "?"
    # Ledger: walks the (node, seq) index from the top; `max(seq) ... AND type = 'scan'` made
    # PostgreSQL aggregate over every row of the node, adding tens of ms to each poll.
    ledger = f"SELECT seq FROM ingested_messages WHERE node = {mark} AND type = 'scan' ORDER BY seq DESC LIMIT 1"
    acks = (f"SELECT id, created_at, status FROM downlink WHERE type = 'command' AND id > {mark} "
            "AND status IN ('delivered', 'failed') ORDER BY id")
    floor = 0  # acks: every command up to here has been seen
    cur = driver.cursor()  # type: ignore[union-attr]
    pipe.send("ready")
    while not stop.is_set():
        if kind == "ledger":
            cur.execute(ledger, (NODE,))
            found = cur.fetchone()
            last = int(found[0]) if found else 0
            now = time.perf_counter()
            for s in range(top.value + 1, last + 1):
                seen[s] = now
            top.value = max(top.value, last)
        else:
            cur.execute(acks, (floor,))
            rows = cur.fetchall()
            wall = time.time()
            for row_id, created, status in rows:
                if row_id in seen:
                    continue
                at = datetime.fromisoformat(created) if isinstance(created, str) else created
                at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
                seen[row_id] = wall - at.timestamp()
                ok.value += status == "delivered"
            while floor + 1 in seen:
                floor += 1
            top.value = len(seen)
        while pipe.poll():
            if pipe.recv() == "seen":
                pipe.send(seen)
        time.sleep(interval.value)
    cur.close()
    raw.close()
    engine.dispose()


def received_at(db_url: str, first: int, last: int) -> dict[int, float]:
    """The worker's receive time (wall clock) of each seq in [first, last]."""
    engine = sa.create_engine(db_url)
    q = sa.text(
        "SELECT seq, received_at FROM ingested_messages WHERE node = :n AND type = 'scan' AND seq BETWEEN :a AND :b"
    )
    with engine.connect() as c:
        rows = c.execute(q, {"n": NODE, "a": first, "b": last}).all()
    engine.dispose()
    out = {}
    for seq, raw in rows:
        at = datetime.fromisoformat(raw) if isinstance(raw, str) else raw  # SQLite gives text
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        out[int(seq)] = at.timestamp()
    return out


def _utc(raw: Any) -> float:
    at = datetime.fromisoformat(raw) if isinstance(raw, str) else raw  # SQLite gives text
    return float((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


def command_stages(db_url: str) -> dict[str, dict[str, float]]:
    """Where a command's round trip goes, from the timestamps the system writes anyway: the
    command's row (created, handed to the broker), the box's ack envelope (its clock: the same
    machine here) and the ack's ledger row (received by the worker)."""
    engine = sa.create_engine(db_url)
    q = sa.text(
        "SELECT d.created_at, d.last_sent_at, m.ts, m.received_at FROM downlink d "
        "JOIN ingested_messages m ON m.corr = d.msg_id AND m.type = 'ack' WHERE d.type = 'command'"
    )
    with engine.connect() as c:
        rows = c.execute(q).all()
    engine.dispose()
    # `last_sent_at` is the relay's claim, which is its "sent" mark (it publishes right after);
    # a command written in an ingest batch is marked sent as it is written.
    sent = [_utc(s) - _utc(c) for c, s, _, _ in rows if s is not None]
    return {
        "created_to_claimed_for_publishing": {**percentiles_ms(sent), "never_claimed": len(rows) - len(sent)},
        "created_to_box_ack": percentiles_ms([_utc(a) - _utc(c) for c, _, a, _ in rows]),
        "box_ack_to_worker": percentiles_ms([_utc(g) - _utc(a) for _, _, a, g in rows]),
    }


def scan(i: int) -> ScanData:
    return ScanData(code=f"0104012345678901215BENCH{i:08d}", station="bench")


def start_worker(db_url: str, broker_url: str, password: str, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OMNISHELF_DATABASE_URL": db_url,
        "OMNISHELF_BROKER_URL": broker_url,
        "OMNISHELF_BROKER_USERNAME": "cloud-1",
        "OMNISHELF_BROKER_PASSWORD": password,
        **extra_env,
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "omnishelf.cli", "cloud", "worker"], env=env, stdout=out, stderr=out)


def migrate(db_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "omnishelf.cli", "cloud", "migrate"],
        env={**os.environ, "OMNISHELF_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"migration failed: {done.stderr.strip()}")


def stop_worker(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


async def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark stalled waiting for {what}")
        await asyncio.sleep(0.01)


async def burst(bus: BusClient, outbox: Outbox, watcher: LedgerWatcher, n: int) -> dict[str, Any]:
    """n scans as fast as the outbox takes them; throughput from the first put to the last row stored."""
    base = outbox.last_seq
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        await asyncio.gather(*(bus.publish("scan", scan(i)) for i in range(start, min(n, start + 500))))
    t_put = time.perf_counter()
    await wait_until(lambda: watcher.max_seq >= base + n, 120, "ingest of the throughput burst")
    elapsed = watcher.seen[base + n] - t0
    return {
        "messages": n,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(n / elapsed),
        "outbox_put_msg_per_s": round(n / (t_put - t0)),
    }


POISON_NODE = "bench-poison"


def poison_payloads(i: int) -> bytes:
    """The classes that once wedged ingest, in turn: deep nesting, a 5,000-digit number, NaN, not
    UTF-8, a timestamp that overflows in UTC (valid at the contract, refused while storing)."""
    good = json.loads(encode(Envelope(type=MessageType.SCAN, node=POISON_NODE, session=1, seq=i + 1,
                                      data=ScanData(code="poison", station="bench"))))
    kinds = [
        b"[" * 100_000,
        json.dumps(good).replace(f'"seq": {i + 1}', '"seq": ' + "9" * 5000).encode(),
        json.dumps(good).replace(f'"seq": {i + 1}', '"seq": NaN').encode(),
        b"\xff\xfe" + json.dumps(good).encode(),
        json.dumps(good | {"ts": "0001-01-01T00:00:00+14:00"}).encode(),
    ]
    return kinds[i % len(kinds)]


async def _poison_connection(layout: BrokerLayout) -> MqttConnection:
    conn = MqttConnection(BrokerAddress.from_url(layout.url), POISON_NODE, layout.node_users[POISON_NODE])
    await conn.connect()
    return conn


async def poisoned_burst(bus: BusClient, outbox: Outbox, watcher: LedgerWatcher, layout: BrokerLayout, n: int) -> dict[str, Any]:
    """The same burst, with a poison message (from another box) after every 1,000 good ones."""
    conn = await _poison_connection(layout)
    poisoned = 0

    async def poison_along() -> None:
        nonlocal poisoned
        base = watcher.max_seq
        while poisoned < n // 1000:
            if watcher.max_seq >= base + (poisoned + 1) * 1000 - 500:
                await conn.publish(topics.up(POISON_NODE, "scan"), poison_payloads(poisoned))
                poisoned += 1
            await asyncio.sleep(0.005)

    side = asyncio.create_task(poison_along())
    try:
        figures = await burst(bus, outbox, watcher, n)
    finally:
        side.cancel()
        await asyncio.gather(side, return_exceptions=True)
        await conn.disconnect()
    return figures | {"poison_messages": poisoned}


async def poison_recovery(layout: BrokerLayout, db_url: str, rounds: int) -> dict[str, Any]:
    """A poison message, then at once a good one from the same box: how long until the good one is stored."""
    conn = await _poison_connection(layout)
    engine = sa.create_engine(db_url)
    q = sa.text("SELECT count(*) FROM ingested_messages WHERE msg_id = :m")
    times = []
    try:
        for i in range(rounds):
            good = Envelope(type=MessageType.SCAN, node=POISON_NODE, session=2, seq=i + 1,
                            data=ScanData(code=f"after-{i}", station="bench"))
            key = good.msg_id if engine.dialect.name == "postgresql" else good.msg_id.hex
            t0 = time.perf_counter()
            await conn.publish(topics.up(POISON_NODE, "scan"), poison_payloads(i))
            await conn.publish(topics.up(POISON_NODE, "scan"), encode(good))
            while True:
                with engine.connect() as c:
                    if c.execute(q, {"m": key}).scalar():
                        break
                await asyncio.sleep(0.001)
            times.append(time.perf_counter() - t0)
    finally:
        await conn.disconnect()
        engine.dispose()
    return {"rounds": rounds, **percentiles_ms(times), "poll_resolution_ms": 1}


async def pipeline(tmp: Path, db_url: str, layout: BrokerLayout, quick: bool, box_sync: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log")
    outbox = await Outbox.open(tmp / "outbox.db", max_pending=1_000_000, synchronous=box_sync)
    bus = BusClient(
        outbox,
        node=NODE,
        store="bench",
        address=BrokerAddress.from_url(layout.url),
        password=layout.node_users[NODE],
        config_hash="bench",
        window=500,
    )

    async def bench_command(_env: Any) -> str:
        return "ok"

    bus.on_command(MessageType.COMMAND, bench_command)
    freeze_startup_objects()  # as `omnishelf edge run` does once its agent is built
    runner = asyncio.create_task(bus.run())
    watcher = LedgerWatcher(db_url, 0.02)
    watcher.start()
    try:
        await asyncio.wait_for(bus.cloud_available.wait(), 60)

        # -- ingest throughput, without and with a handler per type (the seam's cost) --------------
        n = 5_000 if quick else 20_000
        out["ingest"] = await burst(bus, outbox, watcher, n)
        out["ingest_with_poison"] = await poisoned_burst(bus, outbox, watcher, layout, n)
        out["poison_to_next_good_stored"] = await poison_recovery(layout, db_url, 10 if quick else 50)
        # The seam's cost: a worker with a handler per type against one without, in alternating
        # rounds (one pair of bursts moved the ratio between 0.8 and 1.3 from run to run).
        rounds: list[dict[str, Any]] = []
        for _ in range(1 if quick else 3):
            pair: dict[str, Any] = {}
            for label, extra in (("without", {}), ("with", {"OMNISHELF_EXTRA_ENGINES": "bench.seam_engine"})):
                await asyncio.to_thread(stop_worker, worker)
                worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log", **extra)
                await wait_until(lambda: bus.cloud_online, 60, f"the worker {label} handlers")
                pair[label] = (await burst(bus, outbox, watcher, n))["msg_per_s"]
            pair["ratio"] = round(pair["with"] / pair["without"], 2)
            rounds.append(pair)
        out["ingest_with_handlers"] = {
            "messages_per_burst": n,
            "rounds": rounds,
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
        }
        await asyncio.to_thread(stop_worker, worker)
        worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log")
        await wait_until(lambda: bus.cloud_online, 60, "the worker back")

        # -- latency at a steady 500 msg/s ---------------------------------------------------------
        if db_url.startswith("postgresql"):
            # Fresh statistics, as autovacuum keeps them in a running system: without them the
            # planner bitmap-scans the whole node to answer the watcher's top-seq query (~8 ms a
            # poll after the burst above), and polling every 2 ms would load the machine it measures.
            analyze = sa.create_engine(db_url)
            with analyze.connect() as c:
                c.execute(sa.text("ANALYZE ingested_messages"))
                c.commit()
            analyze.dispose()
        watcher.interval = 0.002
        rate, seconds = 500, (4 if quick else 10)
        put_at: dict[int, float] = {}
        put_wall: dict[int, float] = {}

        async def arrive(i: int) -> None:
            called, wall = time.perf_counter(), time.time()
            row = await bus.publish("scan", scan(i))
            put_at[row.seq] = called
            put_wall[row.seq] = wall

        # Open loop, as in a store: a scan arrives on schedule whether or not the previous one has
        # been committed yet (a closed loop would measure one fsync after another, not the system).
        t_start = time.perf_counter()
        arrivals = []
        for i in range(rate * seconds):
            delay = t_start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            arrivals.append(asyncio.create_task(arrive(i)))
        await asyncio.gather(*arrivals)
        last = max(put_at)
        await wait_until(lambda: watcher.max_seq >= last, 60, "ingest of the paced stream")
        seen = watcher.seen
        lat = [seen[s] - t for s, t in put_at.items()]
        received = received_at(db_url, min(put_at), last)
        to_worker = [received[s] - put_wall[s] for s in put_at if s in received]
        out["latency_at_500_msg_s"] = {
            "messages": len(lat),
            "achieved_rate_msg_s": round(len(lat) / (max(put_at.values()) - t_start)),
            "arrivals": "open loop (scheduled, not waiting for the previous commit)",
            **percentiles_ms(lat),
            "poll_resolution_ms": 2,
            "box_to_worker_receipt": percentiles_ms(to_worker),
        }
        watcher.interval = 0.05

        # -- command round trip at 200 commands/s ---------------------------------------------------
        # The worker's own task writes each command in a transaction (so its relay is woken in
        # process, as for any engine), the box handles and acknowledges it, the ack is stored.
        await asyncio.to_thread(stop_worker, worker)
        count, per_s = (400 if quick else 2000), 200
        acks = AckWatcher(db_url, 0.002)
        await asyncio.to_thread(acks.start)  # before the first command: it starts in a second or so
        worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log",
                              OMNISHELF_EXTRA_ENGINES="bench.seam_engine",
                              OMNISHELF_BENCH_COMMANDS=f"{count}:{per_s}:{NODE}")
        try:
            await wait_until(lambda: acks.count >= count, 60 + count / per_s, "every command acknowledged")
        finally:
            acks.stop()
        out["command_round_trip_at_200_per_s"] = {
            "commands": count,
            **percentiles_ms(list(acks.seen.values())),
            "poll_resolution_ms": 2,
            "acknowledged_ok": acks.ok,
            "of_which": command_stages(db_url),
        }
        await asyncio.to_thread(stop_worker, worker)
        worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log")
        await wait_until(lambda: bus.cloud_online, 60, "the worker back")

        # -- drain after the cloud comes back ------------------------------------------------------
        await asyncio.to_thread(stop_worker, worker)
        await wait_until(lambda: not bus.cloud_online, 30, "the cloud to go offline")
        queued = 20_000 if quick else 100_000
        base = outbox.last_seq
        t0 = time.perf_counter()
        for start in range(0, queued, 1000):
            await asyncio.gather(*(bus.publish("scan", scan(i)) for i in range(start, min(queued, start + 1000))))
        enqueue_s = time.perf_counter() - t0
        assert outbox.pending >= queued, "messages left the outbox while the cloud was away"
        worker = start_worker(db_url, layout.url, layout.cloud_users["cloud-1"], tmp / "worker.log")
        await wait_until(lambda: bus.cloud_online, 60, "the cloud to come back")
        t_online = time.perf_counter()
        await wait_until(lambda: outbox.pending == 0, 300, "the outbox to drain")
        t_drained = time.perf_counter()
        await wait_until(lambda: watcher.max_seq >= base + queued, 300, "the drained messages in the database")
        stored_at = watcher.seen[base + queued]
        out["drain"] = {
            "messages": queued,
            "enqueue_msg_per_s": round(queued / enqueue_s),
            "to_broker_seconds": round(t_drained - t_online, 3),
            "to_broker_msg_per_s": round(queued / (t_drained - t_online)),
            "to_database_seconds": round(stored_at - t_online, 3),
            "to_database_msg_per_s": round(queued / (stored_at - t_online)),
        }
    finally:
        watcher.stop()
        await bus.stop()
        await asyncio.wait_for(runner, 30)
        await outbox.close()
        await asyncio.to_thread(stop_worker, worker)
    return out


def edge_idle_rss(tmp: Path, layout: BrokerLayout) -> dict[str, float]:
    node = "bench-idle"
    secret = tmp / "idle.secret"
    secret.write_text(layout.node_users[node])
    cfg = write_config(
        NodeConfig(node_id=node, store_id="bench", data_dir=tmp / "idle", local_api=LocalApiConfig(port=0),
                   broker=BrokerConfig(url=layout.url, password_file=secret)),
        tmp / "idle.yaml",
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)  # connected, born, idle
        if p.poll() is not None:
            raise RuntimeError(f"idle edge agent exited with {p.returncode}")
        info = psutil.Process(p.pid).memory_full_info()
        return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)


def pg_url() -> str:
    return os.environ.get("OMNISHELF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run, not for the record)")
    ap.add_argument(
        "--box-sync",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="the box outbox's SQLite synchronous mode (default FULL, as on a real box)",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="omnishelf-bench-") as d:
        tmp = Path(d)
        pw = {u: secrets.token_urlsafe(12) for u in ("cloud-1", "cloud-2", NODE, "bench-idle", POISON_NODE)}
        layout = BrokerLayout(
            tmp / "broker",
            free_port(),
            cloud_users={"cloud-1": pw["cloud-1"], "cloud-2": pw["cloud-2"]},
            node_users={NODE: pw[NODE], "bench-idle": pw["bench-idle"], POISON_NODE: pw[POISON_NODE]},
        )
        broker = MosquittoProcess(layout)
        broker.start()
        db_cleanup: Callable[[], None] | None = None
        try:
            n = 5_000 if args.quick else 20_000
            base = bare_qos1(layout.port, (NODE, pw[NODE], topics.up(NODE, "scan")), ("cloud-2", pw["cloud-2"], topics.up(NODE, "scan")), n)
            rtt = bare_round_trip(
                layout.port,
                (NODE, pw[NODE], topics.up(NODE, "scan"), topics.dn(NODE, "verdict")),
                ("cloud-2", pw["cloud-2"], topics.up(NODE, "scan"), topics.dn(NODE, "verdict")),
                300 if args.quick else 1000,
            )
            if args.db == "sqlite":
                db_url = f"sqlite:///{tmp / 'bench.db'}"
            else:
                admin = sa.create_engine(pg_url().replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
                name = f"omnishelf_bench_{secrets.token_hex(4)}"
                with admin.connect() as c:
                    c.execute(sa.text(f'CREATE DATABASE "{name}"'))
                db_url = pg_url().rsplit("/", 1)[0] + "/" + name

                def drop() -> None:
                    with admin.connect() as c:
                        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()

                db_cleanup = drop

            if args.db != "sqlite":
                db_url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
            migrate(db_url)
            figures = asyncio.run(pipeline(tmp, db_url, layout, args.quick, args.box_sync))
            rss = edge_idle_rss(tmp, layout)
        finally:
            broker.stop()
            if db_cleanup is not None:
                db_cleanup()

    result = {
        "benchmark": "bus",
        "database": args.db,
        "box_outbox_synchronous": args.box_sync,
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "baseline_bare_paho_qos1": base,
        "baseline_round_trip": rtt,
        **figures,
        "edge_idle_memory": rss,
        "ratios": {
            "ingest_to_bare_qos1": round(figures["ingest"]["msg_per_s"] / base["msg_per_s"], 2),
            "ingest_with_poison_to_without": round(
                figures["ingest_with_poison"]["msg_per_s"] / figures["ingest"]["msg_per_s"], 2
            ),
            "ingest_with_handlers_to_without": figures["ingest_with_handlers"]["median_ratio"],
            "drain_to_bare_qos1": round(figures["drain"]["to_broker_msg_per_s"] / base["msg_per_s"], 2),
        },
        "targets": TARGETS,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
