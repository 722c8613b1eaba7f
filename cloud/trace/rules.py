"""The verification rules' knobs, from the environment (so every worker and API host agrees)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["TraceRules"]


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class TraceRules:
    duplicate_window_s: float = 60.0
    """A repeat scan of a unit at the same station within this many seconds is the same scan
    (answered like the first), as EU FMD tolerates a double scan."""
    max_speed_kmh: float = 900.0
    """Faster than this between two sightings of one unit is impossible travel (a clone)."""
    min_distance_km: float = 1.0
    """Two places closer than this are the same place for the cloned rule (coordinates are rough)."""
    undo_window_s: float = 900.0
    """A sale may be undone at the same store for this long."""
    list_part: int = 2000
    """Entries per `trace_lists` command part (the envelope is limited to 256 KiB)."""

    @classmethod
    def from_env(cls) -> TraceRules:
        return cls(
            duplicate_window_s=_env_float("OMNISHELF_TRACE_DUPLICATE_WINDOW_S", cls.duplicate_window_s),
            max_speed_kmh=_env_float("OMNISHELF_TRACE_MAX_SPEED_KMH", cls.max_speed_kmh),
            undo_window_s=_env_float("OMNISHELF_TRACE_UNDO_WINDOW_S", cls.undo_window_s),
        )
