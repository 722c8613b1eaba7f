"""Browse and search: the on-screen keyboard types into the search, the grid follows every key."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.graphics.texture import Texture
from kivy.properties import BooleanProperty, NumericProperty, ObjectProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.recycleview.views import RecycleDataViewBehavior
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

from kiosk import keyboard  # noqa: F401  (registers OnScreenKeyboard for the kv files)

__all__ = ["SCREEN", "BrowseScreen", "ProductCard", "Thumb"]


class Thumb(Widget):  # type: ignore[misc]
    """A product picture from the box's image cache; a placeholder while loading or when missing."""

    sha = StringProperty("")
    texture = ObjectProperty(None, allownone=True)
    missing = BooleanProperty(False)

    def on_sha(self, _inst: Any, sha: str) -> None:
        self.texture, self.missing = None, False
        app = App.get_running_app()
        if not sha or app is None:
            self.missing = True
            return

        def arrived(tex: Texture | None) -> None:
            if self.sha == sha:  # the card may have been recycled for another product meanwhile
                self.texture, self.missing = tex, tex is None

        app.images.get(sha, arrived)


class ProductCard(RecycleDataViewBehavior, ButtonBehavior, BoxLayout):  # type: ignore[misc]
    sku = StringProperty("")
    name_zh = StringProperty("")
    name_en = StringProperty("")
    price_text = StringProperty("")
    thumb = StringProperty("")
    here = NumericProperty(0)
    index = NumericProperty(0)

    def refresh_view_attrs(self, rv: Any, index: int, data: dict[str, Any]) -> Any:
        self.index = index
        return super().refresh_view_attrs(rv, index, data)

    def on_release(self) -> None:
        app = App.get_running_app()
        app.open_product({"sku": self.sku, "name_zh": self.name_zh, "name_en": self.name_en,
                          "price": app.browse.items[self.index].get("price") if self.index < len(app.browse.items) else None,
                          "thumb": self.thumb})


class BrowseScreen(Screen):  # type: ignore[misc]
    keyboard_open = BooleanProperty(True)

    def on_kv_post(self, _base: Any) -> None:
        app = App.get_running_app()
        app.browse.bind(categories=self._chips, category=self._chips)

    def _chips(self, *_: Any) -> None:
        app = App.get_running_app()
        row = self.ids.cats
        for chip in [c for c in row.children if getattr(c, "category", None) is not None]:
            row.remove_widget(chip)
        for cat in app.browse.categories:
            path = str(cat["path"])
            chip = Factory.KChip(text=path, state="down" if app.browse.category == path else "normal")
            chip.category = path
            chip.bind(on_release=lambda c: app.browse.set_category(c.category))
            row.add_widget(chip)

    def grid_scrolled(self, rv: Any) -> None:
        # Near the end of what is loaded: fetch the next page (the box pages; 50,000 never load at once).
        if rv.scroll_y <= 0.15:
            App.get_running_app().browse.load_more()


SCREEN = BrowseScreen
