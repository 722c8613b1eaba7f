"""Receipts and labels (ESC/POS via python-escpos) and the printer driver that drains the queue.

Jobs are rendered to bytes when they are queued (python-escpos's `Dummy` printer), stored in the
station's SQLite file, and sent by the printer's driver one at a time, oldest first.

Exactly once, and where it cannot be: before sending a job the driver asks the printer for its
paper state (DLE EOT 4); out of paper or not answering, the job stays queued and the driver reports
the printer unavailable, retrying with backoff. Otherwise it commits the job as `sending`, writes
the bytes, and commits `printed`. A failure while connecting or writing puts the job back in the
queue (a receipt cut short by a dropped connection is printed again whole: a torn receipt is not a
duplicate). The only window where the box cannot know is a crash of the box between the two
commits: the printer may have printed the job or not. Such jobs come back after the restart as
`uncertain`: never sent again by themselves (no double receipt), listed on the local API with a
one-request reprint (no job silently lost). A network printer acknowledges nothing per job, so no
protocol can close that window; this keeps it to the time one `sendall` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.payloads import ParsedCode, VerdictData
from edge.drivers import DriverContext
from edge.station.station_db import StationDb
from firmware_config import PrinterDevice

__all__ = ["PAPER_QUERY", "PrinterDriver", "PrinterProblem", "render_label", "render_receipt"]

log = logging.getLogger(__name__)

PAPER_QUERY = b"\x10\x04\x04"
"""DLE EOT 4: the paper roll sensor's state, answered at once (a real-time command)."""
_PAPER_END = 0x60
"""Bits 5 and 6 of the answer: the paper has run out."""
_ESCPOS_PROFILE = {"escpos-80mm": "TM-T88V", "escpos-58mm": "TM-P20"}
_IDLE_PROBE_S = 30.0
"""With nothing to print, the printer's state is checked this often (the clerk sees 'out of paper'
before the sale, not after)."""


class PrinterProblem(RuntimeError):
    """The printer cannot take jobs now (offline, out of paper, not answering); the message says which."""


def _printer(profile: str) -> Any:
    from escpos.printer import Dummy

    return Dummy(profile=_ESCPOS_PROFILE.get(profile, "TM-T88V"))


def _unit_lines(p: Any, parsed: ParsedCode | None, code: str) -> None:
    if parsed is not None and parsed.gtin:
        p.text(f"GTIN   {parsed.gtin}\n")
        if parsed.serial:
            p.text(f"Serial {parsed.serial}\n")
        if parsed.batch:
            p.text(f"Batch  {parsed.batch}\n")
        if parsed.expiry:
            p.text(f"Expiry {parsed.expiry.isoformat()}\n")
    else:
        p.text(f"Code   {code.replace(chr(29), '<GS>')[:64]}\n")


def _verified_uri(v: VerdictData) -> str:
    """What the receipt's QR carries: the unit's GS1 Digital Link (a shopper's phone opens it)."""
    parsed = v.parsed
    if parsed is not None and parsed.gtin and parsed.serial:
        return f"https://id.gs1.org/01/{parsed.gtin}/21/{parsed.serial}"
    return v.code.replace("\x1d", "")


def render_receipt(verdicts: Sequence[VerdictData], *, header: str, profile: str, when: datetime) -> bytes:
    """A sale receipt: each unit sold with its verified code (text and QR) and the verdict."""
    p = _printer(profile)
    p.set(align="center", bold=True, double_height=True)
    p.text((header or "Receipt") + "\n")
    p.set(align="left", normal_textsize=True)
    p.text(when.strftime("%Y-%m-%d %H:%M") + "\n\n")
    for v in verdicts:
        _unit_lines(p, v.parsed, v.code)
        p.text(f"Check  {v.verdict.value}{' (provisional)' if v.provisional else ''}\n")
        p.qr(_verified_uri(v), native=True, size=4)
        p.text("\n")
    p.cut()
    return bytes(p.output)


def render_label(v: VerdictData, *, header: str, profile: str, when: datetime) -> bytes:
    """A goods-in label: the unit, when it was received, and its code as a QR."""
    p = _printer(profile)
    p.set(align="left", bold=True)
    p.text(f"{header or 'Goods in'} - received {when.strftime('%Y-%m-%d %H:%M')}\n")
    p.set(align="left", normal_textsize=True)
    sscc = v.parsed.sscc if v.parsed is not None else None
    if sscc and "units" in v.evidence:
        # A case at goods-in: the count against the shipping notice, so the label says what came in.
        p.text(f"SSCC   {sscc}\n")
        p.text(f"{v.message[:120]}\n")
        if v.evidence.get("expected") is not None:
            p.text(f"Notice {v.evidence['expected']} units\n")
        p.qr(f"https://id.gs1.org/00/{sscc}", native=True, size=4)
    else:
        _unit_lines(p, v.parsed, v.code)
        p.qr(_verified_uri(v), native=True, size=4)
    p.cut()
    return bytes(p.output)


