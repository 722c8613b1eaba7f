"""A simulated store: scans, orders and stock snapshots at configured rates (a device driver).

It publishes through the same outbox as real devices would, which is what makes it useful for demos,
soak tests and the bus benchmark (`burst`). Telemetry is the agent's, not the simulator's.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import date, timedelta

from broker.envelope import MessageType
from broker.payloads import (
    Fulfilment,
    OrderData,
    OrderLine,
    Payload,
    ScanData,
    ScanPurpose,
    StockData,
    StockLevel,
)
from edge.drivers import DriverContext
from edge.outbox import OutboxFull
from firmware_config import DeviceConfig, SimulatorDevice

__all__ = ["Simulator"]

log = logging.getLogger(__name__)

_SKUS = 40
_BURST_CHUNK = 2_000
"""Concurrent puts per burst step: large enough to fill group commits, small enough to bound memory."""


class Simulator:
    def __init__(self, cfg: DeviceConfig, ctx: DriverContext, *, rng: random.Random | None = None) -> None:
        if not isinstance(cfg, SimulatorDevice):
            raise TypeError(f"the simulator drives 'simulator' devices, got a {cfg.kind!r} device")
        self.cfg = cfg
        self.ctx = ctx
        self.node = ctx.node_id
        self.rng = rng or random.Random()
        self._serial = 0
        self._orders = 0
        self.burst_done = asyncio.Event()

    # -- message makers ----------------------------------------------------------------------------

    def sku(self) -> str:
        return f"SKU-{self.rng.randint(1, _SKUS):04d}"

    def scan(self) -> ScanData:
        # Imported at the first scan: `gs1` loads biip's GS1 prefix tables (~14 MB resident), which a
        # simulator that never scans (and the agent's idle budget) should not pay for.
        from gs1 import check_digit, element_string

        self._serial += 1
        item = self.rng.randint(1, _SKUS)
        body = f"0950600{item:06d}"
        gtin = body + check_digit(body)
        code = element_string(
            gtin,
            f"{self.node[:8].upper()}{self._serial:010d}",
            expiry=date.today() + timedelta(days=self.rng.randint(30, 720)),
            lot=f"L{self.rng.randint(1, 999):03d}",
        )
        return ScanData(code=code, symbology="datamatrix", station=self.cfg.name, purpose=ScanPurpose.VERIFY)

    def order(self) -> OrderData:
        self._orders += 1
        lines = {self.sku(): self.rng.randint(1, 3) for _ in range(self.rng.randint(1, 4))}
        return OrderData(
            order_id=f"{self.node}-{self._orders:06d}",
            channel="kiosk",
            lines=tuple(OrderLine(sku=s, qty=q) for s, q in lines.items()),
            fulfilment=self.rng.choice(list(Fulfilment)),
        )

    def stock(self) -> StockData:
        return StockData(
            levels=tuple(StockLevel(sku=f"SKU-{i:04d}", on_hand=self.rng.randint(0, 200)) for i in range(1, _SKUS + 1)),
            snapshot=True,
        )

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        self.ctx.device.ok()
        await self._burst()
        loops = [self._every(self._rate(self.cfg.scans_per_s), MessageType.SCAN, self.scan)]
        loops.append(self._every(self._rate(self.cfg.orders_per_min / 60.0), MessageType.ORDER, self.order))
        if self.cfg.stock_every_s > 0:
            loops.append(self._every(self.cfg.stock_every_s, MessageType.STOCK, self.stock, jitter=False))
        await asyncio.gather(*loops)
        # Nothing configured to send (all rates 0): an idle device is still a working one.
        await asyncio.get_running_loop().create_future()

    @staticmethod
    def _rate(per_s: float) -> float | None:
        return 1.0 / per_s if per_s > 0 else None

    async def _burst(self) -> None:
        left = self.cfg.burst
        if left:
            log.info("simulator %s: enqueueing a burst of %d scans", self.cfg.name, left)
        while left > 0:
            n = min(left, _BURST_CHUNK)
            await asyncio.gather(*(self.ctx.publish(MessageType.SCAN, self.scan()) for _ in range(n)))
            left -= n
        self.burst_done.set()

    async def _every(
        self, mean_s: float | None, kind: MessageType, make: Callable[[], Payload], *, jitter: bool = True
    ) -> None:
        if mean_s is None:
            return
        while True:
            # Exponential gaps: customers do not arrive on a metronome.
            await asyncio.sleep(self.rng.expovariate(1.0 / mean_s) if jitter else mean_s)
            try:
                await self.ctx.publish(kind, make())
            except OutboxFull as exc:
                log.error("simulator: %s", exc)
