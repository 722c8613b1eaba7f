"""The clerk's station view-models: one per screen plus the clerk's session and the status bar.

As in the kiosk (`kiosk.viewmodels`): Kivy properties the `.kv` files bind to, methods the views
call, every box call made through a `BoxClient` by a `Worker` (off the UI thread, results back on
Kivy's clock). Nothing here draws. Text for the clerk is an English msgid translated by the view
through the one catalogue (`kiosk.i18n`); the box's own words (a lockout, a verdict's reason) are
shown as the box wrote them.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kivy.clock import Clock, ClockEvent
from kivy.event import EventDispatcher
from kivy.properties import (
    BooleanProperty,
    DictProperty,
    ListProperty,
    NumericProperty,
    OptionProperty,
    StringProperty,
)

from kiosk.client import BoxClient, BoxError
from kiosk.station.client import SESSION_HEADER
from kiosk.work import Worker

__all__ = [
    "ALARMS",
    "CARRIERS",
    "ORDER_LABELS",
    "ORDER_STATES",
    "REASONS",
    "REJECT_REASONS",
    "GoodsInVM",
    "OrdersVM",
    "SignInVM",
    "StationSessionVM",
    "StatusVM",
    "StockVM",
    "VerifyVM",
    "not_on_this_box",
    "tone_of",
]

STATION = "clerk-app"
"""The `station` the app's scans carry (the box's counter scanner has its own name)."""
VERDICT_WAIT_S = 0.9
"""How long a scan waits on the box for a verdict (final, or provisional offline) before answering;
later verdicts arrive through the event feed."""
CHECKING_AFTER_S = 0.15
"""A scan shows "Checking…" only if the box has not answered by then. That screen is a frame the
verdict would wait behind: on a box rendering in software (llvmpipe) a 1080x1920 frame holds the UI
thread 50 ms or more in its buffer swap, and the box answers a provisional verdict in a few ms, an
online one in tens of ms. Below a human's reaction time, so the previous verdict is never acted on."""
UNDO_WINDOW_S = 900.0
"""The cloud's undo window (`cloud.trace.rules.undo_window_s`): the undo button shows this long."""
ALARMS = frozenset({"unknown_code", "malformed", "batch_or_expiry_mismatch", "expired", "recalled",
                    "already_sold", "cloned", "diverted", "not_for_sale_here"})
TODO: dict[str, str] = {
    "genuine": "Genuine: you may sell it.",
    "untracked": "A product code, not a unit: sell as usual.",
    "unknown_code": "Never commissioned: do not sell, set the item aside.",
    "malformed": "The code cannot be read: do not sell, set the item aside.",
    "batch_or_expiry_mismatch": "Do not sell: set it aside for the brand.",
    "expired": "Do not sell: set it aside for the brand.",
    "recalled": "Do not sell: set it aside for the brand.",
    "already_sold": "Do not sell: keep the item and call the manager.",
    "cloned": "Do not sell: keep the item and call the manager.",
    "diverted": "Do not sell: keep the item and call the manager.",
    "not_for_sale_here": "Do not sell: keep the item and call the manager.",
}
TITLES: dict[str, str] = {
    "genuine": "Genuine", "untracked": "Not a tracked unit", "unknown_code": "Unknown code", "malformed": "Unreadable code",
    "batch_or_expiry_mismatch": "Wrong batch or expiry", "expired": "Expired", "recalled": "Recalled",
    "already_sold": "Already sold", "cloned": "Cloned code", "diverted": "Diverted", "not_for_sale_here": "Not for sale here",
}
ORDER_STATES = ("assigned", "accepted", "picking", "packed", "ready", "shipped")
ORDER_LABELS: dict[str, str] = {"assigned": "New", "accepted": "Accepted", "picking": "Picking", "packed": "Packed",
                                "ready": "Awaiting pickup", "shipped": "Shipped", "rejected": "Rejected",
                                "picked_up": "Picked up", "delivered": "Delivered", "withdrawn": "Withdrawn"}
