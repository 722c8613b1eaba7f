"""The box's `network` section, as the box checks it: the Wi-Fi passphrase file must be there and
hold a passphrase (a push naming a file the box lacks is rejected, not applied), and a one-line
summary for `omnishelf edge check-config` and `/status`.

The agent runs unprivileged and changes none of the operating system's network settings itself;
the section is validated by the same schema on the cloud before a push and on the box on receipt.
"""

from __future__ import annotations

import re
from pathlib import Path

from firmware_config import BoxPaths, NodeConfig

__all__ = ["NetworkCheckError", "check_network", "network_summary"]

_HEX_PSK = re.compile(r"^[0-9a-fA-F]{64}$")


class NetworkCheckError(ValueError):
    """`field 'network.…': why` (the form a config push's rejection takes)."""


def _passphrase_problem(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not text: expected the Wi-Fi passphrase alone"
    if _HEX_PSK.match(text) or (8 <= len(text) <= 63 and text.isascii() and text.isprintable()):
        return None
    return f"{path} does not hold a WPA passphrase: expected 8-63 printable ASCII characters (or 64 hex digits), alone"


def check_network(cfg: NodeConfig, paths: BoxPaths) -> None:
    """Raise `NetworkCheckError` when the box cannot use its `network` section as written."""
    if cfg.network.wifi is not None and paths.wifi_psk is not None:
        problem = _passphrase_problem(paths.wifi_psk)
        if problem:
            raise NetworkCheckError(f"field 'network.wifi.psk_file': {problem}")


def network_summary(cfg: NodeConfig) -> str:
    """E.g. `wifi 'Store' (GB), static 192.168.1.20/24 via 192.168.1.1, dns 192.168.1.1, ntp ntp.example.com`."""
    net = cfg.network
    parts = []
    if net.hostname:
        parts.append(f"hostname {net.hostname}")
    if net.wifi is not None:
        parts.append(f"wifi {net.wifi.ssid!r}" + (f" ({net.wifi.country})" if net.wifi.country else ""))
    else:
        parts.append("wired")
    if net.ipv4 == "static":
        parts.append(f"static {net.address} via {net.gateway}, dns {' '.join(net.dns)}")
    else:
        parts.append("dhcp")
    if net.ntp:
        parts.append(f"ntp {' '.join(net.ntp)}")
    return ", ".join(parts)
