"""The bus fuzzed: hypothesis makes hostile payloads (random bytes, envelopes with fields replaced by
deep nesting, huge numbers, NaN/Infinity, NUL and lone surrogates, oversize, the wrong topic), a box
publishes each to a real Mosquitto and a real worker, and a good message right after each must be
stored: no input ever blocks ingest. Bounded (well under a minute per database)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import MAX_ENVELOPE_BYTES, MessageType, encode
from broker.payloads import ScanData
from cloud.bus.worker import CloudBus
from cloud.models import IngestedMessage
from tests.cloud.conftest import Box, box, cloud_settings, running, until
from tests.conftest import Broker

T = TypeVar("T")
NODE = "st1-fz"


class Rig:
    """A worker and a box on their own event loop thread, driven from hypothesis' synchronous examples."""

    def __init__(self, broker: Broker, engine: Engine) -> None:
        self.broker = broker
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.done = asyncio.Event()
        self.bus: CloudBus | None = None
        self.box: Box | None = None
        self.markers: list[Any] = []
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.done = asyncio.Event()
        self.bus = CloudBus(await cloud_settings(self.broker, self.engine), self.engine)
        async with running(self.bus), box(self.broker, NODE) as b:
            self.box = b
            self.ready.set()
            await self.done.wait()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> Rig:
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError("the fuzz rig did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(30)


@pytest.fixture
def rig(broker: Broker, engine: Engine) -> Iterator[Rig]:
    with Rig(broker, engine) as r:
        yield r


# -- what hypothesis generates --------------------------------------------------------------------

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["\x00", "\ud800", "a" * 300]),
)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=20)
FIELDS = ["v", "type", "msg_id", "node", "session", "seq", "ts", "clock_synced", "historical", "corr", "data"]


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["bytes", "field", "nested", "digits", "oversize", "topic"]))
    good = json.loads(encode(_box_env(draw(st.integers(1, 10**6)))))
    topic = topics.up(NODE, "scan")
    if kind == "bytes":
        return topic, draw(st.binary(max_size=2048))
    if kind == "field":
        good[draw(st.sampled_from(FIELDS))] = draw(_json)
        return topic, json.dumps(good, allow_nan=True).encode("utf-8", "surrogatepass")
    if kind == "nested":
        depth = draw(st.integers(20, 3000))
        return topic, (b"[" * depth + b"1" + b"]" * depth if draw(st.booleans()) else b"[" * depth)
    if kind == "digits":
        return topic, json.dumps(good).replace(f'"seq": {good["seq"]}', '"seq": ' + "9" * draw(st.integers(19, 6000))).encode()
    if kind == "oversize":
        good["data"]["code"] = "x" * (MAX_ENVELOPE_BYTES + draw(st.integers(1, 1000)))
        return topic, json.dumps(good).encode()
    # A valid scan on another of the box's own topics (mismatch), or type and topic both changed.
    other = draw(st.sampled_from(["order", "stock", "telemetry", "ack"]))
    return topics.up(NODE, other), json.dumps(good).encode()


def _box_env(seq: int) -> Any:
    from broker.envelope import Envelope

    return Envelope(type=MessageType.SCAN, node=NODE, session=1, seq=seq, data=ScanData(code="fz", station="s"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=hostile())
def test_hostile_input_never_blocks_ingest(rig: Rig, payload: tuple[str, bytes]) -> None:
    topic, raw = payload
    assert rig.box is not None and rig.bus is not None
    b = rig.box

    async def send() -> Any:
        await b.raw(topic, raw)
        marker = await b.scan(code="marker")
        await until(lambda: _stored(rig.engine, marker.msg_id), timeout=20, what="the good message after the hostile one")
        return marker

    rig.markers.append(rig.run(send()))
    assert rig.bus.stats.db_errors == 0


def _stored(engine: Engine, msg_id: object) -> bool:
    with Session(engine) as s:
        return bool(s.scalar(select(func.count()).select_from(IngestedMessage).where(IngestedMessage.msg_id == msg_id)))
