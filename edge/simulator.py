"""A simulated store: scans, orders, stock snapshots and telemetry at configured rates.

It goes through the same `BusClient.publish` (and so the same outbox) as real devices would, which
is what makes it useful for demos, soak tests and the bus benchmark (`burst`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import date, timedelta

from broker.envelope import MessageType
from broker.payloads import (
    DeviceInfo,
    Fulfilment,
    OrderData,
    OrderLine,
    Payload,
    ScanData,
    ScanPurpose,
    StockData,
    StockLevel,
    TelemetryData,
)
from edge.bus import BusClient
from edge.gs1 import element_string, gtin14
from edge.outbox import OutboxFull
from edge.sysinfo import CpuMeter, read_metrics
from firmware_config import SimulatorDevice

__all__ = ["Simulator"]

log = logging.getLogger(__name__)

_SKUS = 40
_BURST_CHUNK = 2_000
"""Concurrent puts per burst step: large enough to fill group commits, small enough to bound memory."""


class Simulator:
    def __init__(self, cfg: SimulatorDevice, bus: BusClient, *, node: str, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.bus = bus
        self.node = node
        self.rng = rng or random.Random()
        self.info = DeviceInfo(kind="simulator", model=cfg.name, state="ok")
        self._serial = 0
        self._orders = 0
        self._cpu = CpuMeter()
        self.burst_done = asyncio.Event()

    # -- message makers ----------------------------------------------------------------------------

    def sku(self) -> str:
        return f"SKU-{self.rng.randint(1, _SKUS):04d}"

    def scan(self) -> ScanData:
        self._serial += 1
        item = self.rng.randint(1, _SKUS)
        gtin = gtin14(f"0950600{item:06d}")
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

    def telemetry(self) -> TelemetryData:
        metrics = read_metrics(self._cpu)
        metrics["outbox_pending"] = float(self.bus.outbox.pending)
        return TelemetryData(metrics=metrics)

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._burst()
        loops = [self._every(self._rate(self.cfg.scans_per_s), MessageType.SCAN, self.scan)]
        loops.append(self._every(self._rate(self.cfg.orders_per_min / 60.0), MessageType.ORDER, self.order))
        if self.cfg.stock_every_s > 0:
            loops.append(self._every(self.cfg.stock_every_s, MessageType.STOCK, self.stock, jitter=False))
        if self.cfg.telemetry_every_s > 0:
            loops.append(self._every(self.cfg.telemetry_every_s, MessageType.TELEMETRY, self.telemetry, jitter=False))
        await asyncio.gather(*loops)

    @staticmethod
    def _rate(per_s: float) -> float | None:
        return 1.0 / per_s if per_s > 0 else None

    async def _burst(self) -> None:
        left = self.cfg.burst
        if left:
            log.info("simulator %s: enqueueing a burst of %d scans", self.cfg.name, left)
        while left > 0:
            n = min(left, _BURST_CHUNK)
            await asyncio.gather(*(self.bus.publish(MessageType.SCAN, self.scan()) for _ in range(n)))
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
                await self.bus.publish(kind, make())
            except OutboxFull as exc:
                log.log(logging.DEBUG if kind == MessageType.TELEMETRY else logging.ERROR, "simulator: %s", exc)
