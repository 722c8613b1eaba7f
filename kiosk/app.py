"""The cloud shelf app: the shell (top bar, reach mode, idle countdown) and its registry of screens.

Screens are listed once in `SCREENS` (name → module with the screen's class and its `.kv` file).
Every view-model lives on the app; the screens only bind to them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.core.image import Image as CoreImage
from kivy.core.window import Window
from kivy.graphics.texture import Texture
from kivy.lang import Builder
from kivy.properties import NumericProperty, ObjectProperty, StringProperty
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.screenmanager import FadeTransition, ScreenManager

from kiosk import clip, display  # noqa: F401  (clip registers the Clip* widgets for the kv files)
from kiosk.client import BoxClient
from kiosk.fonts import install_cjk_font
from kiosk.i18n import Catalogue
from kiosk.textures import TextTextures, decode
from kiosk.viewmodels import AttractVM, BrowseVM, CheckoutVM, ConfirmVM, Line, ProductVM, SessionVM
from kiosk.work import Worker

__all__ = ["SCREENS", "KioskApp"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SCREENS: dict[str, str] = {
    "attract": "kiosk.screens.attract",
    "browse": "kiosk.screens.browse",
    "product": "kiosk.screens.product",
    "basket": "kiosk.screens.basket",
    "confirm": "kiosk.screens.confirm",
}
ATTRACT_POLL_S = 10.0
BG = (0.06, 0.07, 0.09, 1)
"""The shell's background (app.kv's BG), drawn as the window's clear colour."""


class ImageCache:
    """Thumbnails and pictures by sha256: fetched and decoded off the UI thread, turned into textures
    on it (an upload, nothing else), the last `size` of them kept."""

    def __init__(self, client: BoxClient, worker: Worker, size: int = 300) -> None:
        self.client, self.worker, self.size = client, worker, size
        self._textures: OrderedDict[str, Texture | None] = OrderedDict()
        self._waiting: dict[str, list[Callable[[Texture | None], None]]] = {}

    def get(self, sha: str, cb: Callable[[Texture | None], None]) -> None:
        """Call `cb` with the texture (None: no such image on the box) now or once it arrives."""
        if sha in self._textures:
            self._textures.move_to_end(sha)
            cb(self._textures[sha])
            return
        if sha in self._waiting:
            self._waiting[sha].append(cb)
            return
        self._waiting[sha] = [cb]
        self.worker.run(lambda: decode(self.client.image(sha), f"image {sha}"), lambda img: self._arrived(sha, img),
                        lambda _msg: self._done(sha, None))

    def _arrived(self, sha: str, img: Any) -> None:
        tex: Texture | None = None
        if img is not None:
            try:
                tex = CoreImage(img).texture
            except Exception:  # a corrupt picture shows the placeholder, it does not stop the kiosk
                log.warning("kiosk: image %s could not be made a texture", sha)
        self._done(sha, tex)

    def _done(self, sha: str, tex: Texture | None) -> None:
        self._textures[sha] = tex
        while len(self._textures) > self.size:
            self._textures.popitem(last=False)
        for cb in self._waiting.pop(sha, []):
            cb(tex)


class Shell(FloatLayout):  # type: ignore[misc]
    def on_touch_down(self, touch: Any) -> bool:
        app = App.get_running_app()
        if app is not None:
            app.touched()
        return bool(super().on_touch_down(touch))


