"""Drives the real clerk's station app with simulated touches and a simulated keyboard-wedge scanner,
in its own process (Kivy has one window per process).

    python -m tests.kiosk.station_drive SCENARIO BOX_URL OUT_JSON [SIGNAL_DIR]

The scanner types each character of a code into the window through Kivy's own keyboard event and
ends with Enter, as a HID scanner does. Each step waits frame by frame for a condition (no sleeps);
a step that times out ends the run with its name. Screenshots go to $OMNISHELF_SCREENSHOTS (default
var/screenshots) as station-<step>-<orientation>.png. SIGNAL_DIR: the scenario writes a file there
when it needs the test to act (the cloud going back online) and waits for the effect.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiosk.display import MULTISAMPLES

os.environ.setdefault("KIVY_NO_ARGS", "1")
# Drawn as `omnishelf kiosk` and `omnishelf station` draw (kiosk/display.py), read when the window opens.
os.environ.setdefault("KCFG_GRAPHICS_MULTISAMPLES", str(MULTISAMPLES))

from kivy.core.window import Window

from kiosk.station.app import StationApp
from tests.kiosk import drive
from tests.kiosk.drive import Step, frames, tap
from tests.kiosk.station_box import CLERKS, CODES, PIN


def scanner(line: str) -> float:
    """The keyboard-wedge scanner types `line` and Enter; returns when the Enter was sent."""
    for ch in line:
        Window.dispatch("on_key_down", ord(ch) if ch.isascii() else 0, 0, ch, [])
        Window.dispatch("on_key_up", ord(ch) if ch.isascii() else 0, 0)
    at = time.perf_counter()
    Window.dispatch("on_key_down", 13, 40, None, [])
    Window.dispatch("on_key_up", 13, 40)
    return at


class Driver(drive.Driver):
    prefix = "station"

    def __init__(self, app: StationApp, scenario: Callable[[StationApp, Driver], Step], out: Path,
                 signals: Path | None) -> None:
        super().__init__(app, scenario, out)
        self.signals = signals

    def signal(self, name: str) -> None:
        assert self.signals is not None
        (self.signals / name).write_text("1")

    def state(self) -> str:
        a = self.app
        return (f"screen {a.screen}, pending {a.worker.pending}, sign-in {a.signin.message!r}, verify {a.verify.tone} "
                f"{dict(a.verify.verdict)} error {a.verify.error!r}, goods-in {a.goodsin.tone} "
                f"{a.goodsin.error!r} label {a.goodsin.label!r} job {a.goodsin.label_job} feed {a.feed_polls} "
                f"{a.last_event} {a.feed_error!r}, orders {a.orders.state} {dict(a.orders.current)} "
                f"error {a.orders.error!r} msg {a.orders.message!r}, stock {a.stock.error!r}")

    def report(self, error: str | None) -> None:
        if error is not None:
            self.shot("failed")  # what the screen showed when the step failed (not a docs picture)
        self.result["tones"] = list(self.app.tones.played)
        self.result["latencies"] = list(self.app.latencies)


def screen(app: StationApp, name: str) -> Any:
    assert app.sm is not None
    return app.sm.get_screen(name)


def drawn(app: StationApp) -> Step:
    yield "answers applied", lambda: app.worker.pending == 0
    yield "drawn", frames(2)


def sign_in(app: StationApp, d: Driver, clerk_id: int = CLERKS[0][0], pin: str = PIN, shot: bool = False) -> Step:
    s = screen(app, "signin")
    yield "the roster on the sign-in screen", lambda: len(s.ids.names.children) == len(CLERKS)
    button = next(b for b in s.ids.names.children if b.clerk_id == clerk_id)
    tap(button)
    yield "the clerk chosen", lambda: app.signin.clerk_id == clerk_id
    for ch in pin[:-1]:
        tap(s.ids.pad.keys[ch])
    yield "the PIN typed", lambda: app.signin.pin == pin[:-1]
    tap(s.ids.pad.keys[pin[-1]])
    if shot:
        yield from drawn(app)
        d.shot("signin")
    tap(s.ids.go)


def sell(app: StationApp, d: Driver) -> Step:
    """Sign in → scan a genuine unit → sell → undo; a cloned code → alarm; goods-in of a case; stock."""
    yield "the app started on the sign-in screen", lambda: app.started and app.screen == "signin"
    yield from sign_in(app, d, shot=True)
    yield "signed in: the verify screen", lambda: app.screen == "verify" and bool(app.session.token)
    d.result["checks"]["clerk"] = app.session.clerk.get("name")
    yield "the status bar knows the printer", lambda: app.status.loads > 0 and "till" in app.status.printers
    yield from drawn(app)
    d.shot("verify-idle")
    v = screen(app, "verify")
    shown = app.verify.shown
    scanner(CODES["genuine"])
    yield "the genuine verdict", lambda: app.verify.shown > shown and app.verify.tone == "genuine"
    yield "the product from the catalogue", lambda: app.verify.product.get("sku") == "TEA-LJ-250"
    yield "the picture", lambda: not v.ids.picture.missing or app.worker.pending == 0
    d.result["checks"]["genuine"] = {"tone": app.verify.tone, "title": v.ids.title.text, "reason": v.ids.reason.text,
                                     "product": v.ids.product.text, "sell_enabled": not v.ids.sell.disabled,
                                     "picture": not v.ids.picture.missing}
    yield from drawn(app)
    d.shot("verify-genuine")
    tap(v.ids.sell)
    yield "sold", lambda: app.verify.action == "sell" and app.verify.sales == 1 and app.worker.pending == 0
    d.result["checks"]["sold"] = {"undo_enabled": not v.ids.undo.disabled, "action": v.ids.action.text}
    yield from drawn(app)
    d.shot("verify-sold")
    tap(v.ids.undo)
    yield "undone", lambda: app.verify.action == "undo" and app.verify.tone == "genuine" and app.worker.pending == 0
    d.result["checks"]["undone"] = {"undo_enabled": not v.ids.undo.disabled, "action": v.ids.action.text}
    shown = app.verify.shown
    scanner(CODES["cloned"])
    yield "the alarm", lambda: app.verify.shown > shown and app.verify.tone == "alarm"
    d.result["checks"]["alarm"] = {"title": v.ids.title.text, "reason": v.ids.reason.text, "todo": v.ids.todo.text,
                                   "sell_enabled": not v.ids.sell.disabled}
    yield from drawn(app)
    d.shot("verify-alarm")
    # goods-in
    tap(app.root.ids.tab_goodsin)
    yield "the goods-in screen", lambda: app.screen == "goodsin"
    g = screen(app, "goodsin")
    scanner(CODES["case"])
    yield "the case counted", lambda: app.goodsin.units >= 0 and app.goodsin.tone != "checking"
    yield "the label printed", lambda: app.goodsin.label == "printed" or app.goodsin.label.startswith("the ")
    d.result["checks"]["goodsin"] = {"count": g.ids.count.text, "intruders": list(app.goodsin.intruders),
                                     "intruder_text": g.ids.intruders.text, "label": app.goodsin.label}
    yield from drawn(app)
    d.shot("goodsin")
    # stock
    tap(app.root.ids.tab_stock)
    yield "the stock screen", lambda: app.screen == "stock"
    yield from drawn(app)  # laid out: the keys are where a finger would find them
    st = screen(app, "stock")
    loads = app.stock.loads
    for ch in "tea-lj-250":
        tap(st.ids.keyboard.keys[ch])
    yield "the SKU typed", lambda: app.stock.sku == "TEA-LJ-250"
    tap(st.ids.lookup)
    yield "the stock answer", lambda: app.stock.loads > loads
    d.result["checks"]["stock"] = {"available": app.stock.available, "here": st.ids.here.text}
    yield from drawn(app)
    d.shot("stock")
    tap(app.root.ids.lang)
    yield "English", lambda: app.session.lang == "en"
    tap(app.root.ids.tab_verify)
    yield from drawn(app)
    d.shot("verify-alarm-en")
    tap(app.root.ids.lang)
    tap(app.root.ids.signout)
    yield "signed out", lambda: app.screen == "signin" and not app.session.token


def orders(app: StationApp, d: Driver) -> Step:
    """An assigned order: accept → pick (a wrong item refused) → pack → ready → the shopper's code."""
    yield "the app started", lambda: app.started
    yield from sign_in(app, d)
    yield "signed in", lambda: bool(app.session.token)
    tap(app.root.ids.tab_orders)
    o = screen(app, "orders")
    yield "the queue with the order", lambda: app.screen == "orders" and len(o.ids.queue.children) == 1
    yield "the timer running", lambda: ":" in o.ids.queue.children[0].timer
    d.result["checks"]["timer"] = o.ids.queue.children[0].timer
    yield from drawn(app)
    d.shot("orders-queue")
    tap(o.ids.queue.children[0])
    yield "the order open", lambda: app.orders.current.get("state") == "assigned"
    yield from drawn(app)
    yield from drawn(app)
    d.shot("orders-assigned")
    tap(o.ids.primary)
    yield "accepted", lambda: app.orders.current.get("state") == "accepted" and app.worker.pending == 0
    tap(o.ids.primary)
    yield "picking", lambda: app.orders.current.get("state") == "picking" and app.worker.pending == 0
    tap(o.ids.primary)
    yield "pack refused before the items are scanned", lambda: app.orders.error != ""
    d.result["checks"]["pack_early"] = app.orders.error
    scanner(CODES["rice"])
    yield "the rice picked", lambda: app.orders.picked.get(1) == 1
    scanner(CODES["rice2"])
    yield "a second rice refused", lambda: app.orders.refused and app.worker.pending == 0
    d.result["checks"]["too_many"] = o.ids.scanmsg.text
    scanner(CODES["black"])
    yield "an item not on the order refused", lambda: app.orders.refused and "Keemun" in app.orders.note.get("name", "")
    d.result["checks"]["wrong"] = o.ids.scanmsg.text
    yield from drawn(app)
    d.shot("orders-pick-refused")
    scanner(CODES["genuine"])
    yield "the tea picked", lambda: app.orders.picked.get(0) == 1 and app.orders.all_picked
    yield from drawn(app)
    d.shot("orders-picked")
    tap(o.ids.primary)
    yield "packed", lambda: app.orders.current.get("state") == "packed" and app.worker.pending == 0
    tap(o.ids.primary)
    yield "ready for pickup", lambda: app.orders.current.get("state") == "ready" and app.worker.pending == 0
    yield from drawn(app)
    d.shot("orders-handover")
    # The shopper's code: the test's cloud (STATION_PICKUP_CODE) or the order's own from the real one.
    code = os.environ.get("STATION_PICKUP_CODE", "PK-483920")
    scanner("PK-000000" if code != "PK-000000" else "PK-111111")
    yield "a wrong pickup code refused", lambda: "pickup code" in app.orders.error
    d.result["checks"]["wrong_code"] = app.orders.error
    scanner(code)
    yield "handed over", lambda: not app.orders.current and app.orders.steps >= 5 and app.worker.pending == 0
    d.result["checks"]["counts"] = dict(app.orders.counts)


