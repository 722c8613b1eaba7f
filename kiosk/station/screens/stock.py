"""Stock: a SKU's stock here and in nearby stores (typed or scanned); an adjustment with a reason."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.uix.screenmanager import Screen

from kiosk import keyboard
from kiosk.station.viewmodels import REASONS

__all__ = ["SCREEN", "StockScreen"]


class StockScreen(Screen):  # type: ignore[misc]
    def on_kv_post(self, _base: Any) -> None:
        for r in REASONS:
            chip = Factory.AdjustReason()
            chip.reason = r
            self.ids.reasons.add_widget(chip)

    def on_pre_enter(self, *_: Any) -> None:
        # The keyboard is built when the screen is first shown: 43 keys are about 3 MB the app need
        # not hold until the clerk opens the stock screen.
        if "keyboard" in self.ids:
            return
        vm = App.get_running_app().stock
        kb = keyboard.OnScreenKeyboard(extra="-/")
        kb.bind(on_key=lambda _k, ch: vm.type(ch), on_backspace=lambda _k: vm.back(), on_clear=lambda _k: vm.clear())
        self.ids.kbbox.add_widget(kb)
        self.ids["keyboard"] = kb

    def nearby_text(self, result: dict[str, Any], _lang: str = "") -> str:
        app = App.get_running_app()
        rows = result.get("nearby") or []
        if not rows:
            return ""
        return "\n".join(app.tf("{name} ({km} km): {n} available", {"name": r.get("name") or r.get("store"),
                                                                  "km": r.get("distance_km"), "n": r.get("available")})
                         for r in rows)

    def asof_text(self, result: dict[str, Any], _lang: str = "") -> str:
        """How fresh the figures are, said plainly: the box's copy may be hours old while the link is down."""
        if not result:
            return ""
        app = App.get_running_app()
        as_of = str(result.get("as_of") or "")
        if not as_of:
            return str(app.t("No figure from the cloud yet"))
        when = as_of.replace("T", " ")[:16]
        if result.get("source") == "cloud":
            return str(app.tf("As of {when}, from the cloud", {"when": when}))
        return str(app.tf("As of {when}, this box's copy (the cloud is not answering)", {"when": when}))


SCREEN = StockScreen
