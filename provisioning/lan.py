"""Zeroconf (mDNS/DNS-SD) on the store LAN: a box in setup mode advertises itself, the technician's
laptop finds it; network printers are found the same way.

`interface`: the IPv4 address to bind to (None: every interface). Tests bind to 127.0.0.1 and never
multicast on the machine's real network (see STACK-NOTES)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

__all__ = ["PRINTER_TYPES", "SETUP_TYPE", "Advertisement", "Found", "advertise", "browse", "zeroconf"]

SETUP_TYPE = "_omnishelf-setup._tcp.local."
PRINTER_TYPES = ("_pdl-datastream._tcp.local.", "_printer._tcp.local.")
"""Raw-socket (port 9100, ESC/POS) printers and LPD printers, as network printers announce them."""


@dataclass(frozen=True, slots=True)
class Found:
    """One service seen on the LAN."""

    name: str
    type: str
    address: str
    port: int
    properties: tuple[tuple[str, str], ...]
    """The TXT record, as sorted (key, value) pairs."""

    def prop(self, key: str, default: str = "") -> str:
        return dict(self.properties).get(key, default)


@contextmanager
def zeroconf(interface: str | None) -> Iterator[Zeroconf]:
    zc = Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only) if interface else Zeroconf(ip_version=IPVersion.V4Only)
    try:
        yield zc
    finally:
        zc.close()


def _local_address(interface: str | None) -> str:
    if interface:
        return interface
    # The address this host would use on the LAN (no packet is sent by a UDP connect).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            addr: str = s.getsockname()[0]
            return addr
        except OSError:
            return "127.0.0.1"


class Advertisement:
    """A service registered for as long as this object is open."""

    def __init__(self, zc: Zeroconf, info: ServiceInfo) -> None:
        self.zc = zc
        self.info = info

    def close(self) -> None:
        self.zc.unregister_service(self.info)


def advertise(zc: Zeroconf, type_: str, instance: str, port: int, properties: dict[str, str],
              interface: str | None) -> Advertisement:
    address = _local_address(interface)
    info = ServiceInfo(
        type_, f"{instance}.{type_}", addresses=[socket.inet_aton(address)], port=port, properties=properties,
        server=f"{instance}.local.",
    )
    zc.register_service(info)
    return Advertisement(zc, info)


class _Collector(ServiceListener):
    def __init__(self) -> None:
        self.names: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.add((type_, name))

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.discard((type_, name))


def browse(types: Sequence[str], *, interface: str | None, timeout: float = 1.5, want: str | None = None) -> list[Found]:
    """Services of `types` seen within `timeout` seconds (sooner once an instance whose TXT `serial`
    is `want` has been resolved).

    Runs on a thread of its own: zeroconf adopts an event loop running in the calling thread (a
    caller inside asyncio, or Playwright's sync API), which would not turn while we wait here."""
    result: list[list[Found]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(_browse(types, interface, timeout, want))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name="zeroconf-browse", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def _browse(types: Sequence[str], interface: str | None, timeout: float, want: str | None) -> list[Found]:
    found: dict[str, Found] = {}
    with zeroconf(interface) as zc:
        collector = _Collector()
        browser = ServiceBrowser(zc, list(types), listener=collector)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with collector.lock:
                    pending = [n for n in collector.names if n[1] not in found]
                for type_, name in pending:
                    info = zc.get_service_info(type_, name, timeout=1000)
                    if info is None or not info.parsed_addresses():
                        continue
                    props = tuple(sorted(
                        (k.decode(errors="replace"), (v or b"").decode(errors="replace")) for k, v in info.properties.items()
                    ))
                    found[name] = Found(name, type_, info.parsed_addresses()[0], int(info.port or 0), props)
                if want is not None and any(f.prop("serial") == want for f in found.values()):
                    break
                time.sleep(0.05)
        finally:
            browser.cancel()
    return sorted(found.values(), key=lambda f: f.name)
