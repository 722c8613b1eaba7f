"""What the player drives: a screen. Rendering pixels is the kiosk's business; the player only says
what to show and when. `LogScreen` writes each change as one JSON line (tests, the demo)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

__all__ = ["LogScreen", "Screen", "Shown"]


@dataclass(frozen=True, slots=True)
class Shown:
    media: str | None
    """sha256 of the file shown; None: the idle card (the screen is never black)."""
    path: Path | None
    campaign: str | None
    layer: str
    reason: str
    """'scheduled', 'fallback' (the scheduled file was not ready) or 'idle'."""
    transition: str | None = None
    """How to bring it on: 'cut' or 'fade' (None: a cut, the screen's own way)."""
    transition_ms: int = 0


class Screen(Protocol):
    def show(self, what: Shown, at: datetime) -> None: ...


class LogScreen:
    """Appends `{"at": …, "media": …, "campaign": …, "layer": …, "reason": …}` per change to `path`,
    with `"transition": {"kind": …, "ms": …}` when the item has one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def show(self, what: Shown, at: datetime) -> None:
        row: dict[str, object] = {"at": at.isoformat(timespec="milliseconds"), "media": what.media,
                                  "campaign": what.campaign, "layer": what.layer, "reason": what.reason}
        if what.transition is not None:
            row["transition"] = {"kind": what.transition, "ms": what.transition_ms}
        line = json.dumps(row)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
