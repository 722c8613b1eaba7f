"""Named hardware profiles: defaults for a kind of box, as plain data.

A profile is a partial config file. The box's own file is merged over it (mappings merge key by
key, any other value - lists included - replaces the profile's), so a site only writes what differs
from the model it bought. Profiles are data, not code, so adding one needs no schema change.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES"]

PROFILES: dict[str, dict[str, Any]] = {
    # Customer-facing kiosk: touch screen, a 2D scanner and a receipt printer on one Pi 5.
    "kiosk-pi5": {
        "broker": {"keepalive_s": 30},
        "outbox": {"synchronous": "FULL"},
        "devices": [
            {"kind": "scanner", "source": "hid"},
            {"kind": "printer", "host": "127.0.0.1", "port": 9100, "profile": "escpos-80mm"},
            {"kind": "display", "width": 1080, "height": 1920},
        ],
    },
    # Back-of-store receiving/verification: scanning only, a deep outbox for long outages.
    "scan-station": {
        "broker": {"keepalive_s": 30},
        "outbox": {"max_pending": 500_000, "synchronous": "FULL"},
        "devices": [{"kind": "scanner", "source": "hid"}],
    },
    # Signage screen: only proof-of-play and telemetry; losing the last second on power cut is
    # acceptable, SD card wear is not.
    "signage-player": {
        "broker": {"keepalive_s": 60},
        "outbox": {"synchronous": "NORMAL", "retain_acked": 2_000},
        "devices": [{"kind": "display", "width": 1920, "height": 1080}],
    },
    # Store gateway: no peripherals of its own; relays for the store, so the deepest outbox.
    "gateway": {
        "broker": {"keepalive_s": 30},
        "outbox": {"max_pending": 1_000_000, "synchronous": "FULL"},
        "devices": [],
    },
}
