"""What the broker itself enforces with the generated configuration, proven as outside MQTT 5 clients
(real Mosquitto over TCP): reason codes for every refusal, and fences (a marker sent after the thing
that must not happen, then awaited) for every "nothing arrived"."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection, PublishRefused
from tests.conftest import Broker

Received = list[paho.MQTTMessage]
NOT_AUTHORIZED = 135
GRANTED_QOS_1 = 1
NO_MATCHING_SUBSCRIBERS = 16
CONTROL = "$CONTROL/dynamic-security/v1"


async def until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def connected(broker: Broker, user: str, password: str, got: Received | None = None) -> MqttConnection:
    conn = MqttConnection(
        BrokerAddress.from_url(broker.url), user, password, on_message=(got.append if got is not None else None)
    )
    await conn.connect()
    return conn


async def cloud_reading_all(broker: Broker, password: str, got: Received) -> MqttConnection:
    """A cloud worker as production runs it: the shared data filters and the unshared lifecycle ones."""
    cloud = await connected(broker, "cloud-1", password, got)
    await cloud.subscribe([*topics.cloud_ingest_filters(), *topics.cloud_lifecycle_filters()])
    return cloud


async def refusals(conn: MqttConnection, filters: list[str]) -> dict[str, str]:
    """Subscribe to each filter on its own; what the broker said about each refused one."""
    out: dict[str, str] = {}
    for f in filters:
        try:
            await conn.subscribe([f])
        except BusAuthError as exc:
            out[f] = str(exc)
    return out


def refused(filters: list[str]) -> dict[str, str]:
    return {f: f"subscription to {f!r} refused: Not authorized ({NOT_AUTHORIZED})" for f in filters}


async def publish_refusals(conn: MqttConnection, where: list[str]) -> dict[str, int]:
    """PUBACK reason code of a QoS 1 publish to each topic."""
    out: dict[str, int] = {}
    for topic in where:
        try:
            out[topic] = (await conn.publish(topic, b"forged")).value
        except PublishRefused as exc:
            out[topic] = exc.reason.value
    return out


def raw_connack(broker: Broker, username: str | None, password: str | None, client_id: str) -> int:
    """CONNACK reason code for an impostor (raw paho: MqttConnection always uses the username as id)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    client.connect(broker.host, broker.port)
    for _ in range(100):
        client.loop(0.05)
        if codes:
            break
    client.disconnect()
    client.loop(0.05)
    assert codes, f"no CONNACK for {username!r} as {client_id!r}"
    return codes[0]


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


# -- nodes ----------------------------------------------------------------------------------------


def node_forbidden_filters() -> list[str]:
    return [
        *[f for f in topics.cloud_ingest_filters() if f.endswith("/scan")],  # the cloud workers' share
        f"$share/x/{topics.ROOT}/up/+/#",
        "#",
        topics.everything_filter(),
        topics.node_dn_filter("node-b"),
        f"{topics.ROOT}/dn/+/#",
        topics.node_up_filter("node-b"),
        f"$share/x/{topics.node_dn_filter('node-a')}",  # even its own commands may not be shared
        "$CONTROL/dynamic-security/#",
        "$SYS/#",
    ]


def test_node_refused_every_subscription_beyond_its_own(broker: Broker) -> None:
    pa = broker.add_node("node-a")
    broker.add_node("node-b")

    async def body() -> None:
        a = await connected(broker, "node-a", pa)
        assert await refusals(a, node_forbidden_filters()) == refused(node_forbidden_filters())
        codes = await a.subscribe([topics.node_dn_filter("node-a"), topics.host_state_filter()])
        assert [c.value for c in codes] == [GRANTED_QOS_1, GRANTED_QOS_1]
        await a.disconnect()

    run(body)


def test_node_gets_no_share_of_other_stores_traffic(broker: Broker) -> None:
    """The attack that started this: a node joins the cloud's shared subscription and takes (then drops)
    a share of other stores' messages. Refused, the cloud gets every message, the node none."""
    pa, pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)
        a_got: Received = []
        a = await connected(broker, "node-a", pa, a_got)
        await a.subscribe([topics.node_dn_filter("node-a")])
        assert await refusals(a, node_forbidden_filters()) == refused(node_forbidden_filters())
        b = await connected(broker, "node-b", pb)
        sent = [(topics.up("node-b", kind), f"{kind}-{i}".encode()) for i in range(10) for kind in ("scan", "order")]
        sent.append((topics.birth("node-b"), b"born"))
        for topic, payload in sent:
            await b.publish(topic, payload)
        await until(lambda: len(cloud_got) == len(sent), what="the cloud to get all of node-b's messages")
        # Fence: everything node-b sent was routed before this marker is published.
        await cloud.publish(topics.dn("node-a", "command"), b"marker")
        await until(lambda: len(a_got) == 1, what="node-a's marker")
        assert [(m.topic, m.payload) for m in a_got] == [(topics.dn("node-a", "command"), b"marker")]
        assert sorted((m.topic, m.payload) for m in cloud_got) == sorted(sent)
        for c in (a, b, cloud):
            await c.disconnect()

    run(body)