class _Connection:
    """One connection to the printer, by the configured means (python-escpos's printer classes)."""

    def __init__(self, cfg: PrinterDevice, path: Path | None) -> None:
        from escpos import printer

        self.cfg = cfg
        self.path = path
        if cfg.connection == "network":
            self.dev: Any = printer.Network(cfg.host, cfg.port, timeout=cfg.timeout_s)
        elif cfg.connection == "usb":
            self.dev = printer.Usb(cfg.usb_vendor, cfg.usb_product, timeout=int(cfg.timeout_s * 1000))
        elif cfg.connection == "serial":
            self.dev = printer.Serial(str(path), baudrate=cfg.baud, timeout=cfg.timeout_s)
        else:
            # Appended to, one job after the other (python-escpos's File truncates on every open).
            self.dev = None
        self.where = f"{cfg.host}:{cfg.port}" if cfg.connection == "network" else str(path or f"usb {cfg.usb_vendor:04x}")

    def open(self) -> None:
        if self.dev is None:
            return
        try:
            self.dev.open()
        except Exception as exc:
            raise PrinterProblem(f"offline: cannot reach the printer at {self.where} ({_why(exc)})") from None

    def paper(self) -> None:
        """Raise `PrinterProblem` unless the printer says it has paper."""
        if not self.cfg.status_query or self.cfg.connection == "file":
            return
        try:
            self.dev._raw(PAPER_QUERY)
            answer = self.dev._read()
        except Exception as exc:
            raise PrinterProblem(
                f"offline: the printer at {self.where} did not answer a status query ({_why(exc)}); "
                "if it cannot answer them, set status_query: false"
            ) from None
        if not answer:
            raise PrinterProblem(f"offline: the printer at {self.where} closed the connection")
        if answer[0] & _PAPER_END:
            raise PrinterProblem(f"out of paper: load a roll in the printer at {self.where}")

    def send(self, data: bytes) -> None:
        try:
            if self.dev is None:
                assert self.path is not None
                with self.path.open("ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return
            self.dev._raw(data)
        except Exception as exc:
            raise PrinterProblem(f"offline: sending to the printer at {self.where} failed ({_why(exc)})") from None

    def close(self) -> None:
        if self.dev is not None:
            with contextlib.suppress(Exception):
                self.dev.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


class PrinterDriver:
    """Drains the print queue to one printer; raises `PrinterProblem` for the supervisor to retry."""

    def __init__(self, cfg: PrinterDevice, ctx: DriverContext, db: StationDb, wake: asyncio.Event, path: Path | None,
                 on_state: Callable[[str, str, str | None], None]) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.db = db
        self.wake = wake
        self.path = path
        self.on_state = on_state
        self.printed = 0

    def _conn(self) -> _Connection:
        if self.cfg.profile.startswith("zpl"):
            raise PrinterProblem(f"profile {self.cfg.profile!r} is not supported yet: expected escpos-58mm or escpos-80mm")
        return _Connection(self.cfg, self.path)

    def _probe(self) -> None:
        conn = self._conn()
        conn.open()
        try:
            conn.paper()
        finally:
            conn.close()

    def _print(self, job_id: int, data: bytes) -> None:
        conn = self._conn()
        try:
            conn.open()
            conn.paper()
        except PrinterProblem as exc:
            conn.close()
            self.db.job_failed(job_id, str(exc))
            raise
        try:
            self.db.job_sending(job_id)
            try:
                conn.send(data)
            except PrinterProblem as exc:
                self.db.job_back_to_queue(job_id, str(exc))
                raise
            self.db.job_printed(job_id)
        finally:
            conn.close()

    async def run(self) -> None:
        probe_due = True
        try:
            while True:
                # Cleared before looking, never after: a job queued while the queue is read or the
                # printer probed sets it again, instead of waiting for the next idle probe.
                self.wake.clear()
                job = self.db.next_job(self.cfg.name)
                if job is None:
                    if probe_due:
                        await asyncio.to_thread(self._probe)
                        self._ready()
                        probe_due = False
                        continue
                    try:
                        await asyncio.wait_for(self.wake.wait(), _IDLE_PROBE_S)
                    except TimeoutError:
                        probe_due = True
                    continue
                await asyncio.to_thread(self._print, job.id, job.data)
                self.printed += 1
                self._ready()
        except PrinterProblem as exc:
            state = "out_of_paper" if str(exc).startswith("out of paper") else "offline"
            self.on_state(self.cfg.name, state, str(exc))
            raise

    def _ready(self) -> None:
        self.on_state(self.cfg.name, "ready", None)
        self.ctx.device.ok("ready")