REJECT_REASONS = ("Out of stock", "Damaged", "Cannot meet the deadline", "Store closing")
CARRIERS = ("SF Express", "JD Logistics", "EMS", "ZTO")
REASONS = ("damaged", "lost", "found", "count", "other")
KEEP = 10_000
"""Timings kept for the bench (the app runs all day: bounded)."""
"""Stock adjustment reasons (`POST /station/stock/adjustments`)."""


def tone_of(verdict: dict[str, Any] | None) -> str:
    """The screen's colour: red an alarm (even a provisional one), amber provisional or untracked, green genuine."""
    if not verdict:
        return "checking"
    if verdict.get("verdict") in ALARMS:
        return "alarm"
    if verdict.get("provisional") or verdict.get("verdict") == "untracked":
        return "provisional"
    return "genuine"


def not_on_this_box(exc: BoxError) -> bool:
    """The box answered, but has no such route (a box from before the feature): not an error to show raw."""
    return exc.status in (404, 405) and str(exc).startswith("no such path")


class StationSessionVM(EventDispatcher):  # type: ignore[misc]
    """Who is signed in (their token goes with every request), and the language."""

    lang = StringProperty("zh")
    clerk = DictProperty()
    """{id, name, staff_number}; empty when nobody is signed in."""
    token = StringProperty("")
    expires_at = StringProperty("")

    def __init__(self, client: BoxClient, *clients: BoxClient) -> None:
        super().__init__()
        self.clients = (client, *clients)

    def signed_in(self, answer: dict[str, Any]) -> None:
        self.token, self.expires_at = str(answer["token"]), str(answer.get("expires_at") or "")
        self.clerk = dict(answer["clerk"])
        for c in self.clients:
            c.headers[SESSION_HEADER] = self.token

    def signed_out(self) -> None:
        self.token, self.expires_at, self.clerk = "", "", {}
        for c in self.clients:
            c.headers.pop(SESSION_HEADER, None)


class SignInVM(EventDispatcher):  # type: ignore[misc]
    clerks = ListProperty()
    """This store's roster: [{id, name, staff_number}]."""
    store = StringProperty("")
    clerk_id = NumericProperty(0)
    number = StringProperty("")
    """A clerk number typed on the pad (a clerk not in the list, e.g. from another store)."""
    field = OptionProperty("pin", options=["pin", "number"])
    pin = StringProperty("")
    message = StringProperty("")
    """The box's refusal as it words it (a wrong PIN and the tries left, a lockout and until when)."""
    reason = StringProperty("")
    tries_left = NumericProperty(-1)
    busy = BooleanProperty(False)
    error = StringProperty("")
    attempts = NumericProperty(0)
    """Sign-ins answered (tests wait on it)."""

    def __init__(self, client: BoxClient, worker: Worker, session: StationSessionVM) -> None:
        super().__init__()
        self.client, self.worker, self.session = client, worker, session

    def load(self) -> None:
        def done(out: dict[str, Any]) -> None:
            self.clerks, self.store, self.error = list(out.get("clerks") or []), str(out.get("store") or ""), ""
        self.worker.run(lambda: dict(self.client.call("GET", "/clerks")), done,
                        lambda msg: setattr(self, "error", msg), key="roster")

    def choose(self, clerk_id: int) -> None:
        self.clerk_id, self.number, self.field, self.pin, self.message = clerk_id, "", "pin", "", ""

    def type_number(self) -> None:
        self.field, self.clerk_id, self.number, self.pin, self.message = "number", 0, "", "", ""

    @property
    def chosen(self) -> int:
        return int(self.number) if self.number.isdigit() else int(self.clerk_id)

    def key(self, ch: str) -> None:
        if not ch.isdigit():
            return
        if self.field == "number":
            self.number = (self.number + ch)[:12]
        else:
            self.pin = (self.pin + ch)[:8]

    def back(self) -> None:
        if self.field == "number":
            self.number = self.number[:-1]
        else:
            self.pin = self.pin[:-1]

    def clear(self) -> None:
        if self.field == "number":
            self.number = ""
        else:
            self.pin = ""

    def submit(self) -> None:
        if self.field == "number" and self.number:
            self.field = "pin"
            return
        if not self.chosen:
            self.message = "Choose your name first"
            return
        if len(self.pin) < 4:
            self.message = "The PIN has 4 to 8 digits"
            return
        body = {"clerk_id": self.chosen, "pin": self.pin}
        self.busy, self.pin = True, ""

        def call() -> dict[str, Any]:
            try:
                return {"ok": dict(self.client.call("POST", "/clerks/sign-in", body))}
            except BoxError as exc:
                return {"refused": str(exc), "status": exc.status}

        self.worker.run(call, self._answered, self._failed)

    def _answered(self, out: dict[str, Any]) -> None:
        self.busy = False
        self.attempts += 1
        if "ok" in out:
            self.message, self.reason = "", ""
            self.session.signed_in(out["ok"])
            return
        self.message = str(out["refused"])
        status = out.get("status")
        self.reason = {401: "wrong_pin", 423: "locked", 404: "not_on_roster", 403: "inactive", 503: "no_roster"}.get(
            status or 0, "unreachable")

    def _failed(self, msg: str) -> None:
        self.busy = False
        self.attempts += 1
        self.message, self.reason = msg, "unreachable"


