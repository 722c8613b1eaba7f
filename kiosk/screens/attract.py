"""Attract loop: what the store's screens play, and "touch anywhere to start" (the shell wakes up)."""

from __future__ import annotations

from kivy.uix.screenmanager import Screen

__all__ = ["SCREEN", "AttractScreen"]


class AttractScreen(Screen):  # type: ignore[misc]
    pass


SCREEN = AttractScreen
