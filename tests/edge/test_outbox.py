"""The SQLite outbox on real files: seq and session persistence, durability, bounds, replay window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxFull
from edge.outbox_db import OutboxDb
from tests.edge.conftest import arun

SCAN = {"code": "010950600013435221SN1", "station": "s1"}
ORDER = {"order_id": "o-1", "channel": "kiosk", "lines": [{"sku": "SKU-0001", "qty": 2}], "fulfilment": "pickup"}
TELEMETRY = {"metrics": {"cpu": 0.5}}


def test_seq_and_session_are_monotonic_and_survive_reopen(outbox_path: Path) -> None:
    async def main() -> None:
        ob = await Outbox.open(outbox_path, retain_acked=0)
        assert await ob.next_session() == 1
        seqs = [(await ob.put("scan", SCAN)).seq for _ in range(3)]
        assert seqs == [1, 2, 3]
        await ob.mark_acked(seqs)
        assert await ob.prune() == 3  # every row gone …
        await ob.close()
        ob = await Outbox.open(outbox_path)
        assert (ob.last_seq, ob.session) == (3, 1)
        assert await ob.next_session() == 2
        row = await ob.put("order", ORDER)
        assert (row.seq, row.session) == (4, 2)  # … and still no seq is handed out twice
        await ob.close()

    arun(main())


def test_puts_in_one_tick_share_a_commit_and_keep_call_order(outbox_path: Path) -> None:
    import asyncio

    async def main() -> None:
        ob = await Outbox.open(outbox_path)
        rows = await asyncio.gather(*(ob.put("scan", {**SCAN, "code": f"c{i}"}) for i in range(500)))
        assert [r.seq for r in rows] == list(range(1, 501))
        assert [json.loads(r.data)["code"] for r in rows] == [f"c{i}" for i in range(500)]
        pending = await ob.pending_after(0, 1000)
        assert [r.msg_id for r in pending] == [r.msg_id for r in rows]
        await ob.close()

    arun(main())


def test_invalid_payload_and_non_outbox_types_are_refused(outbox_path: Path) -> None:
    async def main() -> None:
        ob = await Outbox.open(outbox_path)
        with pytest.raises(ValueError, match="station"):
            await ob.put("scan", {"code": "x"})
        with pytest.raises(ValueError, match="do not go through the outbox"):
            await ob.put("birth", {})
        assert ob.last_seq == 0
        await ob.close()

    arun(main())


_WRITER = """
import asyncio, sys
from pathlib import Path
from edge.outbox import Outbox

async def main():
    ob = await Outbox.open(Path(sys.argv[1]))
    async def one(i):
        row = await ob.put("scan", {"code": f"c{i}", "station": "s1"})
        print(row.seq, row.msg_id, flush=True)
    i = 0
    while True:
        await asyncio.gather(*(one(i + k) for k in range(20)))
        i += 20

