"""Named profiles: defaults for a role, and for a role on one kind of hardware, as plain data.

A profile is a partial config file. The box's own file is merged over it (mappings merge key by
key, any other value - lists included - replaces the profile's), so a site only writes what differs
from the model it bought. Profiles are data, not code, so adding one needs no schema change.

Each of the four box roles has a profile named after it (`kiosk`, `scan-station`, `signage-player`,
`gateway`) that assumes nothing about the hardware, and `<role>-<model>` profiles for the hardware
the project ships (`pi5`: a Raspberry Pi 5 with a 32 GB microSD card, the model setup mode reads
from its device tree). A claim picks `<role>-<model>` when it exists, else the role's
(`cloud.fleet.enrolment.profile_for`). A hardware profile is its role's profile with what that
hardware decides: the screen and printer of the reference build, and cache and queue sizes that fit
its storage.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HARDWARE_PROFILES", "PROFILES", "ROLE_PROFILES"]

ROLE_PROFILES: dict[str, dict[str, Any]] = {
    # Customer-facing kiosk: a touch screen and a 2D scanner.
    "kiosk": {
        "broker": {"keepalive_s": 30},
        "outbox": {"synchronous": "FULL"},
        "devices": [{"kind": "scanner", "source": "hid"}, {"kind": "display"}],
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

# What a Raspberry Pi 5 build of each role adds to (or replaces in) the role's profile.
_PI5: dict[str, dict[str, Any]] = {
    # The portrait 1080x1920 touch screen on HDMI; the receipt printer on the Pi's USB, shared as a
    # raw ESC/POS socket on the box itself.
    "kiosk": {
        "devices": [
            {"kind": "scanner", "source": "hid"},
            {"kind": "printer", "host": "127.0.0.1", "port": 9100, "profile": "escpos-80mm"},
            {"kind": "display", "width": 1080, "height": 1920},
        ],
    },
    # Product images for the scanned item, from the catalogue: 1 GB of the card.
    "scan-station": {"catalogue": {"image_budget_mb": 1024}},
    # A 1080p screen on HDMI 0; 8 GB of the card for media (campaign videos are large).
    "signage-player": {
        "devices": [{"kind": "display", "width": 1920, "height": 1080}],
        "signage": {"media_budget_mb": 8192},
    },
    # Up to 2 million queued messages (about 2 GB) fit the card beside the system.
    "gateway": {"outbox": {"max_pending": 2_000_000}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


HARDWARE_PROFILES: dict[str, dict[str, dict[str, Any]]] = {"pi5": _PI5}
"""Hardware model → role profile name → what that hardware adds."""

PROFILES: dict[str, dict[str, Any]] = {
    **ROLE_PROFILES,
    **{f"{role}-{model}": _merge(ROLE_PROFILES[role], extra)
       for model, roles in HARDWARE_PROFILES.items() for role, extra in roles.items()},
}
