"""What the broker itself enforces with the generated configuration (real Mosquitto over TCP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection, PublishRefused
from tests.conftest import Broker

Received = list[paho.MQTTMessage]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def connected(broker: Broker, user: str, password: str, got: Received | None = None) -> MqttConnection:
    conn = MqttConnection(
        BrokerAddress.from_url(broker.url), user, password, on_message=(got.append if got is not None else None)
    )
    await conn.connect()
    return conn


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def test_node_cannot_publish_as_another_node(broker: Broker) -> None:
    pa, _pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await connected(broker, "cloud-1", pc, cloud_got)
        await cloud.subscribe(topics.cloud_ingest_filters())
        a = await connected(broker, "node-a", pa)
        with pytest.raises(PublishRefused) as info:
            await a.publish(topics.up("node-b", "scan"), b"forged")
        assert info.value.reason.value == 135
        # Also not on a dn topic or the host state: a node cannot command boxes or fake the cloud.
        for topic in (topics.dn("node-b", "command"), topics.host_state("cloud-1")):
            with pytest.raises(PublishRefused):
                await a.publish(topic, b"forged")
        await a.publish(topics.up("node-a", "scan"), b"own")
        await until(lambda: len(cloud_got) == 1)
        await asyncio.sleep(0.2)  # the forged messages would have arrived by now
        assert [(m.topic, m.payload) for m in cloud_got] == [(topics.up("node-a", "scan"), b"own")]
        await a.disconnect()
        await cloud.disconnect()

    run(body)


def test_node_cannot_read_another_nodes_commands(broker: Broker) -> None:
    pa, pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        a_got: Received = []
        b_got: Received = []
        a = await connected(broker, "node-a", pa, a_got)
        b = await connected(broker, "node-b", pb, b_got)
        # Mosquitto 2.0 "grants" a forbidden subscription and then delivers nothing through it.
        await a.subscribe([topics.node_dn_filter("node-b"), "shelf/v1/#", "#"])
        await b.subscribe([topics.node_dn_filter("node-b")])
        cloud = await connected(broker, "cloud-1", pc)
        await cloud.publish(topics.dn("node-b", "verdict"), b"for b only")
        await until(lambda: len(b_got) == 1)
        await asyncio.sleep(0.2)
        assert a_got == []
        assert b_got[0].payload == b"for b only"
        for c in (a, b, cloud):
            await c.disconnect()

    run(body)


def test_node_reads_host_state_and_own_commands(broker: Broker) -> None:
    pa, pc = broker.add_node("node-a"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud = await connected(broker, "cloud-1", pc)
        await cloud.publish(topics.host_state("cloud-1"), b"online", retain=True)
        got: Received = []
        a = await connected(broker, "node-a", pa, got)
        await a.subscribe([topics.node_dn_filter("node-a"), topics.host_state_filter()])
        await cloud.publish(topics.dn("node-a", "rebirth"), b"again")
        await until(lambda: len(got) == 2)
        assert sorted((m.topic, m.payload, bool(m.retain)) for m in got) == [
            (topics.dn("node-a", "rebirth"), b"again", False),
            (topics.host_state("cloud-1"), b"online", True),
        ]
        await a.disconnect()
        await cloud.disconnect()

    run(body)


@pytest.mark.parametrize(
    ("user", "password"),
    [("node-a", "wrong"), ("nobody", "x"), ("node-a", "")],
    ids=["wrong password", "unknown user", "empty password"],
)
def test_bad_credentials_refused(broker: Broker, user: str, password: str) -> None:
    broker.add_node("node-a")

    async def body() -> None:
        conn = MqttConnection(BrokerAddress.from_url(broker.url), user, password)
        with pytest.raises(BusAuthError, match="refused"):
            await conn.connect()

    run(body)


def test_anonymous_refused(broker: Broker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=paho.MQTTv5)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    client.connect(broker.host, broker.port)
    for _ in range(50):
        client.loop(0.1)
        if codes:
            break
    client.disconnect()
    assert codes == [135]


def test_credentials_cannot_take_over_another_session(broker: Broker) -> None:
    """The client id is forced to the username: node-a's credentials cannot kick node-b off."""
    pa, pb = broker.add_node("node-a"), broker.add_node("node-b")

    async def body() -> None:
        b = await connected(broker, "node-b", pb)
        impostor = paho.Client(CallbackAPIVersion.VERSION2, client_id="node-b", protocol=paho.MQTTv5)
        impostor.username_pw_set("node-a", pa)
        impostor.connect(broker.host, broker.port)
        for _ in range(20):
            impostor.loop(0.05)
        await asyncio.sleep(0.2)
        assert b.is_connected
        await b.publish(topics.up("node-b", "telemetry"), b"still here")
        impostor.disconnect()
        await b.disconnect()

    run(body)


def test_new_node_added_without_restart(broker: Broker) -> None:
    """Reload (SIGHUP) picks up a new credential while existing clients stay connected."""
    pa = broker.add_node("node-a")

    async def body() -> None:
        a = await connected(broker, "node-a", pa)
        pn = broker.add_node("node-new")  # returns once the broker has applied it: no retrying
        n = await connected(broker, "node-new", pn)
        assert a.is_connected
        await n.publish(topics.up("node-new", "scan"), b"hi")
        await n.disconnect()
        await a.disconnect()

    run(body)


def test_monitor_reads_everything_writes_nothing(broker: Broker) -> None:
    pa = broker.add_node("node-a")
    broker.layout.monitor_users["ops"] = "watch-pw"
    broker.process.reload()

    async def body() -> None:
        got: Received = []
        ops = await connected(broker, "ops", "watch-pw", got)
        await ops.subscribe(["shelf/v1/#"])
        a = await connected(broker, "node-a", pa)
        await a.publish(topics.up("node-a", "scan"), b"seen")
        await until(lambda: len(got) == 1)
        with pytest.raises(PublishRefused):
            await ops.publish(topics.dn("node-a", "command"), b"no")
        await a.disconnect()
        await ops.disconnect()

    run(body)
