"""The kiosk's `BoxClient` with one addition for the station: a write refused because the clerk's
session is gone (expired, signed out elsewhere, the clerk deactivated) signs the app out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kivy.clock import Clock

from kiosk.client import BoxClient, BoxError

__all__ = ["SESSION_HEADER", "StationClient"]

SESSION_HEADER = "X-Clerk-Session"


class StationClient(BoxClient):
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        super().__init__(base_url, timeout)
        self.on_session_lost: Callable[[], None] | None = None

    def _call(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        try:
            return super()._call(method, path, body, raw=raw)
        except BoxError as exc:
            # /clerks/* answer 401 for a wrong PIN: that is the sign-in screen's business.
            if exc.status == 401 and SESSION_HEADER in self.headers and not path.startswith("/clerks/"):
                lost = self.on_session_lost
                if lost is not None:
                    Clock.schedule_once(lambda _dt: lost(), 0)
            raise
