"""Orders: the store's queue by state with the acceptance timers; one order's steps, its pick list
confirmed by scanning each item, the carrier and tracking number, the pickup hand-over."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.uix.screenmanager import Screen

from kiosk import keyboard
from kiosk.station.viewmodels import CARRIERS, ORDER_STATES, REJECT_REASONS

__all__ = ["SCREEN", "OrdersScreen", "timer_text"]


def timer_text(left: float | None) -> str:
    if left is None:
        return ""
    sign = "-" if left < 0 else ""
    s = int(abs(left))
    return f"{sign}{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{sign}{s // 60:d}:{s % 60:02d}"


class OrdersScreen(Screen):  # type: ignore[misc]
    def on_kv_post(self, _base: Any) -> None:
        app = App.get_running_app()
        vm = app.orders
        for st in ORDER_STATES:
            chip = Factory.StateChip()
            chip.state_name = st
            self.ids.states.add_widget(chip)
        for r in REJECT_REASONS:
            chip = Factory.ReasonChip()
            chip.reason = r
            self.ids.reasons.add_widget(chip)
        for c in CARRIERS:
            chip = Factory.CarrierChip()
            chip.carrier = c
            self.ids.carriers.add_widget(chip)
        vm.bind(orders=lambda *_: self.fill(), now=lambda *_: self.tick(), picked=lambda *_: self.fill_lines(),
                current=lambda *_: self.fill_lines())
        app.session.bind(lang=lambda *_: self.relabel())
        self.fill()

    def on_pre_enter(self, *_: Any) -> None:
        # The tracking number's keyboard is built when the screen is first shown: 41 keys are about
        # 3 MB the app need not hold until the clerk opens the orders.
        if "keyboard" in self.ids:
            return
        vm = App.get_running_app().orders
        kb = keyboard.OnScreenKeyboard(extra="-")
        kb.bind(on_key=lambda _k, ch: setattr(vm, "tracking", (vm.tracking + ch.upper())[:40]),
                on_backspace=lambda _k: setattr(vm, "tracking", vm.tracking[:-1]),
                on_clear=lambda _k: setattr(vm, "tracking", ""))
        self.ids.kbbox.add_widget(kb)
        self.ids["keyboard"] = kb

    def relabel(self) -> None:
        self.fill()
        self.fill_lines()

    def fill(self) -> None:
        app = App.get_running_app()
        box = self.ids.queue
        box.clear_widgets()
        for o in app.orders.orders:
            n = sum(int(ln["qty"]) for ln in o.get("lines") or [])
            row = Factory.OrderRow()
            row.order = o
            row.text = (f"#{o['assignment']}  {o['order_id']}  ·  " + app.tf("{n} items", {"n": n})
                        + "  ·  " + app.t(str(o.get("fulfilment") or "")))
            box.add_widget(row)
        self.tick()

    def tick(self) -> None:
        app = App.get_running_app()
        for row in self.ids.queue.children:
            left = app.orders.left_s(row.order)
            row.timer = timer_text(left)
            row.late = left is not None and left < 0
        cur = app.orders.current
        left = app.orders.left_s(cur) if cur else None
        self.ids.timer.text = (app.t("Accept within") + " " + timer_text(left)) if left is not None and left >= 0 else (
            app.t("Late: accept now or reject") if left is not None else "")

    def fill_lines(self) -> None:
        app = App.get_running_app()
        vm = app.orders
        box = self.ids.lines
        box.clear_widgets()
        for i, ln in enumerate(vm.current.get("lines") or []):
            got = int(vm.picked.get(i, 0))
            row = Factory.PickRow()
            row.done = got >= int(ln["qty"])
            row.text = f"{ln['sku']}   x {ln['qty']}" + (f"   ({got}/{ln['qty']})" if vm.current.get("state") == "picking" else "")
            box.add_widget(row)
        self.tick()


SCREEN = OrdersScreen