class _Scanning(EventDispatcher):  # type: ignore[misc]
    """A screen that posts scans and follows their verdicts (the event feed replaces provisional ones)."""

    scan = DictProperty()
    """The scan shown: {scan_id, code, purpose, verdict}."""
    verdict = DictProperty()
    tone = StringProperty("idle")
    """idle, checking, genuine, provisional, alarm, error."""
    error = StringProperty("")
    shown = NumericProperty(0)
    """Verdicts applied to the screen (tests and the bench wait on it)."""

    def __init__(self, client: BoxClient, worker: Worker) -> None:
        super().__init__()
        self.client, self.worker = client, worker
        self.line_at = 0.0
        """perf_counter() of the scanner line behind the scan shown (the bench's latency start)."""
        self.on_shown: Callable[[float], None] | None = None
        self.http_s: deque[float] = deque(maxlen=KEEP)
        """Seconds each scan's call took on its worker thread (the bench splits the latency with it)."""
        self.queued_s: deque[float] = deque(maxlen=KEEP)
        self.done_at = 0.0
        self.handover_s: deque[float] = deque(maxlen=KEEP)
        self._reset: Callable[[bool], None] | None = None
        """The new scan's clearing of the screen, until it is shown (see `CHECKING_AFTER_S`)."""
        self._checking: ClockEvent | None = None
        self._product_kept: dict[str, Any] = {}

    def wipe(self) -> None:
        """Nothing of the previous clerk's work stays on screen."""
        self._settle(None)
        self.scan, self.verdict, self.tone, self.error = {}, {}, "idle", ""

    def begin(self, at: float | None, reset: Callable[[bool], None]) -> None:
        """A new scanner line: `reset(answered)` (clear the screen for it, tone "checking") runs when
        its answer comes, just before the answer is applied (one frame shows both), or after
        `CHECKING_AFTER_S` if it has not come by then (`answered` False: "Checking…" is drawn)."""
        self.line_at = at if at is not None else time.perf_counter()
        self._settle(None)
        self._reset = reset
        # When the UI thread was busy past the grace (a frame being drawn) and the answer came
        # meanwhile, both run in the same tick: one frame, the verdict.
        self._checking = Clock.schedule_once(lambda _dt: self._settle(False), CHECKING_AFTER_S)

    def _settle(self, answered: bool | None) -> None:
        """Run the pending reset (None: drop it)."""
        reset, self._reset = self._reset, None
        if self._checking is not None:
            self._checking.cancel()
            self._checking = None
        if reset is not None and answered is not None:
            reset(answered)

    def post(self, code: str, purpose: str, key: str, done: Callable[[dict[str, Any]], None] | None = None) -> None:
        body = {"code": code, "purpose": purpose, "station": STATION, "wait_s": VERDICT_WAIT_S}

        def call() -> dict[str, Any]:
            started = time.perf_counter()
            self.queued_s.append(started - self.line_at)
            try:
                return dict(self.client.call("POST", "/station/scans", body))
            finally:
                self.http_s.append(time.perf_counter() - started)
                self.done_at = time.perf_counter()

        self.worker.run(call, done or self.answered, self.failed, key=key)

    def answered(self, scan: dict[str, Any]) -> None:
        self.handover_s.append(time.perf_counter() - self.done_at)
        self._settle(True)
        self.scan, self.error = scan, ""
        self.apply(scan.get("verdict"))

    def failed(self, msg: str) -> None:
        self._settle(True)
        self.error, self.tone = msg, "error"

    def apply(self, verdict: dict[str, Any] | None) -> None:
        self.verdict = dict(verdict or {})
        self.tone = tone_of(verdict)
        if verdict:
            self.shown += 1
            if self.on_shown is not None:
                self.on_shown(self.line_at)

    def feed(self, event: dict[str, Any]) -> bool:
        """A verdict from the event feed: applied if it is for the scan shown and not older news."""
        data = event.get("data") or {}
        if self._reset is not None:
            return False  # a new scan is on its way: the one still shown is no longer news
        if not self.scan or str(data.get("scan_id")) != str(self.scan.get("scan_id")):
            return False
        if self.verdict and not self.verdict.get("provisional") and data.get("provisional"):
            return False  # a late provisional never replaces a final verdict
        if self.verdict == data:
            return False
        self.apply(data)
        return True


