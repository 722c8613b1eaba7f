"""The box's local API announced on the store LAN by zeroconf (mDNS/DNS-SD), so a kiosk screen that
was not told a URL finds its box: service type `_omnishelf-box._tcp`, instance = the node id, TXT
`node`, `store` and `api` (the route prefix the kiosk uses).

The announcement goes out on the interface the local API listens on: a box whose API listens on
127.0.0.1 (the default: the kiosk runs on the box itself) announces on loopback only, so nothing is
multicast on the store's network unless the API is opened to it (`local_api.host`).
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

from zeroconf import IPVersion, NonUniqueNameException, ServiceInfo, Zeroconf

__all__ = ["BOX_TYPE", "Announcement", "announce"]

log = logging.getLogger(__name__)

BOX_TYPE = "_omnishelf-box._tcp.local."


def _lan_address() -> str:
    # The address this host would use on the LAN (a UDP connect sends no packet).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class Announcement:
    """The box's API registered for as long as this object is open (`close` says goodbye)."""

    def __init__(self, zc: Zeroconf, info: ServiceInfo) -> None:
        self.zc, self.info = zc, info

    @property
    def name(self) -> str:
        return str(self.info.name)

    def close(self) -> None:
        try:
            self.zc.unregister_service(self.info)
        finally:
            self.zc.close()


def announce(api_url: str, node: str, store: str) -> Announcement:
    """Register the API at `api_url` (as the agent reports it); blocks ~2 s (zeroconf's probing)."""
    parts = urlsplit(api_url)
    host, port = parts.hostname or "127.0.0.1", int(parts.port or 80)
    wildcard = host in ("0.0.0.0", "::", "")
    address = _lan_address() if wildcard else host
    zc = Zeroconf(ip_version=IPVersion.V4Only) if wildcard else Zeroconf(interfaces=[host], ip_version=IPVersion.V4Only)
    info = ServiceInfo(BOX_TYPE, f"{node}.{BOX_TYPE}", addresses=[socket.inet_aton(address)], port=port,
                       properties={"node": node, "store": store, "api": "/shelf"}, server=f"{node}.local.")
    try:
        # Two boxes of one name on a LAN (a clone, a test run beside another): the second is renamed.
        zc.register_service(info, allow_name_change=True)
    except (NonUniqueNameException, OSError):
        zc.close()
        raise
    return Announcement(zc, info)
