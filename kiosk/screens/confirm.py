"""Confirmation: the order number and a QR code (confirmation and payment link) for the phone."""

from __future__ import annotations

from kivy.uix.screenmanager import Screen

from kiosk.qr import QrCode  # noqa: F401  (registers the widget for confirm.kv)

__all__ = ["SCREEN", "ConfirmScreen"]


class ConfirmScreen(Screen):  # type: ignore[misc]
    pass


SCREEN = ConfirmScreen