class VerifyVM(_Scanning):
    product = DictProperty()
    """The box catalogue's entry for the scanned GTIN: {sku, name_en, name_zh, thumb}; empty if none."""
    sold_at = NumericProperty(0)
    """monotonic() of this unit's sale by this app (undo shows within the window); 0: not sold here."""
    action = StringProperty("verify")
    """What the screen shows the verdict of: verify, sell, undo, return."""
    sales = NumericProperty(0)

    def wipe(self) -> None:
        super().wipe()
        self.product, self.sold_at, self.action, self._product_kept = {}, 0, "verify", {}

    def on_line(self, code: str, at: float | None = None) -> None:
        def reset(answered: bool) -> None:
            self.scan, self.verdict, self.error = {"code": code, "purpose": "verify"}, {}, ""
            self.tone, self.action, self.sold_at = "checking", "verify", 0
            if not answered:  # "Checking…": no product; the same one scanned again gets it back
                self._product_kept, self.product = dict(self.product or self._product_kept), {}

        self.begin(at, reset)
        self.post(code, "verify", "verify")

    def apply(self, verdict: dict[str, Any] | None) -> None:
        super().apply(verdict)
        gtin = ((verdict or {}).get("parsed") or {}).get("gtin")
        # The same product scanned again keeps its name and picture: nothing to fetch, and no second
        # frame to draw when it arrives.
        kept, self._product_kept = self._product_kept, {}
        if gtin and not self.product and kept.get("gtin") == gtin:
            self.product = kept
        elif self.product and self.product.get("gtin") != gtin:
            self.product = {}
        if gtin and self.product.get("gtin") != gtin:
            self.worker.run(lambda: self._lookup(str(gtin)), self._product, lambda _m: None, key="verify-product")

    def _lookup(self, gtin: str) -> dict[str, Any]:
        found = self.client.call("GET", "/search?" + urllib.parse.urlencode({"q": gtin, "limit": 1}))
        return {**found[0], "gtin": gtin} if found else {"gtin": gtin}

    def _product(self, p: dict[str, Any]) -> None:
        self.product = p

    @property
    def can_sell(self) -> bool:
        return self.action == "verify" and self.tone in ("genuine", "provisional") and bool(self.scan.get("scan_id"))

    def can_undo(self, now: float | None = None) -> bool:
        return bool(self.sold_at) and ((now or time.monotonic()) - self.sold_at) < UNDO_WINDOW_S

    def _act(self, purpose: str) -> None:
        self._settle(False)  # a tap right after a scan acts on the item just scanned
        code = str(self.scan.get("code") or "")
        if not code:
            return
        self.line_at = time.perf_counter()

        def done(scan: dict[str, Any]) -> None:
            self.action = purpose
            self.answered(scan)
            if purpose == "sell" and self.tone != "alarm":
                self.sold_at, self.sales = time.monotonic(), self.sales + 1
            elif purpose == "undo":
                self.sold_at = 0

        self.tone = "checking"
        self.post(code, purpose, "verify", done)

    def sell(self) -> None:
        self._act("sell")

    def undo(self) -> None:
        if self.can_undo():
            self._act("undo")

    def return_item(self) -> None:
        self._act("return")


