"""The box's configured devices, each run by its driver under supervision.

Every configured device is reported, in the birth and in telemetry, with a state: `ok`, or
`unavailable` with a `detail` saying why (no driver for its kind in this version; its driver failed,
and with what). A failing driver never takes the agent down: it is run again after a jittered
backoff, and its device is `ok` again as soon as the new run says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from broker.client import JitteredBackoff
from broker.envelope import MessageType
from broker.payloads import DeviceInfo, Payload
from edge.bus import one_line
from edge.drivers import DriverContext, DriverFactory, DriverRegistry
from edge.outbox import Row
from firmware_config import DeviceConfig

__all__ = ["OK", "UNAVAILABLE", "DeviceSet", "SupervisedDevice", "no_driver"]

log = logging.getLogger(__name__)

OK = "ok"
UNAVAILABLE = "unavailable"
_STABLE_S = 30.0
"""A run that lasted this long before failing resets the backoff (a flapping driver keeps backing off)."""
_DETAIL_MAX = 500


def no_driver(kind: str) -> str:
    return f"no driver for kind {kind!r} in this version"


class SupervisedDevice:
    """One configured device: its driver's runs, restarts and reported state."""

    def __init__(
        self,
        cfg: DeviceConfig,
        factory: DriverFactory | None,
        *,
        node_id: str,
        publish: Callable[[MessageType, Payload], Awaitable[Row]],
        backoff: JitteredBackoff,
        on_change: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.factory = factory
        self.backoff = backoff
        self._on_change = on_change
        self._ctx = DriverContext(node_id=node_id, device=self, publish=publish)
        self.runs = 0
        self.failures = 0
        detail = no_driver(cfg.kind) if factory is None else "starting"
        self.info = DeviceInfo(kind=cfg.kind, model=cfg.name, state=UNAVAILABLE, detail=detail)

    # -- DeviceHandle (what the driver calls) ------------------------------------------------------

    def ok(self, detail: str | None = None) -> None:
        self._set(OK, one_line(detail, _DETAIL_MAX) if detail else None)

    def unavailable(self, detail: str) -> None:
        self._set(UNAVAILABLE, one_line(detail, _DETAIL_MAX))

    def _set(self, state: str, detail: str | None) -> None:
        if (self.info.state, self.info.detail) == (state, detail):
            return
        if state != self.info.state:
            log.log(logging.INFO if state == OK else logging.WARNING, "device %r (%s): %s%s", self.cfg.name,
                    self.cfg.kind, state, f" ({detail})" if detail else "")
        self.info = DeviceInfo(kind=self.cfg.kind, model=self.cfg.name, state=state, detail=detail)
        self._on_change()

    # -- supervision -------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.factory is None:
            log.warning("device %r: %s; reported as %s, not driven", self.cfg.name, no_driver(self.cfg.kind), UNAVAILABLE)
            return
        while True:
            started = time.monotonic()
            self.runs += 1
            try:
                await self.factory(self.cfg, self._ctx).run()
                reason = "the driver stopped by itself"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"driver failed: {type(exc).__name__}: {exc}" if str(exc) else f"driver failed: {type(exc).__name__}"
            self.failures += 1
            if time.monotonic() - started >= _STABLE_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self.unavailable(reason)
            log.warning("device %r (%s): %s; retrying in %.1f s", self.cfg.name, self.cfg.kind, one_line(reason), delay)
            await asyncio.sleep(delay)


class DeviceSet:
    """All configured devices of a box, built from the config and a driver registry."""

    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        drivers: DriverRegistry,
        *,
        node_id: str,
        publish: Callable[[MessageType, Payload], Awaitable[Row]],
        backoff: Callable[[], JitteredBackoff],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.devices = [
            SupervisedDevice(d, drivers.get(d.kind), node_id=node_id, publish=publish, backoff=backoff(), on_change=on_change)
            for d in devices
        ]

    def infos(self) -> tuple[DeviceInfo, ...]:
        return tuple(d.info for d in self.devices)

    async def run(self) -> None:
        """Supervise every device until cancelled."""
        await asyncio.gather(*(d.run() for d in self.devices))