def test_node_cannot_publish_as_another_node(broker: Broker) -> None:
    pa, _pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)
        a = await connected(broker, "node-a", pa)
        forged = [
            topics.up("node-b", "scan"),
            topics.death("node-b"),
            topics.dn("node-b", "command"),  # commanding another box
            topics.host_state("cloud-1"),  # faking the cloud
            CONTROL,
        ]
        assert await publish_refusals(a, forged) == dict.fromkeys(forged, NOT_AUTHORIZED)
        # Fence: node-a's own message comes after the forged ones on the same connection.
        await a.publish(topics.up("node-a", "scan"), b"own")
        await until(lambda: len(cloud_got) == 1, what="node-a's own scan")
        assert [(m.topic, m.payload) for m in cloud_got] == [(topics.up("node-a", "scan"), b"own")]
        await a.disconnect()
        await cloud.disconnect()

    run(body)


def test_node_will_cannot_forge_another_nodes_death(broker: Broker) -> None:
    pa, _pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)

        def impostor() -> None:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id="node-a", protocol=paho.MQTTv5)
            c.username_pw_set("node-a", pa)
            c.will_set(topics.death("node-b"), b"forged death", qos=1)
            codes: list[int] = []
            c.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
            c.connect(broker.host, broker.port)
            while not codes:
                c.loop(0.05)
            sock = c.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # an unclean loss: the broker would publish the will
            sock.close()

        await asyncio.to_thread(impostor)
        # Fence: the same client id connecting again means the old connection (and its will) is done.
        a = await connected(broker, "node-a", pa)
        await a.publish(topics.up("node-a", "scan"), b"fence")
        await until(lambda: any(m.payload == b"fence" for m in cloud_got), what="the fence")
        assert [(m.topic, m.payload) for m in cloud_got] == [(topics.up("node-a", "scan"), b"fence")]
        await a.disconnect()
        await cloud.disconnect()

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


# -- client ids and credentials -------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["node-b", "node-a-2", "cloud-1"], ids=["another node's id", "a new id", "a cloud id"])
def test_client_id_other_than_username_refused(broker: Broker, client_id: str) -> None:
    """node-a's credentials cannot take over node-b's session (nor open a second one under another id)."""
    pa, pb, pc = broker.add_node("node-a"), broker.add_node("node-b"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)
        victim = await connected(broker, "node-b", pb)
        code = await asyncio.to_thread(raw_connack, broker, "node-a", pa, client_id)
        assert code == NOT_AUTHORIZED
        assert victim.is_connected
        assert (await victim.publish(topics.up("node-b", "telemetry"), b"still here")).value == 0
        await until(lambda: len(cloud_got) == 1, what="the victim's message")
        assert not victim.closed.done()
        await victim.disconnect()
        await cloud.disconnect()

    run(body)


@pytest.mark.parametrize(
    ("user", "password"),
    [("node-a", "wrong"), ("nobody", "x"), ("node-a", ""), (None, None)],
    ids=["wrong password", "unknown user", "empty password", "anonymous"],
)
def test_bad_credentials_refused(broker: Broker, user: str | None, password: str | None) -> None:
    broker.add_node("node-a")
    assert raw_connack(broker, user, password, user or "anon") == NOT_AUTHORIZED


def test_bad_credentials_are_an_auth_error_for_our_client(broker: Broker) -> None:
    broker.add_node("node-a")

    async def body() -> None:
        conn = MqttConnection(BrokerAddress.from_url(broker.url), "node-a", "wrong")
        with pytest.raises(BusAuthError, match="refused 'node-a': Not authorized"):
            await conn.connect()

    run(body)


# -- monitors and the cloud -----------------------------------------------------------------------


def test_monitor_reads_everything_writes_nothing(broker: Broker) -> None:
    pa, pc = broker.add_node("node-a"), broker.add_cloud("cloud-1")
    broker.layout.monitor_users["ops"] = "watch-pw"
    broker.process.reload()

    async def body() -> None:
        got: Received = []
        ops = await connected(broker, "ops", "watch-pw", got)
        await ops.subscribe([topics.everything_filter()])
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)
        a = await connected(broker, "node-a", pa)
        await a.publish(topics.up("node-a", "scan"), b"seen")
        await until(lambda: len(got) == 1)
        anywhere = [
            topics.up("ops", "birth"),  # a phantom node named after the monitor
            topics.up("node-a", "scan"),
            topics.dn("node-a", "command"),
            topics.host_state("ops"),
            topics.host_state("cloud-1"),
            CONTROL,
            "elsewhere",
        ]
        assert await publish_refusals(ops, anywhere) == dict.fromkeys(anywhere, NOT_AUTHORIZED)
        # Fence: the cloud sees node-a's next message and no phantom before it.
        await a.publish(topics.up("node-a", "scan"), b"fence")
        await until(lambda: len(cloud_got) == 2, what="node-a's second scan")
        assert [m.payload for m in cloud_got] == [b"seen", b"fence"]
        for c in (a, ops, cloud):
            await c.disconnect()

    run(body)


