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

from kiosk.client import BoxClient
from kiosk.station.client import StationClient
from kiosk.station.screens.orders import timer_text
from kiosk.station.viewmodels import GoodsInVM, OrdersVM, StationSessionVM, StockVM, tone_of
from kiosk.work import Worker
from tests.kiosk.test_viewmodels import pump

STOCK = {"sku": "TEA-LJ-250", "here": {"on_hand": 5, "available": 3},
         "nearby": [{"store": "st2", "name": "Xihu Road", "distance_km": 2.4, "available": 7}],
         "as_of": "2026-11-29T04:00:00Z", "source": "box"}


class StationPeer:
    """`GET /station/stock/{sku}` and `POST /station/stock/adjustments` as the box serves them
    (`contract=False`: a box from before them, answering 404 "no such path")."""

    def __init__(self, contract: bool = True) -> None:
        self.session_ok = True
        self.posts: list[tuple[str, dict[str, Any], str | None]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
