"""The real kiosk app under Xvfb, driven by simulated touches against a real box (agent, local API,
outbox) on a real Mosquitto: browse → search by pinyin → product → add → pickup → QR code, and the
order arrives on the bus; the idle reset wipes the basket and resumes the attract loop. Screenshots
of every screen, portrait and landscape, go to the ignored screenshot folder (see drive.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import MessageType
from broker.payloads import OrderData
from tests.conftest import Broker
from tests.edge.conftest import Cloud, arun, until
from tests.kiosk.conftest import STORE, SignageBox, StockApi, png
from tests.kiosk.test_box_api import Box

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"portrait": (1080, 1920), "landscape": (1920, 1080)}

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")


async def drive(scenario: str, box_url: str, size: tuple[int, int], tmp: Path) -> dict[str, Any]:
    out = tmp / f"{scenario}-{size[0]}x{size[1]}.json"
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KIVY_HOME": str(tmp / "kivy-home"),
           "KCFG_GRAPHICS_WIDTH": str(size[0]), "KCFG_GRAPHICS_HEIGHT": str(size[1]),
           "KCFG_GRAPHICS_RESIZABLE": "0", "KCFG_KIVY_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        "xvfb-run", "-a", "-s", "-screen 0 1920x1920x24", sys.executable, "-m", "tests.kiosk.drive", scenario, box_url,
        str(out), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert out.exists(), output.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["ok"], (result.get("error"), output.decode(errors="replace")[-3000:])
    return result


@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
def test_shopper_orders_for_pickup_and_the_order_goes_up(broker: Broker, tmp_path: Path, stock_api: StockApi,
                                                         orientation: str) -> None:
    stock_api.set("TEA-LJ-250", STORE, 3)
    stock_api.set("TEA-LJ-250", "st2", 5)
    stock_api.set("TEA-LJ-250", "wh-east", 40, kind="warehouse")

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        async with Box(broker, tmp_path, stock_api.url) as box:
            assert box.api is not None
            result = await drive("shop", box.api.url, SIZES[orientation], tmp_path)
            checks = result["checks"]
            assert checks["lj"][0] == "TEA-LJ-250" and checks["tapped"] == "TEA-LJ-250"
            assert checks["availability"] == ["本店：货架上有 3 件", "Xihu Road（2.4 公里）：5 件", "仓库发货，2 天送达"]  # noqa: RUF001
            assert checks["errors"] == {"name": "Please enter a name", "phone": "Please enter a phone number (6 to 20 digits)",
                                        "address": "Please enter street, number and city"}
            assert checks["reach_place_top"] < 0.6  # reach mode: the order button in the lower part
            assert checks["basket_after"] == 0
            order_id = result["order_id"]
            assert result["confirm_url"] == f"https://shop.example/o/{order_id}"
            await until(lambda: any(isinstance(e.data, OrderData) and e.data.order_id == order_id
                                    for e in cloud.of(MessageType.ORDER)), timeout=20, what="the kiosk order on the bus")
            [order] = [e.data for e in cloud.of(MessageType.ORDER)]
            assert isinstance(order, OrderData)
            assert (order.channel, order.fulfilment.value, order.pickup_store) == ("kiosk", "pickup", STORE)
            assert [(ln.sku, ln.qty, ln.price) for ln in order.lines] == [("TEA-LJ-250", 2, 168)]
        await cloud.close()

    arun(main(), timeout=300)


def test_idle_reset_wipes_the_basket_and_resumes_the_attract_loop(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        async with Box(broker, tmp_path, None) as box:
            assert box.api is not None
            result = await drive("idle", box.api.url, SIZES["portrait"], tmp_path)
            assert 1 <= result["checks"]["countdown"] <= 4
            assert result["checks"]["after"] == {"basket": 0, "query": "", "active": False, "resets": 1}
        await cloud.close()

    arun(main(), timeout=300)


@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
def test_the_attract_loop_shows_the_signage_full_screen(signage_box: SignageBox, tmp_path: Path,
                                                        orientation: str) -> None:
    signage_box.play(png((30, 120, 200), 160), "image/png", campaign="Spring tea")

    async def main() -> None:
        result = await drive("attract", signage_box.url, SIZES[orientation], tmp_path)
        picture = result["checks"]["picture"]
        w, h = picture["window"]
        # Square picture, drawn whole: as wide as the window in portrait, as high as it in landscape.
        assert picture["texture"] == [160, 160] and picture["campaign"] == "Spring tea"
        assert picture["drawn"] == [min(w, h)] * 2
        assert any(c.startswith("/signage/media/") for c in signage_box.calls)

    arun(main(), timeout=300)