class GoodsInVM(_Scanning):
    def __init__(self, client: BoxClient, worker: Worker) -> None:
        super().__init__(client, worker)
        self.printed_jobs: set[int] = set()

    units = NumericProperty(-1)
    expected = NumericProperty(-1)
    """-1: the box does not count against the shipping notice (a box from before that)."""
    intruders = ListProperty()
    missing = ListProperty()
    label = StringProperty("")
    """The goods-in label's print job: '' none, else its state or why none printed."""
    label_job = NumericProperty(0)
    counted = BooleanProperty(False)

    def on_line(self, code: str, at: float | None = None) -> None:
        def reset(_answered: bool) -> None:
            self.scan, self.verdict, self.error, self.label = {"code": code, "purpose": "receive"}, {}, "", ""
            self.units, self.expected, self.intruders, self.missing, self.counted = -1, -1, [], [], False
            self.label_job = 0
            self.tone = "checking"

        self.begin(at, reset)
        self.post(code, "receive", "goodsin")

    def apply(self, verdict: dict[str, Any] | None) -> None:
        ev = (verdict or {}).get("evidence") or {}
        units = ev.get("units")
        self.units = len(units) if isinstance(units, list) else int(units) if isinstance(units, int) else -1
        exp = ev.get("expected")
        self.expected = int(exp) if isinstance(exp, int) else len(exp) if isinstance(exp, list) else -1
        self.counted = "expected" in ev
        self.intruders = [str(x) for x in (ev.get("intruders") or [])]
        missing = ev.get("missing")
        self.missing = [str(x) for x in missing] if isinstance(missing, list) else []
        super().apply(verdict)
        if verdict and not verdict.get("provisional") and not self.label and self.scan.get("scan_id"):
            self.print_label()

    def wipe(self) -> None:
        super().wipe()
        self.units, self.expected, self.intruders, self.missing, self.counted = -1, -1, [], [], False
        self.label, self.label_job = "", 0

    def job_printed(self, job_id: int) -> None:
        # The feed may tell "printed" before the label's own answer is applied: remember it.
        self.printed_jobs.add(job_id)
        if job_id and job_id == self.label_job:
            self.label = "printed"

    def print_label(self) -> None:
        """The case's label (once per scan: a retry returns the job queued); again: a reprint of it."""
        scan_id, job_id = str(self.scan["scan_id"]), int(self.label_job)
        self.label = "queued"

        def call() -> dict[str, Any]:
            try:
                if job_id:
                    return dict(self.client.call("POST", f"/station/print/jobs/{job_id}/reprint"))
                return dict(self.client.call("POST", "/station/print/label", {"scan_id": scan_id,
                                                                              "request_id": f"goods-in-{scan_id}"}))
            except BoxError as exc:
                return {"state": "not printed", "error": str(exc)}

        def done(job: dict[str, Any]) -> None:
            self.label_job = int(job.get("id") or 0)
            printed = self.label_job in self.printed_jobs and not job_id
            self.label = "printed" if printed else str(job.get("error") or job.get("state") or "")
        self.worker.run(call, done, lambda msg: setattr(self, "label", msg))


