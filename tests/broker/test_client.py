from __future__ import annotations

import asyncio
import random
import time

import pytest

from broker import topics
from broker.client import BrokerAddress, BusNotConnected, JitteredBackoff, MqttConnection
from broker.mosquitto import free_port
from tests.conftest import Broker


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = JitteredBackoff(base=1.0, cap=8.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(8)]
    for d, ceiling in zip(delays, [1, 2, 4, 8, 8, 8, 8, 8], strict=True):
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays), "jitter: no two delays alike"
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_backoff_spreads_a_fleet() -> None:
    """A thousand boxes reconnecting after the same outage do not all come back in the same second."""
    firsts = [JitteredBackoff(base=4.0, cap=30.0).next_delay() for _ in range(1000)]
    buckets = {int(d * 4) for d in firsts}  # quarter-second slots over [2, 4]
    assert len(buckets) >= 8


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", BrokerAddress("127.0.0.1", 1883, False)),
        ("mqtts://broker.example:8884", BrokerAddress("broker.example", 8884, True)),
        ("mqtts://h", BrokerAddress("h", 8883, True)),
    ],
)
def test_broker_url(url: str, expected: BrokerAddress) -> None:
    assert BrokerAddress.from_url(url) == expected


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://", "h:1883", "mqtt://h:99999"])
def test_broker_url_errors(url: str) -> None:
    with pytest.raises(ValueError, match="Invalid broker URL"):
        BrokerAddress.from_url(url)


def test_connect_to_nothing_fails_fast() -> None:
    async def body() -> None:
        conn = MqttConnection(BrokerAddress("127.0.0.1", free_port()), "n1", "pw")
        with pytest.raises(BusNotConnected, match="cannot reach broker"):
            await conn.connect()
        assert conn.closed.done()
        with pytest.raises(BusNotConnected):
            await conn.publish(topics.up("n1", "scan"), b"x")

    asyncio.run(body())


def test_round_trip_without_nagle(broker: Broker) -> None:
    """A request/response round trip takes well under Nagle's 40 ms delayed-ACK stall."""
    pn, pc = broker.add_node("n1"), broker.add_cloud("cloud-1")

    async def body() -> None:
        address = BrokerAddress.from_url(broker.url)
        box: MqttConnection | None = None
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        def answer(msg: object) -> None:
            cloud.publish(topics.dn("n1", "verdict"), b"ok")

        cloud = MqttConnection(address, "cloud-1", pc, on_message=answer)
        await cloud.connect()
        await cloud.subscribe([topics.up("n1", "scan")])
        box = MqttConnection(address, "n1", pn, on_message=lambda m: replies.put_nowait(bytes(m.payload)))
        await box.connect()
        await box.subscribe([topics.node_dn_filter("n1")])
        rtts = []
        for _ in range(20):
            t = time.perf_counter()
            box.publish(topics.up("n1", "scan"), b"code")
            await asyncio.wait_for(replies.get(), 5)
            rtts.append(time.perf_counter() - t)
        # Nagle on either side makes every round trip >= ~40 ms; the median proves it is off.
        assert sorted(rtts)[len(rtts) // 2] < 0.030
        await box.disconnect()
        await cloud.disconnect()

    asyncio.run(body())
