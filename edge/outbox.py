"""The durable outbox: every message the box sends is committed here first.

`put` returns only after the row is committed (fsync with `synchronous=FULL`), so a `kill -9` or a
power cut loses nothing a caller was told was accepted. Puts are group-committed: all puts made
while the writer thread is busy (or within one event-loop tick) share a transaction and one fsync,
which is what lets a Pi's SD card take thousands of messages a second. SQLite runs on one worker
thread, so the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from broker.envelope import MAX_ENVELOPE_BYTES, PAYLOADS, SEQUENCED, Envelope, MessageType, new_msg_id
from broker.payloads import AckData, Payload
from edge.clock import clock_synced
from edge.outbox_db import CommandRecord, NewRow, OutboxDb, OutboxStats, Row, StoreFull

__all__ = ["LOW_PRIORITY", "Outbox", "OutboxFull", "OutboxStats", "Row"]

log = logging.getLogger(__name__)

T = TypeVar("T")

"""The message types that get a seq and go through the outbox (birth and death do not)."""

LOW_PRIORITY = frozenset({MessageType.TELEMETRY})
"""Refused when the outbox is at `max_pending`; everything else is business data and is kept."""

_MAX_BATCH = 5_000
"""Upper bound of one group commit, so one transaction never holds the writer for long."""

_ENVELOPE_OVERHEAD = 512
"""Bytes an envelope adds around its `data` (ids, timestamps, names), rounded up."""

_FRESH_MAX = 5_000
"""Rows kept in memory for the sender after their commit (see `fresh_after`); older ones it reads back."""


class OutboxFull(Exception):
    """The message was not stored: the outbox is at its bound (low-priority types) or the disk is
    full (any type). Nothing was half-written."""


class Outbox:
    """Async facade over the SQLite `OutboxDb`, confined to one worker thread."""

    def __init__(self, store: OutboxDb, executor: ThreadPoolExecutor, *, max_pending: int, retain_acked: int) -> None:
        self._store = store
        self._executor = executor
        self.max_pending = max_pending
        self.retain_acked = retain_acked
        self._batch: list[tuple[NewRow, asyncio.Future[Row]]] = []
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="outbox-writer")
        self._closed = False
        self._fresh: deque[Row] = deque()
        self._fresh_gen = 0
        self.rejected_low_priority = 0
        self.rejected_disk_full = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_pending: int = 200_000,
        retain_acked: int = 10_000,
        synchronous: str = "FULL",
        max_bytes: int | None = None,
        command_window: int = 10_000,
        command_window_s: float = 7 * 24 * 3600,
    ) -> Outbox:
        """Open (or create) the outbox file. `max_bytes` caps the file: when reached, puts fail with
        `OutboxFull` exactly as on a full disk (a guard for small SD cards). The command window is
        how many handled commands, and for how long, are remembered against redelivery: it must
        outlast the cloud's retries of one command."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(
            executor,
            lambda: OutboxDb(
                path,
                synchronous=synchronous,
                max_bytes=max_bytes,
                command_window=command_window,
                command_window_s=command_window_s,
            ),
        )
        return cls(store, executor, max_pending=max_pending, retain_acked=retain_acked)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- state readable without a round trip (ints updated by the worker thread) -------------------

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def last_seq(self) -> int:
        return self._store.last_seq

    @property
    def session(self) -> int:
        return self._store.session

    @property
    def pending(self) -> int:
        return self._store.pending

    # -- writes ------------------------------------------------------------------------------------

    async def put(
        self, type: MessageType | str, data: Payload | Mapping[str, Any], corr: uuid.UUID | None = None
    ) -> Row:
        """Store one message; return it once committed. Raises `OutboxFull`, `ValueError` (not an
        outbox type, payload fails its schema, or too large for one envelope)."""
        return await self._put(type, data, corr, None)

    async def acknowledge(self, command: Envelope, ack: AckData) -> Row:
        """Store the ack of `command` and remember the command as handled, in one transaction: after
        a crash either both exist (the command is a duplicate from then on, its ack will be sent) or
        neither (the command will be handled again when it is redelivered)."""
        return await self._put(MessageType.ACK, ack, command.msg_id, CommandRecord(command.msg_id, command.type.value))

    async def command_seen(self, msg_id: uuid.UUID) -> bool:
        """Whether a command with this id was handled (within the window)."""
        return self._store.command_seen(msg_id)  # from memory: no round trip to the file's thread

    async def _put(
        self,
        type: MessageType | str,
        data: Payload | Mapping[str, Any],
        corr: uuid.UUID | None,
        command: CommandRecord | None,
    ) -> Row:
        if self._closed:
            raise RuntimeError("the outbox is closed")
        kind = MessageType(type)
        if kind not in SEQUENCED:
            raise ValueError(f"{kind} messages do not go through the outbox")
        model = PAYLOADS[kind]
        payload = data if isinstance(data, model) else model.model_validate(data)
        body = payload.model_dump_json()
        if len(body) + _ENVELOPE_OVERHEAD > MAX_ENVELOPE_BYTES:
            raise ValueError(f"{kind} payload is {len(body)} bytes: too large for one envelope")
        if kind in LOW_PRIORITY and self._store.pending + len(self._batch) >= self.max_pending:
            self.rejected_low_priority += 1
            if self.rejected_low_priority == 1 or self.rejected_low_priority % 1000 == 0:
                log.warning(
                    "outbox full (%d pending, bound %d): refused %d low-priority message(s) so far",
                    self._store.pending,
                    self.max_pending,
                    self.rejected_low_priority,
                )
            raise OutboxFull(f"outbox holds {self._store.pending} unsent messages (bound {self.max_pending})")
        row = NewRow(new_msg_id(), kind.value, datetime.now(UTC).astimezone(), clock_synced(), corr, body, command)
        fut: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._batch.append((row, fut))
        self._wake.set()
        return await fut

    async def _write_loop(self) -> None:
        while True:
            if not self._batch:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._batch = self._batch[:_MAX_BATCH], self._batch[_MAX_BATCH:]
            session = self._store.session
            gen = self._fresh_gen
            try:
                seqs = await self._run(lambda b=batch: self._store.insert([r for r, _ in b]))  # type: ignore[misc]
            except StoreFull as exc:
                self.rejected_disk_full += len(batch)
                log.error("%s: refused %d message(s)", exc, len(batch))
                self._fail(batch, OutboxFull(str(exc)))
            except Exception as exc:  # the caller must hear of it; the writer must live on
                log.exception("outbox write failed")
                self._fail(batch, exc)
            else:
                rows = [Row(seq, r.msg_id, r.type, session, r.ts, r.clock_synced, r.corr, r.data)
                        for seq, (r, _) in zip(seqs, batch, strict=True)]
                if gen == self._fresh_gen:  # else the sender started over meanwhile: it reads them back
                    self._fresh.extend(rows)
                    while len(self._fresh) > _FRESH_MAX:
                        self._fresh.popleft()
                for row, (_, fut) in zip(rows, batch, strict=True):
                    if not fut.done():
                        fut.set_result(row)

    @staticmethod
    def _fail(batch: list[tuple[NewRow, asyncio.Future[Row]]], exc: Exception) -> None:
        for _r, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def next_session(self) -> int:
        """Increment and persist the connection counter (called before every connect attempt)."""
        return await self._run(self._store.next_session)

    async def mark_acked(self, seqs: Iterable[int]) -> int:
        """Mark rows acknowledged (one transaction) and prune the replay window when it overflows."""
        wanted = list(seqs)

        def work() -> int:
            changed = self._store.mark_acked(wanted)
            # Prune in slices, not on every ack, so deletes are batched too.
            if self._store.acked > self.retain_acked + max(100, self.retain_acked // 10):
                self._store.prune(self.retain_acked)
            return changed

        return await self._run(work)

    async def mark_refused(self, seq: int, reason: str) -> bool:
        return await self._run(lambda: self._store.mark_refused(seq, reason))

    async def requeue_refused(self) -> int:
        return await self._run(self._store.requeue_refused)

    async def prune(self) -> int:
        return await self._run(lambda: self._store.prune(self.retain_acked))

    # -- reads -------------------------------------------------------------------------------------

    def forget_fresh(self) -> None:
        """Start the in-memory tail of `fresh_after` afresh: a new sender (a new connection) calls it
        before its first read, so the tail holds only rows committed since, none of which an
        earlier sender can have sent."""
        self._fresh.clear()
        self._fresh_gen += 1

    def fresh_after(self, seq: int, limit: int) -> list[Row] | None:
        """The pending rows after `seq` (at most `limit`) from memory, without a round trip to the
        file's thread: those committed since `forget_fresh()` and not yet handed out. [] when
        there are none; None when memory cannot tell (rows between `seq` and the tail were
        committed before, or dropped from a tail grown past its bound): read `pending_after` then.

        For one sender that reads in seq order: rows up to `seq` are dropped as it passes them."""
        fresh = self._fresh
        while fresh and fresh[0].seq <= seq:
            fresh.popleft()
        if not fresh:
            return [] if seq >= self._store.last_seq else None
        if fresh[0].seq != seq + 1:
            return None
        return [fresh.popleft() for _ in range(min(limit, len(fresh)))]

    async def pending_after(self, seq: int, limit: int) -> list[Row]:
        return await self._run(lambda: self._store.pending_after(seq, limit))

    async def replayable(self, from_seq: int, limit: int) -> list[Row]:
        return await self._run(lambda: self._store.replayable(from_seq, limit))

    async def refused_rows(self) -> list[tuple[int, str]]:
        return await self._run(self._store.refused_rows)

    async def stats(self) -> OutboxStats:
        return await self._run(self._store.stats)

    async def close(self) -> None:
        """Commit the puts already made, then close the file."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        await self._writer
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)
