"""The box's API behind the cloud shelf, over the real local API of a real agent and a real Mosquitto:
paging and search (pinyin full and initials, characters, English), filters, availability with and
without the cloud, and an order placed while the cloud is away that arrives once it is back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from broker.envelope import MessageType
from broker.payloads import OrderData
from edge.agent import EdgeAgent
from edge.kiosk.component import KioskComponent
from edge.kiosk.shelf_db import pinyin_keys
from tests.conftest import Broker
from tests.edge.conftest import Cloud, arun, until
from tests.kiosk.conftest import STORE, StockApi, acall, box_config


@pytest.mark.parametrize(("name", "full", "initials"), [
    ("西湖龙井茶 250克", "xihulongjingcha250ke", "xhljc250k"),
    ("龙井", "longjing", "lj"),
    ("", "", ""),
])
def test_pinyin_keys(name: str, full: str, initials: str) -> None:
    assert pinyin_keys(name) == (full, initials)


async def _indexed(agent: EdgeAgent) -> None:
    await until(lambda: bool(kiosk_of(agent).db.indexed), timeout=20, what="the kiosk's search index built")


class Box:
    def __init__(self, broker: Broker, tmp: Path, stock_url: str | None) -> None:
        self.agent = EdgeAgent(box_config(broker, tmp, stock_url))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EdgeAgent:
        self.task = asyncio.create_task(self.agent.run())
        await asyncio.wait_for(self.agent.ready.wait(), 20)
        await _indexed(self.agent)
        return self.agent

    async def __aexit__(self, *_: Any) -> None:
        await self.agent.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


def kiosk_of(agent: EdgeAgent) -> KioskComponent:
    found = agent.component("kiosk")
    assert isinstance(found, KioskComponent)
    return found


def skus(page: dict[str, Any]) -> list[str]:
    return [i["sku"] for i in page["items"]]


SEARCHES = [
    ("longjing", "TEA-LJ-250"),
    ("lj", "TEA-LJ-250"),
    ("xhlj", "TEA-LJ-250"),
    ("龙井", "TEA-LJ-250"),
    ("green tea", "TEA-LJ-250"),
    ("qimen", "TEA-BL-100"),
    ("wuchang", "RICE-WC-5KG"),
    ("dami", "RICE-WC-5KG"),
    ("mug-01", "MUG-01"),
]


def test_paging_search_and_filters(broker: Broker, tmp_path: Path, stock_api: StockApi) -> None:
    stock_api.set("TEA-LJ-250", STORE, 3)
    stock_api.set("SNACK-001", STORE, 0)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        async with Box(broker, tmp_path, stock_api.url) as box:
            # Pages: 64 products, 40 + 24, no overlap, same order every time.
            s1, p1 = await acall(box, "GET", "/shelf/products?limit=40")
            s2, p2 = await acall(box, "GET", "/shelf/products?limit=40&offset=40")
            assert (s1, s2, p1["total"], len(p1["items"]), len(p2["items"])) == (200, 200, 64, 40, 24)
            assert not set(skus(p1)) & set(skus(p2))
            for q, first in SEARCHES:
                status, page = await acall(box, "GET", "/shelf/products?q=" + quote(q))
                assert status == 200 and skus(page)[:1] == [first], (q, page)
            _, page = await acall(box, "GET", "/shelf/products?q=zzzz")
            assert page == {"total": 0, "offset": 0, "items": []}
            # Filters: price range, brand, category, in stock here (from this store's figures).
            _, page = await acall(box, "GET", "/shelf/products?min_price=80&max_price=200")
            assert sorted(skus(page)) == ["RICE-WC-5KG", "TEA-LJ-250"]
            _, page = await acall(box, "GET", "/shelf/products?brand=Qimen")
            assert skus(page) == ["TEA-BL-100"]
            _, page = await acall(box, "GET", "/shelf/products?category=Food%20%3E%20Rice")
            assert skus(page) == ["RICE-WC-5KG"]
            await until(lambda: any("location=st1" in c for c in stock_api.calls), what="this store's stock fetched")
            await until(lambda: kiosk_of(box).db.figures("TEA-LJ-250")[1] is not None,
                        what="this store's figures stored")
            _, page = await acall(box, "GET", "/shelf/products?in_stock=1")
            assert (skus(page), page["items"][0]["here"]) == (["TEA-LJ-250"], 3)
            assert stock_api.auth[0] == "Bearer osk_test"
            # Bad input gets a message naming it.
            status, err = await acall(box, "GET", "/shelf/products?min_price=300&max_price=10")
            assert (status, err["error"]) == (400, "min_price 300 is above max_price 10")
            status, err = await acall(box, "GET", "/shelf/products?in_stock=maybe")
            assert status == 400 and "in_stock 'maybe'" in err["error"]
            _, brands = await acall(box, "GET", "/shelf/brands")
            assert {"brand": "Daoxiang", "products": 60} in brands
        await cloud.close()

    arun(main())


def test_availability_from_the_cloud_then_from_the_cache_with_its_age(broker: Broker, tmp_path: Path,
                                                                        stock_api: StockApi) -> None:
    stock_api.set("TEA-LJ-250", STORE, 3)
    stock_api.set("TEA-LJ-250", "st2", 5)
    stock_api.set("TEA-LJ-250", "st3", 0)
    stock_api.set("TEA-LJ-250", "wh-east", 120, kind="warehouse")

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        async with Box(broker, tmp_path, stock_api.url) as box:
            kiosk = kiosk_of(box)
            await until(kiosk._reachable, what="the cloud reachable from the box")
            status, av = await acall(box, "GET", "/shelf/availability/TEA-LJ-250")
            assert status == 200, av
            assert (av["source"], av["here"], av["stores"], av["warehouse"]) == (
                "cloud", {"code": "st1", "qty": 3}, [{"code": "st2", "name": "Xihu Road", "km": 2.4, "qty": 5}],
                {"code": "wh-east", "qty": 120, "days": 2})
            assert av["age_s"] == 0
            # The cloud goes away: the box answers from what it last saw, and says how old it is.
            await cloud.set_online(False)
            await until(lambda: not kiosk._reachable(), what="the box to see the cloud offline")
            calls = len(stock_api.calls)
            stock_api.set("TEA-LJ-250", STORE, 0)  # would change the answer if it were asked
            status, cached = await acall(box, "GET", "/shelf/availability/TEA-LJ-250")
            assert (status, cached["source"], cached["here"]["qty"]) == (200, "cache", 3)
            assert cached["as_of"] == av["as_of"] and cached["age_s"] >= 0
            assert len(stock_api.calls) == calls  # not asked while offline
            # A product never looked up while online: no figures, said so.
            status, none = await acall(box, "GET", "/shelf/availability/RICE-WC-5KG")
            assert (status, none["source"], none["age_s"]) == (200, "none", None)
            # The bus says online but the stock API fails: cached figures, not an error.
            await cloud.set_online(True)
            await until(kiosk._reachable, what="the cloud back")
            stock_api.up = False
            status, failed = await acall(box, "GET", "/shelf/availability/TEA-LJ-250")
            assert (status, failed["source"], failed["here"]["qty"]) == (200, "cache", 3)
            assert "503" in (kiosk.last_error or "")
            status, err = await acall(box, "GET", "/shelf/availability/NOPE-1")
            assert (status, err["error"]) == (404, "no product with SKU 'NOPE-1' on this shelf")
        await cloud.close()

    arun(main())


def test_order_placed_offline_reaches_the_cloud_when_it_is_back(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(False)
        async with Box(broker, tmp_path, None) as box:
            status, placed = await acall(box, "POST", "/shelf/orders", {
                "lines": [{"sku": "TEA-LJ-250", "qty": 2}, {"sku": "RICE-WC-5KG", "qty": 1}], "fulfilment": "pickup"})
            assert status == 200, placed
            order_id = placed["order_id"]
            assert order_id.startswith("st1-k1-")
            assert placed["confirm_url"] == f"https://shop.example/o/{order_id}"
            assert (placed["total"], placed["pickup_store"]) == (425.9, "st1")
            # Committed to the outbox and held there while the cloud is away (a row leaves the outbox
            # only when the broker acknowledged it, so a pending row has not gone up).
            assert box.outbox is not None and box.outbox.pending >= 1
            assert not cloud.of(MessageType.ORDER)
            # Delivery: validated with messages that name the field.
            status, err = await acall(box, "POST", "/shelf/orders", {
                "lines": [{"sku": "TEA-LJ-250", "qty": 1}], "fulfilment": "delivery", "name": "Li", "phone": "12"})
            assert (status, err["error"]) == (400, "a delivery needs address; phone '12' is not a phone number: "
                                                   "expected 6-20 digits, spaces or '-'")
            status, err = await acall(box, "POST", "/shelf/orders", {
                "lines": [{"sku": "GONE-1", "qty": 1}], "fulfilment": "pickup"})
            assert (status, err["error"]) == (400, "SKU 'GONE-1' is not in this box's catalogue: remove it from the basket")
            status, err = await acall(box, "POST", "/shelf/orders", {
                "lines": [{"sku": "TEA-LJ-250", "qty": 1}], "fulfilment": "pickup", "pickup_store": "st9"})
            assert status == 400 and "pickup_store 'st9' is not a pickup store" in err["error"]
            status, delivery = await acall(box, "POST", "/shelf/orders", {
                "lines": [{"sku": "MUG-01", "qty": 1}], "fulfilment": "delivery", "name": "Li Lei",
                "phone": "138 0000 1234", "address": "12 Xihu Road, Hangzhou"})
            assert status == 200, delivery
            # The cloud is back: both orders arrive, as placed.
            await cloud.set_online(True)
            await until(lambda: len(cloud.of(MessageType.ORDER)) == 2, timeout=20, what="both orders in the cloud")
            first, second = (e.data for e in cloud.of(MessageType.ORDER))
            assert isinstance(first, OrderData) and isinstance(second, OrderData)
            assert (first.order_id, first.channel, first.fulfilment.value, first.pickup_store) == (
                order_id, "kiosk", "pickup", "st1")
            assert [(ln.sku, ln.qty, ln.price) for ln in first.lines] == [("TEA-LJ-250", 2, 168), ("RICE-WC-5KG", 1, 89.9)]
            assert (second.order_id, second.address, second.contact) == (
                delivery["order_id"], "12 Xihu Road, Hangzhou", "Li Lei 138 0000 1234")
        await cloud.close()

    arun(main())


def test_the_index_build_leaves_pypinyin_out_of_the_agent(tmp_path: Path) -> None:
    """pypinyin's dictionaries (~55 MB) load in a short-lived process, never in the agent's."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge.kiosk.shelf_db import ShelfDb\n"
        "from tests.kiosk.conftest import seed_catalogue\n"
        f"seed_catalogue(Path({str(tmp_path / 'cat')!r}))\n"
        f"db = ShelfDb(Path({str(tmp_path / 'kiosk.db')!r}))\n"
        f"n = db.rebuild(Path({str(tmp_path / 'cat' / 'catalogue.db')!r}), 'e:1')\n"
        "print(n, db.page(__import__('edge.kiosk.shelf_db').kiosk.shelf_db.Filters(query='lj'), 'st1', 5, 0)[0],"
        " 'pypinyin' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert (done.returncode, done.stdout.strip()) == (0, "64 1 False"), done.stderr
