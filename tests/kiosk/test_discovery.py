"""`omnishelf kiosk` without a URL finds its box by zeroconf: a real agent announces its local API
(on loopback, as its API listens there) and the kiosk's lookup finds that URL; a configured URL
always wins and no lookup is made."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from kiosk.cli import DEFAULT_BOX, choose_box
from kiosk.discover import find_box
from tests.conftest import Broker
from tests.edge.conftest import Cloud, arun, until
from tests.kiosk.test_box_api import kiosk_of
from tests.kiosk.test_pickup_slip import config, running


def test_the_kiosk_finds_the_box_that_announces_its_api(broker: Broker, tmp_path: Path) -> None:
    node = f"st1-k{uuid.uuid4().hex[:8]}"  # a name no other box on this machine's loopback has

    async def main() -> None:
        cloud = await Cloud(broker).start()
        agent, task = await running(config(broker, tmp_path, None, node=node))
        kiosk = kiosk_of(agent)
        try:
            assert agent.api is not None
            await until(lambda: kiosk.announced is not None, timeout=20, what="the API announced")
            found = await asyncio.to_thread(find_box, 10.0, interface="127.0.0.1", node=node)
            assert found == agent.api.url
            assert await asyncio.to_thread(find_box, 1.0, interface="127.0.0.1", node="no-such-box") is None
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 20)
            await cloud.close()
        assert kiosk.announced is None  # said goodbye

    arun(main(), timeout=120)


def no_lookup() -> str | None:
    raise AssertionError("a configured URL must not start a zeroconf lookup")


@pytest.mark.parametrize(("configured", "env", "find", "expected"), [
    ("http://10.0.0.5:8480", "http://10.0.0.6:8480", no_lookup, ("http://10.0.0.5:8480", "--box")),
    (None, "http://10.0.0.6:8480", no_lookup, ("http://10.0.0.6:8480", "$OMNISHELF_BOX_URL")),
    (None, None, lambda: "http://10.0.0.7:8480", ("http://10.0.0.7:8480", "found by zeroconf")),
    (None, "", lambda: None, (DEFAULT_BOX, "no box found by zeroconf: trying this machine's")),
])
def test_a_configured_url_wins_over_zeroconf(configured: str | None, env: str | None, find: object,
                                             expected: tuple[str, str]) -> None:
    assert choose_box(configured, env, find) == expected  # type: ignore[arg-type]
