"""The kiosk's view-models without a screen: Kivy properties and clock only, against a real box's
local API (agent, outbox, Mosquitto) where they call it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agent import EdgeAgent
from tests.conftest import Broker
from tests.edge.conftest import Cloud
from tests.kiosk.conftest import SignageBox, StockApi, png
from tests.kiosk.test_box_api import Box

pytest.importorskip("kivy")
from kivy.clock import Clock

from kiosk.client import BoxClient
from kiosk.viewmodels import AttractVM, BrowseVM, CheckoutVM, ProductVM, SessionVM, availability_lines
from kiosk.work import Worker


def pump(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Run Kivy's clock (the UI thread's job) until `cond` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        Clock.tick()


class RunningBox:
    """A box agent on its own thread and loop, as it runs beside the kiosk on a real device."""

    def __init__(self, broker: Broker, tmp: Path, stock_url: str | None) -> None:
        self.box = Box(broker, tmp, stock_url)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop_requested: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(broker),), daemon=True)

    async def _main(self, broker: Broker) -> None:
        self.stop_requested = asyncio.Event()
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        async with self.box as agent:
            self.agent: EdgeAgent = agent
            self.started.set()
            await self.stop_requested.wait()
        await cloud.close()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.started.wait(60), "the box did not start"
        assert self.agent.api is not None
        return self.agent.api.url

    def __exit__(self, *_: Any) -> None:
        assert self.stop_requested is not None
        self.loop.call_soon_threadsafe(self.stop_requested.set)
        self.thread.join(30)


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.shutdown()


def test_idle_countdown_then_wipe() -> None:
    s = SessionVM(idle_s=90, countdown_s=15)
    resets: list[int] = []
    s.bind(on_reset=lambda *_: resets.append(1))
    s.touched()
    s.add({"sku": "TEA-LJ-250", "name_zh": "龙井", "price": "168.00"}, 2)
    s.reach = True
    for _ in range(89):
        s.tick(1)
    assert (s.countdown, s.count, s.total) == (-1, 2, 336.0)
    s.tick(1)
    assert s.countdown == 15
    s.touched()  # a touch during the countdown keeps the session
    assert (s.countdown, s.count) == (-1, 2)
    for _ in range(90 + 14):
        s.tick(1)
    assert s.countdown == 1 and not resets
    s.tick(1)
    assert (resets, s.basket, s.count, s.reach, s.active, s.countdown) == ([1], [], 0, False, False, -1)
    s.tick(1000)  # the attract loop does not count down
    assert resets == [1]


AVAILABILITY = [
    ({"here": {"qty": 3}, "stores": [], "warehouse": {"qty": 0, "days": 2}, "source": "cloud", "age_s": 0},
     ["In this store: {n} on the shelf"]),
    ({"here": {"qty": 0}, "stores": [{"name": "Xihu Road", "km": 2.4, "qty": 2}], "warehouse": {"qty": 9, "days": 2},
      "source": "cloud", "age_s": 0},
     ["Not on the shelf in this store", "At {store}, {km} km away: {n}", "Ships from the warehouse in {days} days"]),
    ({"here": {"qty": 1}, "stores": [], "warehouse": {}, "source": "cache", "age_s": 600},
     ["In this store: {n} on the shelf", "Figures from {m} min ago (the store is offline)"]),
    ({"here": {"qty": 0}, "stores": [], "warehouse": {}, "source": "none", "age_s": None},
     ["Stock figures are not available right now"]),
]


@pytest.mark.parametrize(("answer", "msgs"), AVAILABILITY)
def test_availability_told_plainly(answer: dict[str, Any], msgs: list[str]) -> None:
    assert [ln["msg"] for ln in availability_lines(answer)] == msgs


def test_availability_age_in_minutes() -> None:
    [_, age] = availability_lines({"here": {"qty": 1}, "source": "cache", "age_s": 600})
    assert age["args"] == {"m": 10}


def test_address_form_inline_messages(worker: Worker) -> None:
    c = CheckoutVM(BoxClient("http://127.0.0.1:9"), worker)
    assert c.validate() and c.errors == {}  # pickup needs nothing
    c.fulfilment = "delivery"
    assert not c.validate()
    assert (c.name_error, c.phone_error, c.address_error) == (
        "Please enter a name", "Please enter a phone number (6 to 20 digits)", "Please enter street, number and city")
    c.focus = "phone"
    for ch in "1380000":
        c.key(ch)
    assert c.phone == "1380000" and c.phone_error == ""  # cleared as soon as it is right
    assert c.name_error == "Please enter a name"  # the others stay until they are right
    c.focus = "phone"
    c.backspace()
    c.backspace()
    assert c.phone_error == "Please enter a phone number (6 to 20 digits)"
    c.fulfilment = "pickup"
    assert c.errors == {} and c.name_error == ""
    c.fulfilment = "delivery"
    c.name, c.phone, c.address = "Li Lei", "138 0000 1234", "12 Xihu Road, Hangzhou"
    assert c.validate()
    assert c.order_body([{"sku": "A", "qty": 2}]) == {
        "lines": [{"sku": "A", "qty": 2}], "fulfilment": "delivery", "name": "Li Lei", "phone": "138 0000 1234",
        "address": "12 Xihu Road, Hangzhou"}


def test_browse_search_and_a_box_that_stops_answering(broker: Broker, tmp_path: Path, stock_api: StockApi,
                                                      worker: Worker) -> None:
    with RunningBox(broker, tmp_path, stock_api.url) as url:
        b = BrowseVM(BoxClient(url), worker)
        b.load()
        pump(lambda: b.loads == 1, what="the first page")
        assert (b.total, len(b.items), b.error) == (64, 40, "")
        b.load_more()
        pump(lambda: b.loads == 2 and worker.pending == 0, what="the second page")
        assert len(b.items) == 64 and len({i["sku"] for i in b.items}) == 64
        b.key("l")
        b.key("j")  # the answer for 'l' arrives after 'j' was typed: dropped
        pump(lambda: worker.pending == 0 and not b.loading, what="the answer for 'lj'")
        assert [i["sku"] for i in b.items] == ["TEA-LJ-250"] and b.items[0]["price_text"] == "¥168.00"
        b.set_price_band(3)
        pump(lambda: worker.pending == 0, what="over ¥200 with 'lj'")
        assert (b.items, b.total) == ([], 0)
        p = ProductVM(BoxClient(url), worker)
        p.open({"sku": "TEA-LJ-250", "name_zh": "西湖龙井茶 250克"})
        pump(lambda: worker.pending == 0, what="the product and its figures")
        assert (p.brand, p.attributes[0], p.error) == ("West Lake", {"k": "origin", "v": "Hangzhou"}, "")
        assert len(p.images) == 1 and p.picture == p.images[0]
    # The box is gone: a message, not a crash; the grid keeps what it showed.
    b.clear()
    pump(lambda: worker.pending == 0, what="the failed call")
    assert b.error.startswith(f"the box at {url} does not answer") and not b.loading
    p.open({"sku": "TEA-LJ-250"})
    pump(lambda: worker.pending == 0, what="the failed product calls")
    assert p.error.startswith("the box at") and [ln["msg"] for ln in p.availability] == [
        "Stock figures are not available right now"]


def test_malformed_entries_are_skipped(worker: Worker) -> None:
    b = BrowseVM(BoxClient("http://127.0.0.1:9"), worker)
    b._apply({"total": 3, "items": [{"sku": "A", "price": "x"}, {"name_en": "no sku"}, "junk"]}, replace=True)
    assert [(i["sku"], i["price_text"]) for i in b.items] == [("A", "—")]


def test_the_attract_loop_shows_what_the_box_plays(signage_box: SignageBox, tmp_path: Path) -> None:
    from kiosk.textures import decode

    worker = Worker()
    vm = AttractVM(BoxClient(signage_box.url), worker, decode=decode, media_dir=tmp_path)
    try:
        vm.poll()
        pump(lambda: worker.pending == 0, what="nothing plays yet")
        assert (vm.shown, vm.kind, vm.media) == (0, "", "")
        poster = png((200, 30, 30), 48)
        sha = signage_box.play(poster, "image/png")
        vm.poll()
        pump(lambda: vm.shown == 1, what="the picture shown")
        assert (vm.kind, vm.media, vm.campaign, vm.picture.width, vm.picture.height) == ("image", sha, "Spring tea", 48, 48)
        # The next file is not on the box yet: the picture stays, the error says why, the next poll tries again.
        signage_box.now = {"media": "ab" * 32, "campaign": "Later"}
        vm.poll()
        pump(lambda: worker.pending == 0 and vm.error != "", what="the missing file reported")
        assert (vm.media, vm.shown) == (sha, 1) and "nothing at /signage/media/" in vm.error
        clip = b"\x00\x00\x00\x18ftypmp42 not really a video"
        video = signage_box.play(clip, "video/mp4", campaign="Tea ceremony")
        vm.poll()
        pump(lambda: vm.shown == 2, what="the video's copy made")
        assert (vm.kind, vm.media, Path(vm.video).read_bytes()) == ("video", video, clip)
        signage_box.play(b"<svg/>", "image/svg+xml")
        vm.poll()
        pump(lambda: worker.pending == 0 and "could not be decoded" in vm.error, what="an unreadable picture refused")
        assert vm.media == video
        signage_box.now = None
        vm.poll()
        pump(lambda: vm.shown == 3, what="the welcome again")
        assert (vm.kind, vm.media) == ("", "")
    finally:
        worker.shutdown()
