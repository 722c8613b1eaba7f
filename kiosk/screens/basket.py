"""Basket and checkout: quantities, pickup (this store or a nearby one) or delivery, place the order."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.uix.screenmanager import Screen

from kiosk import keyboard  # noqa: F401  (registers OnScreenKeyboard for the kv files)

__all__ = ["SCREEN", "BasketScreen"]


class BasketScreen(Screen):  # type: ignore[misc]
    def on_kv_post(self, _base: Any) -> None:
        app = App.get_running_app()
        app.session.bind(basket=self._lines, lang=self._lines)
        app.checkout.bind(pickup_options=self._stores, pickup_store=self._stores)
        app.session.bind(lang=self._stores)
        # The pickup row and the address form (with its keyboard) take turns: the one not in use is
        # taken out of the layout, so nothing invisible sits under a finger.
        self._homes = {w: (w.parent, list(w.parent.children))
                       for w in (self.ids.stores_row, self.ids.form, self.ids.keyboard)}
        app.checkout.bind(fulfilment=self._mode)
        self._mode()
        self._lines()

    def _mode(self, *_: Any) -> None:
        delivery = App.get_running_app().checkout.fulfilment == "delivery"
        wanted = {self.ids.stores_row: not delivery, self.ids.form: delivery, self.ids.keyboard: delivery}
        for w, show in wanted.items():
            home, order = self._homes[w]
            if not show and w.parent is home:
                home.remove_widget(w)
            elif show and w.parent is None:
                # Back in its place: Kivy keeps children bottom-first, so count the siblings below it.
                home.add_widget(w, index=sum(1 for c in home.children if order.index(c) < order.index(w)))

    def _lines(self, *_: Any) -> None:
        app = App.get_running_app()
        box = self.ids.lines
        box.clear_widgets()
        for i, item in enumerate(app.session.basket):
            row = Factory.BasketRow()
            row.index = i
            row.name = app.name_of(item)
            row.qty = int(item["qty"])
            row.price_text = f"¥{float(item.get('price') or 0) * int(item['qty']):,.2f}"
            box.add_widget(row)

    def _stores(self, *_: Any) -> None:
        app = App.get_running_app()
        box = self.ids.stores
        box.clear_widgets()
        for opt in app.checkout.pickup_options:
            code = str(opt["code"])
            label = app.t("This store") if not opt.get("name") else f"{opt['name']} · {float(opt.get('km') or 0):.1f} km"
            chip = Factory.KChip(text=label, state="down" if app.checkout.pickup_store == code else "normal")
            chip.code = code
            chip.bind(on_release=lambda c: setattr(app.checkout, "pickup_store", c.code))
            box.add_widget(chip)


SCREEN = BasketScreen
