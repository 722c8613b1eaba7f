"""The clerk's station: the shell (status bar, tabs, the screens) on the kiosk's pieces.

It reuses the kiosk's HTTP client, off-thread worker, translation catalogue, CJK font, on-screen
keyboard and image cache; screens are listed once in `SCREENS` (name → module with the screen's
class and its `.kv` file beside it). A keyboard-wedge (HID) scanner types a code and Enter into the
window: the shell collects those keystrokes into lines and hands each line to the screen shown.
One long poll on the box's event feed at a time brings final verdicts (replacing provisional ones)
and printer changes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.config import Config
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.properties import NumericProperty, ObjectProperty, StringProperty
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.screenmanager import NoTransition, ScreenManager

from kiosk import clip, display  # noqa: F401  (clip registers the Clip* widgets the kv files use)
from kiosk.app import ImageCache
from kiosk.client import BoxClient
from kiosk.fonts import install_cjk_font
from kiosk.i18n import Catalogue
from kiosk.station.client import StationClient
from kiosk.station.sound import Tones
from kiosk.station.viewmodels import (
    KEEP,
    TITLES,
    TODO,
    GoodsInVM,
    OrdersVM,
    SignInVM,
    StationSessionVM,
    StatusVM,
    StockVM,
    VerifyVM,
)
from kiosk.work import Worker

__all__ = ["SCREENS", "StationApp"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KIOSK = HERE.parent
SCREENS: dict[str, str] = {
    "signin": "kiosk.station.screens.signin",
    "verify": "kiosk.station.screens.verify",
    "goodsin": "kiosk.station.screens.goodsin",
    "orders": "kiosk.station.screens.orders",
    "stock": "kiosk.station.screens.stock",
}
TABS = ("verify", "goodsin", "orders", "stock")
STATUS_POLL_S = 5.0
EVENTS_WAIT_S = 5
"""The long poll's wait: short enough that closing the app never waits long for it."""
BG = (0.06, 0.07, 0.09, 1)
"""The shell's background (app.kv's BG), drawn as the window's clear colour."""
_ENTER = (13, 271)  # Return, keypad Enter
_GS = "\x1d"


class StationShell(FloatLayout):  # type: ignore[misc]
    pass