def _deadline(accept_by: Any) -> float | None:
    if not accept_by:
        return None
    try:
        return datetime.fromisoformat(str(accept_by)).timestamp()
    except ValueError:
        return None


class OrdersVM(EventDispatcher):  # type: ignore[misc]
    orders = ListProperty()
    state = StringProperty("assigned")
    """The queue shown (one of ORDER_STATES)."""
    counts = DictProperty()
    current = DictProperty()
    """The order opened; empty: the queue."""
    picked = DictProperty()
    """Line index → units confirmed by scanning."""
    message = StringProperty("")
    """The last scan's outcome on the pick list / hand-over (an msgid with fields, see `note`)."""
    note = DictProperty()
    refused = BooleanProperty(False)
    error = StringProperty("")
    carrier = StringProperty("")
    tracking = StringProperty("")
    reject_reason = StringProperty("")
    now = NumericProperty(0.0)
    loads = NumericProperty(0)
    steps = NumericProperty(0)

    def __init__(self, client: BoxClient, worker: Worker) -> None:
        super().__init__()
        self.client, self.worker = client, worker
        self.now = time.time()

    def tick(self) -> None:
        self.now = time.time()

    def left_s(self, order: dict[str, Any], _now: float = 0) -> float | None:
        """Seconds left to accept (negative: late); None without a deadline or once accepted."""
        if order.get("state") != "assigned":
            return None
        d = _deadline(order.get("accept_by"))
        return None if d is None else d - self.now

    def refresh(self) -> None:
        def done(rows: list[dict[str, Any]]) -> None:
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["state"]] = counts.get(r["state"], 0) + 1
            self.counts = counts
            self.orders = sorted((r for r in rows if r["state"] == self.state),
                                 key=lambda r: (_deadline(r.get("accept_by")) or 9e18, r["assignment"]))
            if self.current:
                now = next((r for r in rows if r["assignment"] == self.current["assignment"]), None)
                if now is not None:
                    self.current = now
            self.loads += 1
            self.error = ""
        self.worker.run(lambda: list(self.client.call("GET", "/desk/orders?limit=500")), done,
                        lambda msg: setattr(self, "error", msg), key="orders")

    def show(self, state: str) -> None:
        self.state = state
        self.refresh()

    def open(self, order: dict[str, Any]) -> None:
        self.current, self.picked, self.message, self.note, self.refused = dict(order), {}, "", {}, False
        self.carrier, self.tracking, self.reject_reason, self.error = "", "", "", ""

    def close(self) -> None:
        self.current = {}
        self.refresh()

    def wipe(self) -> None:
        self.current, self.picked, self.message, self.note, self.error = {}, {}, "", {}, ""

    @property
    def all_picked(self) -> bool:
        lines = self.current.get("lines") or []
        return bool(lines) and all(self.picked.get(i, 0) >= int(ln["qty"]) for i, ln in enumerate(lines))

    def step(self, name: str, body: dict[str, Any] | None = None) -> None:
        if not self.current:
            return
        a = int(self.current["assignment"])

        def done(out: dict[str, Any]) -> None:
            self.steps += 1
            self.current = {**self.current, "state": out["state"]}
            note = out.get("print_note")
            self.message, self.note, self.refused = ("{note}", {"note": note}, False) if note else ("", {}, False)
            if out["state"] in ("rejected", "picked_up", "shipped"):
                self.current = {}
            self.refresh()

        def failed(msg: str) -> None:
            self.error = msg

        self.error = ""
        self.worker.run(lambda: dict(self.client.call("POST", f"/desk/orders/{a}/{name}", body or {})), done, failed)

    def accept(self) -> None:
        self.step("accept")

    def reject(self) -> None:
        if not self.reject_reason:
            self.error = "Choose a reason first"
            return
        self.step("reject", {"note": self.reject_reason})

    def start_picking(self) -> None:
        self.step("pick")

    def pack(self) -> None:
        if not self.all_picked:
            self.error = "Scan every item on the pick list first"
            return
        self.step("pack")

    def ship(self) -> None:
        if not (self.carrier and self.tracking.strip()):
            self.error = "Choose the carrier and enter the tracking number"
            return
        self.step("ship", {"carrier": self.carrier, "tracking": self.tracking.strip()})

    def ready(self) -> None:
        self.step("ready")

    def on_line(self, code: str, at: float | None = None) -> None:
        state = self.current.get("state")
        if state == "picking":
            self._pick(code)
        elif state == "ready":
            self.step("pickup", {"pickup_code": code.strip()})
        elif state == "packed" and self.current.get("fulfilment") == "delivery":
            self.tracking = code.strip()[:200]

    def _pick(self, code: str) -> None:
        """Which product the scanned item is (the box parses the code and finds it in its catalogue)."""
        def identify() -> dict[str, Any]:
            scan = dict(self.client.call("POST", "/station/scans", {"code": code, "purpose": "verify",
                                                                   "station": STATION, "wait_s": VERDICT_WAIT_S}))
            verdict = scan.get("verdict") or {}
            gtin = (verdict.get("parsed") or {}).get("gtin") or (code if code.isdigit() else None)
            q = str(gtin) if gtin else code.strip()
            found = self.client.call("GET", "/search?" + urllib.parse.urlencode({"q": q, "limit": 1}))
            return {"verdict": verdict, "product": found[0] if found else None}

        self.worker.run(identify, self._picked, lambda msg: setattr(self, "error", msg), key="pick")

    def _picked(self, out: dict[str, Any]) -> None:
        product, verdict = out.get("product"), out.get("verdict") or {}
        lines = self.current.get("lines") or []
        name = (product or {}).get("name_en") or (product or {}).get("sku") or "?"
        if verdict.get("verdict") in ALARMS:
            self.message, self.note, self.refused = "Refused: {reason}", {"reason": verdict.get("message") or verdict["verdict"]}, True
            return
        for i, ln in enumerate(lines):
            if product and ln["sku"] == product["sku"] and self.picked.get(i, 0) < int(ln["qty"]):
                self.picked = {**self.picked, i: self.picked.get(i, 0) + 1}
                self.message, self.note, self.refused, self.error = "Picked {name}", {"name": name}, False, ""
                return
        if product and any(ln["sku"] == product["sku"] for ln in lines):
            self.message, self.note, self.refused = "Already picked enough {name}", {"name": name}, True
        else:
            self.message, self.note, self.refused = "Wrong item: {name} is not on this order", {"name": name}, True


