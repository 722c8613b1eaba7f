"""The scanning station as a box component.

A scan (from a scanner driver, or `POST /station/scans`) is committed to the outbox as a `scan`
message first (never lost offline; its msg_id is the scan's id), then recorded here. The cloud
answers with a `verdict` command whose `corr` is that id. While no cloud host is online, or when the
answer has not come within `station.final_wait_s`, the box answers from its offline lists with a
provisional verdict (rule `offline_cache`); the final one replaces it when it arrives, and a
provisional non-alarm that turns into an alarm raises an alert on the local API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.envelope import Envelope, MessageType
from broker.payloads import TRACE_LISTS as LISTS_COMMAND
from broker.payloads import (
    ClerkRef,
    CommandData,
    ScanData,
    ScanPurpose,
    StockData,
    StockLevel,
    StockReason,
    TraceListsArgs,
    VerdictClass,
    VerdictData,
)
from edge.component import BackgroundTask, CommandHandler, CommandRefused, Component, ComponentContext, ComponentError
from edge.devices import UNAVAILABLE
from edge.drivers import DeviceHandle, Driver, DriverContext, DriverFactory
from edge.localapi import Route
from edge.outbox import Row
from edge.station.lists import offline_verdict
from edge.station.printing import PrinterDriver, render_label, render_receipt
from edge.station.scanners import CameraScanner, Decoded, HidScanner, LineScanner
from edge.station.station_db import PrintJob, StationDb
from firmware_config import DeviceConfig, PrinterDevice, ScannerDevice

__all__ = ["PrintRefused", "StationComponent"]

log = logging.getLogger(__name__)


class PrintRefused(ValueError):
    """A print request that cannot be queued (no printer, unknown scan, …); the message says why."""


class StationComponent(Component):
    name = "station"

    def __init__(self, ctx: ComponentContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.station
        try:
            self.db = StationDb(ctx.paths.station, keep_scans=self.cfg.keep_verdicts, keep_jobs=self.cfg.print_jobs_keep)
        except Exception as exc:
            raise ComponentError(f"station.path {ctx.paths.station}: cannot open the station database ({exc})") from None
        self.base = ctx.config.base_dir or ctx.paths.node_dir
        printers = [d for d in ctx.config.devices if isinstance(d, PrinterDevice)]
        if self.cfg.printer is not None and not any(p.name == self.cfg.printer for p in printers):
            raise ComponentError(f"station.printer {self.cfg.printer!r} is not a printer in 'devices'")
        self.printer = next((p for p in printers if p.name == self.cfg.printer), printers[0] if printers else None)
        self.printer_states: dict[str, dict[str, Any]] = {p.name: {"state": "starting", "detail": None} for p in printers}
        if self.printer is not None:
            ctx.shared.print_queue = self  # the order desk's slips go through the same durable queue
        self.uncertain_jobs = self.db.jobs_uncertain_after_restart()
        if self.uncertain_jobs:
            log.warning("station: print job(s) %s may or may not have printed before the restart; listed as uncertain",
                        self.uncertain_jobs)
        self.scanners: dict[str, CameraScanner | HidScanner | LineScanner] = {}
        self.scanner_cfgs = [d for d in ctx.config.devices if isinstance(d, ScannerDevice)]
        self._handles: dict[str, DeviceHandle] = {}
        """Each driven device's handle: the agent's supervisor says there when its driver failed."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._print_wake: dict[str, asyncio.Event] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._stopped = asyncio.Event()
        self._adjusting = threading.Lock()
        """One adjustment at a time: a retried request cannot slip past the check for its request_id."""
        self.counts = {"scans": 0, "final": 0, "provisional": 0, "lists_applied": 0, "refused_verdicts": 0,
                       "adjustments": 0}

    # -- wiring ------------------------------------------------------------------------------------

    def drivers(self) -> Mapping[str, DriverFactory]:
        return {"scanner": self._scanner_driver, "printer": self._printer_driver}

    def _place(self, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else self.base / path

    def _scanner_driver(self, cfg: DeviceConfig, ctx: DriverContext) -> Driver:
        assert isinstance(cfg, ScannerDevice)
        path = self._place(cfg.path)
        driver: CameraScanner | HidScanner | LineScanner
        if cfg.source == "camera":
            driver = CameraScanner(cfg, ctx, self._from_scanner, path)
        elif cfg.source == "hid":
            driver = HidScanner(cfg, ctx, self._from_scanner, path)
        else:
            driver = LineScanner(cfg, ctx, self._from_scanner, path)
        self.scanners[cfg.name] = driver
        self._handles[cfg.name] = ctx.device
        return driver

    def _printer_driver(self, cfg: DeviceConfig, ctx: DriverContext) -> Driver:
        assert isinstance(cfg, PrinterDevice)
        wake = self._print_wake.setdefault(cfg.name, asyncio.Event())
        wake.set()
        self._handles[cfg.name] = ctx.device
        return PrinterDriver(cfg, ctx, self.db, wake, self._place(cfg.path), self._printer_state)

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {MessageType.VERDICT: self._on_verdict}

    def named_commands(self) -> Mapping[str, CommandHandler]:
        return {LISTS_COMMAND: self._on_lists}

    def routes(self) -> Sequence[Route]:
        from edge.station.api import station_routes

        return station_routes(self)

    def tasks(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("station", self._run),)

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._stopped.wait()

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self._stopped.set()

    def close(self) -> None:
        self.db.close()

    def status(self) -> Mapping[str, Any]:
        return {
            **self.db.counts(), **{f"{k}_count": v for k, v in self.counts.items()},
            "cloud_online": self.ctx.cloud_reachable(),
            "lists": self.db.list_counts(),
            "printers": self.printer_summary(),
            "print_jobs": self.db.job_counts(),
            "scanners": self.scanner_summary(),
        }

    def _device_state(self, name: str) -> tuple[str, str | None]:
        """What the agent's supervisor last heard from the device's driver: ('ok' | 'unavailable' |
        'starting', detail). The handle (edge.devices.SupervisedDevice) starts 'unavailable' before
        its driver ever ran, which is 'starting' here, not a failure."""
        handle = self._handles.get(name)
        info = getattr(handle, "info", None)
        if info is None:
            return "starting", None
        if getattr(info, "state", None) == UNAVAILABLE:
            if not getattr(handle, "failures", 0):
                return "starting", None
            return "unavailable", str(getattr(info, "detail", None) or "unavailable")
        return "ok", getattr(info, "detail", None)

    def printer_summary(self) -> dict[str, dict[str, Any]]:
        """Each printer: state (starting, ready, out_of_paper, offline, unavailable), detail, since,
        and its jobs waiting (`queued`: queued or being sent)."""
        waiting = self.db.jobs_waiting()
        out: dict[str, dict[str, Any]] = {}
        for name, st in list(self.printer_states.items()):
            row = {**st, "queued": waiting.get(name, 0), "default": self.printer is not None and name == self.printer.name}
            state, detail = self._device_state(name)
            # The driver tells offline and out of paper itself; a driver that cannot even start
            # (no such USB device, a serial port missing) only the supervisor knows about.
            if state == "unavailable" and row["state"] in ("starting", "ready"):
                row.update(state="unavailable", detail=detail)
            out[name] = row
        return out

    def scanner_summary(self) -> dict[str, dict[str, Any]]:
        """Each configured scanner: state (starting, ready, unavailable, ended), detail, and its counters."""
        out: dict[str, dict[str, Any]] = {}
        for cfg in self.scanner_cfgs:
            driver = self.scanners.get(cfg.name)
            row: dict[str, Any] = {"source": cfg.source, "purpose": cfg.purpose, "state": "starting", "detail": None}
            if driver is not None:
                row.update(_scanner_status(driver))
                state, detail = self._device_state(cfg.name)
                row.update(state={"ok": "ready"}.get(state, state), detail=detail)
                if row.get("ended"):
                    row.update(state="ended", detail="the video source ended")
            out[cfg.name] = row
        return out

    # -- scans -------------------------------------------------------------------------------------

    async def _from_scanner(self, cfg: ScannerDevice, decoded: Decoded) -> None:
        try:
            await self.scan(decoded.code, decoded.symbology, station=cfg.name, purpose=ScanPurpose(cfg.purpose),
                            source=f"scanner:{cfg.name}")
        except Exception:
            # The scanner keeps scanning; the clerk sees no verdict and scans again.
            log.exception("station: scan from %s could not be recorded", cfg.name)

    async def scan(self, code: str, symbology: str | None, *, station: str, purpose: ScanPurpose, source: str,
                   clerk: ClerkRef | None = None) -> uuid.UUID:
        """Record a scan: outbox first (raises `OutboxFull`, or `ValidationError` for a bad code)."""
        # Offline, the box answers first and says so in the scan: the cloud raises an alert at HQ
        # when its final verdict overturns the one the clerk acted on.
        offline = None if self.ctx.cloud_reachable() else offline_verdict(
            self.db, uuid.UUID(int=0), code, symbology, purpose.value)
        data = ScanData(code=code, symbology=symbology, station=station, purpose=purpose,
                        provisional=offline.verdict if offline else None, clerk=clerk)
        row = await self.ctx.publish(MessageType.SCAN, data)
        scan_id = row.msg_id
        self.db.add_scan(str(scan_id), data.code, symbology, data.station, purpose.value, source,
                         clerk.model_dump() if clerk else None)
        self.counts["scans"] += 1
        if offline is not None:
            self._record_provisional(offline.model_copy(update={"scan_id": scan_id}), data)
        elif self.cfg.final_wait_s > 0:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(self.cfg.final_wait_s, self._provisional_if_pending, scan_id, data)
            self._timers.add(handle)
            loop.call_later(self.cfg.final_wait_s + 0.01, self._timers.discard, handle)
        return scan_id

    def _provisional_if_pending(self, scan_id: uuid.UUID, data: ScanData) -> None:
        if self.db.verdict(str(scan_id)) is None:
            self._provisional(scan_id, data)

    def _provisional(self, scan_id: uuid.UUID, data: ScanData) -> None:
        self._record_provisional(offline_verdict(self.db, scan_id, data.code, data.symbology, data.purpose.value), data)

    def _record_provisional(self, verdict: VerdictData, data: ScanData) -> None:
        outcome, _ = self.db.set_verdict(verdict)
        if outcome != "kept final":
            self.counts["provisional"] += 1
            self._after_verdict(verdict, data.purpose.value)

    def submit_threadsafe(self, code: str, symbology: str | None, station: str, purpose: ScanPurpose,
                          clerk: ClerkRef | None = None) -> uuid.UUID:
        """`scan` from an API worker thread (the outbox lives on the event loop)."""
        if self.loop is None:
            raise RuntimeError("the station is starting; try again in a moment")
        fut = asyncio.run_coroutine_threadsafe(
            self.scan(code, symbology, station=station, purpose=purpose, source="api", clerk=clerk), self.loop)
        return fut.result(timeout=10)

    def adjust_stock(self, sku: str, delta: int, reason: StockReason, note: str | None, clerk: ClerkRef | None,
                     request_id: str | None = None) -> tuple[dict[str, Any], bool]:
        """A clerk's stock adjustment, up through the outbox as a `stock` delta (from an API worker
        thread). Returns (the answer: adjustment_id, sku, delta, reason, note, clerk, seq,
        on_hand_after; new). The same `request_id` again returns the first answer and sends nothing
        (a request retried after a timeout adjusts once)."""
        if self.loop is None:
            raise RuntimeError("the station is starting; try again in a moment")
        with self._adjusting:
            if request_id is not None and (done := self.db.adjustment(request_id)) is not None:
                return done, False
            on_hand: int | None = None
            lookup = self.ctx.shared.stock
            if lookup is not None:
                here = lookup.station_stock(sku, refresh=False).get("here")  # the clerk waits on no network
                if isinstance(here, dict) and isinstance(here.get("on_hand"), int):
                    on_hand = max(0, here["on_hand"] + delta)
            ref = str(uuid.uuid4())
            # `on_hand` is the box's own count after the change, which the cloud does not take for a
            # delta; 0 when the box knows no count.
            level = StockLevel(sku=sku, on_hand=on_hand or 0, delta=delta, reason=reason.value, clerk=clerk, note=note,
                               ref=ref)

            async def publish() -> Row:
                return await self.ctx.publish(MessageType.STOCK, StockData(levels=(level,)))

            row = asyncio.run_coroutine_threadsafe(publish(), self.loop).result(timeout=10)
            self.counts["adjustments"] += 1
            answer = {"adjustment_id": ref, "sku": sku, "delta": delta, "reason": reason.value, "note": note,
                      "clerk": clerk.model_dump() if clerk else None, "seq": int(row.seq), "on_hand_after": on_hand}
            self.db.adjusted(request_id or f"adjustment-{ref}", answer)
            return answer, True

    def wait_verdict(self, scan_id: str, timeout: float) -> VerdictData | None:
        """The scan's verdict, waiting up to `timeout` s for one (final or provisional)."""
        deadline = time.monotonic() + timeout
        with self.db.changed:
            while (v := self.db.verdict(scan_id)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.db.changed.wait(left)
            return v

    # -- commands ----------------------------------------------------------------------------------

    async def _on_verdict(self, env: Envelope) -> str:
        if not isinstance(env.data, VerdictData):
            raise CommandRefused(f"a verdict command carries VerdictData, got {type(env.data).__name__}")
        v = env.data
        if env.corr is not None and env.corr != v.scan_id:
            self.counts["refused_verdicts"] += 1
            raise CommandRefused(f"verdict for scan {v.scan_id} came with corr {env.corr}: expected the scan's id")
        if v.provisional:
            self.counts["refused_verdicts"] += 1
            raise CommandRefused("the cloud's verdicts are final: provisional=true is the box's own")
        scan = self.db.scan(str(v.scan_id))
        outcome, before = self.db.set_verdict(v)
        if outcome in ("stored", "replaced"):
            self.counts["final"] += 1
            self._after_verdict(v, scan["purpose"] if scan else "verify")
        was = f" (was provisional {before.verdict.value})" if before is not None and before.provisional else ""
        return f"{outcome} {v.verdict.value} for scan {v.scan_id}{was}"

    def _after_verdict(self, v: VerdictData, purpose: str) -> None:
        parsed = v.parsed
        if v.verdict == VerdictClass.GENUINE and purpose in ("sell", "return") and parsed and parsed.gtin and parsed.serial:
            # Offline, the next scan of a sold unit must not look genuine again; a returned one may.
            self.db.mark_sold(parsed.gtin, parsed.serial, sold=purpose == "sell")
        if (purpose == "receive" and not v.provisional and self.printer is not None and v.parsed is not None
                and v.parsed.sscc and "units" in v.evidence):
            # A case received at goods-in always gets its label (the count against the notice),
            # alarm or not: the intruders set aside need it as much as the shelf does.
            try:
                self.print_label(str(v.scan_id), request_id=f"goods-in-{v.scan_id}")
            except PrintRefused as exc:
                log.warning("station: goods-in label for %s: %s", v.scan_id, exc)
            return
        if self.cfg.auto_print and not v.provisional and self.printer is not None and v.verdict == VerdictClass.GENUINE:
            try:
                if purpose == "sell":
                    self.print_receipt([str(v.scan_id)], request_id=f"auto-receipt-{v.scan_id}")
                elif purpose == "receive":
                    self.print_label(str(v.scan_id), request_id=f"auto-label-{v.scan_id}")
            except PrintRefused as exc:
                log.warning("station: auto print for %s: %s", v.scan_id, exc)

    async def _on_lists(self, env: Envelope) -> str:
        assert isinstance(env.data, CommandData)
        try:
            args = TraceListsArgs.model_validate(env.data.args)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "(args)"
            raise CommandRefused(f"trace_lists args field '{where}': {err['msg']}") from None
        held = self.db.list_version
        if args.version < held:
            return f"version {args.version} is older than the held version {held}: ignored"
        units = await asyncio.to_thread(self.db.put_list_part, args.version, args.part, args.parts, args.model_dump(mode="json"))
        if units is None:
            return f"version {args.version}: part {args.part + 1} of {args.parts} stored"
        self.counts["lists_applied"] += 1
        return f"version {args.version} applied ({units} units)"

    # -- printing ----------------------------------------------------------------------------------

    def _printer_state(self, name: str, state: str, detail: str | None) -> None:
        before = self.printer_states.get(name, {})
        self.printer_states[name] = {"state": state, "detail": detail, "since": datetime.now(UTC).isoformat(timespec="seconds")}
        if before.get("state") != state or before.get("detail") != detail:
            self.db.emit("printer", {"printer": name, "state": state, "detail": detail})

    def _queued(self, printer: str) -> None:
        wake = self._print_wake.get(printer)
        if wake is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(wake.set)

    def _final_or_any(self, scan_id: str) -> VerdictData:
        v = self.db.verdict(scan_id)
        if v is None:
            raise PrintRefused(f"scan {scan_id} has no verdict yet: print once it is checked")
        return v

    def print_receipt(self, scan_ids: Sequence[str], *, request_id: str | None = None) -> tuple[PrintJob, bool]:
        if self.printer is None:
            raise PrintRefused("this station has no printer in 'devices'")
        verdicts = [self._final_or_any(s) for s in scan_ids]
        data = render_receipt(verdicts, header=self.cfg.receipt_header, profile=self.printer.profile, when=datetime.now())
        job, new = self.db.enqueue(self.printer.name, "receipt", data, scan_id=scan_ids[0], request_id=request_id)
        self._queued(self.printer.name)
        return job, new

    def print_label(self, scan_id: str, *, request_id: str | None = None) -> tuple[PrintJob, bool]:
        if self.printer is None:
            raise PrintRefused("this station has no printer in 'devices'")
        data = render_label(self._final_or_any(scan_id), header=self.cfg.receipt_header, profile=self.printer.profile,
                            when=datetime.now())
        job, new = self.db.enqueue(self.printer.name, "label", data, scan_id=scan_id, request_id=request_id)
        self._queued(self.printer.name)
        return job, new

    def queue_document(self, kind: str, render: Callable[[str], bytes], *, request_id: str) -> tuple[int, bool]:
        """Another component's document (the order desk's slips): see `edge.component.PrintQueue`."""
        if self.printer is None:
            raise PrintRefused("this station has no printer in 'devices'")
        job, new = self.db.enqueue(self.printer.name, kind, render(self.printer.profile), scan_id=None,
                                   request_id=request_id)
        self._queued(self.printer.name)
        return job.id, new

    def reprint(self, job_id: int) -> PrintJob | None:
        job = self.db.requeue(job_id)
        if job is not None:
            self._queued(job.printer)
        return job


def _scanner_status(s: CameraScanner | HidScanner | LineScanner) -> dict[str, Any]:
    if isinstance(s, CameraScanner):
        st = s.stats
        return {"source": "camera", "frames": st.frames, "decoded": st.decoded, "scans": st.emitted,
                "fps": round(st.fps, 1), "ended": st.ended}
    return {"source": s.cfg.source, "lines": s.lines}
