"""Drives the real kiosk app with simulated touches, in its own process (Kivy has one window per process).

    python -m tests.kiosk.drive SCENARIO BOX_URL OUT_JSON

Each step touches a widget (through Kivy's input path, as a finger would) and then waits, frame by
frame, for a condition: no sleeps. A step that times out ends the run with its name. Screenshots
go to $OMNISHELF_SCREENSHOTS (default var/screenshots) as kiosk-<step>-<orientation>.png.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from kiosk.display import MULTISAMPLES

os.environ.setdefault("KIVY_NO_ARGS", "1")
# Drawn as `omnishelf kiosk` and `omnishelf station` draw (kiosk/display.py), read when the window opens.
os.environ.setdefault("KCFG_GRAPHICS_MULTISAMPLES", str(MULTISAMPLES))

from kivy.clock import Clock
from kivy.core.window import Window
from kivy.tests.common import UnitTestTouch

from kiosk.app import KioskApp

IMG = Path(os.environ.get("OMNISHELF_SCREENSHOTS", Path(__file__).resolve().parents[2] / "var" / "screenshots"))
STEP_TIMEOUT_S = 30.0

Step = Generator[tuple[str, Callable[[], bool]], None, None]


def tap(widget: Any) -> None:
    """A finger down and up on the middle of `widget` (in window coordinates)."""
    x, y = widget.to_window(widget.center_x, widget.center_y)
    touch = UnitTestTouch(x, y)
    touch.touch_down()
    touch.touch_up()


def tap_at(x: float, y: float) -> None:
    touch = UnitTestTouch(x, y)
    touch.touch_down()
    touch.touch_up()


class Driver:
    """Runs a scenario's steps, one condition a frame; `prefix` names its screenshots. Subclasses
    say what the app was doing when a step timed out (`state`) and add to the result (`report`)."""

    prefix = "kiosk"

    def __init__(self, app: Any, scenario: Callable[[Any, Any], Step], out: Path) -> None:
        self.app, self.out = app, out
        self.result: dict[str, Any] = {"ok": False, "shots": [], "checks": {}}
        self.steps = scenario(app, self)
        self.waiting: tuple[str, Callable[[], bool]] | None = None
        self.deadline = 0.0

    def shot(self, name: str) -> None:
        IMG.mkdir(parents=True, exist_ok=True)
        target = IMG / f"{self.prefix}-{name}-{self.app.orientation}.png"
        written = Window.screenshot(name=str(IMG / f"{self.prefix}-tmp.png"))
        Path(written).replace(target)
        self.result["shots"].append(str(target))

    def state(self) -> str:
        a = self.app
        return (f"screen {a.screen}, fulfilment {a.checkout.fulfilment}, errors {dict(a.checkout.errors)}, "
                f"basket {len(a.session.basket)}, pending {a.worker.pending}, resets {a.session.resets}, "
                f"query {a.browse.query!r}, idle {a.session.idle}, "
                f"checkout error {a.checkout.error!r}, browse error {a.browse.error!r}")

    def report(self, error: str | None) -> None:
        """Add to the result before it is written (`error`: the failure, or None)."""

    def frame(self, _dt: float) -> None:
        try:
            if self.waiting is not None:
                what, cond = self.waiting
                if not cond():
                    if time.monotonic() > self.deadline:
                        self.finish(f"timed out after {STEP_TIMEOUT_S} s waiting for {what} ({self.state()})")
                    return
            self.waiting = next(self.steps)
            self.deadline = time.monotonic() + STEP_TIMEOUT_S
        except StopIteration:
            self.result["ok"] = True
            self.finish(None)
        except Exception:
            self.finish(traceback.format_exc())

    def finish(self, error: str | None) -> None:
        self.result["error"] = error
        self.report(error)
        self.out.write_text(json.dumps(self.result, ensure_ascii=False, indent=1))
        Clock.unschedule(self.frame)
        self.app.stop()

    def run(self) -> None:
        Clock.schedule_interval(self.frame, 0)
        self.app.run()
        if not self.out.exists():
            self.out.write_text(json.dumps({"ok": False, "error": "the app stopped before the scenario ended"}))


def screen(app: KioskApp, name: str) -> Any:
    assert app.sm is not None
    return app.sm.get_screen(name)


def settled(app: KioskApp) -> Callable[[], bool]:
    """No box call in flight (every answer applied) and no screen transition running (the screen
    manager ignores touches during one)."""
    return lambda: app.worker.pending == 0 and app.sm is not None and not app.sm.transition.is_active


def frames(n: int) -> Callable[[], bool]:
    """True after `n` more frames: what the view-models say has been drawn."""
    left = [n]

    def cond() -> bool:
        left[0] -= 1
        return left[0] < 0

    return cond


def drawn(app: KioskApp) -> Step:
    yield "answers applied, transitions over", settled(app)
    yield "drawn", frames(2)


def shop(app: KioskApp, d: Driver) -> Step:
    """Attract → browse → search 'lj' → product → add → pickup → QR; with the checks along the way."""
    yield "the app started on the attract screen", lambda: app.started and app.screen == "attract"
    yield from drawn(app)
    d.shot("attract")
    tap_at(Window.width / 2, Window.height / 2)
    yield "the browse screen with the first page", lambda: app.screen == "browse" and app.browse.loads >= 1
    yield "categories and thumbnails", lambda: bool(app.browse.categories) and app.worker.pending == 0
    yield from drawn(app)
    d.shot("browse")
    browse = screen(app, "browse")
    loads = app.browse.loads
    for ch in "lj":
        tap(browse.ids.keyboard.keys[ch])
    # The answer for 'l' may be dropped (superseded by 'lj'): wait for the one answer that counts.
    yield "the grid for 'lj'", lambda: (app.browse.query == "lj" and app.browse.loads > loads and not app.browse.loading
                                        and app.worker.pending == 0)
    d.result["checks"]["lj"] = [i["sku"] for i in app.browse.items]
    yield from drawn(app)
    d.shot("search")
    tap(app.root.ids.lang)
    yield "English", lambda: app.session.lang == "en"
    yield from drawn(app)
    d.shot("search-en")
    tap(app.root.ids.lang)
    yield "Chinese again", lambda: app.session.lang == "zh"
    grid = browse.ids.grid
    yield "a card in the grid", lambda: bool(grid.layout_manager.children)
    card = max(grid.layout_manager.children, key=lambda c: c.y)  # the top-left card shows the first item
    card = min((c for c in grid.layout_manager.children if c.y == card.y), key=lambda c: c.x)
    d.result["checks"]["tapped"] = card.sku
    yield from drawn(app)
    tap(card)
    yield "the product page with its figures", lambda: (app.screen == "product" and app.product.loads >= 1
                                                        and bool(app.product.availability) and app.worker.pending == 0)
    d.result["checks"]["availability"] = [app.fmt(ln) for ln in app.product.availability]
    yield from drawn(app)
    d.shot("product")
    product = screen(app, "product")
    yield from drawn(app)
    tap(product.ids.more)
    yield "two of it", lambda: app.product.qty == 2
    tap(product.ids.add)
    yield "the basket", lambda: app.screen == "basket" and app.session.count == 2
    basket = screen(app, "basket")
    yield "pickup stores listed", lambda: bool(basket.ids.stores.children)
    yield from drawn(app)
    d.shot("basket")
    tap(basket.ids.delivery)
    yield "the address form", lambda: app.checkout.fulfilment == "delivery" and basket.ids.form.parent is not None and basket.ids.form.height > 0
    tap(basket.ids.place)
    yield "inline messages", lambda: set(app.checkout.errors) == {"name", "phone", "address"}
    d.result["checks"]["errors"] = dict(app.checkout.errors)
    yield "messages drawn", lambda: basket.ids.f_name.error != ""
    yield from drawn(app)
    d.shot("address")
    yield from drawn(app)
    tap(basket.ids.pickup)
    yield "pickup again", lambda: app.checkout.fulfilment == "pickup"
    tap(app.root.ids.reach)
    yield "reach mode", lambda: app.session.reach and app.root.ids.reach_spacer.height > 0
    d.result["checks"]["reach_place_top"] = basket.ids.place.to_window(0, basket.ids.place.top)[1] / Window.height
    yield from drawn(app)
    d.shot("reach")
    tap(app.root.ids.reach)
    yield "reach off", lambda: not app.session.reach and app.root.ids.reach_spacer.height == 0
    tap(basket.ids.place)
    yield "the confirmation with its QR code", lambda: app.screen == "confirm" and screen(app, "confirm").ids.qr.modules > 0
    d.result["order_id"] = app.confirm.order_id
    d.result["confirm_url"] = app.confirm.confirm_url
    d.result["checks"]["basket_after"] = len(app.session.basket)
    yield from drawn(app)
    d.shot("confirm")


def idle(app: KioskApp, d: Driver) -> Step:
    """A shopper walks away with something in the basket: countdown, then wiped, then the attract loop."""
    yield "the app started", lambda: app.started
    tap_at(Window.width / 2, Window.height / 2)
    yield "the browse screen", lambda: app.screen == "browse" and bool(app.browse.items)
    app.session.add(app.browse.items[0], 1)
    browse = screen(app, "browse")
    yield from drawn(app)
    tap(browse.ids.keyboard.keys["l"])  # typed something, too
    yield "a basket and a query", lambda: app.session.count == 1 and app.browse.query == "l"
    # Short timeouts only now that the shopper "walked away" (a loaded machine may take seconds to
    # get here, and that must not count as the shopper's idle time).
    app.session.idle_s, app.session.countdown_s = 1.0, 4
    app.session.idle = 0
    yield "the countdown", lambda: app.session.countdown > 0 and app.root.ids.countdown.height > 0
    d.result["checks"]["countdown"] = app.session.countdown
    yield from drawn(app)
    d.shot("countdown")
    yield "back to the attract loop", lambda: app.screen == "attract"
    d.result["checks"]["after"] = {"basket": len(app.session.basket), "query": app.browse.query,
                                   "active": app.session.active, "resets": app.session.resets}


def attract(app: KioskApp, d: Driver) -> Step:
    """The store's signage full screen while nobody touches the kiosk; a touch on it starts a session."""
    yield "the app started", lambda: app.started and app.screen == "attract"
    media = screen(app, "attract").ids.media
    yield "the signage picture on screen", lambda: app.attract.shown >= 1 and media.showing
    yield from drawn(app)
    d.result["checks"]["picture"] = {"texture": list(media.texture.size), "drawn": [round(v) for v in media._rect.size],
                                     "window": list(Window.size), "campaign": app.attract.campaign}
    d.shot("attract-media")
    tap_at(Window.width / 2, Window.height * 0.7)  # on the picture, not on the invitation
    yield "a session", lambda: app.session.active and app.screen == "browse"


SCENARIOS = {"shop": (shop, 3600.0, 15), "idle": (idle, 3600.0, 15), "attract": (attract, 3600.0, 15)}


def main() -> None:
    scenario, box_url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    fn, idle_s, countdown_s = SCENARIOS[scenario]
    app = KioskApp(box_url, idle_s=idle_s, countdown_s=countdown_s)
    Driver(app, fn, out).run()


if __name__ == "__main__":
    main()