class StockVM(EventDispatcher):  # type: ignore[misc]
    sku = StringProperty("")
    result = DictProperty()
    """The box's answer: {sku, here: {on_hand, available} | null, nearby: [...], as_of, source}."""
    available = BooleanProperty(True)
    """False: this box has no stock lookup (say so instead of an error)."""
    delta = NumericProperty(0)
    reason = StringProperty("")
    note = StringProperty("")
    field = OptionProperty("sku", options=["sku", "note"])
    error = StringProperty("")
    saved = StringProperty("")
    loads = NumericProperty(0)

    def __init__(self, client: BoxClient, worker: Worker) -> None:
        super().__init__()
        self.client, self.worker = client, worker

    def wipe(self) -> None:
        self.sku, self.result, self.delta, self.reason, self.note, self.error, self.saved = "", {}, 0, "", "", "", ""

    def type(self, ch: str) -> None:
        self.saved = ""
        if self.field == "note":
            self.note = (self.note + ch)[:200]
        else:
            self.sku = (self.sku + ch.upper())[:64]

    def back(self) -> None:
        if self.field == "note":
            self.note = self.note[:-1]
        else:
            self.sku = self.sku[:-1]

    def clear(self) -> None:
        if self.field == "note":
            self.note = ""
        else:
            self.sku = ""

    def on_line(self, code: str, at: float | None = None) -> None:
        """A scanned product code: the catalogue says which SKU it is."""
        code = code.strip()

        def find() -> str:
            found = self.client.call("GET", "/search?" + urllib.parse.urlencode({"q": code[-14:] if code.isdigit() else code,
                                                                                 "limit": 1}))
            return str(found[0]["sku"]) if found else code

        def done(sku: str) -> None:
            self.sku = sku
            self.lookup()
        self.worker.run(find, done, lambda msg: setattr(self, "error", msg), key="stock-find")

    def lookup(self) -> None:
        sku = self.sku.strip()
        if not sku:
            self.error = "Enter or scan a SKU"
            return
        self.error = ""

        def call() -> dict[str, Any]:
            try:
                return {"ok": dict(self.client.call("GET", "/station/stock/" + urllib.parse.quote(sku, safe="/")))}
            except BoxError as exc:
                if not_on_this_box(exc):
                    return {"missing": True}
                raise

        def done(out: dict[str, Any]) -> None:
            self.loads += 1
            self.available = "missing" not in out
            self.result = out.get("ok") or {}
        self.worker.run(call, done, lambda msg: setattr(self, "error", msg), key="stock")

    def adjust(self) -> None:
        self.saved = ""
        if not self.result or not self.delta or not self.reason:
            self.error = "Choose how many and why"
            return
        body: dict[str, Any] = {"sku": self.result.get("sku") or self.sku, "delta": int(self.delta), "reason": self.reason}
        if self.note.strip():
            body["note"] = self.note.strip()

        def call() -> dict[str, Any]:
            try:
                return {"ok": dict(self.client.call("POST", "/station/stock/adjustments", body))}
            except BoxError as exc:
                if not_on_this_box(exc):
                    return {"missing": True}
                raise

        def done(out: dict[str, Any]) -> None:
            if "missing" in out:
                self.available = False
                return
            self.saved, self.delta, self.note = "Recorded", 0, ""
            self.lookup()
        self.worker.run(call, done, lambda msg: setattr(self, "error", msg))


