"""Network printers on the store LAN: found by zeroconf, tested with a raw ESC/POS page, and turned
into the box config's `printer` device. (The station's print queue is not here: this only checks
that a printer answers before it goes into a config.)"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from firmware_config import DeviceConfig, PrinterDevice
from provisioning import lan

__all__ = ["FoundPrinter", "PrinterError", "devices_with_printer", "find_printers", "printer_device", "test_page", "test_print"]

ESC, GS = b"\x1b", b"\x1d"
_device: TypeAdapter[DeviceConfig] = TypeAdapter(DeviceConfig)


class PrinterError(RuntimeError):
    """The printer could not be reached or did not take the page (one line)."""


@dataclass(frozen=True, slots=True)
class FoundPrinter:
    name: str
    host: str
    port: int
    kind: str
    """`raw` (_pdl-datastream, ESC/POS on port 9100) or `lpd` (_printer)."""


def find_printers(interface: str | None, timeout: float = 2.0) -> list[FoundPrinter]:
    out = []
    for f in lan.browse(lan.PRINTER_TYPES, interface=interface, timeout=timeout):
        kind = "raw" if f.type.startswith("_pdl-datastream") else "lpd"
        out.append(FoundPrinter(f.name.split(".")[0], f.address, f.port, kind))
    return out


def test_page(label: str) -> bytes:
    """A short ESC/POS page: initialise, centred bold title, a line, feed and partial cut."""
    text = label.encode("ascii", "replace")[:120]
    return (ESC + b"@" + ESC + b"a\x01" + ESC + b"E\x01" + text + b"\n" + ESC + b"E\x00"
            + b"printer OK\n" + b"-" * 32 + b"\n" + ESC + b"d\x04" + GS + b"V\x42\x00")


def test_print(host: str, port: int = 9100, label: str = "omnishelf test page", timeout: float = 5.0) -> int:
    data = test_page(label)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(data)
    except OSError as exc:
        raise PrinterError(f"printer {host}:{port} did not take the test page: {exc.strerror or exc}") from None
    return len(data)


def printer_device(p: FoundPrinter, name: str = "printer") -> PrinterDevice:
    """The config entry for a found raw-socket printer (validated by the firmware_config schema)."""
    if p.kind != "raw":
        raise PrinterError(f"printer {p.name} speaks LPD, not raw ESC/POS on a socket: expected a _pdl-datastream printer")
    return PrinterDevice(kind="printer", name=name, host=p.host, port=p.port)


def devices_with_printer(devices: list[dict[str, Any]], printer: PrinterDevice) -> list[dict[str, Any]]:
    """A box's `devices` with `printer` added: in place of a printer already at the same address
    (keeping that one's name), else appended under a name no other device has. Every other device
    stays as it was (a pushed list replaces the box's whole list)."""
    new = printer.model_dump(mode="json", exclude_defaults=True)
    same = next((i for i, d in enumerate(devices) if d.get("kind") == "printer" and d.get("connection", "network") == "network"
                 and d.get("host") == printer.host and int(d.get("port", 9100)) == printer.port), None)
    if same is not None:
        return [*devices[:same], new | {"name": devices[same].get("name", "printer")}, *devices[same + 1:]]
    taken = {_device.validate_python(d).name for d in devices}
    name = next(n for n in (printer.name, *(f"{printer.name}-{i}" for i in range(2, len(devices) + 3))) if n not in taken)
    return [*devices, new | {"name": name}]
