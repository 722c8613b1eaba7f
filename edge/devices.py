"""The devices a box drives, built from its config; what each reports in the birth.

Only the simulator is driven in this version. Scanner, printer and display drivers come later;
until then they are reported with state "unsupported in this version" so the fleet view shows the
gap instead of the box failing to start.
"""

from __future__ import annotations

import logging
from typing import Protocol

from broker.payloads import DeviceInfo
from edge.bus import BusClient
from edge.simulator import Simulator
from firmware_config import DeviceConfig, NodeConfig, SimulatorDevice

__all__ = ["UNSUPPORTED", "Device", "UnsupportedDevice", "build_devices"]

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported in this version"


class Device(Protocol):
    @property
    def info(self) -> DeviceInfo: ...

    async def run(self) -> None:
        """Drive the device until cancelled."""


class UnsupportedDevice:
    def __init__(self, cfg: DeviceConfig) -> None:
        self.cfg = cfg
        self.info = DeviceInfo(kind=cfg.kind, model=cfg.name, state=UNSUPPORTED)

    async def run(self) -> None:
        log.warning("device %r (%s): %s; reported in the birth, not driven", self.cfg.name, self.cfg.kind, UNSUPPORTED)


def build_devices(cfg: NodeConfig, bus: BusClient) -> list[Device]:
    devices: list[Device] = []
    for dev in cfg.devices:
        if isinstance(dev, SimulatorDevice):
            devices.append(Simulator(dev, bus, node=cfg.node_id))
        else:
            devices.append(UnsupportedDevice(dev))
    return devices