class StationApp(App):  # type: ignore[misc]
    session = ObjectProperty()
    signin = ObjectProperty()
    verify = ObjectProperty()
    goodsin = ObjectProperty()
    orders = ObjectProperty()
    stock = ObjectProperty()
    status = ObjectProperty()
    u = NumericProperty(1.0)
    fs = NumericProperty(28)
    bh = NumericProperty(96)
    screen = StringProperty("signin")
    orientation = StringProperty("portrait")
    wedge = StringProperty("")
    """Keystrokes of the scanner line being typed."""

    def __init__(self, box_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.title = "omnishelf station"
        self.client = StationClient(box_url)
        self.client.on_session_lost = self.sign_out
        # The long poll holds its connection up to EVENTS_WAIT_S: its own client, its own timeout.
        self.feed_client = BoxClient(box_url, timeout=EVENTS_WAIT_S + 10)
        self.worker = Worker(threads=4)
        self.feed_worker = Worker(threads=1)
        """The long poll's own thread (its call is always pending: `worker.pending` stays meaningful)."""
        self.catalogue = Catalogue()
        self.images = ImageCache(self.client, self.worker)
        self.session = StationSessionVM(self.client, self.feed_client)
        self.signin = SignInVM(self.client, self.worker, self.session)
        self.verify = VerifyVM(self.client, self.worker)
        self.goodsin = GoodsInVM(self.client, self.worker)
        self.orders = OrdersVM(self.client, self.worker)
        self.stock = StockVM(self.client, self.worker)
        self.status = StatusVM(self.client, self.worker)
        self.tones = Tones()
        self.sm: ScreenManager | None = None
        self.started = False
        self.stopping = False
        self.last_event = -1
        self.feed_polls = 0
        self.feed_error = ""
        self.lines: deque[str] = deque(maxlen=KEEP)
        """Scanner lines received (tests read it)."""
        self.latencies: deque[float] = deque(maxlen=KEEP)
        """Seconds from a scanner line to the frame that first showed its verdict (the bench reads it)."""
        self.paints: deque[float] = deque(maxlen=KEEP)
        """Seconds from a verdict applied to the view-model to the frame that showed it (drawing only)."""
        self._paint_from: float | None = None
        self._applied_at = 0.0
        self.verify.on_shown = self._shown
        self.goodsin.on_shown = self._shown

    # -- translation ----------------------------------------------------------------------------------

    def t(self, msg: str, _lang: str = "") -> str:
        return self.catalogue.gettext(self.session.lang, msg)

    def tf(self, msg: str, args: dict[str, Any], _lang: str = "") -> str:
        try:
            return self.t(msg).format(**args)
        except (KeyError, IndexError, ValueError):
            return msg

    @staticmethod
    def val(d: Any, key: str, default: Any = "") -> Any:
        """`d.get(key, default)` for kv: the rule then re-runs when `d` (a DictProperty) is replaced
        (a kv `x.d.get(...)` is bound to nothing Kivy can watch)."""
        return d.get(key, default) if d else default

    def name_of(self, item: Any, _lang: str = "") -> str:
        zh, en = str(item.get("name_zh") or ""), str(item.get("name_en") or "")
        return (zh or en) if self.session.lang == "zh" else (en or zh)

    def title_of(self, verdict: dict[str, Any], _lang: str = "") -> str:
        v = str(verdict.get("verdict") or "")
        return self.t(TITLES.get(v, v)) if v else ""

    def todo_of(self, verdict: dict[str, Any], _lang: str = "") -> str:
        v = str(verdict.get("verdict") or "")
        if not v:
            return ""
        text = self.t(TODO.get(v, "Call the manager."))
        if verdict.get("provisional"):
            text = self.t("Provisional: the box answered from its lists; the cloud's answer replaces it.") + "\n" + text
        return text

    # -- building --------------------------------------------------------------------------------------

    def build(self) -> StationShell:
        # A keyboard-wedge scanner types into the window: Escape must never close the station.
        Config.set("kivy", "exit_on_escape", "0")
        install_cjk_font()
        Window.clearcolor = BG
        display.plain_fills_sampled_nearest()
        root: StationShell = Builder.load_file(str(HERE / "app.kv"))
        Builder.load_file(str(KIOSK / "keyboard.kv"))
        self.sm = root.ids.sm
        self.sm.transition = NoTransition()  # the verdict must be on screen at once
        for name, module in SCREENS.items():
            mod = import_module(module)
            Builder.load_file(str(HERE / "screens" / f"{name}.kv"))
            self.sm.add_widget(mod.SCREEN(name=name))
        self.sm.current = "signin"
        self.sm.bind(current=lambda _sm, name: setattr(self, "screen", name))
        Window.bind(size=self._resized, on_key_down=self._key_down)
        self._resized(Window, Window.size)
        self.session.bind(token=self._session_changed)
        if self.session.token:  # signed in before the window opened (the bench does)
            self._session_changed(self.session, self.session.token)
        Clock.schedule_interval(lambda _dt: self._tick(), 1.0)
        Clock.schedule_interval(lambda _dt: self.status.refresh(), STATUS_POLL_S)
        self.signin.load()
        self.status.refresh()
        self._follow()
        return root

    def on_start(self) -> None:
        self.started = True

    def on_stop(self) -> None:
        self.stopping = True
        self.worker.shutdown()
        self.feed_worker.shutdown()

    def _resized(self, _win: Any, size: tuple[int, int]) -> None:
        w, h = size
        self.orientation = "portrait" if h >= w else "landscape"
        self.u = min(w, h) / 1080
        self.fs = max(18, round(28 * self.u))
        self.bh = max(64, round(88 * self.u))

    def _tick(self) -> None:
        self.orders.tick()

    # -- navigation and session ----------------------------------------------------------------------

    def go(self, name: str) -> None:
        if self.sm is None:
            return
        if name != "signin" and not self.session.token:
            name = "signin"
        self.sm.current = name
        if name == "orders":
            self.orders.refresh()

    def _session_changed(self, _s: Any, token: str) -> None:
        if token:
            self.go("verify")
            self.orders.refresh()
        else:
            for vm in (self.verify, self.goodsin, self.orders, self.stock):
                vm.wipe()
            self.signin.load()
            self.go("signin")

    def sign_out(self) -> None:
        token = self.session.token
        self.session.signed_out()
        if token:
            self.worker.run(lambda: self.client.call("POST", "/clerks/sign-out", {"token": token}),
                            lambda _o: None, lambda _m: None)

    def toggle_lang(self) -> None:
        self.session.lang = "en" if self.session.lang == "zh" else "zh"

    # -- the keyboard-wedge scanner ------------------------------------------------------------------

    def _key_down(self, _win: Any, key: int, _scancode: int, codepoint: str | None, modifiers: list[str]) -> bool:
        if key in _ENTER:
            line, self.wedge = self.wedge, ""
            if line.strip():
                self.scanned(line, time.perf_counter())
            return True
        if key == 27:  # Escape: never let a stray one close the app
            return True
        if codepoint == _GS or (key == ord("]") and "ctrl" in modifiers):
            self.wedge += _GS  # GS1 group separator (scanners send it as Ctrl+])
        elif codepoint and codepoint.isprintable():
            self.wedge += codepoint
        return True

    def scanned(self, line: str, at: float | None = None) -> None:
        """One line from the scanner, to the screen shown."""
        self.lines.append(line)
        if not self.session.token:
            self.signin.message = "Sign in first, then scan"
            return
        handlers: dict[str, Callable[..., None]] = {
            "verify": self.verify.on_line, "goodsin": self.goodsin.on_line, "orders": self.orders.on_line,
            "stock": self.stock.on_line}
        handler = handlers.get(self.screen)
        if handler is not None:
            handler(line, at)

    def _shown(self, line_at: float) -> None:
        tone = self.verify.tone if self.screen == "verify" else self.goodsin.tone
        self.tones.play(tone)
        if line_at:
            self._paint_from, self._applied_at = line_at, time.perf_counter()
            Window.bind(on_flip=self._flipped)

    def _flipped(self, *_a: Any) -> None:
        Window.unbind(on_flip=self._flipped)
        if self._paint_from is not None:
            now = time.perf_counter()
            self.latencies.append(now - self._paint_from)
            self.paints.append(now - self._applied_at)
            self._paint_from = None

    # -- the box's event feed ------------------------------------------------------------------------

    def _follow(self) -> None:
        if self.stopping:
            return
        after = self.last_event

        def call() -> dict[str, Any]:
            if after < 0:  # start at the end: the past is not news (after the last id: `last` says where that is)
                return dict(self.feed_client.call("GET", f"/station/events?after={10**15 - 1}&wait=0"))
            return dict(self.feed_client.call("GET", f"/station/events?after={after}&wait={EVENTS_WAIT_S}"))

        def done(out: dict[str, Any]) -> None:
            self.feed_polls += 1
            events = out.get("events") or [] if after >= 0 else []
            for ev in events:
                self._event(ev)
            self.last_event = int(events[-1]["id"]) if events else int(out.get("last") or max(after, 0))
            self._follow()

        def failed(msg: str) -> None:
            self.feed_error = msg
            # The box restarts or the feed is absent: try again shortly, without a storm.
            Clock.schedule_once(lambda _dt: self._follow(), 2.0)

        self.feed_worker.run(call, done, failed)

    def _event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("kind")
        if kind == "verdict":
            self.verify.feed(ev) or self.goodsin.feed(ev)
        elif kind in ("printer", "print_queued", "printed", "print_uncertain"):
            if kind == "printed":
                self.goodsin.job_printed(int((ev.get("data") or {}).get("id") or 0))
            self.status.refresh()
