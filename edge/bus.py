"""The box's bus client: connection lifecycle, host tracking, and draining the outbox.

One `MqttConnection` per network connection; this module owns what survives across them: the
session counter (persisted in the outbox before each attempt, so the will carries it), the
reconnect backoff, which cloud hosts are online, and the sender that turns outbox rows into
envelopes in seq order. A row leaves the pending set only on its PUBACK; after any reconnect the
sender starts again from the lowest pending seq, and the cloud's msg_id ledger absorbs the repeats.

Commands (`dn/{node}/{type}`) are handled at most once per `msg_id`, across restarts: the handler
runs, then its ack (`corr` = the command's msg_id) and the record "handled" commit together in the
outbox, and only then does the broker get its PUBACK. A redelivery, or a retained command handed
over again on every connect, is found in the outbox's window and neither run nor acked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import paho.mqtt.client as paho

from broker import topics
from broker.client import (
    MOSQUITTO_2_0_KEEPALIVE_SLACK_S,
    BrokerAddress,
    BrokerCertificateError,
    BusAuthError,
    BusError,
    BusNotConnected,
    JitteredBackoff,
    MqttConnection,
    PublishRefused,
    Will,
    keepalive_for_deadline,
)
from broker.envelope import ContractError, Envelope, MessageType, decode, encode
from broker.payloads import AckData, BirthData, DeathData, DeviceInfo, HostStateData, Payload, RebirthData
from edge.outbox import Outbox, OutboxFull, Row

__all__ = ["BusClient", "BusStats", "CommandHandler", "CommandRefused", "one_line", "software_version"]

log = logging.getLogger(__name__)

CommandHandler = Callable[[Envelope], Awaitable[str | None]]
"""Handles one command; returns the ack's detail (or None). Raising answers `ok=false`."""

_ACK_DETAIL_MAX = 500
COMMAND_TIMEOUT_S = 30.0
"""A handler still running after this is answered `ok=false`: a command must not hold its PUBACK
(and the broker's in-flight slot) for ever."""


class CommandRefused(Exception):
    """Raised by a command handler to answer `ok=false` with this reason (no traceback logged)."""


def one_line(text: str, limit: int = _ACK_DETAIL_MAX) -> str:
    """`text` as one line of at most `limit` characters (what an ack's detail holds)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

_READ_CHUNK = 1_000
"""Rows fetched from SQLite per read; the in-flight window limits what is on the wire."""
_STABLE_S = 10.0
"""A connection that lasted this long resets the backoff; a flapping one keeps backing off."""
_STOP_GRACE_S = 3.0


def _certificate_hint(exc: BrokerCertificateError) -> str:
    if "mismatch" in exc.reason:  # "Hostname mismatch, …" or "IP address mismatch, …"
        return "check broker.url: its host must be a name the broker's certificate holds"
    return "check broker.ca_file: it must hold the CA that signed the broker's certificate"


def software_version() -> str:
    try:
        return metadata.version("omnishelf")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of the bus client's counters (since the process started)."""

    published: int
    """Outbox messages handed to the broker (resends and replays included)."""
    acked: int
    """PUBACKs received for outbox messages."""
    refused: int
    """Messages the broker refused (e.g. 135 Not authorized); kept, marked refused."""
    rejected_low_priority: int
    """Low-priority messages refused because the outbox was at its bound."""
    reconnects: int
    auth_failures: int
    bad_commands: int
    bad_host_states: int
    unhandled_commands: int
    """Commands of a type this box has no handler for (acked ok=false)."""
    commands: int
    """Commands handled and acknowledged (either way)."""
    failed_commands: int
    """Commands acked ok=false (their handler refused, failed or timed out, or none exists)."""
    duplicate_commands: int
    """Commands seen before (redelivered, or retained and handed over again): not run, not acked."""
    replayed: int
    connect_failures: int
    refused_because: str | None = None
    """Why the broker last refused this box's login (revoked, retired, wrong password), until a login
    succeeds: the box waits `auth_failure_s` between tries and shows this on its `/status`."""
    last_offline_s: float | None = None
    """How long the box was last without a connection: from losing its previous connection to the
    birth of the current one (None before the first reconnect). A credential rotation shows here."""