asyncio.run(main())
"""


def test_every_put_that_returned_survives_kill_9(outbox_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(outbox_path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert proc.stdout is not None
    reported: dict[int, str] = {}
    deadline = time.monotonic() + 30
    while len(reported) < 2000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seq, msg_id = line.split()
        reported[int(seq)] = msg_id
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Whatever the child managed to print after our last read was also committed first.
    for line in proc.stdout:
        seq, msg_id = line.split()
        reported[int(seq)] = msg_id
    proc.stdout.close()
    assert len(reported) >= 2000
    store = OutboxDb(outbox_path)
    stored = {r.seq: str(r.msg_id) for r in store.pending_after(0, 10**9)}
    store.close()
    missing = [s for s in reported if stored.get(s) != reported[s]]
    assert missing == []


def test_full_outbox_refuses_telemetry_but_keeps_business_messages(outbox_path: Path) -> None:
    async def main() -> None:
        ob = await Outbox.open(outbox_path, max_pending=3)
        for _ in range(2):
            await ob.put("telemetry", TELEMETRY)
        await ob.put("scan", SCAN)
        with pytest.raises(OutboxFull):
            await ob.put("telemetry", TELEMETRY)
        assert ob.rejected_low_priority == 1
        assert (await ob.put("order", ORDER)).seq == 4
        assert (await ob.put("scan", SCAN)).seq == 5
        await ob.mark_acked([1, 2, 3])
        await ob.put("telemetry", TELEMETRY)  # room again
        assert ob.pending == 3
        await ob.close()

    arun(main())


def test_full_disk_refuses_every_type_and_drops_nothing(outbox_path: Path) -> None:
    async def main() -> None:
        # The size cap makes SQLite answer exactly as on a full disk (SQLITE_FULL).
        ob = await Outbox.open(outbox_path, max_bytes=64 * 1024)
        big = {"code": "x" * 1000, "station": "s1"}
        accepted = 0
        with pytest.raises(OutboxFull, match="full"):
            for _ in range(1000):
                await ob.put("order" if accepted % 2 else "scan", big if accepted % 2 == 0 else ORDER)
                accepted += 1
        assert 0 < accepted < 1000
        assert ob.rejected_disk_full == 1
        assert ob.last_seq == accepted == ob.pending
        rows = await ob.pending_after(0, 10_000)
        assert [r.seq for r in rows] == list(range(1, accepted + 1))
        await ob.close()

    arun(main())


def test_prune_keeps_the_newest_retain_acked_and_replayable_serves_them(outbox_path: Path) -> None:
    async def main() -> None:
        ob = await Outbox.open(outbox_path, retain_acked=10)
        for _ in range(30):
            await ob.put("scan", SCAN)
        await ob.mark_acked(range(1, 26))  # 26..30 stay pending
        await ob.prune()
        stats = await ob.stats()
        assert (stats.pending, stats.acked, stats.last_seq, stats.oldest_seq) == (5, 10, 30, 16)
        assert [r.seq for r in await ob.replayable(0, 100)] == list(range(16, 26))
        assert [r.seq for r in await ob.replayable(20, 3)] == [20, 21, 22]
        assert await ob.replayable(26, 100) == []  # pending rows are not replays
        await ob.close()

    arun(main())


def test_refused_rows_are_kept_until_requeued(outbox_path: Path) -> None:
    async def main() -> None:
        ob = await Outbox.open(outbox_path)
        for _ in range(3):
            await ob.put("scan", SCAN)
        assert await ob.mark_refused(2, "Not authorized (135)")
        assert [r.seq for r in await ob.pending_after(0, 10)] == [1, 3]
        assert await ob.refused_rows() == [(2, "Not authorized (135)")]
        assert await ob.requeue_refused() == 1
        assert [r.seq for r in await ob.pending_after(0, 10)] == [1, 2, 3]
        await ob.close()

    arun(main())


def test_acked_marks_commit_without_their_own_fsync_and_puts_keep_theirs(outbox_path: Path) -> None:
    """A row marked acknowledged may be lost in a power cut (it goes again; the cloud drops it by
    msg_id), so that commit does not wait for the disk; every put still does."""
    async def main() -> None:
        ob = await Outbox.open(outbox_path, retain_acked=0)
        db = ob._store._db
        modes: list[int] = []
        db.set_trace_callback(lambda sql: modes.append(db.execute("PRAGMA synchronous").fetchone()[0])
                              if sql == "COMMIT" else None)
        rows = [await ob.put("scan", SCAN) for _ in range(3)]
        await ob.mark_acked([r.seq for r in rows])
        await ob.prune()
        await ob.put("scan", SCAN)
        db.set_trace_callback(None)
        assert modes == [2, 2, 2, 1, 1, 2]  # FULL for each put, NORMAL for the mark and the prune
        assert ob.pending == 1
        await ob.close()

    arun(main())


def test_fresh_rows_come_from_memory_exactly_as_the_file_would_give_them(
    outbox_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender takes what was just committed from memory (`fresh_after`) rather than reading it
    back; whenever memory answers, the answer is what `pending_after` reads from the file, through
    reconnects (a new sender starts from seq 0), acks, and a tail grown past its bound."""
    import asyncio
    import random

    import edge.outbox

    monkeypatch.setattr(edge.outbox, "_FRESH_MAX", 7)
    rng = random.Random(8)

    async def main() -> None:
        ob = await Outbox.open(outbox_path)
        await asyncio.gather(*(ob.put("scan", SCAN) for _ in range(5)))  # before the first sender
        cursor, sent, from_memory, from_file = 0, [], 0, 0
        ob.forget_fresh()
        for _ in range(400):
            op = rng.random()
            if op < 0.4:
                await asyncio.gather(*(ob.put("scan", SCAN) for _ in range(rng.randint(1, 5))))
            elif op < 0.8:
                limit = rng.randint(1, 12)
                fresh = ob.fresh_after(cursor, limit)
                stored = [r.seq for r in await ob.pending_after(cursor, limit)]
                if fresh is None:
                    from_file += 1
                    got = stored
                else:
                    from_memory += 1
                    assert [r.seq for r in fresh] == stored, (cursor, limit)
                    got = stored
                if got:
                    cursor = got[-1]
                    sent.extend(got)
            elif op < 0.95:
                if sent:
                    await ob.mark_acked(rng.sample(sent, rng.randint(1, len(sent))))
            else:
                cursor, sent = 0, []  # a new connection: its sender starts over
                ob.forget_fresh()
        assert from_memory > 50 and from_file > 50, (from_memory, from_file)  # both paths taken
        await ob.close()

    arun(main())
