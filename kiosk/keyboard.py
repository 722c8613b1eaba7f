"""The on-screen keyboard: Latin letters and digits (Chinese is typed as pinyin; the box finds it)."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.uix.boxlayout import BoxLayout

__all__ = ["PIN_ROWS", "ROWS", "OnScreenKeyboard"]

ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
PIN_ROWS = ("123", "456", "789", "0")


class OnScreenKeyboard(BoxLayout):  # type: ignore[misc]
    """Dispatches `on_key(ch)`, `on_backspace()`, `on_clear()`; `extra` adds keys for forms (',-.')."""

    __events__ = ("on_key", "on_backspace", "on_clear")

    def __init__(self, extra: str = "", rows: tuple[str, ...] = ROWS, space: bool = True, **kw: Any) -> None:
        """`rows`: the keys, row by row (the clerk's PIN pad is `PIN_ROWS`, without `space`); `extra`
        joins the last row of `rows`."""
        super().__init__(**kw)
        self.keys: dict[str, Any] = {}
        app = App.get_running_app()
        for i, chars in enumerate(rows):
            row = BoxLayout(spacing=6)
            for ch in chars + (extra if i == len(rows) - 1 else ""):
                b = Factory.KeyButton(text=ch)
                b.bind(on_release=lambda btn: self.dispatch("on_key", btn.text))
                self.keys[ch] = b
                row.add_widget(b)
            self.add_widget(row)
        last = BoxLayout(spacing=6)
        spacebar = Factory.KeyButton(size_hint_x=4)
        spacebar.bind(on_release=lambda _b: self.dispatch("on_key", " "))
        back = Factory.KeyButton(text="←", size_hint_x=2)
        back.bind(on_release=lambda _b: self.dispatch("on_backspace"))
        clear = Factory.KeyButton(size_hint_x=2)
        clear.bind(on_release=lambda _b: self.dispatch("on_clear"))
        self.keys.update({" ": spacebar, "backspace": back, "clear": clear})
        for b in (spacebar, back, clear) if space else (back, clear):
            last.add_widget(b)
        self.add_widget(last)
        if app is not None:
            def relabel(*_: Any) -> None:
                spacebar.text, clear.text = app.t("Space"), app.t("Clear")

            app.session.bind(lang=relabel)
            relabel()

    def on_key(self, ch: str) -> None:
        pass

    def on_backspace(self) -> None:
        pass

    def on_clear(self) -> None:
        pass


Factory.register("OnScreenKeyboard", cls=OnScreenKeyboard)
