"""Clipping by scissor instead of Kivy's stencil, for the kiosk's clipping widgets.

Kivy clips a ScreenManager, a ScrollView and a RecycleView with the stencil buffer: a rectangle the
size of the widget is drawn into it before the contents and again after them. On the box's software
GL (llvmpipe) that is paid per pixel every frame: the screen manager (the whole window under the
top bar) and the grid alone were about two thirds of the pixels a browse frame drew (6.1 of 9.1
million). A scissor test clips the same axis-aligned rectangle for free. The rectangle is the
pixels the stencil's rectangle covered (those whose centre lies inside the widget), so what shows is
the same.
"""

from __future__ import annotations

import math
from typing import Any

from kivy.factory import Factory
from kivy.graphics import Callback, ScissorPop, ScissorPush
from kivy.uix.recycleview import RecycleView
from kivy.uix.screenmanager import ScreenManager
from kivy.uix.scrollview import ScrollView

__all__ = ["ClipRecycleView", "ClipScreenManager", "ClipScrollView", "ScissorClip"]


class ScissorClip:
    """Mixin for a widget styled as a StencilView: its stencil instructions become a scissor."""

    def on_kv_post(self, base_widget: Any) -> None:
        super().on_kv_post(base_widget)  # type: ignore[misc]
        canvas: Any = self.canvas  # type: ignore[attr-defined]
        self._scissor = ScissorPush(x=0, y=0, width=1, height=1)
        # Placed where the stencil was: StencilPush, its Rectangle, StencilUse / StencilUnUse, its
        # Rectangle, StencilPop (ScrollView's bars stay after it, unclipped, as before).
        _swap(canvas.before, "StencilPush", "StencilUse", [Callback(self._clip, reset_context=False), self._scissor])
        _swap(canvas.after, "StencilUnUse", "StencilPop", [ScissorPop()])

    def _clip(self, *_: Any) -> None:
        # Window coordinates, computed as the frame is drawn: an ancestor may have moved.
        w: Any = self
        x0, y0 = w.to_window(w.x, w.y)
        x1, y1 = w.to_window(w.right, w.top)
        left, bottom = math.ceil(x0 - 0.5), math.ceil(y0 - 0.5)
        rect = (left, bottom, max(0, math.ceil(x1 - 0.5) - left), max(0, math.ceil(y1 - 0.5) - bottom))
        s = self._scissor
        if (s.x, s.y, s.width, s.height) != rect:
            s.x, s.y, s.width, s.height = rect


def _swap(group: Any, first: str, last: str, new: list[Any]) -> None:
    """Replace the instructions from the one named `first` to the one named `last` with `new`."""
    items = list(group.children)
    names = [type(i).__name__ for i in items]
    start, end = names.index(first), names.index(last)
    group.clear()
    for i in [*items[:start], *new, *items[end + 1:]]:
        group.add(i)


class ClipScreenManager(ScissorClip, ScreenManager):  # type: ignore[misc]
    pass


class ClipScrollView(ScissorClip, ScrollView):  # type: ignore[misc]
    pass


class ClipRecycleView(ScissorClip, RecycleView):  # type: ignore[misc]
    pass


for _cls in (ClipScreenManager, ClipScrollView, ClipRecycleView):
    Factory.register(_cls.__name__, cls=_cls)