@dataclass(slots=True)
class _Received:
    mid: int
    qos: int
    done: bool = False


class _Pubacks:
    """PUBACKs of one connection, sent in the order the PUBLISHes arrived (MQTT 5 §4.6), each only
    once its message is safe (a command: handled and its ack committed)."""

    def __init__(self) -> None:
        self.conn: MqttConnection | None = None
        self._queue: deque[_Received] = deque()

    def receive(self, msg: paho.MQTTMessage) -> _Received:
        entry = _Received(msg.mid, msg.qos)
        self._queue.append(entry)
        return entry

    def done(self, entry: _Received) -> None:
        entry.done = True
        while self._queue and self._queue[0].done:
            head = self._queue.popleft()
            if head.qos > 0 and self.conn is not None:
                self.conn.ack(head.mid, head.qos)  # a no-op once the connection is gone


class _Link:
    """The state of one established connection (its sender, replay and in-flight window)."""

    def __init__(self, conn: MqttConnection, session: int, window: int) -> None:
        self.conn = conn
        self.session = session
        self.window = window
        self.inflight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.started = time.monotonic()
        self.replay: asyncio.Task[None] | None = None
        self.born = False

    async def slot(self) -> None:
        while self.inflight >= self.window:
            self.room.clear()
            await self.room.wait()
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        self.room.set()
        if self.inflight == 0:
            self.idle.set()


