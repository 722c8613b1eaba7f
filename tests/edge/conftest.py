"""Helpers for edge tests: a cloud-side listener on the real broker and an async test runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest

from broker import topics
from broker.client import BrokerAddress, JitteredBackoff, MqttConnection
from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import HostStateData
from edge.bus import BusClient
from edge.outbox import Outbox
from tests.conftest import Broker

T = TypeVar("T")

NODE = "st1-k1"


def arun(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond` until true; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def cloud_reachable(bus: BusClient | None) -> None:
    """Until the box counts the cloud as reachable, as its station does before waiting for a verdict:
    connected (its birth published) and a cloud host online. The host's retained state can arrive
    before the birth is done, so `cloud_available` alone is not that: a scan made in between is
    answered from the offline lists."""
    assert bus is not None
    await bus.connected.wait()
    await bus.cloud_available.wait()


class Cloud:
    """A cloud host's view of the bus: everything boxes publish, and our retained host state."""

    def __init__(self, broker: Broker, host: str = "cloud-1") -> None:
        self.broker = broker
        self.host = host
        self.password = broker.add_cloud(host)
        self.received: list[Envelope] = []
        self.bad: list[str] = []
        self.conn: MqttConnection | None = None

    async def start(self, persistent: bool = False) -> Cloud:
        """Connect and subscribe to all box traffic.

        `persistent` keeps a broker session across a broker restart and uses a plain subscription:
        with a shared one, Mosquitto 2.0.11 was seen losing messages published right after its
        restart, before the listener was back. That is the cloud's gap to repair (rebirth), not
        something the box can cause or prevent, so these tests keep it out."""
        self.conn = MqttConnection(
            BrokerAddress.from_url(self.broker.url),
            self.host,
            self.password,
            on_message=self._on_message,
            max_inflight=1000,
            clean_start=not persistent,
            session_expiry=300 if persistent else 0,
        )
        await self.conn.connect()
        await self.conn.subscribe([topics.node_up_filter(NODE)] if persistent else [*topics.cloud_ingest_filters(), *topics.cloud_lifecycle_filters()])
        return self

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        try:
            self.received.append(decode(bytes(msg.payload), msg.topic))
        except Exception as exc:  # recorded, the test asserts on it
            self.bad.append(f"{msg.topic}: {exc}")

    async def set_online(self, online: bool) -> None:
        assert self.conn is not None
        env = Envelope(type=MessageType.STATE, node=self.host, session=1, seq=0, data=HostStateData(online=online))
        await self.conn.publish(topics.host_state(self.host), encode(env), retain=True)

    async def send(self, node: str, kind: MessageType, data: dict[str, Any], *, retain: bool = False) -> Envelope:
        env = Envelope(type=kind, node=node, session=1, seq=0, data=data)
        await self.resend(env, retain=retain)
        return env

    async def resend(self, env: Envelope, *, retain: bool = False) -> None:
        """Publish this very command again (same msg_id), as a retry or a redelivery would."""
        assert self.conn is not None
        await self.conn.publish(topics.dn(env.node, env.type.value), encode(env), retain=retain)

    def acks_for(self, command: Envelope) -> list[Envelope]:
        return [e for e in self.received if e.type == MessageType.ACK and e.corr == command.msg_id]

    def of(self, kind: MessageType) -> list[Envelope]:
        return [e for e in self.received if e.type == kind]

    def data_seqs(self) -> list[int]:
        return [e.seq for e in self.received if e.type not in (MessageType.BIRTH, MessageType.DEATH)]

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.disconnect()


async def make_bus(
    broker: Broker,
    outbox: Outbox,
    password: str,
    *,
    node: str = NODE,
    username: str | None = None,
    auth_failure_s: float = 300.0,
    window: int = 200,
) -> BusClient:
    return BusClient(
        outbox,
        node=node,
        store="st1",
        address=BrokerAddress.from_url(broker.url),
        password=password,
        config_hash="sha256:test",
        username=username,
        keepalive=5,
        backoff=JitteredBackoff(0.05, 0.5),
        auth_failure_s=auth_failure_s,
        window=window,
    )


async def start(bus: BusClient) -> asyncio.Task[None]:
    return asyncio.create_task(bus.run())


async def finish(bus: BusClient, task: asyncio.Task[None], *closeables: Callable[[], Awaitable[None]]) -> None:
    await bus.stop()
    await asyncio.wait_for(task, 10)
    for close in closeables:
        await close()


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"
