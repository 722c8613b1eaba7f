"""The cloud bus: one MQTT 5 connection per cloud host, both directions, and the engines' background parts.

In: `on_message` (event loop, never blocks) appends to a pending list; the flusher stores up to
BATCH_MAX messages per transaction in a thread (ledger, node state, the engines' handlers) and only
after the commit acknowledges each message, so a crash means redelivery, never loss, and the
ledger's unique msg_id makes the redelivery harmless.

Out: commands the engines' handlers wrote in a batch go out right after its commit, from this
worker, with no transaction of their own (`downlink.publish_after_commit`); the relay publishes the
other committed downlink rows (commands) to boxes that are online and retries them all until
acknowledged or expired; the gap check asks boxes to resend what is missing.

Alongside: the engines' followers (ledger cursors) and background tasks. `omnishelf cloud worker`
and `omnishelf cloud serve` run the same `CloudBus`, so every host runs the same parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from sqlalchemy import Engine, text

from broker import topics
from broker.client import (
    BrokerCertificateError,
    BusAuthError,
    BusError,
    JitteredBackoff,
    MqttConnection,
    PublishRefused,
    Will,
    keepalive_for_deadline,
)
from broker.envelope import Envelope, MessageType, encode
from broker.payloads import HostStateData
from cloud.bus import downlink, followers
from cloud.bus.dispatch import Call, Registry, is_database_fault
from cloud.bus.ledger import BatchOutcome, GapPolicy, Incoming, check_gaps, store_batch, store_one_by_one
from cloud.bus.stats import BusStats
from cloud.db import write_transaction
from cloud.settings import Settings

if TYPE_CHECKING:
    from cloud.engine import EngineSpec, Follower, Task

__all__ = ["CloudBus", "registry_of"]

log = logging.getLogger(__name__)

AUTH_RETRY_S = 60.0
"""Wait after the broker refused our credentials: retrying sooner cannot help and floods its log."""
STOP_TIMEOUT_S = 5.0
QUIET_S = 0.2
"""On a clean stop, after unsubscribing: how long no message may arrive before the queue counts as drained."""
GIL_SWITCH_INTERVAL_S = 0.0005
"""While a worker runs. The batch thread is CPU-bound (decode, bind processing) and the loop does
several recv() calls per message; with the default 5 ms interval the loop waits for the GIL after
each of them (convoy effect). Measured: ~5.8k → ~6.7k msg/s end to end on SQLite."""
RELAY_BATCH = 200
EXPIRY_CHECK_S = 1.0
"""How often the relay looks for commands whose expiry passed (they expire in hours)."""

_Pending = tuple[MqttConnection, int, float, Incoming]
"""(connection it came on, mid to acknowledge, time.monotonic() of arrival, the message)."""


def registry_of(engines: Sequence[EngineSpec]) -> Registry:
    """Every engine's handlers by type (in engine order) and its followers by name (for replays)."""
    reg = Registry()
    for spec in engines:
        for h in spec.handlers:
            reg.add(h.type, Call(spec.name, h.name, h.fn, many=h.batch))
        for f in spec.followers:
            reg.add_named(Call(spec.name, f.name, f.fn, batched=True))
    return reg


