"""The bus client against a real Mosquitto, with a cloud-side listener."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.envelope import MessageType
from edge.outbox import Outbox
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, finish, make_bus, start, until


def scan(i: int) -> dict[str, str]:
    return {"code": f"0109506000134352{i:06d}", "station": "s1"}


def test_birth_first_then_hold_back_until_cloud_online_then_drain_in_order(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, password)
        for i in range(5):
            await bus.publish("scan", scan(i))
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        await until(lambda: len(cloud.received) >= 1, what="birth")
        birth = cloud.received[0]
        assert birth.type == MessageType.BIRTH
        assert birth.session == outbox.session == 1
        assert birth.data.last_seq == 5 and birth.data.pending == 5 and birth.data.oldest_seq == 1  # type: ignore[attr-defined]
        for i in range(5, 10):
            await bus.publish("scan", scan(i))
        # No cloud host online: everything stays on disk (a negative can only be watched for a while).
        await asyncio.sleep(0.3)
        assert cloud.data_seqs() == []
        assert outbox.pending == 10
        await cloud.set_online(True)
        await until(lambda: outbox.pending == 0, what="drain")
        assert cloud.data_seqs() == list(range(1, 11))
        data = [e for e in cloud.received if e.type == MessageType.SCAN]
        # Queued before the first connect (session 0): historical. Queued while connected: live.
        assert [(e.session, e.historical) for e in data] == [(0, True)] * 5 + [(1, False)] * 5
        assert bus.stats.acked == 10 and bus.stats.refused == 0
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())
