"""The clerk's station view-models without a screen (Kivy properties and clock only): the stock screen
against an HTTP peer speaking the box's stock contract (and against a box without it), the goods-in
count with and without the shipping-notice fields, the verdict colours, the order timers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("kivy")

from kivy.clock import Clock

from kiosk import work
from kiosk.client import BoxClient
from kiosk.station import viewmodels
from kiosk.station.client import StationClient
from kiosk.station.screens.orders import timer_text
from kiosk.station.viewmodels import GoodsInVM, OrdersVM, StationSessionVM, StockVM, VerifyVM, tone_of
from kiosk.work import Worker
from tests.kiosk.test_viewmodels import pump

STOCK = {"sku": "TEA-LJ-250", "here": {"on_hand": 5, "available": 3},
         "nearby": [{"store": "st2", "name": "Xihu Road", "distance_km": 2.4, "available": 7}],
         "as_of": "2026-11-29T04:00:00Z", "source": "box"}


class _Peer:
    """A box's local API stand-in on a free port, serving `handler` from a thread of its own."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answer(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class StationPeer(_Peer):
    """`GET /station/stock/{sku}` and `POST /station/stock/adjustments` as the box serves them
    (`contract=False`: a box from before them, answering 404 "no such path")."""

    def __init__(self, contract: bool = True) -> None:
        self.session_ok = True
        self.posts: list[tuple[str, dict[str, Any], str | None]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                _answer(self, status, body)

            def do_GET(self) -> None:
                if not contract:
                    self._send(404, {"error": f"no such path {self.path!r}: this box serves /station, /clerks", "status": 404})
                elif self.path == "/station/stock/TEA-LJ-250":
                    self._send(200, STOCK)
                else:
                    self._send(404, {"error": "no SKU NOPE in this box's catalogue", "status": 404})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer.posts.append((self.path, body, self.headers.get("X-Clerk-Session")))
                if not peer.session_ok:
                    self._send(401, {"error": "no clerk is signed in with this session: sign in again", "status": 401,
                                     "reason": "no_session"})
                elif not contract:
                    self._send(404, {"error": f"no such path {self.path!r}: this box serves /station", "status": 404})
                else:
                    self._send(200, {"id": 1, **body})

            def log_message(self, *_: Any) -> None:
                pass

        self.serve(Handler)


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.shutdown()


def test_stock_lookup_and_an_adjustment_signed_by_the_clerk(worker: Worker) -> None:
    peer = StationPeer()
    try:
        client = BoxClient(peer.url)
        session = StationSessionVM(client)
        session.signed_in({"token": "tok-1", "expires_at": "", "clerk": {"id": 7, "name": "Wang Fang"}})
        vm = StockVM(client, worker)
        vm.sku = "TEA-LJ-250"
        vm.lookup()
        pump(lambda: vm.loads == 1, what="the stock answer")
        assert (vm.available, vm.result["here"], vm.result["nearby"][0]["available"]) == (True, {"on_hand": 5, "available": 3}, 7)
        vm.adjust()
        assert vm.error == "Choose how many and why"  # nothing sent without a count and a reason
        vm.delta, vm.reason, vm.note = -2, "damaged", "dropped "
        vm.adjust()
        pump(lambda: vm.saved == "Recorded" and vm.loads == 2, what="the adjustment and the new figures")
        assert peer.posts == [("/station/stock/adjustments", {"sku": "TEA-LJ-250", "delta": -2, "reason": "damaged",
                                                              "note": "dropped"}, "tok-1")]
        assert (vm.delta, vm.note) == (0, "")
        vm.sku = "NOPE"
        vm.lookup()
        pump(lambda: vm.error != "", what="the refusal")
        assert vm.error == "no SKU NOPE in this box's catalogue" and vm.available
    finally:
        peer.close()


def test_a_box_without_the_stock_routes_says_so_instead_of_an_error(worker: Worker) -> None:
    peer = StationPeer(contract=False)
    try:
        vm = StockVM(BoxClient(peer.url), worker)
        vm.sku = "TEA-LJ-250"
        vm.lookup()
        pump(lambda: vm.loads == 1, what="the answer")
        assert (vm.available, vm.error, dict(vm.result)) == (False, "", {})
    finally:
        peer.close()


@pytest.mark.parametrize(("evidence", "units", "expected", "counted", "intruders"), [
    ({"sscc": "1", "units": 12, "expected": 11, "intruders": ["u9"], "missing": []}, 12, 11, True, ["u9"]),
    ({"units": 10}, 10, -1, False, []),  # a cloud from before the shipping-notice count
    ({"units": ["a", "b"]}, 2, -1, False, []),
])
def test_goods_in_counts(worker: Worker, evidence: dict[str, Any], units: int, expected: int, counted: bool,
                         intruders: list[str]) -> None:
    vm = GoodsInVM(BoxClient("http://127.0.0.1:9"), worker)
    vm.apply({"verdict": "genuine", "provisional": True, "evidence": evidence})
    assert (vm.units, vm.expected, vm.counted, list(vm.intruders)) == (units, expected, counted, intruders)


@pytest.mark.parametrize(("verdict", "tone"), [
    (None, "checking"),
    ({"verdict": "genuine", "provisional": False}, "genuine"),
    ({"verdict": "genuine", "provisional": True}, "provisional"),
    ({"verdict": "untracked", "provisional": False}, "provisional"),
    ({"verdict": "cloned", "provisional": False}, "alarm"),
    ({"verdict": "recalled", "provisional": True}, "alarm"),  # an offline alarm is still red
])
def test_verdict_colours(verdict: dict[str, Any] | None, tone: str) -> None:
    assert tone_of(verdict) == tone


def test_order_timer_counts_down_to_the_acceptance_deadline(worker: Worker) -> None:
    vm = OrdersVM(BoxClient("http://127.0.0.1:9"), worker)
    vm.now = 1_000_000.0
    order = {"state": "assigned", "accept_by": "1970-01-12T13:50:05+00:00"}  # 1,000,205 s
    assert timer_text(vm.left_s(order)) == "3:25"
    vm.now += 300
    assert timer_text(vm.left_s(order)) == "-1:35"
    assert vm.left_s({**order, "state": "accepted"}) is None
    assert timer_text(7322) == "2:02:02"


def test_a_write_refused_for_a_lost_session_signs_the_clerk_out(worker: Worker) -> None:
    peer = StationPeer()
    try:
        client = StationClient(peer.url)
        session = StationSessionVM(client)
        client.on_session_lost = session.signed_out
        session.signed_in({"token": "tok-2", "expires_at": "", "clerk": {"id": 7, "name": "Wang Fang"}})
        vm = StockVM(client, worker)
        vm.sku = "TEA-LJ-250"
        vm.lookup()
        pump(lambda: vm.loads == 1, what="the stock answer")
        peer.session_ok = False
        vm.delta, vm.reason = 1, "found"
        vm.adjust()
        pump(lambda: session.token == "", what="the app signed out")
        assert vm.error == "no clerk is signed in with this session: sign in again"
        assert "X-Clerk-Session" not in client.headers and session.clerk == {}
    finally:
        peer.close()


class ScanPeer(_Peer):
    """`POST /station/scans` answering a genuine verdict for GTIN 06950000000019 (after `gate` is set)
    and `GET /search` finding its product; it counts the searches."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.searches = 0
        self.answered = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, body: Any) -> None:
                _answer(self, 200, body)

            def do_GET(self) -> None:
                peer.searches += 1
                self._send([{"sku": "TEA-LJ-250", "name_en": "Longjing green tea 250 g", "name_zh": "西湖龙井茶 250克"}])

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert peer.gate.wait(30)
                peer.answered += 1
                verdict = {"scan_id": f"s{peer.answered}", "verdict": "genuine", "provisional": True,
                           "parsed": {"gtin": "06950000000019"}, "message": "received at this store"}
                self._send({"scan_id": f"s{peer.answered}", "code": body["code"], "purpose": body["purpose"],
                            "verdict": verdict})

            def log_message(self, *_: Any) -> None:
                pass

        self.serve(Handler)

    def close(self) -> None:
        self.gate.set()
        super().close()


def tones_of(vm: VerifyVM) -> list[str]:
    seen: list[str] = []
    vm.bind(tone=lambda _vm, tone: seen.append(tone))
    return seen


def test_an_answer_within_the_grace_is_drawn_without_checking_first(worker: Worker,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The box answers at once: the screen goes from the last verdict straight to the new one (one
    frame), and the same product scanned again keeps its name without asking the box again."""
    monkeypatch.setattr(viewmodels, "CHECKING_AFTER_S", 30.0)  # longer than any answer here takes
    peer = ScanPeer()
    try:
        vm = VerifyVM(BoxClient(peer.url), worker)
        seen = tones_of(vm)
        vm.on_line("]d2010695000000001921A1")
        pump(lambda: vm.product.get("sku") == "TEA-LJ-250", what="the verdict and its product")
        vm.on_line("]d2010695000000001921A2")
        assert (vm.tone, vm.scan["scan_id"]) == ("provisional", "s1")  # the last verdict stays meanwhile
        pump(lambda: vm.shown == 2, what="the second verdict")
        assert (vm.scan["scan_id"], vm.product.get("sku"), peer.searches) == ("s2", "TEA-LJ-250", 1)
        assert seen == ["checking", "provisional", "checking", "provisional"]  # both set in the answer's tick
    finally:
        peer.close()


@pytest.fixture
def scanned_once(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ScanPeer, VerifyVM]]:
    """A verify screen whose first scan is answered and its product shown; a grace of 50 ms."""
    monkeypatch.setattr(viewmodels, "CHECKING_AFTER_S", 0.05)
    peer = ScanPeer()
    try:
        vm = VerifyVM(BoxClient(peer.url), worker)
        vm.on_line("]d2010695000000001921A1")
        pump(lambda: vm.product.get("sku") == "TEA-LJ-250", what="the first verdict and its product")
        yield peer, vm
    finally:
        peer.close()