class CloudBus:
    """Runs until `stop()`; see the module docstring for what it does."""

    def __init__(self, settings: Settings, engine: Engine, engines: Sequence[EngineSpec] | None = None) -> None:
        if engines is None:
            from cloud.engines import load_engines

            engines = load_engines()
        self.settings = settings
        self.engine = engine
        self.engines = tuple(engines)
        self.registry = registry_of(self.engines)
        self.host = settings.BROKER_USERNAME
        self.gap_policy = GapPolicy(settings.GAP_GRACE_S, settings.REBIRTH_MAX, settings.REBIRTH_BACKOFF_CAP_S)
        self.stats = BusStats()
        self._conn: MqttConnection | None = None
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()
        self._db_failed = asyncio.Event()
        self._db_lock = asyncio.Lock()
        self._relay_wake = asyncio.Event()
        self._publishing: set[asyncio.Future[None]] = set()
        self._next_expiry_check = 0.0
        self._consuming: MqttConnection | None = None
        self._follower_wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._running = False
        self._done = asyncio.Event()
        self._session = 0
        self._last_message = 0.0
        self._draining = False
        self._inflight: tuple[int, float] = (0, 0.0)
        """(messages, arrival of the oldest) of the batch being stored right now."""

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_connected

    @property
    def consuming(self) -> bool:
        """Connected and subscribed: a message published now reaches us (before the SUBACK, the
        broker answers a first publish "no matching subscribers" and keeps nothing)."""
        return self.connected and self._consuming is self._conn

    def wake_relay(self) -> None:
        """Publish due commands now (thread-safe: called after a commit in any thread)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._relay_wake.set)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, consume and reconnect forever; return after `stop()`."""
        if self._running:
            raise RuntimeError("CloudBus.run() is already running")
        self._running = True
        self._done.clear()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, GIL_SWITCH_INTERVAL_S))
        self._stopping.clear()
        downlink.add_waker(self.wake_relay)
        downlink.add_publisher(self)
        background = [
            asyncio.create_task(self._flush_loop(), name=f"{self.host}-flush"),
            asyncio.create_task(self._gap_loop(), name=f"{self.host}-gaps"),
            asyncio.create_task(self._relay_loop(), name=f"{self.host}-relay"),
            *(asyncio.create_task(self._follower_loop(spec.name, f), name=f"follower-{f.name}")
              for spec in self.engines for f in spec.followers),
            *(asyncio.create_task(self._supervise(t), name=f"task-{t.name}") for spec in self.engines for t in spec.tasks),
        ]
        listener = self._start_pg_listener()
        backoff = JitteredBackoff(base=0.5, cap=30.0)
        try:
            while not self._stopping.is_set():
                delay = await self._connection_round(backoff)
                if self._stopping.is_set():
                    break
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                if self._db_failed.is_set() and not self._stopping.is_set():
                    await self._wait_for_db()
            await self._shutdown()
        finally:
            downlink.remove_waker(self.wake_relay)
            downlink.remove_publisher(self)
            if listener is not None:
                listener.set()
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._conn is not None and not self._conn.closed.done():
                self._conn.abort()
            sys.setswitchinterval(switch_interval)
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Leave the subscription, drain and commit what was delivered, publish host state offline
        (retained), end the broker session and disconnect."""
        if not self._running:
            return
        self._stopping.set()
        await self._done.wait()

    # -- connection --------------------------------------------------------------------------------

    async def _connection_round(self, backoff: JitteredBackoff) -> float:
        """One connection from connect to loss; return how long to wait before the next one."""
        s = self.settings
        # Milliseconds since the epoch: increases with every connection, so a late will of an
        # earlier connection is recognisably older.
        self._session = time.time_ns() // 1_000_000
        will = Will(topics.host_state(self.host), encode(self._host_state(online=False)), retain=True)
        conn = MqttConnection(
            s.broker_address,
            self.host,
            s.BROKER_PASSWORD.get_secret_value(),
            clean_start=False,
            session_expiry=s.WORKER_SESSION_EXPIRY_S,
            # Like a box: sized so that the broker publishes our offline state within 1.5 x
            # KEEPALIVE_S even with Mosquitto 2.0's coarse keep-alive sweep.
            keepalive=keepalive_for_deadline(1.5 * s.KEEPALIVE_S),
            will=will,
            manual_ack=True,
            on_message=self._on_message,
        )
        self._conn = conn
        self._db_failed.clear()
        try:
            present = await conn.connect()
            await conn.subscribe(self._filters())
            self._consuming = conn
            await conn.publish(topics.host_state(self.host), encode(self._host_state(online=True)), retain=True)
        except BusAuthError as exc:
            conn.abort()
            log.error("%s: broker refused us (%s); check OMNISHELF_BROKER_USERNAME/PASSWORD; retry in %.0f s",
                      self.host, exc, AUTH_RETRY_S)
            return AUTH_RETRY_S
        except BusError as exc:
            conn.abort()
            delay = backoff.next_delay()
            if isinstance(exc, BrokerCertificateError):
                # Lasts until the setting or the broker's certificate is fixed: say which to look at.
                log.error("%s: %s; check OMNISHELF_BROKER_CA_FILE and the host in OMNISHELF_BROKER_URL; retry in %.1f s",
                          self.host, exc, delay)
            else:
                log.warning("%s: cannot connect to %s (%s); retry in %.1f s", self.host, s.broker_address, exc, delay)
            return delay
        self.stats.connects += 1
        backoff.reset()
        log.info("%s: consuming from %s (session present: %s)", self.host, s.broker_address, present)
        self._relay_wake.set()  # commands may have been waiting for a connection
        stop = asyncio.ensure_future(self._stopping.wait())
        db_failed = asyncio.ensure_future(self._db_failed.wait())
        watched: list[asyncio.Future[Any]] = [conn.closed, stop, db_failed]
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            db_failed.cancel()
        if self._stopping.is_set():
            return 0.0
        if self._db_failed.is_set():
            # Unacknowledged messages come back when we reconnect; until the database answers,
            # boxes should keep them in their own outboxes, so say we are offline.
            await self._publish_offline(conn)
            await conn.disconnect()
            return backoff.next_delay()
        delay = backoff.next_delay()
        log.warning("%s: lost the broker (%s); reconnecting in %.1f s", self.host, conn.closed.result(), delay)
        return delay

    @staticmethod
    def _filters() -> list[str]:
        return [*topics.cloud_ingest_filters(), *topics.cloud_lifecycle_filters()]

    async def _shutdown(self) -> None:
        conn = self._conn
        left = False
        if conn is not None and conn.is_connected and not self._db_failed.is_set():
            # Leave first, so the broker assigns nothing new to us, then take in what it had already
            # assigned: ending the session below drops whatever is still queued for us.
            self._draining = True
            with contextlib.suppress(BusError, TimeoutError):
                await conn.unsubscribe(self._filters())
                left = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_until_quiet(), STOP_TIMEOUT_S)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), STOP_TIMEOUT_S)
        # Only a worker that committed everything it was given may end its session; otherwise the
        # session keeps the unacknowledged messages for redelivery (to us, if we come back within
        # WORKER_SESSION_EXPIRY_S; after that the boxes resend them when the cloud sees the gap).
        clean = not self._pending and not self._db_failed.is_set()
        if self._publishing:
            # Commands the last batches wrote: let the broker take them rather than leave them to
            # another relay's retry.
            await asyncio.wait(list(self._publishing), timeout=STOP_TIMEOUT_S)
        if conn is not None and conn.is_connected:
            if left and not clean:
                # The session we keep must keep its subscription too: without it, what boxes publish
                # until a worker is back matches no one, and the broker drops it.
                try:
                    await conn.subscribe(self._filters())
                except (BusError, TimeoutError) as exc:
                    log.warning("%s: could not subscribe again before leaving (%s): until a worker is back, "
                                "boxes' messages are kept only in their outboxes", self.host, exc)
            await self._publish_offline(conn)
            await conn.disconnect(end_session=clean)
        log.info("%s: stopped%s (%s)", self.host, "" if clean else " keeping its broker session", self.stats.as_dict())

    async def _drain(self) -> None:
        # Whatever is pending is committed and acknowledged now rather than redelivered later.
        async with self._db_lock:
            while self._pending and not self._db_failed.is_set():
                await self._flush_locked(self._take())

    async def _drain_until_quiet(self) -> None:
        while True:
            await self._drain()
            if time.monotonic() - self._last_message >= QUIET_S and not self._pending:
                return
            await asyncio.sleep(QUIET_S / 4)

    async def _publish_offline(self, conn: MqttConnection) -> None:
        try:
            await asyncio.wait_for(
                conn.publish(topics.host_state(self.host), encode(self._host_state(online=False)), retain=True),
                STOP_TIMEOUT_S,
            )
        except (BusError, TimeoutError) as exc:
            log.warning("%s: could not publish host state offline: %s", self.host, exc)

    async def _wait_for_db(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self._ping_db)
                log.info("%s: database answers again; resuming", self.host)
                return
            except Exception as exc:
                log.warning("%s: database still unavailable (%s); retry in %.1f s", self.host, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 30.0)

    def _ping_db(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _host_state(self, *, online: bool) -> Envelope:
        return Envelope(
            type=MessageType.STATE, node=self.host, session=self._session, seq=0, data=HostStateData(online=online)
        )

    # -- ingest ------------------------------------------------------------------------------------

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        # Runs on the event loop for every PUBLISH: keep it to an append.
        conn = self._conn
        assert conn is not None
        self.stats.received += 1
        now = time.monotonic()
        self._last_message = now
        pending = self._pending
        pending.append((conn, msg.mid, now, Incoming(msg.topic, bytes(msg.payload), datetime.now(UTC))))
        if len(pending) == 1:
            self._wakeup.set()
        elif len(pending) >= self.settings.BATCH_MAX:
            self._full.set()

    def _take(self) -> list[_Pending]:
        n = self.settings.BATCH_MAX
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    async def _flush_loop(self) -> None:
        wait_s = self.settings.BATCH_WAIT_MS / 1000
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and not (self._stopping.is_set() and not self._draining):
                delay = self._pending[0][2] + wait_s - time.monotonic()
                if len(self._pending) < self.settings.BATCH_MAX and delay > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
                    continue
                async with self._db_lock:
                    if self._db_failed.is_set():
                        self._pending.clear()  # not acknowledged: the broker redelivers them
                        break
                    if self._pending:
                        await self._flush_locked(self._take())

    async def _flush_locked(self, batch: list[_Pending]) -> None:
        items = [item for _, _, _, item in batch]
        started = time.monotonic()
        self._inflight = (len(batch), batch[0][2])
        try:
            outcome = await asyncio.to_thread(self._store, items)
        except Exception as exc:
            self.stats.db_errors += 1
            self.stats.failing_batches += 1
            self.stats.last_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            log.exception("%s: storing a batch of %d failed; not acknowledged, will be redelivered", self.host, len(batch))
            self._pending.clear()
            self._db_failed.set()
            return
        finally:
            self._inflight = (0, 0.0)
        # Committed: only now may the broker forget these messages, and the commands the batch
        # wrote to its boxes go out.
        for conn, mid, _, _ in batch:
            conn.ack(mid)
        if outcome.publish:
            self._publish_claimed(outcome.publish)
        self.stats.failing_batches = 0
        self.stats.last_commit = time.monotonic()
        self.stats.last_batch_ms = (self.stats.last_commit - started) * 1000
        self._count(outcome)
        if outcome.wake_relay:
            self._relay_wake.set()
        if outcome.stored:
            self._follower_wake.set()

    def _store(self, items: list[Incoming]) -> BatchOutcome:
        try:
            return store_batch(self.engine, items, self.registry)
        except Exception as exc:
            if is_database_fault(exc):
                raise
            # Not the database: a bug somewhere in the batch. One message at a time isolates it.
            log.exception("%s: a batch of %d failed for a reason that is not the database; storing one by one",
                          self.host, len(items))
            return store_one_by_one(self.engine, items, self.registry)

    def _count(self, o: BatchOutcome) -> None:
        st = self.stats
        st.batches += 1
        st.stored += o.stored
        st.duplicates += o.duplicates
        for reason, n in o.rejected.items():
            st.rejected[reason] = st.rejected.get(reason, 0) + n
        st.births += o.births
        st.stale_births += o.stale_births
        st.deaths += o.deaths
        st.stale_deaths += o.stale_deaths
        st.lost_seqs += o.lost_seqs
        st.conflicts += o.conflicts
        st.handler_failures += o.handler_failures
        st.acks += o.acks
        st.node_state_errors += o.node_state_errors

    # -- gaps --------------------------------------------------------------------------------------

    async def _gap_loop(self) -> None:
        interval = min(1.0, self.settings.GAP_GRACE_S / 4)
        while True:
            await asyncio.sleep(interval)
            if not self.connected:
                continue
            try:
                async with self._db_lock:
                    due = await asyncio.to_thread(check_gaps, self.engine, self.gap_policy, datetime.now(UTC))
            except Exception:
                log.exception("%s: gap check failed", self.host)
                continue
            for gap in due:
                self.stats.rebirths_sent += 1
                open_s = (datetime.now(UTC) - gap.missing_since).total_seconds()
                log.warning("node %r: seq %d missing for %.1f s; rebirth %d/%d sent (replay_from=%d)",
                            gap.node, gap.replay_from, open_s, gap.attempt, self.gap_policy.max_rebirths,
                            gap.replay_from)
            if due:
                self._relay_wake.set()

    # -- commands out ------------------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        poll = self.settings.DOWNLINK_POLL_S
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._relay_wake.wait(), poll)
            self._relay_wake.clear()
            conn = self._conn
            if conn is None or not conn.is_connected:
                continue
            try:
                more = await self._relay_once(conn, woken=woken)
            except Exception as exc:
                if not is_database_fault(exc):
                    log.exception("%s: relaying commands failed", self.host)
                else:
                    log.warning("%s: relay cannot reach the database: %s", self.host, exc)
                continue
            if more:
                self._relay_wake.set()

    async def _relay_once(self, conn: MqttConnection, *, woken: bool = False) -> bool:
        claimed = await asyncio.to_thread(self._claim, woken)
        if not claimed:
            return False
        await self._publish(conn, claimed)
        return len(claimed) == RELAY_BATCH

    def publish_committed(self, claimed: list[downlink.Claimed]) -> None:
        """Publish commands another thread of this process committed already marked sent
        (`downlink.LocalPublisher`; thread-safe)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._publish_claimed, claimed)

    def _publish_claimed(self, claimed: list[downlink.Claimed]) -> None:
        """Publish commands the last batch wrote (already marked sent), in the order written;
        without a connection now, their retry falls due in a second or two and the relay sends them."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        task = asyncio.ensure_future(self._publish(conn, claimed))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Future[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: recording refused commands failed: %s", self.host, exc)

    async def _publish(self, conn: MqttConnection, claimed: list[downlink.Claimed]) -> None:
        """Publish claimed commands (their rows say `sent` already): what the broker refuses, or
        what no longer fits the contract, is marked failed; what is lost on the way is retried."""
        futures: list[tuple[downlink.Claimed, asyncio.Future[Any]]] = []
        failed: list[tuple[int, str]] = []
        for c in claimed:
            if c.payload is None:
                failed.append((c.id, c.error or "cannot be encoded"))
                continue
            futures.append((c, conn.publish(c.topic, c.payload, retain=c.retain, expiry_s=c.expiry_s)))
        published = 0
        if futures:
            done = await asyncio.gather(*(asyncio.wait_for(f, 10) for _, f in futures), return_exceptions=True)
            for (c, _), result in zip(futures, done, strict=True):
                if isinstance(result, PublishRefused):
                    failed.append((c.id, f"the broker refused it: {result}"))
                elif not isinstance(result, BaseException):
                    published += 1
                # else not sent: its retry falls due and it is tried again
        if failed:
            def record() -> None:
                with write_transaction(self.engine) as db:
                    for row_id, why in failed:
                        downlink.mark_failed(db, row_id, why)

            await asyncio.to_thread(record)
        self.stats.commands_published += published
        self.stats.commands_refused += len(failed)

    def _claim(self, woken: bool) -> list[downlink.Claimed]:
        now = datetime.now(UTC)
        # Woken, there is most likely something to send. On a poll, a read first: an idle relay
        # must not take the write lock twice a second (SQLite has one).
        if not woken:
            with self.engine.connect() as db:
                if not downlink.anything_due(db, now):
                    return []
        # Expiries are a matter of hours: looking for them on every claim only cost round trips.
        expire = time.monotonic() >= self._next_expiry_check
        with write_transaction(self.engine) as db:
            downlink.without_waiting_for_disk(db)
            expired = downlink.expire(db, now) if expire else 0
            claimed = downlink.claim_due(db, now, RELAY_BATCH, timedelta(seconds=self._ingest_lag()))
        if expire:
            self._next_expiry_check = time.monotonic() + EXPIRY_CHECK_S
        if expired:
            self.stats.commands_expired += expired
            log.warning("%s: %d command(s) expired without an acknowledgement", self.host, expired)
        return claimed

    def _ingest_lag(self) -> float:
        """Seconds the oldest message received and not yet committed has waited (0 when caught up)."""
        inflight, inflight_since = self._inflight
        arrivals = [t for t in (inflight_since if inflight else None, self._pending[0][2] if self._pending else None) if t]
        return time.monotonic() - min(arrivals) if arrivals else 0.0

    def _start_pg_listener(self) -> threading.Event | None:
        """PostgreSQL: LISTEN for commands written by other processes (an API host), so they go out
        at once rather than at the next poll. Returns the event that stops it."""
        if self.engine.dialect.name != "postgresql":
            return None
        stop = threading.Event()
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

        def listen() -> None:
            import psycopg

            while not stop.is_set():
                try:
                    with psycopg.connect(url, autocommit=True, connect_timeout=5) as pg:
                        pg.execute(f"LISTEN {downlink.NOTIFY_CHANNEL}")
                        while not stop.is_set():
                            for _ in pg.notifies(timeout=1.0, stop_after=1):
                                self.wake_relay()
                except Exception as exc:  # the database is down: the relay's poll still works
                    log.debug("downlink listener: %s", exc)
                    stop.wait(2.0)

        threading.Thread(target=listen, name=f"{self.host}-listen", daemon=True).start()
        return stop

    # -- followers and engine tasks ----------------------------------------------------------------

    async def _follower_loop(self, engine_name: str, follower: Follower) -> None:
        call = Call(engine_name, follower.name, follower.fn, batched=True)
        types = frozenset(t.value for t in follower.types) if follower.types is not None else None
        backoff = JitteredBackoff(0.5, 30.0)
        while True:
            try:
                result = await asyncio.to_thread(followers.step, self.engine, call, types, follower.batch)
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("follower %s: %s; retrying in %.1f s", follower.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.stats.followed += result.processed
            self.stats.handler_failures += result.failed
            if result.more:
                continue
            self._follower_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._follower_wake.wait(), self.settings.FOLLOWER_POLL_S)

    async def _supervise(self, task: Task) -> None:
        from cloud.engine import TaskContext

        ctx = TaskContext(self.engine, self.settings, self.wake_relay)
        backoff = JitteredBackoff(1.0, 60.0)
        while True:
            started = time.monotonic()
            try:
                await task.run(ctx)
                log.warning("task %s returned; starting it again", task.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s failed; starting it again", task.name)
            if time.monotonic() - started > 60:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Is ingest making progress? `status` is ok, or why not (the /health endpoint's answer)."""
        now = time.monotonic()
        inflight, inflight_since = self._inflight
        backlog = len(self._pending) + inflight
        arrivals = [t for t in (inflight_since if inflight else None, self._pending[0][2] if self._pending else None) if t]
        oldest = now - min(arrivals) if arrivals else 0.0
        since_commit = None if self.stats.last_commit == 0 else now - self.stats.last_commit
        stall = self.settings.INGEST_STALL_S
        if not self.connected:
            status = "disconnected"
        elif self.stats.failing_batches >= 3:
            status = "failing"
        elif backlog and oldest > stall:
            status = "stalled"
        else:
            status = "ok"
        return {
            "host": self.host,
            "status": status,
            "connected": self.connected,
            "backlog": backlog,
            "oldest_pending_s": round(oldest, 3),
            "last_commit_age_s": None if since_commit is None else round(since_commit, 3),
            "failing_batches": self.stats.failing_batches,
            "last_error": self.stats.last_error,
        }


Waker = Callable[[], None]
_AsyncFn = Callable[[], Awaitable[None]]
