"""Product page: picture, price, attributes, availability told plainly, quantity, add to basket."""

from __future__ import annotations

from kivy.uix.screenmanager import Screen

from kiosk.screens.browse import Thumb  # noqa: F401  (the picture widget, used by product.kv)

__all__ = ["SCREEN", "ProductScreen"]


class ProductScreen(Screen):  # type: ignore[misc]
    pass


SCREEN = ProductScreen
