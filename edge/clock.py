"""Whether the box's clock is NTP-synchronised (the envelope's `clock_synced`).

The kernel knows: `adjtimex` returns TIME_ERROR while the clock is unsynchronised, whatever NTP
client the image runs (systemd-timesyncd, chrony, ntpd). The answer is cached briefly because it
is asked for every message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time

__all__ = ["clock_synced"]

_TIME_ERROR = 5
_CACHE_S = 10.0
_cached: tuple[float, bool] = (-_CACHE_S, True)


def _query() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        # struct timex is ~208 bytes on 64-bit Linux; a zeroed, larger buffer means modes=0 (read only).
        buf = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return True
    return state not in (-1, _TIME_ERROR)


def clock_synced() -> bool:
    global _cached
    now = time.monotonic()
    if now - _cached[0] >= _CACHE_S:
        _cached = (now, _query())
    return _cached[1]