class KioskApp(App):  # type: ignore[misc]
    session = ObjectProperty()
    attract = ObjectProperty()
    browse = ObjectProperty()
    product = ObjectProperty()
    checkout = ObjectProperty()
    confirm = ObjectProperty()
    u = NumericProperty(1.0)
    """Scale: 1.0 when the screen's short side is 1080 px."""
    fs = NumericProperty(28)
    """The base font size in px (at least 18)."""
    bh = NumericProperty(96)
    """The height of a touch target in px (at least 64)."""
    screen = StringProperty("attract")
    orientation = StringProperty("portrait")

    def __init__(self, box_url: str, *, idle_s: float = 90, countdown_s: int = 15, **kw: Any) -> None:
        super().__init__(**kw)
        self.title = "omnishelf cloud shelf"
        self.client = BoxClient(box_url)
        self.worker = Worker()
        self.catalogue = Catalogue()
        self.images = ImageCache(self.client, self.worker)
        self.texts = TextTextures()
        self.session = SessionVM(idle_s=idle_s, countdown_s=countdown_s)
        self.attract = AttractVM(self.client, self.worker, decode=decode)
        self.browse = BrowseVM(self.client, self.worker)
        self.product = ProductVM(self.client, self.worker)
        self.checkout = CheckoutVM(self.client, self.worker)
        self.confirm = ConfirmVM()
        self.sm: ScreenManager | None = None
        self.started = False
        self.ready = False
        """Every screen built (the first frame shows the attract loop before the others exist)."""
        self.font_path: Path | None = None

    # -- translation (kv: `app.t("Search", app.session.lang)` rebinds when the language changes) ------

    def t(self, msg: str, _lang: str = "") -> str:
        return self.catalogue.gettext(self.session.lang, msg)

    def fmt(self, ln: Line, _lang: str = "") -> str:
        try:
            return self.t(ln["msg"]).format(**ln["args"])
        except (KeyError, IndexError, ValueError):
            return str(ln.get("msg", ""))

    def name_of(self, item: Any, _lang: str = "") -> str:
        zh, en = str(item.get("name_zh") or ""), str(item.get("name_en") or "")
        return (zh or en) if self.session.lang == "zh" else (en or zh)

    # -- building ------------------------------------------------------------------------------------

    def build(self) -> Shell:
        self.font_path = install_cjk_font()
        Window.clearcolor = BG
        display.plain_fills_sampled_nearest()
        # The shell's file first: it declares the shared widget styles the screens use.
        root: Shell = Builder.load_file(str(HERE / "app.kv"))
        self.sm = root.ids.sm
        self.sm.transition = FadeTransition(duration=0.15)
        # Only the attract loop is needed for the first frame; the other screens are built one a
        # frame after it (or at once when a shopper gets to one first), so the kiosk shows sooner.
        self._add_screen("attract")
        self.sm.current = "attract"
        self.sm.bind(current=lambda _sm, name: setattr(self, "screen", name))
        Window.bind(size=self._resized)
        self._resized(Window, Window.size)
        self.session.bind(on_reset=lambda *_: self._reset())
        Clock.schedule_interval(lambda dt: self.session.tick(dt), 1.0)
        Clock.schedule_interval(lambda _dt: self._poll_attract(), ATTRACT_POLL_S)
        self.attract.poll()
        return root

    def _add_screen(self, name: str) -> None:
        assert self.sm is not None
        if self.sm.has_screen(name):
            return
        mod = import_module(SCREENS[name])
        if name == "browse":
            Builder.load_file(str(HERE / "keyboard.kv"))
        Builder.load_file(str(HERE / "screens" / f"{name}.kv"))
        self.sm.add_widget(mod.SCREEN(name=name))

    def _build_rest(self, *_: Any) -> None:
        left = [n for n in SCREENS if self.sm is not None and not self.sm.has_screen(n)]
        if left:
            self._add_screen(left[0])
            Clock.schedule_once(self._build_rest, 0)
        else:
            self.ready = True

    def on_start(self) -> None:
        self.started = True
        Window.bind(on_flip=self._first_frame_shown)

    def _first_frame_shown(self, *_: Any) -> None:
        # The other screens wait until the attract loop is on the glass (a touch before that builds
        # the one it needs at once).
        Window.unbind(on_flip=self._first_frame_shown)
        Clock.schedule_once(self._build_rest, 0.1)

    def on_stop(self) -> None:
        self.worker.shutdown()

    def _resized(self, _win: Any, size: tuple[int, int]) -> None:
        w, h = size
        self.orientation = "portrait" if h >= w else "landscape"
        self.u = min(w, h) / 1080
        self.fs = max(18, round(28 * self.u))
        self.bh = max(64, round(96 * self.u))

    # -- navigation ------------------------------------------------------------------------------------

    def go(self, name: str) -> None:
        if self.sm is not None:
            self._add_screen(name)
            self.sm.current = name

    def touched(self) -> None:
        was_active = self.session.active
        self.session.touched()
        if not was_active:
            self.browse.reset()
            self.browse.load_categories()
            self.checkout.load_options()
            # The touch that wakes the kiosk must not also press what is under it on the next screen.
            Clock.schedule_once(lambda _dt: self.go("browse"), 0)

    def _poll_attract(self) -> None:
        if not self.session.active:
            self.attract.poll()

    def _reset(self) -> None:
        self.browse.reset()
        self.checkout.wipe()
        self.confirm.wipe()
        self.go("attract")
        self.attract.poll()

    def open_product(self, summary: dict[str, Any]) -> None:
        self.product.open(summary)
        self.go("product")

    def add_to_basket(self) -> None:
        self.session.add(dict(self.product.product), int(self.product.qty))
        self.go("basket")

    def place_order(self) -> None:
        def done(answer: dict[str, Any]) -> None:
            self.confirm.show(answer)
            self.session.basket = []
            self.go("confirm")

        self.checkout.place(list(self.session.basket), done)

    def finish(self) -> None:
        """The shopper is done: wipe at once instead of waiting for the idle reset."""
        self.session.wipe()

    def toggle_lang(self) -> None:
        self.session.lang = "en" if self.session.lang == "zh" else "zh"

    def toggle_reach(self) -> None:
        self.session.reach = not self.session.reach