def test_a_slow_answer_shows_checking_then_the_verdict(scanned_once: tuple[ScanPeer, VerifyVM]) -> None:
    peer, vm = scanned_once
    peer.gate.clear()  # the box holds the next answer until the test lets it go
    seen = tones_of(vm)
    vm.on_line("]d2010695000000001921A2")
    pump(lambda: vm.tone == "checking", what="Checking… once the grace is over")
    assert (dict(vm.product), vm.scan, peer.answered) == ({}, {"code": "]d2010695000000001921A2", "purpose": "verify"}, 1)
    vm.feed({"kind": "verdict", "data": {"scan_id": "s1", "verdict": "cloned"}})  # the old scan's news
    peer.gate.set()
    pump(lambda: vm.shown == 2, what="the second verdict")
    assert (vm.tone, vm.scan["scan_id"], vm.product.get("sku"), peer.searches) == ("provisional", "s2", "TEA-LJ-250", 1)
    assert seen == ["checking", "provisional"]


def test_an_answer_waiting_when_the_grace_ends_is_drawn_in_the_same_frame(
        worker: Worker, scanned_once: tuple[ScanPeer, VerifyVM], monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI thread was busy (a frame being drawn) past the grace, and the answer came meanwhile:
    the tick that runs both shows the verdict with the product it already had, nothing to fetch."""
    peer, vm = scanned_once
    monkeypatch.setattr(viewmodels, "CHECKING_AFTER_S", 0.0)  # over by the next tick
    handed_over = threading.Event()
    real = Clock  # the one Kivy clock, which kiosk.work hands answers to

    class HandOver:  # Kivy's clock, telling the test when the worker hands an answer to the UI thread
        def schedule_once(self, callback: Any, timeout: float = 0) -> Any:
            event = real.schedule_once(callback, timeout)
            handed_over.set()
            return event

    monkeypatch.setattr(work, "Clock", HandOver())
    ticks: list[tuple[int, str]] = []
    vm.bind(tone=lambda _vm, tone: ticks.append((Clock.frames, tone)))
    vm.on_line("]d2010695000000001921A2")
    # No clock tick until the answer waits for one: the UI thread is busy meanwhile.
    assert handed_over.wait(10), "the box did not answer"
    assert (worker.pending, peer.answered) == (1, 2)
    pump(lambda: vm.shown == 2, what="the second verdict")
    assert len({frame for frame, _tone in ticks}) == 1 and ticks[-1][1] == "provisional"
    assert (vm.product.get("sku"), peer.searches) == ("TEA-LJ-250", 1)