def answered(app: StationApp, before: int) -> Callable[[], bool]:
    return lambda: app.signin.attempts > before


def lockout(app: StationApp, d: Driver) -> Step:
    """Wrong PINs until the box locks the clerk; a clerk of another store is refused."""
    yield "the app started", lambda: app.started
    s = screen(app, "signin")
    for i in range(3):
        before = int(app.signin.attempts)
        yield from sign_in(app, d, pin="1111")
        yield f"wrong PIN {i + 1} answered", answered(app, before)
        d.result["checks"].setdefault("wrong", []).append([app.signin.reason, app.signin.message])
    yield from drawn(app)
    d.shot("signin-locked")
    n = app.signin.attempts
    yield from sign_in(app, d)
    yield "the right PIN while locked answered", lambda: app.signin.attempts > n
    d.result["checks"]["locked_right_pin"] = [app.signin.reason, s.ids.message.text, bool(app.session.token)]
    tap(s.ids.by_number)
    yield "typing a clerk number", lambda: app.signin.field == "number"
    for ch in "99":
        tap(s.ids.pad.keys[ch])
    tap(s.ids.go)
    yield "then the PIN", lambda: app.signin.field == "pin" and app.signin.number == "99"
    n = app.signin.attempts
    for ch in PIN:
        tap(s.ids.pad.keys[ch])
    tap(s.ids.go)
    yield "another store's clerk answered", lambda: app.signin.attempts > n
    d.result["checks"]["other_store"] = [app.signin.reason, s.ids.message.text, bool(app.session.token)]