class StatusVM(EventDispatcher):  # type: ignore[misc]
    """The status bar: printers, scanners, queued print jobs, the cloud link."""

    printers = DictProperty()
    scanners = DictProperty()
    queued = NumericProperty(0)
    cloud_online = BooleanProperty(False)
    reachable = BooleanProperty(True)
    """False: the box itself does not answer."""
    loads = NumericProperty(0)

    def __init__(self, client: BoxClient, worker: Worker) -> None:
        super().__init__()
        self.client, self.worker = client, worker

    def refresh(self) -> None:
        def done(s: dict[str, Any]) -> None:
            self.printers, self.scanners = dict(s.get("printers") or {}), dict(s.get("scanners") or {})
            jobs = s.get("print_jobs") or {}
            self.queued = sum(int(n) for st, n in jobs.items() if st not in ("printed", "cancelled"))
            self.cloud_online, self.reachable = bool(s.get("cloud_online")), True
            self.loads += 1

        def failed(_msg: str) -> None:
            self.reachable = False
        self.worker.run(lambda: dict(self.client.call("GET", "/station")), done, failed, key="status")

    def printer_text(self) -> tuple[str, str]:
        """(msgid, state) of the printer worst off, for the bar."""
        if not self.printers:
            return "No printer", "none"
        order = {"offline": 0, "unavailable": 0, "out_of_paper": 1, "paper_out": 1, "error": 1, "starting": 2, "ready": 3, "ok": 3}
        name, st = min(self.printers.items(), key=lambda kv: order.get(str(kv[1].get("state")), 2))
        return str(name), str(st.get("state") or "?")


def since_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
