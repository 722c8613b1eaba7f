"""Commands in: each msg_id run at most once (across restarts), acknowledged durably with `corr`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import topics
from broker.envelope import Envelope, MessageType
from broker.payloads import AckData, CommandData
from edge.bus import BusClient, CommandRefused, software_version
from edge.outbox import Outbox, OutboxFull
from edge.outbox_db import CommandRecord, NewRow, OutboxDb
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, finish, make_bus, start, until


def ack(env: Envelope) -> AckData:
    assert isinstance(env.data, AckData)
    return env.data


async def running(broker: Broker, outbox_path: Path, password: str, handlers: dict[MessageType, Any]) -> tuple[
    Outbox, BusClient, asyncio.Task[None]
]:
    outbox = await Outbox.open(outbox_path)
    bus = await make_bus(broker, outbox, password)
    for kind, handler in handlers.items():
        bus.on_command(kind, handler)
    task = await start(bus)
    await asyncio.wait_for(bus.connected.wait(), 10)
    return outbox, bus, task


def recorder(seen: list[str], answer: Callable[[Envelope], Awaitable[str | None]] | None = None) -> Any:
    async def handler(env: Envelope) -> str | None:
        assert isinstance(env.data, CommandData)
        seen.append(env.data.name)
        return await answer(env) if answer else f"did {env.data.name}"

    return handler


def test_a_command_is_run_once_and_acked_once_even_when_redelivered(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        seen: list[str] = []
        outbox, bus, task = await running(broker, outbox_path, password, {MessageType.COMMAND: recorder(seen)})
        first = await cloud.send(NODE, MessageType.COMMAND, {"name": "open-drawer"})
        await until(lambda: bool(cloud.acks_for(first)), what="the ack")
        [a] = cloud.acks_for(first)
        assert (ack(a).ok, ack(a).detail) == (True, "did open-drawer")
        await cloud.resend(first)  # the cloud's retry, or a QoS 1 redelivery
        marker = await cloud.send(NODE, MessageType.COMMAND, {"name": "marker"})
        await until(lambda: bool(cloud.acks_for(marker)), what="the marker's ack")
        assert seen == ["open-drawer", "marker"] and len(cloud.acks_for(first)) == 1
        assert bus.stats.duplicate_commands == 1 and bus.stats.commands == 2
        await finish(bus, task, outbox.close)

        # After a restart, the window (in the outbox file) still knows it.
        outbox, bus, task = await running(broker, outbox_path, password, {MessageType.COMMAND: recorder(seen)})
        await cloud.resend(first)
        marker2 = await cloud.send(NODE, MessageType.COMMAND, {"name": "marker2"})
        await until(lambda: bool(cloud.acks_for(marker2)), what="the second marker's ack")
        assert seen == ["open-drawer", "marker", "marker2"] and len(cloud.acks_for(first)) == 1
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_failures_and_unknown_types_are_acked_not_ok_with_one_line(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def refuse(env: Envelope) -> str:
        raise CommandRefused("the drawer is\nlocked")

    async def crash(env: Envelope) -> str:
        raise ValueError("no such\n  drawer\nTraceback: not for the ack")

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox, bus, task = await running(broker, outbox_path, password, {
            MessageType.COMMAND: refuse, MessageType.ASSIGN: crash,
        })
        refused = await cloud.send(NODE, MessageType.COMMAND, {"name": "x"})
        crashed = await cloud.send(NODE, MessageType.ASSIGN, {"order_id": "o1", "lines": [{"sku": "A", "qty": 1}],
                                                               "fulfilment": "pickup"})
        unknown = await cloud.send(NODE, MessageType.VERDICT, {
            "scan_id": "01937a4e-0000-7000-8000-000000000001", "code": "c", "verdict": "malformed",
            "rule": "parse_error", "decided_at": "2026-11-24T09:30:00+08:00"})
        await until(lambda: all(cloud.acks_for(c) for c in (refused, crashed, unknown)), what="three acks")
        details = [(ack(cloud.acks_for(c)[0]).ok, ack(cloud.acks_for(c)[0]).detail) for c in (refused, crashed, unknown)]
        assert details == [
            (False, "the drawer is locked"),
            (False, "ValueError: no such drawer Traceback: not for the ack"),
            (False, f"command type verdict is not supported by this box (software {software_version()})"),
        ]
        assert bus.stats.failed_commands == 3 and bus.stats.unhandled_commands == 1
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_a_retained_command_seen_again_on_reconnect_is_not_run_again(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        seen: list[int] = []

        async def catalog(env: Envelope) -> str:
            seen.append(env.data.version)  # type: ignore[attr-defined]
            return "accepted"

        outbox, bus, task = await running(broker, outbox_path, password, {MessageType.CATALOG: catalog,
                                                                         MessageType.COMMAND: recorder([])})
        retained = await cloud.send(NODE, MessageType.CATALOG, {"version": 3}, retain=True)
        await until(lambda: bool(cloud.acks_for(retained)), what="the catalog ack")
        bus.abort_connection()
        await until(lambda: bus.stats.reconnects == 1 and bus.connected.is_set(), what="reconnected")
        # The broker hands the retained command over again on subscribe; it must not run again.
        marker = await cloud.send(NODE, MessageType.COMMAND, {"name": "marker"})
        await until(lambda: bool(cloud.acks_for(marker)), what="the marker's ack")
        await until(lambda: bus.stats.duplicate_commands == 1, what="the retained command recognised")
        assert seen == [3] and len(cloud.acks_for(retained)) == 1
        assert cloud.conn is not None
        await cloud.conn.publish(topics.dn(NODE, "catalog"), b"", retain=True)
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_rebirth_is_acked_after_the_birth_went_out(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox, bus, task = await running(broker, outbox_path, password, {})
        await until(lambda: len(cloud.of(MessageType.BIRTH)) == 1, what="first birth")
        rebirth = await cloud.send(NODE, MessageType.REBIRTH, {"reason": "cloud lost track"})
        await until(lambda: bool(cloud.acks_for(rebirth)), what="the rebirth's ack")
        kinds = [e.type for e in cloud.received if e.type in (MessageType.BIRTH, MessageType.ACK)]
        assert kinds == [MessageType.BIRTH, MessageType.BIRTH, MessageType.ACK]
        assert ack(cloud.acks_for(rebirth)[0]).detail == f"birth sent (session {outbox.session})"
        await cloud.resend(rebirth)
        marker = await cloud.send(NODE, MessageType.REBIRTH, {"reason": "marker"})
        await until(lambda: bool(cloud.acks_for(marker)), what="the marker's ack")
        assert len(cloud.of(MessageType.BIRTH)) == 3  # the duplicate made no birth
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_ack_and_command_record_commit_together_or_not_at_all(outbox_path: Path) -> None:
    command = Envelope(type=MessageType.COMMAND, node=NODE, session=1, seq=0, data=CommandData(name="x"))

    async def main() -> None:
        outbox = await Outbox.open(outbox_path)
        assert not await outbox.command_seen(command.msg_id)
        row = await outbox.acknowledge(command, AckData(ok=True))
        assert row.corr == command.msg_id and row.type == "ack"
        assert await outbox.command_seen(command.msg_id)
        await outbox.close()
        # A full disk: the ack is refused, and the command is not recorded as handled either.
        full = await Outbox.open(outbox_path.with_name("full.db"), max_bytes=64 * 1024)
        for size in (900, 100, 1):  # fill the last pages too
            with pytest.raises(OutboxFull):
                for _ in range(2000):
                    await full.put("scan", {"code": "x" * size, "station": "s"})
        # Down to what an ack row needs: with acks of other commands (the smallest scan row, with its
        # optional members, is larger than an ack).
        with pytest.raises(OutboxFull):
            for _ in range(2000):
                filler = Envelope(type=MessageType.COMMAND, node=NODE, session=1, seq=0, data=CommandData(name="f"))
                await full.acknowledge(filler, AckData(ok=True))
        other = Envelope(type=MessageType.COMMAND, node=NODE, session=1, seq=0, data=CommandData(name="y"))
        with pytest.raises(OutboxFull):
            await full.acknowledge(other, AckData(ok=True))
        assert not await full.command_seen(other.msg_id)
        await full.close()

    arun(main())


def test_the_window_keeps_the_newest_and_the_latest_of_each_type(outbox_path: Path) -> None:
    db = OutboxDb(outbox_path, command_window=100, command_window_s=3600)


    def acked(kind: str) -> uuid.UUID:
        mid = uuid.uuid4()
        db.insert([NewRow(uuid.uuid4(), "ack", datetime.now(UTC), True, mid, "{}", CommandRecord(mid, kind))])
        return mid

    old_catalog = acked("catalog")
    commands = [acked("command") for _ in range(150)]
    db.prune_commands()
    assert db.command_seen(old_catalog)  # older than 100 others, but the newest catalog: maybe retained
    assert not db.command_seen(commands[0]) and db.command_seen(commands[-100])
    assert db.stats().commands_remembered == 101
    db.prune_commands(now=10**10)  # everything is older than the window's age now
    assert db.command_seen(old_catalog) and db.command_seen(commands[-1]) and db.stats().commands_remembered == 2
    db.close()