def offline(app: StationApp, d: Driver) -> Step:
    """The cloud unreachable: a provisional (amber) verdict at once; the final one replaces it once back."""
    yield "the app started", lambda: app.started
    yield from sign_in(app, d)
    yield "signed in", lambda: app.screen == "verify"
    yield "the status bar says the cloud is offline", lambda: app.status.loads > 0 and not app.status.cloud_online
    shown = app.verify.shown
    scanner(CODES["genuine"])
    yield "the provisional verdict", lambda: app.verify.shown > shown and app.verify.verdict.get("provisional") is True
    v = screen(app, "verify")
    d.result["checks"]["provisional"] = {"tone": app.verify.tone, "todo": v.ids.todo.text, "rule": app.verify.verdict.get("rule")}
    yield from drawn(app)
    d.shot("verify-provisional")
    d.signal("provisional")
    yield "the final verdict replaces it", lambda: app.verify.verdict.get("provisional") is False
    d.result["checks"]["final"] = {"tone": app.verify.tone, "verdict": app.verify.verdict.get("verdict"),
                                   "reason": v.ids.reason.text}


SCENARIOS: dict[str, Callable[[StationApp, Driver], Step]] = {
    "sell": sell, "orders": orders, "lockout": lockout, "offline": offline}


def main() -> None:
    scenario, box_url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    signals = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    app = StationApp(box_url)
    Driver(app, SCENARIOS[scenario], out, signals).run()


if __name__ == "__main__":
    main()
