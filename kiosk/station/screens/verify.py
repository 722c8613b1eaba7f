"""Verify / sell: the scanned unit's verdict fills the screen (colour, sound, product, reason, what to do)."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.graphics.texture import Texture
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

__all__ = ["SCREEN", "Picture", "VerifyScreen"]

TONE_RGBA: dict[str, tuple[float, float, float, float]] = {
    "idle": (0.13, 0.15, 0.18, 1), "checking": (0.16, 0.22, 0.32, 1), "genuine": (0.08, 0.5, 0.22, 1),
    "provisional": (0.78, 0.5, 0.02, 1), "alarm": (0.72, 0.1, 0.1, 1), "error": (0.35, 0.12, 0.12, 1),
}


class Picture(Widget):  # type: ignore[misc]
    """A product picture from the box's image cache (the kiosk's `ImageCache`); empty while none."""

    sha = StringProperty("")
    texture = ObjectProperty(None, allownone=True)
    missing = BooleanProperty(True)

    def on_sha(self, _inst: Any, sha: str) -> None:
        self.texture, self.missing = None, True
        app = App.get_running_app()
        if not sha or app is None:
            return

        def arrived(tex: Texture | None) -> None:
            if self.sha == sha:
                self.texture, self.missing = tex, tex is None

        app.images.get(sha, arrived)


class VerifyScreen(Screen):  # type: ignore[misc]
    def rgba(self, tone: str) -> tuple[float, float, float, float]:
        return TONE_RGBA.get(tone, TONE_RGBA["idle"])


SCREEN = VerifyScreen