class BusClient:
    """Keeps one node connected and its outbox flowing. Run with `run()`, end with `stop()`."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        node: str,
        store: str,
        address: BrokerAddress,
        password: str,
        config_hash: str,
        devices: Sequence[DeviceInfo] | Callable[[], Sequence[DeviceInfo]] = (),
        birth_fields: Callable[[], Mapping[str, Any]] = dict,
        username: str | None = None,
        keepalive: int = 30,
        keepalive_check_slack_s: float = MOSQUITTO_2_0_KEEPALIVE_SLACK_S,
        session_expiry: int = 7 * 24 * 3600,
        backoff: JitteredBackoff | None = None,
        auth_failure_s: float = 300.0,
        window: int = 200,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.outbox = outbox
        self.node = topics.check_id(node)
        self.store = store
        self.address = address
        self.username = username or node
        self._password = password
        self.config_hash = config_hash
        fixed = tuple(devices) if not callable(devices) else ()
        self.device_states: Callable[[], Sequence[DeviceInfo]] = devices if callable(devices) else (lambda: fixed)
        """What the birth reports about the devices (asked at each birth)."""
        self.birth_fields = birth_fields
        """More members of the birth, from the box's components (asked at each birth)."""
        self.keepalive = keepalive
        # The broker's sweep makes wills late; ask for a shorter keep alive so that the cloud still
        # learns of a silent box within 1.5 x the configured `keepalive`.
        self.mqtt_keepalive = keepalive_for_deadline(1.5 * keepalive, keepalive_check_slack_s)
        self.session_expiry = session_expiry
        self.backoff = backoff or JitteredBackoff()
        self.auth_failure_s = auth_failure_s
        self.window = window
        self.command_timeout_s = command_timeout_s
        self.software_version = software_version()

        self.connected = asyncio.Event()
        """Set while connected and born (birth acknowledged)."""
        self.cloud_available = asyncio.Event()
        """Set while at least one cloud host's retained state says online."""
        self._hosts: dict[str, bool] = {}
        self._handlers: dict[MessageType, CommandHandler] = {}
        self._count: Counter[str] = Counter()
        self._link: _Link | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acks: list[int] = []
        self._acks_due = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ever_connected = False
        self._in_progress: set[uuid.UUID] = set()
        self._refused_because: str | None = None
        # Credential rotation (see `offer_password`).
        self._offered: str | None = None
        self._previous: str | None = None
        self._on_adopted: Callable[[str], None] | None = None
        self._flips = 0
        self._lost_at: float | None = None
        self._last_offline_s: float | None = None

    # -- public ------------------------------------------------------------------------------------

    async def publish(
        self, type: MessageType | str, data: Payload | Mapping[str, Any], corr: uuid.UUID | None = None
    ) -> Row:
        """Commit a message to the outbox and wake the sender; raises `OutboxFull`."""
        row = await self.outbox.put(type, data, corr)
        self._wake.set()
        return row

    def on_command(self, type: MessageType | str, handler: CommandHandler) -> None:
        """Run `handler(envelope)` once for each new `dn` command of this type (on the event loop)
        and acknowledge it with what it returns (or raises). `rebirth` is the bus's own."""
        kind = MessageType(type)
        if kind not in topics.DOWN or kind == MessageType.REBIRTH:
            names = ", ".join(sorted(k.value for k in topics.DOWN - {MessageType.REBIRTH}))
            raise ValueError(f"cannot handle {kind.value!r} commands: expected one of {names}")
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind.value!r} commands is already registered")
        self._handlers[kind] = handler

    def offer_password(self, password: str, adopted: Callable[[str], None] | None = None) -> None:
        """A new password the cloud is about to give this node on the broker (credential rotation).
        The current connection is kept; when a login is refused the other password is tried at once
        (at most twice in a row), so the box follows the broker's switch within one reconnect. Once a
        login succeeds with the new one, `adopted(password)` is called (to make it the stored one)."""
        self._offered = password
        self._on_adopted = adopted

    def _flip_password(self) -> bool:
        """After a refused login: switch between the current and the offered password (True), or
        not (False: there is nothing else to try, or both were just refused)."""
        if self._offered is None or self._flips >= 2:
            return False
        self._flips += 1
        if self._password != self._offered:
            self._previous, self._password = self._password, self._offered
        elif self._previous is not None:
            self._password = self._previous
        else:
            return False
        return True

    @property
    def handled_types(self) -> frozenset[MessageType]:
        return frozenset(self._handlers) | {MessageType.REBIRTH}

    @property
    def connected_since(self) -> float | None:
        """`time.monotonic()` of the current connection's start, None while disconnected."""
        link = self._link
        return link.started if link is not None and link.born else None

    @property
    def cloud_online(self) -> bool:
        return self.cloud_available.is_set()

    @property
    def session(self) -> int:
        return self.outbox.session

    @property
    def stats(self) -> BusStats:
        c = self._count
        return BusStats(
            published=c["published"],
            acked=c["acked"],
            refused=c["refused"],
            rejected_low_priority=self.outbox.rejected_low_priority,
            reconnects=c["reconnects"],
            auth_failures=c["auth_failures"],
            bad_commands=c["bad_commands"],
            bad_host_states=c["bad_host_states"],
            unhandled_commands=c["unhandled_commands"],
            commands=c["commands"],
            failed_commands=c["failed_commands"],
            duplicate_commands=c["duplicate_commands"],
            replayed=c["replayed"],
            connect_failures=c["connect_failures"],
            refused_because=self._refused_because,
            last_offline_s=self._last_offline_s,
        )

    def abort_connection(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a network failure would (the broker then
        publishes the will). For fault-injection tests and drills; the client reconnects."""
        if self._link is not None:
            self._link.conn.abort()

    async def stop(self) -> None:
        """Ask `run()` to finish: publish death, wait for in-flight PUBACKs briefly, disconnect."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, reconnect and send until `stop()`."""
        acker = asyncio.create_task(self._ack_loop(), name="bus-acks")
        try:
            while not self._stopping.is_set():
                try:
                    delay = await self._connect_once()
                except Exception:
                    # E.g. the outbox could not persist the session (disk full): keep trying, never die.
                    delay = self.backoff.next_delay()
                    log.exception("%s: connection attempt failed; retrying in %.1f s", self.node, delay)
                if delay > 0 and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            await self._flush_acks()
            # Refusals being recorded and command handlers get a moment to finish before we give up.
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE_S)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection ----------------------------------------------------------------------------

    def _envelope(self, kind: MessageType, data: Payload, session: int) -> bytes:
        return encode(Envelope(type=kind, node=self.node, session=session, seq=self.outbox.last_seq, data=data))

    async def _connect_once(self) -> float:
        """One connection from attempt to loss; returns how long to wait before the next attempt."""
        session = await self.outbox.next_session()
        will = Will(topics.death(self.node), self._envelope(MessageType.DEATH, DeathData(), session))
        # Bound to this connection: PUBLISHes queued in the broker's session can arrive in the same
        # read as the CONNACK, before this coroutine has seen the connection come up.
        pubacks = _Pubacks()
        conn = MqttConnection(
            self.address,
            self.username,
            self._password,
            clean_start=False,
            session_expiry=self.session_expiry,
            keepalive=self.mqtt_keepalive,
            will=will,
            # Unbounded in paho: the link's window bounds what is in flight, and paho's own bound
            # walks every message in flight on each PUBACK (~8 % of a box's time in a burst).
            max_inflight=0,
            manual_ack=True,
            on_message=lambda msg: self._on_message(pubacks, msg),
        )
        pubacks.conn = conn
        self._hosts.clear()
        self._update_online()
        link: _Link | None = None
        try:
            await conn.connect()
            link = _Link(conn, session, self.window)
            self._link = link
            await conn.subscribe([topics.node_dn_filter(self.node), topics.host_state_filter()])
            await self._publish_birth(conn, session)
            link.born = True
            if self._lost_at is not None:
                self._last_offline_s, self._lost_at = time.monotonic() - self._lost_at, None
            self._refused_because = None
            self._flips = 0
            if self._offered is not None and self._password == self._offered:
                adopted, self._on_adopted, self._offered, self._previous = self._on_adopted, None, None, None
                log.info("%s: logged in with the rotated password", self.node)
                if adopted is not None:
                    adopted(self._password)
            if self._ever_connected:
                self._count["reconnects"] += 1
            self._ever_connected = True
            log.info("%s: connected to %s, session %d", self.node, self.address, session)
            self.connected.set()
            return await self._serve(link)
        except BusAuthError as exc:
            if self._flip_password():
                log.info("%s: login refused (%s); trying the %s password", self.node, exc,
                         "new" if self._password == self._offered else "previous")
                await conn.disconnect(timeout=1.0)
                return 0.0
            self._count["auth_failures"] += 1
            self._refused_because = (
                f"{exc} (credential revoked, retired or replaced: the box tries again every "
                f"{self.auth_failure_s:.0f} s; re-claim or reconfigure it)"
            )
            log.error(
                "%s: %s; retrying in %.0f s (a refusal does not heal by itself: check the node's password and ACL)",
                self.node,
                exc,
                self.auth_failure_s,
            )
            await conn.disconnect(timeout=1.0)
            return self.auth_failure_s
        except BusNotConnected as exc:
            self._count["connect_failures"] += 1
            delay = self.backoff.next_delay()
            if isinstance(exc, BrokerCertificateError):
                # Not a network hiccup: it lasts until the box's config or the broker's certificate
                # is fixed, so say which setting to look at.
                log.error("%s: %s; %s; reconnecting in %.1f s", self.node, exc, _certificate_hint(exc), delay)
            else:
                log.warning("%s: %s; reconnecting in %.1f s", self.node, exc, delay)
            conn.abort()
            return delay
        except BaseException:
            conn.abort()
            raise
        finally:
            if link is not None and link.born:
                self._lost_at = time.monotonic()
            self.connected.clear()
            self._link = None
            if link is not None and link.replay is not None:
                link.replay.cancel()

    async def _publish_birth(self, conn: MqttConnection, session: int) -> None:
        stats = await self.outbox.stats()
        birth = BirthData(
            software_version=self.software_version,
            config_hash=self.config_hash,
            store=self.store,
            devices=tuple(self.device_states()),
            last_seq=stats.last_seq,
            pending=stats.pending,
            oldest_seq=stats.oldest_seq,
            **self.birth_fields(),
        )
        try:
            await conn.publish(topics.birth(self.node), self._envelope(MessageType.BIRTH, birth, session))
        except PublishRefused as exc:
            # Sending data would only get every pending row refused too: keep them and wait.
            raise BusAuthError(f"birth refused: {exc}") from None

    async def _serve(self, link: _Link) -> float:
        sender = asyncio.create_task(self._send_loop(link), name="bus-sender")
        stop = asyncio.create_task(self._stopping.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {link.conn.closed, sender, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            sender.cancel()
            await asyncio.gather(sender, stop, return_exceptions=True)
        if self._stopping.is_set() and not link.conn.closed.done():
            await self._goodbye(link)
            return 0.0
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            log.error("%s: sender failed: %r", self.node, sender.exception())
            link.conn.abort()
        why = link.conn.closed.result() if link.conn.closed.done() else "sender stopped"
        if time.monotonic() - link.started >= _STABLE_S:
            self.backoff.reset()
        if link.conn.dropped_by_admin and self._offered is not None and self._password != self._offered:
            # Dropped for a credential change while the cloud's next password is here: the
            # rotation switching the broker over. The old password is refused from now on, so log
            # in with the new one at once; the backoff and a login bound to fail would only make
            # the box's gap longer (and the broker publishes no will for this drop).
            self._flip_password()
            log.info("%s: connection ended for a credential change (%s); logging in with the new password",
                     self.node, why)
            return 0.0
        delay = self.backoff.next_delay()
        log.warning("%s: connection lost (%s); reconnecting in %.1f s", self.node, why, delay)
        return delay

    async def _goodbye(self, link: _Link) -> None:
        """Clean stop: let PUBACKs of what is in flight arrive, publish death, disconnect."""
        if link.replay is not None:
            link.replay.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.idle.wait(), _STOP_GRACE_S)
        try:
            fut = link.conn.publish(
                topics.death(self.node), self._envelope(MessageType.DEATH, DeathData(), link.session)
            )
            await asyncio.wait_for(fut, _STOP_GRACE_S)
        except (BusError, TimeoutError) as exc:
            log.warning("%s: death not acknowledged: %s", self.node, exc)
        await self._flush_acks()
        await link.conn.disconnect()
        log.info("%s: disconnected cleanly (session %d)", self.node, link.session)

    # -- sending -----------------------------------------------------------------------------------

    async def _send_loop(self, link: _Link) -> None:
        # Acks of the previous connection first, so rows already delivered are not sent again.
        await self._flush_acks()
        cursor = 0
        buffer: deque[Row] = deque()
        self.outbox.forget_fresh()
        while True:
            await self.cloud_available.wait()
            if not buffer:
                self._wake.clear()
                # What was just committed comes from memory; reading it back would wait behind the
                # next put's commit on the outbox's one thread.
                rows = self.outbox.fresh_after(cursor, _READ_CHUNK)
                if rows is None:
                    rows = await self.outbox.pending_after(cursor, _READ_CHUNK)
                if not rows:
                    await self._wake.wait()
                    continue
                buffer.extend(rows)
                cursor = rows[-1].seq
            await link.slot()
            if not self.cloud_available.is_set():
                link.release()
                continue
            row = buffer.popleft()
            self._send(link, row, historical=row.session < link.session, replay=False)

    def _send(self, link: _Link, row: Row, *, historical: bool, replay: bool) -> None:
        """Publish one row (a window slot is already taken); its PUBACK is handled in a callback."""
        try:
            payload = encode(
                Envelope(
                    type=MessageType(row.type),
                    msg_id=row.msg_id,
                    node=self.node,
                    session=row.session,
                    seq=row.seq,
                    ts=row.ts,
                    clock_synced=row.clock_synced,
                    historical=historical,
                    corr=row.corr,
                    data=row.payload(),
                )
            )
        except (ContractError, ValueError) as exc:
            # Validated when stored, so only a schema change between versions gets here.
            link.release()
            log.error("%s: seq %d cannot be encoded any more, marking it refused: %s", self.node, row.seq, exc)
            self._spawn(self.outbox.mark_refused(row.seq, f"cannot encode: {exc}"))
            return
        fut = link.conn.publish(topics.up(self.node, row.type), payload)
        self._count["published"] += 1
        if replay:
            self._count["replayed"] += 1
        fut.add_done_callback(lambda f: self._on_puback(link, row.seq, replay, f))

    def _on_puback(self, link: _Link, seq: int, replay: bool, fut: asyncio.Future[Any]) -> None:
        link.release()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._count["acked"] += 1
            if not replay:
                self._acks.append(seq)
                self._acks_due.set()
        elif isinstance(exc, PublishRefused):
            self._count["refused"] += 1
            log.error("%s: seq %d kept as refused: %s", self.node, seq, exc)
            if not replay:
                self._spawn(self.outbox.mark_refused(seq, str(exc)))
        # BusNotConnected: the row stays pending and goes again after the reconnect.

    async def _ack_loop(self) -> None:
        while True:
            await self._acks_due.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        self._acks_due.clear()
        while self._acks:
            seqs, self._acks = self._acks, []
            await self.outbox.mark_acked(seqs)

    # -- incoming ----------------------------------------------------------------------------------

    def _on_message(self, pubacks: _Pubacks, msg: paho.MQTTMessage) -> None:
        """Runs inside paho's read callback: decide, count, and hand slow work to tasks."""
        entry = pubacks.receive(msg)
        try:
            topic = topics.parse(msg.topic)
        except topics.TopicError as exc:
            self._count["bad_commands"] += 1
            log.warning("%s: message on an unexpected topic: %s", self.node, exc)
            pubacks.done(entry)
            return
        if topic.direction == "host":
            self._on_host_state(topic.node, msg)
            pubacks.done(entry)
            return
        if topic.direction != "dn" or topic.node != self.node:
            self._count["bad_commands"] += 1
            log.warning("%s: ignoring a message on %r: not addressed to this node", self.node, msg.topic)
            pubacks.done(entry)
            return
        try:
            env = decode(bytes(msg.payload), msg.topic)
        except ContractError as exc:
            # Acknowledged all the same: a message that can never be valid must not come back for ever.
            self._count["bad_commands"] += 1
            log.warning("%s: bad command on %s rejected (%s)", self.node, msg.topic, exc)
            pubacks.done(entry)
            return
        self._spawn(self._command(env, pubacks, entry))

    async def _command(self, env: Envelope, pubacks: _Pubacks, entry: _Received) -> None:
        """Handle one command at most once, acknowledge it durably, then release its PUBACK."""
        try:
            if env.msg_id in self._in_progress:
                self._duplicate(env, "already being handled")
                return
            self._in_progress.add(env.msg_id)
            try:
                if await self.outbox.command_seen(env.msg_id):
                    self._duplicate(env, "handled before")
                    return
                ok, detail = await self._run_command(env)
                self._count["commands"] += 1
                if not ok:
                    self._count["failed_commands"] += 1
                try:
                    await self.outbox.acknowledge(env, AckData(ok=ok, detail=detail))
                except OutboxFull as exc:
                    # Not recorded either: the cloud's retry will find the command new again.
                    log.error("%s: cannot store the ack of %s command %s: %s", self.node, env.type, env.msg_id, exc)
                    return
                self._wake.set()
                log.info("%s: %s command %s: %s%s", self.node, env.type, env.msg_id, "ok" if ok else "refused",
                         f" ({detail})" if detail else "")
            finally:
                self._in_progress.discard(env.msg_id)
        except Exception:
            log.exception("%s: %s command %s could not be handled", self.node, env.type, env.msg_id)
        finally:
            pubacks.done(entry)

    def _duplicate(self, env: Envelope, why: str) -> None:
        self._count["duplicate_commands"] += 1
        log.debug("%s: %s command %s %s: not run again", self.node, env.type, env.msg_id, why)

    async def _run_command(self, env: Envelope) -> tuple[bool, str | None]:
        handler = self._rebirth_command if env.type == MessageType.REBIRTH else self._handlers.get(env.type)
        if handler is None:
            self._count["unhandled_commands"] += 1
            return False, f"command type {env.type.value} is not supported by this box (software {self.software_version})"
        try:
            detail = await asyncio.wait_for(handler(env), self.command_timeout_s)
        except CommandRefused as exc:
            return False, one_line(str(exc) or "refused")
        except TimeoutError:
            return False, f"the {env.type.value} handler did not finish within {self.command_timeout_s:g} s"
        except Exception as exc:
            log.exception("%s: handler for %s command %s failed", self.node, env.type, env.msg_id)
            return False, one_line(f"{type(exc).__name__}: {exc}")
        return True, one_line(detail) if detail else None

    def _on_host_state(self, host: str, msg: paho.MQTTMessage) -> None:
        if not msg.payload:  # a cleared retained state: the host was decommissioned
            self._hosts.pop(host, None)
        else:
            try:
                env = decode(bytes(msg.payload), msg.topic)
            except ContractError as exc:
                self._count["bad_host_states"] += 1
                log.warning("%s: bad host state on %s ignored (%s)", self.node, msg.topic, exc)
                return
            assert isinstance(env.data, HostStateData)
            came_online = env.data.online and not self._hosts.get(host, False)
            self._hosts[host] = env.data.online
            link = self._link
            if came_online and link is not None and link.born:
                # As in Sparkplug: a cloud host that (re)starts may have missed our birth, and it
                # cannot ask a node it has never heard of; a birth is idempotent for the others.
                self._rebirth(RebirthData(reason=f"cloud host {host} came online"))
        self._update_online()

    def _update_online(self) -> None:
        online = any(self._hosts.values())
        if online and not self.cloud_available.is_set():
            log.info(
                "%s: cloud online (%s); sending the outbox",
                self.node,
                ", ".join(h for h, up in self._hosts.items() if up),
            )
            self.cloud_available.set()
        elif not online and self.cloud_available.is_set():
            log.info("%s: no cloud host online; holding messages on disk", self.node)
            self.cloud_available.clear()

    def _rebirth(self, data: RebirthData) -> None:
        """A rebirth of our own making (a cloud host came online): birth again, nothing to ack."""
        link = self._link
        if link is None:
            return  # the birth of the next connection answers it
        log.info("%s: rebirth (%s)", self.node, data.reason)
        if link.replay is not None:
            link.replay.cancel()
        link.replay = asyncio.create_task(self._replay(link, None, birth=True), name="bus-replay")

    async def _rebirth_command(self, env: Envelope) -> str:
        """The cloud's `rebirth`: the birth goes out before the ack; a replay follows in the background."""
        assert isinstance(env.data, RebirthData)
        data = env.data
        link = self._link
        if link is None:
            return "not connected: the next connection's birth answers it"
        if not link.born:
            return "the birth of this connection, being sent, answers it"
        log.info("%s: rebirth requested (%s), replay from %s", self.node, data.reason, data.replay_from)
        if link.replay is not None:
            link.replay.cancel()
        await self._publish_birth(link.conn, link.session)
        if data.replay_from is None:
            return f"birth sent (session {link.session})"
        link.replay = asyncio.create_task(self._replay(link, data.replay_from, birth=False), name="bus-replay")
        return f"birth sent (session {link.session}); replaying from seq {data.replay_from}"

    async def _replay(self, link: _Link, replay_from: int | None, *, birth: bool) -> None:
        try:
            if birth:
                await self._publish_birth(link.conn, link.session)
            cursor = replay_from
            while cursor is not None:
                rows = await self.outbox.replayable(cursor, _READ_CHUNK)
                for row in rows:
                    await self.cloud_available.wait()
                    await link.slot()
                    self._send(link, row, historical=True, replay=True)
                cursor = rows[-1].seq + 1 if rows else None
        except BusError as exc:
            log.warning("%s: rebirth interrupted: %s", self.node, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
