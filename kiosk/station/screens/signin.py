"""Sign-in: the clerk taps their name (or types their clerk number) and their PIN on the pad."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.uix.screenmanager import Screen

from kiosk import keyboard
from kiosk.keyboard import PIN_ROWS

__all__ = ["SCREEN", "SignInScreen"]


class SignInScreen(Screen):  # type: ignore[misc]
    def on_kv_post(self, _base: Any) -> None:
        app = App.get_running_app()
        pad = keyboard.OnScreenKeyboard(rows=PIN_ROWS, space=False)
        pad.bind(on_key=lambda _k, ch: app.signin.key(ch), on_backspace=lambda _k: app.signin.back(),
                 on_clear=lambda _k: app.signin.clear())
        self.ids.padbox.add_widget(pad)
        self.ids["pad"] = pad
        app.signin.bind(clerks=lambda *_: self.fill())
        self.fill()

    def fill(self) -> None:
        app = App.get_running_app()
        box = self.ids.names
        box.clear_widgets()
        for c in app.signin.clerks:
            b = Factory.ClerkButton()
            b.clerk_id = int(c["id"])
            b.text = str(c["name"]) + (f"  ·  {c['staff_number']}" if c.get("staff_number") else "")
            box.add_widget(b)


SCREEN = SignInScreen
