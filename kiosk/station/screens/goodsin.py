"""Goods-in: scan a case; every unit inside is received at once, counted against the shipping notice."""

from __future__ import annotations

from kivy.uix.screenmanager import Screen

from kiosk.station.screens.verify import TONE_RGBA

__all__ = ["SCREEN", "GoodsInScreen"]


class GoodsInScreen(Screen):  # type: ignore[misc]
    def rgba(self, tone: str) -> tuple[float, float, float, float]:
        return TONE_RGBA.get(tone, TONE_RGBA["idle"])


SCREEN = GoodsInScreen
