"""Browse and search: the on-screen keyboard types into the search, the grid follows every key."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.factory import Factory
from kivy.graphics import Color, Rectangle
from kivy.graphics.texture import Texture
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.recycleview.views import RecycleDataViewBehavior
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

from kiosk import keyboard  # noqa: F401  (registers OnScreenKeyboard for the kv files)
from kiosk.grid import UniformGridLayout  # noqa: F401  (registered for the kv files)
from kiosk.rounded import rounded_box
from kiosk.textures import TextTextures

__all__ = ["SCREEN", "BrowseScreen", "ProductCard", "Thumb"]

CARD = (0.18, 0.2, 0.24, 1)
CARD_DOWN = (0.3, 0.32, 0.36, 1)
THUMB_BG = (0.22, 0.24, 0.28, 1)
PLACEHOLDER = (1, 0.83, 0, 0.6)
INK = (1, 1, 1, 1)
ACCENT = (1, 0.83, 0, 1)
GREEN = (0.5, 0.9, 0.55, 1)


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


class ProductCard(RecycleDataViewBehavior, ButtonBehavior, Widget):  # type: ignore[misc]
    """One product in the grid, drawn as a handful of canvas instructions (no child widgets, no kv
    bindings): a recycled card only swaps its textures, most of them from the text cache."""

    def __init__(self, **kw: Any) -> None:
        self.sku = self.name_zh = self.name_en = self.price_text = self.thumb = ""
        self.here = 0
        self.index = 0
        self.missing = False
        self._thumb_tex: Texture | None = None
        super().__init__(**kw)
        app = App.get_running_app()
        with self.canvas:
            self._bg_color = Color(*CARD)
            self._bg = rounded_box(14)
            Color(*THUMB_BG)
            self._thumb_bg = Rectangle()
            self._thumb_color = Color(1, 1, 1, 1)
            self._thumb = Rectangle()
            Color(*PLACEHOLDER)
            self._initial = Rectangle()
            Color(*INK)
            self._name = Rectangle()
            Color(*ACCENT)
            self._price = Rectangle()
            Color(*GREEN)
            self._here = Rectangle()
        self.bind(pos=self._layout, size=self._layout, state=self._pressed)
        if app is not None:
            app.session.bind(lang=self._texts)
            app.bind(fs=self._texts)

    def refresh_view_attrs(self, rv: Any, index: int, data: dict[str, Any]) -> None:
        self.index = index
        self.sku, self.name_zh, self.name_en = data.get("sku", ""), data.get("name_zh", ""), data.get("name_en", "")
        self.price_text, self.here = data.get("price_text", ""), data.get("here") or 0
        sha = data.get("thumb") or ""
        if sha != self.thumb or not sha:
            self.thumb, self.missing = sha, not sha
            self._picture(None)
            app = App.get_running_app()
            if sha and app is not None:
                app.images.get(sha, lambda tex: self._arrived(sha, tex))
        self._texts()

    def _arrived(self, sha: str, tex: Texture | None) -> None:
        if self.thumb == sha:  # the card may have been recycled for another product meanwhile
            self.missing = tex is None
            self._picture(tex)
            self._texts()

    def _pressed(self, *_: Any) -> None:
        self._bg_color.rgba = CARD if self.state == "normal" else CARD_DOWN

    def _areas(self) -> tuple[float, float, float, float, float]:
        app = App.get_running_app()
        fs = float(app.fs) if app is not None else 28.0
        pad = 10.0
        inner_w = max(1.0, self.width - 2 * pad)
        price_y = self.y + pad
        name_y = price_y + fs * 1.5 + 6
        thumb_y = name_y + fs * 2.7 + 6
        return fs, inner_w, price_y, name_y, thumb_y

    def _layout(self, *_: Any) -> None:
        self._bg.pos = (self.x + 4, self.y + 4)
        self._bg.size = (max(0, self.width - 8), max(0, self.height - 8))
        _fs, inner_w, _price_y, _name_y, thumb_y = self._areas()
        self._thumb_bg.pos = (self.x + 10, thumb_y)
        self._thumb_bg.size = (inner_w, max(0.0, self.top - 10 - thumb_y))
        self._picture(self._thumb_tex)
        self._texts()

    def _picture(self, tex: Texture | None) -> None:
        # Kept here: a Rectangle given no texture reads back Kivy's default white one.
        self._thumb_tex = tex
        box_x, box_y = self._thumb_bg.pos
        box_w, box_h = self._thumb_bg.size
        if tex is None or box_w <= 0 or box_h <= 0:
            self._thumb.texture, self._thumb.size = None, (0, 0)
            return
        # The picture whole, centred, its proportions kept.
        scale = min(box_w / max(1, tex.width), box_h / max(1, tex.height))
        w, h = tex.width * scale, tex.height * scale
        self._thumb.texture = tex
        self._thumb.pos = (box_x + (box_w - w) / 2, box_y + (box_h - h) / 2)
        self._thumb.size = (w, h)

    def _texts(self, *_: Any) -> None:
        app = App.get_running_app()
        if app is None or self.width <= 20:
            return
        fs, inner_w, price_y, name_y, _thumb_y = self._areas()
        texts: TextTextures = app.texts
        name = app.name_of({"name_zh": self.name_zh, "name_en": self.name_en})
        self._place(self._name, texts.get(name, fs, inner_w, lines=2), self.x + 10, name_y, fs * 2.7)
        self._place(self._price, texts.get(self.price_text, fs * 1.1, inner_w * 0.6, bold=True),
                    self.x + 10, price_y, fs * 1.5)
        here = texts.get(app.t("In store"), fs * 0.8, inner_w * 0.4, halign="right") if self.here > 0 else None
        self._place(self._here, here, self.right - 10 - (here.width if here else 0), price_y, fs * 1.5)
        # No picture (none in the catalogue, not on the box, or unreadable): the name's first character.
        initial = (self.name_zh or self.name_en)[:1] if (not self.thumb or self.missing) else ""
        box_x, box_y = self._thumb_bg.pos
        box_w, box_h = self._thumb_bg.size
        tex = texts.get(initial, fs * 2.5, fs * 3)
        self._place(self._initial, tex, box_x + (box_w - (tex.width if tex else 0)) / 2, box_y, box_h)

    @staticmethod
    def _place(rect: Rectangle, tex: Texture | None, x: float, y: float, height: float) -> None:
        """`tex` at x, centred vertically in a row of `height` px from y."""
        if tex is None:
            rect.texture, rect.size = None, (0, 0)
            return
        rect.texture = tex
        rect.size = tex.size
        rect.pos = (round(x), round(y + (height - tex.height) / 2))

    def on_release(self) -> None:
        app = App.get_running_app()
        app.open_product({"sku": self.sku, "name_zh": self.name_zh, "name_en": self.name_en,
                          "price": app.browse.items[self.index].get("price") if self.index < len(app.browse.items) else None,
                          "thumb": self.thumb})


class BrowseScreen(Screen):  # type: ignore[misc]
    keyboard_open = BooleanProperty(True)

    def on_kv_post(self, _base: Any) -> None:
        app = App.get_running_app()
        app.browse.bind(categories=self._chips, category=self._chips, on_page=self._page)

    def _page(self, _vm: Any, rows: list[dict[str, Any]], replace: bool) -> None:
        grid = self.ids.grid
        if replace:
            grid.data = list(rows)
            grid.scroll_y = 1
        else:
            grid.data.extend(rows)  # the layout adds the new rows; the cards on screen stay as they are

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
