"""The bus client against a real Mosquitto, with a cloud-side listener."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from broker import topics
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


def test_clean_stop_publishes_death_with_current_session(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        outbox = await Outbox.open(outbox_path)
        await outbox.next_session()  # an earlier run
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        await bus.stop()
        await asyncio.wait_for(task, 10)
        await until(lambda: bool(cloud.of(MessageType.DEATH)), what="death")
        [death] = cloud.of(MessageType.DEATH)
        assert death.session == 2 == cloud.of(MessageType.BIRTH)[0].session
        await outbox.close()
        await cloud.close()

    arun(main())


def test_unclean_drop_makes_the_broker_publish_the_will(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        await bus.publish("scan", scan(1))
        await until(lambda: outbox.pending == 0, what="scan acked")
        bus.abort_connection()
        await until(lambda: bool(cloud.of(MessageType.DEATH)), what="will")
        [will] = cloud.of(MessageType.DEATH)
        assert (will.session, will.seq) == (1, 0)  # set at CONNECT, before the scan existed
        # The client reconnects by itself with a new session and a new birth.
        await until(lambda: len(cloud.of(MessageType.BIRTH)) == 2, what="second birth")
        assert cloud.of(MessageType.BIRTH)[1].session == 2
        assert bus.stats.reconnects == 1
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_wrong_password_counts_auth_failure_and_backs_off(broker: Broker, outbox_path: Path) -> None:
    broker.add_node(NODE)

    async def main() -> None:
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, "not-the-password", auth_failure_s=300)
        task = await start(bus)
        await until(lambda: bus.stats.auth_failures == 1, what="auth failure")
        # Backing off 300 s: no second attempt follows (watched for a while).
        await asyncio.sleep(0.5)
        assert bus.stats.auth_failures == 1
        assert outbox.session == 1
        assert not bus.connected.is_set()
        await finish(bus, task, outbox.close)

    arun(main())


def test_node_whose_credential_may_not_publish_backs_off_like_an_auth_failure(
    broker: Broker, outbox_path: Path
) -> None:
    # Username st1-k2 authenticates fine but its ACL covers only st1-k2's topics; the birth is refused.
    password = broker.add_node("st1-k2")

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox = await Outbox.open(outbox_path)
        await outbox.put("scan", scan(1))
        bus = await make_bus(broker, outbox, password, username="st1-k2")
        task = await start(bus)
        await until(lambda: bus.stats.auth_failures == 1, what="birth refused")
        assert outbox.pending == 1  # nothing was burnt as refused
        assert cloud.received == []
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_refused_publish_is_counted_and_kept(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()  # registering cloud-1 reloads the credentials, so ours goes in after
        # A role that lets this node publish its lifecycle and scans, but not orders.
        broker.narrow_node_publish(NODE, [topics.birth(NODE), topics.death(NODE), topics.up(NODE, "scan")])
        outbox = await Outbox.open(outbox_path)
        order = {
            "order_id": "o-1",
            "channel": "kiosk",
            "lines": [{"sku": "SKU-0001", "qty": 1}],
            "fulfilment": "pickup",
        }
        await outbox.put("scan", scan(1))
        await outbox.put("order", order)
        await outbox.put("scan", scan(2))
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        await cloud.set_online(True)
        await until(lambda: outbox.pending == 0, what="all answered")
        assert bus.stats.refused == 1 and bus.stats.acked == 2
        stats = await outbox.stats()
        assert (stats.acked, stats.refused) == (2, 1)
        [(seq, reason)] = await outbox.refused_rows()
        assert seq == 2 and "Not authorized" in reason and "135" in reason
        assert cloud.data_seqs() == [1, 3]
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_rebirth_with_replay_from_resends_acked_rows_as_historical(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox = await Outbox.open(outbox_path, retain_acked=100)
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        for i in range(5):
            await bus.publish("scan", scan(i))
        await until(lambda: outbox.pending == 0 and len(cloud.data_seqs()) == 5, what="first delivery")
        cloud.received.clear()
        rebirth = await cloud.send(NODE, MessageType.REBIRTH, {"reason": "gap 2..5", "replay_from": 2})
        await until(lambda: len(cloud.of(MessageType.SCAN)) == 4 and bool(cloud.acks_for(rebirth)), what="replay")
        assert cloud.received[0].type == MessageType.BIRTH
        assert cloud.received[0].data.oldest_seq == 1  # type: ignore[attr-defined]
        replayed = cloud.of(MessageType.SCAN)
        assert [e.seq for e in replayed] == [2, 3, 4, 5]
        assert cloud.acks_for(rebirth)[0].data.detail.endswith("replaying from seq 2")  # type: ignore[attr-defined]
        assert all(e.historical and e.session == 1 for e in replayed)
        assert bus.stats.replayed == 4
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_bad_host_state_is_ignored_and_offline_host_holds_back(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        assert cloud.conn is not None
        await cloud.conn.publish(topics.host_state("cloud-1"), b"{oops", retain=True)
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await until(lambda: bus.stats.bad_host_states == 1, what="bad host state")
        assert not bus.cloud_online
        await cloud.set_online(True)
        await until(lambda: bus.cloud_online, what="online")
        await cloud.set_online(False)
        await until(lambda: not bus.cloud_online, what="offline")
        await bus.publish("scan", scan(1))
        await asyncio.sleep(0.2)  # a negative: watched for a while
        assert outbox.pending == 1 and cloud.data_seqs() == []
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


def test_broker_restart_mid_stream_reconnects_and_loses_nothing(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)
    total = 3000

    async def main() -> None:
        cloud = await Cloud(broker).start(persistent=True)
        await cloud.set_online(True)
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)

        async def produce() -> None:
            for i in range(total):
                await bus.publish("scan", scan(i))
                if i % 50 == 0:
                    await asyncio.sleep(0.005)

        producer = asyncio.create_task(produce())
        await until(lambda: outbox.last_seq >= total // 3, what="traffic")
        await asyncio.to_thread(broker.process.stop)
        await until(lambda: not bus.connected.is_set(), what="loss noticed")
        await asyncio.to_thread(broker.process.start)
        await cloud.start(persistent=True)
        await producer
        await until(lambda: outbox.pending == 0, timeout=60, what="drain after restart")
        try:
            await until(lambda: set(cloud.data_seqs()) == set(range(1, total + 1)), timeout=30, what="all delivered")
        except AssertionError:
            missing = sorted(set(range(1, total + 1)) - set(cloud.data_seqs()))
            raise AssertionError(
                f"{len(missing)} never reached the listener, first {missing[:20]}; {bus.stats}"
            ) from None
        assert bus.stats.reconnects >= 1
        births = cloud.of(MessageType.BIRTH)
        assert births[-1].session > births[0].session
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())


@pytest.mark.slow
def test_drain_of_100k_queued_messages_after_reconnect(broker: Broker, outbox_path: Path) -> None:
    password = broker.add_node(NODE)
    total = 100_000

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        outbox = await Outbox.open(outbox_path)
        for start_at in range(0, total, 2000):
            await asyncio.gather(*(outbox.put("scan", scan(i)) for i in range(start_at, start_at + 2000)))
        bus = await make_bus(broker, outbox, password)
        began = time.perf_counter()
        task = await start(bus)
        await until(lambda: outbox.pending == 0, timeout=120, what="drain")
        elapsed = time.perf_counter() - began
        print(f"drained {total} in {elapsed:.1f} s: {total / elapsed:.0f} msg/s (cloud listener in this process)")
        await until(lambda: len(cloud.data_seqs()) >= total, timeout=60, what="all received")
        assert sorted(set(cloud.data_seqs())) == list(range(1, total + 1))
        await finish(bus, task, outbox.close, cloud.close)

    arun(main(), timeout=300)


def test_birth_again_when_a_cloud_host_comes_online(broker: Broker, outbox_path: Path) -> None:
    """A cloud host that starts after the box was born never saw that birth: the box repeats it."""
    password = broker.add_node(NODE)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        outbox = await Outbox.open(outbox_path)
        bus = await make_bus(broker, outbox, password)
        task = await start(bus)
        await until(lambda: [e.type for e in cloud.received] == [MessageType.BIRTH], what="first birth")
        await cloud.set_online(True)
        await until(lambda: [e.type for e in cloud.received].count(MessageType.BIRTH) == 2, what="second birth")
        births = [e for e in cloud.received if e.type == MessageType.BIRTH]
        assert births[0].session == births[1].session == outbox.session
        # Online -> online (a repeated retained state) is no news: no third birth.
        await cloud.set_online(True)
        await asyncio.sleep(0.3)
        assert [e.type for e in cloud.received].count(MessageType.BIRTH) == 2
        await finish(bus, task, outbox.close, cloud.close)

    arun(main())
