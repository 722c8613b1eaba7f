"""Device drivers by kind: an explicit registry, no registration by import.

A driver drives one configured device until it is cancelled, and tells its supervisor how the device
is (`DeviceHandle.ok()` once it is working). Raising is how a driver says it cannot go on: the
supervisor (`edge.devices`) reports the device `unavailable` with that reason, retries with jittered
backoff, and the device is `ok` again once a new run says so. A kind with no driver in this version
is reported `unavailable` too, never left out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from broker.envelope import MessageType
from broker.payloads import Payload
from edge.outbox import Row
from firmware_config import DeviceConfig

__all__ = ["DeviceHandle", "Driver", "DriverContext", "DriverFactory", "DriverRegistry", "default_drivers"]


class DeviceHandle(Protocol):
    """How a driver reports its device's state (thread-safe only on the event loop)."""

    def ok(self, detail: str | None = None) -> None: ...

    def unavailable(self, detail: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DriverContext:
    node_id: str
    device: DeviceHandle
    publish: Callable[[MessageType, Payload], Awaitable[Row]]


class Driver(Protocol):
    async def run(self) -> None:
        """Drive the device until cancelled; raise when it cannot go on."""


DriverFactory = Callable[[DeviceConfig, DriverContext], Driver]


class DriverRegistry:
    """Which factory drives which device kind."""

    def __init__(self, factories: Mapping[str, DriverFactory] | None = None) -> None:
        self._factories: dict[str, DriverFactory] = dict(factories or {})

    def register(self, kind: str, factory: DriverFactory, *, replace: bool = False) -> None:
        if kind in self._factories and not replace:
            raise ValueError(f"a driver for kind {kind!r} is already registered")
        self._factories[kind] = factory

    def get(self, kind: str) -> DriverFactory | None:
        return self._factories.get(kind)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._factories)


def _simulator(cfg: DeviceConfig, ctx: DriverContext) -> Driver:
    from edge.drivers.simulator import Simulator  # imported only on a box that simulates

    return Simulator(cfg, ctx)


def default_drivers() -> DriverRegistry:
    """The drivers of this version."""
    return DriverRegistry({"simulator": _simulator})