def test_cloud_writes_commands_and_its_own_state_only(broker: Broker) -> None:
    broker.add_node("node-a")
    pc = broker.add_cloud("cloud-1")
    broker.add_cloud("cloud-2")

    async def body() -> None:
        cloud = await connected(broker, "cloud-1", pc)
        forbidden = [
            topics.up("cloud-1", "scan"),  # a phantom node named after the worker
            topics.up("node-a", "scan"),
            topics.up("anything", "scan"),
            topics.birth("node-a"),
            topics.host_state("cloud-2"),
            CONTROL,
        ]
        assert await publish_refusals(cloud, forbidden) == dict.fromkeys(forbidden, NOT_AUTHORIZED)
        allowed = [topics.dn("node-a", "verdict"), topics.host_state("cloud-1")]
        # 16 "No matching subscribers" is a success code too: nobody listens here.
        assert await publish_refusals(cloud, allowed) == dict.fromkeys(allowed, NO_MATCHING_SUBSCRIBERS)
        await cloud.disconnect()

    run(body)


def test_cloud_subscribes_to_its_filters_and_no_other_share(broker: Broker) -> None:
    pc = broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud = await connected(broker, "cloud-1", pc)
        wanted = [*topics.cloud_ingest_filters(), *topics.cloud_lifecycle_filters(), topics.host_state_filter()]
        assert [c.value for c in await cloud.subscribe(wanted)] == [GRANTED_QOS_1] * len(wanted)
        forbidden = [
            f"$share/cloud/{topics.ROOT}/up/+/#",  # overlaps the unshared lifecycle filters
            f"$share/other/{topics.ROOT}/up/+/scan",
            *topics.cloud_ingest_filters("other"),
            "#",
            topics.everything_filter(),
            f"{topics.ROOT}/dn/#",
            "$CONTROL/dynamic-security/#",
        ]
        assert await refusals(cloud, forbidden) == refused(forbidden)
        await cloud.disconnect()

    run(body)


# -- credential changes at run time ---------------------------------------------------------------


def test_node_added_connects_at_once_and_removed_one_is_dropped(broker: Broker) -> None:
    pa, pc = broker.add_node("node-a"), broker.add_cloud("cloud-1")

    async def body() -> None:
        cloud_got: Received = []
        cloud = await cloud_reading_all(broker, pc, cloud_got)
        a = await connected(broker, "node-a", pa)
        pn = broker.add_node("node-new")  # returns once the broker confirmed it: no retrying
        n = await connected(broker, "node-new", pn)
        assert a.is_connected
        await n.publish(topics.up("node-new", "scan"), b"hi")

        broker.remove_node("node-a")
        why = await asyncio.wait_for(asyncio.shield(a.closed), 5)
        assert why == "disconnected: Administrative action"
        assert await asyncio.to_thread(raw_connack, broker, "node-a", pa, "node-a") == NOT_AUTHORIZED
        # Everyone else stayed: node-new's next message arrives after the removal.
        assert n.is_connected and cloud.is_connected
        await n.publish(topics.up("node-new", "scan"), b"after")
        await until(lambda: len(cloud_got) == 2, what="node-new's messages")
        assert [m.payload for m in cloud_got] == [b"hi", b"after"]
        for c in (n, cloud):
            await c.disconnect()

    run(body)


def test_password_change_applies_at_once(broker: Broker) -> None:
    old = broker.add_node("node-a")
    stays = broker.add_node("node-b")

    async def body() -> None:
        a = await connected(broker, "node-a", old)
        b = await connected(broker, "node-b", stays)
        new = broker.add_node("node-a")  # a new password for an existing node
        # The old password's session ends with it; its owner must come back with the new one.
        assert await asyncio.wait_for(asyncio.shield(a.closed), 5) == "disconnected: Administrative action"
        assert await asyncio.to_thread(raw_connack, broker, "node-a", old, "node-a") == NOT_AUTHORIZED
        a2 = await connected(broker, "node-a", new)
        assert b.is_connected
        assert (await b.publish(topics.up("node-b", "scan"), b"x")).value == NO_MATCHING_SUBSCRIBERS
        for c in (a2, b):
            await c.disconnect()

    run(body)


def test_monitor_removed_and_cloud_added_live(broker: Broker) -> None:
    broker.layout.monitor_users["ops"] = "watch-pw"
    broker.process.reload()

    async def body() -> None:
        ops = await connected(broker, "ops", "watch-pw")
        del broker.layout.monitor_users["ops"]
        pc = broker.add_cloud("cloud-9")
        assert await asyncio.wait_for(asyncio.shield(ops.closed), 5) == "disconnected: Administrative action"
        cloud = await connected(broker, "cloud-9", pc)
        assert (await cloud.publish(topics.host_state("cloud-9"), b"online")).value == NO_MATCHING_SUBSCRIBERS
        await cloud.disconnect()

    run(body)
