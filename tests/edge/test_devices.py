"""Devices under supervision: a failing driver is reported with its reason, retried, and back to ok;
kinds without a driver are reported, never dropped; telemetry (the agent's) carries the states."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from broker.envelope import MessageType
from broker.payloads import DeviceInfo, TelemetryData
from edge.agent import EdgeAgent
from edge.devices import OK, UNAVAILABLE, no_driver
from edge.drivers import DriverContext, DriverRegistry, default_drivers
from firmware_config import DeviceConfig, NodeConfig
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, until


class FlakyPrinter:
    """Refuses to work until the test says the printer is back."""

    healthy = asyncio.Event()

    def __init__(self, cfg: DeviceConfig, ctx: DriverContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    async def run(self) -> None:
        if not self.healthy.is_set():
            raise ConnectionRefusedError(f"no answer from {self.cfg.host}:{self.cfg.port}")  # type: ignore[union-attr]
        self.ctx.device.ok("paper 80 mm")
        await asyncio.get_running_loop().create_future()


def states(devices: tuple[DeviceInfo, ...]) -> dict[str, tuple[str, str | None]]:
    return {d.kind: (d.state, d.detail) for d in devices}


def telemetries(cloud: Cloud) -> list[TelemetryData]:
    return [e.data for e in cloud.of(MessageType.TELEMETRY) if isinstance(e.data, TelemetryData)]


def test_a_failing_driver_is_unavailable_with_its_reason_retried_and_ok_again(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_node(NODE)
    cfg = NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1", "data_dir": str(tmp_path), "telemetry_every_s": 0.3,
        "broker": {"url": broker.url, "password": password, "keepalive_s": 5},
        "backoff": {"base_s": 0.05, "cap_s": 0.2},
        "devices": [{"kind": "printer", "host": "10.0.0.9"}, {"kind": "scanner"}, {"kind": "display"}],
        "local_api": {"port": 0},
    })
    drivers = default_drivers()
    drivers.register("printer", FlakyPrinter)
    refused = (UNAVAILABLE, "driver failed: ConnectionRefusedError: no answer from 10.0.0.9:9100")

    async def main() -> None:
        FlakyPrinter.healthy = asyncio.Event()
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg, drivers=drivers)
        task = asyncio.create_task(agent.run())
        await until(lambda: any(states(t.devices).get("printer") == refused for t in telemetries(cloud)),
                    what="telemetry reporting the printer unavailable, with its reason")
        seen = states(telemetries(cloud)[-1].devices)
        assert seen["scanner"] == (UNAVAILABLE, no_driver("scanner"))
        assert seen["display"] == (UNAVAILABLE, no_driver("display"))
        assert "outbox_pending" in telemetries(cloud)[-1].metrics
        [birth] = cloud.of(MessageType.BIRTH)
        assert len(birth.data.devices) == 3  # type: ignore[attr-defined]
        printer = agent.devices.devices[0]
        await until(lambda: printer.runs >= 3, what="the printer's driver retried")
        assert agent.bus is not None and agent.bus.connected.is_set() and not task.done()

        FlakyPrinter.healthy.set()
        await until(lambda: states(telemetries(cloud)[-1].devices)["printer"] == (OK, "paper 80 mm"),
                    what="the printer ok again")
        assert agent.api is not None
        status = await asyncio.to_thread(get_json, f"{agent.api.url}/status")
        assert status["devices"][0] == {"kind": "printer", "model": "printer", "serial": None, "state": OK, "detail": "paper 80 mm"}
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_status_answers_without_a_catalogue(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_node(NODE)
    cfg = NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1", "data_dir": str(tmp_path), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "password": password, "keepalive_s": 5}, "local_api": {"port": 0},
    })

    async def main() -> None:
        agent = EdgeAgent(cfg, drivers=DriverRegistry())
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        assert agent.bus is not None and agent.api is not None
        await asyncio.wait_for(agent.bus.connected.wait(), 10)
        status = await asyncio.to_thread(get_json, f"{agent.api.url}/status")
        assert status["node_id"] == NODE and status["components"] == {} and status["devices"] == []
        assert status["bus"]["connected"] is True and status["bus"]["session"] == 1
        assert status["outbox"] == {"path": str(tmp_path / "edge" / NODE / "outbox.db"), "pending": 0, "last_seq": 0}
        assert status["local_api"]["requests"] >= 1
        await agent.stop()
        await asyncio.wait_for(task, 10)

    arun(main())
