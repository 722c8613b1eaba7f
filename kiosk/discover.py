"""Finding the box's local API on the store LAN by zeroconf, for a kiosk given no URL.

The box announces `_omnishelf-box._tcp` (see `edge.kiosk.discovery`; the kiosk only speaks HTTP to
the box, so the type is spelled here too). `interface`: the IPv4 address to browse on (None: every
interface); tests browse on 127.0.0.1 only.
"""

from __future__ import annotations

import threading
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

__all__ = ["BOX_TYPE", "find_box"]

BOX_TYPE = "_omnishelf-box._tcp.local."


class _Seen(ServiceListener):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            if name not in self.names:
                self.names.append(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            if name in self.names:
                self.names.remove(name)


def find_box(timeout: float = 3.0, *, interface: str | None = None, node: str | None = None) -> str | None:
    """The URL of the first box found within `timeout` s (of node `node` if given), None if none."""
    result: list[str | None] = [None]

    def run() -> None:
        # A thread of its own: zeroconf adopts an event loop running in the calling thread.
        zc = (Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only) if interface
              else Zeroconf(ip_version=IPVersion.V4Only))
        seen = _Seen()
        browser = ServiceBrowser(zc, BOX_TYPE, listener=seen)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and result[0] is None:
                with seen.lock:
                    names = list(seen.names)
                for name in names:
                    info = zc.get_service_info(BOX_TYPE, name, timeout=1000)
                    if info is None or not info.parsed_addresses() or not info.port:
                        continue
                    if node is not None and info.properties.get(b"node") != node.encode():
                        continue
                    result[0] = f"http://{info.parsed_addresses()[0]}:{info.port}"
                    break
                else:
                    time.sleep(0.05)
        finally:
            browser.cancel()
            zc.close()

    t = threading.Thread(target=run, name="kiosk-find-box", daemon=True)
    t.start()
    t.join()
    return result[0]
