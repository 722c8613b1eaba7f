"""The real clerk's station app under Xvfb, driven by simulated touches and a simulated keyboard-wedge
scanner, against a real box (agent, local API, outbox, print queue) on a real Mosquitto with a cloud
on the bus answering scans: sign in → genuine → sell → undo; a cloned code → alarm; goods-in of a case
with an intruder; an order from assignment to pickup hand-over; wrong PINs lock; another store's
clerk is refused; offline, a provisional verdict that the final one replaces. Screenshots of every
screen (see station_drive.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import MessageType
from broker.payloads import FulfilData, ScanData
from tests.conftest import Broker
from tests.edge.conftest import arun, until
from tests.kiosk.station_box import CODES, StationBox, VerdictCloud, ready

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"portrait": (1080, 1920), "landscape": (1920, 1080)}

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")


async def drive(scenario: str, box_url: str, size: tuple[int, int], tmp: Path,
                **extra_env: str) -> tuple[asyncio.subprocess.Process, Path]:
    out = tmp / f"{scenario}-{size[0]}x{size[1]}.json"
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KIVY_HOME": str(tmp / "kivy-home"),
           "KCFG_GRAPHICS_WIDTH": str(size[0]), "KCFG_GRAPHICS_HEIGHT": str(size[1]),
           "KCFG_GRAPHICS_RESIZABLE": "0", "KCFG_KIVY_LOG_LEVEL": "warning", **extra_env}
    signals = tmp / "signals"
    signals.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "xvfb-run", "-a", "-s", "-screen 0 1920x1920x24", sys.executable, "-m", "tests.kiosk.station_drive", scenario,
        box_url, str(out), str(signals), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    return proc, out


async def result(proc: asyncio.subprocess.Process, out: Path) -> dict[str, Any]:
    import json

    output, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = await asyncio.to_thread(lambda: out.read_text() if out.exists() else None)
    assert text is not None, output.decode(errors="replace")[-3000:]
    found: dict[str, Any] = json.loads(text)
    assert found["ok"], (found.get("error"), output.decode(errors="replace")[-3000:])
    return found


def scans_of(cloud: VerdictCloud) -> list[ScanData]:
    return [e.data for e in cloud.of(MessageType.SCAN) if isinstance(e.data, ScanData)]


@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
def test_clerk_verifies_sells_undoes_sees_an_alarm_and_receives_a_case(broker: Broker, tmp_path: Path,
                                                                      orientation: str) -> None:
    async def main() -> None:
        cloud = await VerdictCloud(broker).start()
        async with StationBox(broker, tmp_path) as box:
            assert box.api is not None
            await ready(cloud, box)
            proc, out = await drive("sell", box.api.url, SIZES[orientation], tmp_path)
            r = await result(proc, out)
            c = r["checks"]
            assert c["clerk"] == "Wang Fang"
            assert c["genuine"] == {"tone": "genuine", "title": "真品", "reason": "received at this store on 2026-11-20",
                                    "product": "西湖龙井茶 250克", "sell_enabled": True, "picture": True}
            assert c["sold"] == {"undo_enabled": True, "action": "已售出"}
            assert c["undone"] == {"undo_enabled": False, "action": "已撤销销售"}
            assert c["alarm"]["title"] == "克隆码" and c["alarm"]["reason"] == "this code was sold in Chengdu 30 minutes ago"
            assert "请勿销售" in c["alarm"]["todo"] and c["alarm"]["sell_enabled"] is False
            assert c["goodsin"]["count"] == "12 件，应到 11 件"  # noqa: RUF001
            assert len(c["goodsin"]["intruders"]) == 1 and "不属于本店或本批货" in c["goodsin"]["intruder_text"]
            assert c["goodsin"]["label"] == "printed"
            # The box looks stock up (its kiosk component; no cloud here, so from its empty cache).
            assert c["stock"] == {"available": True, "here": "本店无此商品库存"}
            assert r["tones"][:2] == ["genuine", "genuine"] and "alarm" in r["tones"]
            # What went up: verify, sell, undo of one unit, then the clone; the case as a receipt.
            # (the box keeps the scanner's AIM prefix apart from the code)
            purposes = [(s.code, s.purpose.value) for s in scans_of(cloud)]
            unit, clone, case = CODES["genuine"][3:], CODES["cloned"][3:], CODES["case"][3:]
            assert purposes == [(unit, "verify"), (unit, "sell"), (unit, "undo"), (clone, "verify"), (case, "receive")]
            assert (tmp_path / "till.bin").stat().st_size > 0  # the goods-in label reached the printer
        await cloud.close()

    arun(main(), timeout=300)


def test_an_order_from_assignment_to_pickup_hand_over(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await VerdictCloud(broker).start()
        async with StationBox(broker, tmp_path) as box:
            assert box.api is not None
            await ready(cloud, box)
            command = await cloud.assign(41, "TM-0001", "PK-483920")
            await until(lambda: bool(cloud.acks_for(command)), timeout=20, what="the assignment's ack")
            proc, out = await drive("orders", box.api.url, SIZES["portrait"], tmp_path)
            r = await result(proc, out)
            c = r["checks"]
            assert c["pack_early"] == "Scan every item on the pick list first"
            assert c["too_many"] == "已拣够：Wuchang rice 5 kg"  # noqa: RUF001
            assert c["wrong"] == "拿错了：Keemun black tea 100 g 不在此订单上"  # noqa: RUF001
            assert c["wrong_code"] == "the pickup code does not match this order's"
            assert c["counts"] == {"picked_up": 1}
            await until(lambda: len(cloud.of(MessageType.FULFIL)) == 5, timeout=20, what="five fulfil messages")
            steps = [e.data.status.value for e in cloud.of(MessageType.FULFIL) if isinstance(e.data, FulfilData)]
            assert steps == ["accepted", "picking", "packed", "ready", "picked_up"]
        await cloud.close()

    arun(main(), timeout=300)


def test_wrong_pins_lock_the_clerk_and_another_stores_clerk_is_refused(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await VerdictCloud(broker).start()
        async with StationBox(broker, tmp_path) as box:
            assert box.api is not None
            await ready(cloud, box)
            proc, out = await drive("lockout", box.api.url, SIZES["portrait"], tmp_path)
            c = (await result(proc, out))["checks"]
            assert [w[0] for w in c["wrong"]] == ["wrong_pin", "wrong_pin", "locked"]
            assert c["wrong"][0][1] == "wrong PIN for Wang Fang: 2 tries left before a lockout"
            reason, shown, signed_in = c["locked_right_pin"]
            assert (reason, signed_in) == ("locked", False) and "locked" in shown
            assert c["other_store"][0] == "not_on_roster" and c["other_store"][2] is False
        await cloud.close()

    arun(main(), timeout=300)


def test_offline_a_provisional_verdict_then_the_final_one(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        cloud = await VerdictCloud(broker).start()
        async with StationBox(broker, tmp_path) as box:
            assert box.api is not None
            await ready(cloud, box)
            await cloud.set_online(False)
            proc, out = await drive("offline", box.api.url, SIZES["portrait"], tmp_path)
            await until(lambda: (tmp_path / "signals" / "provisional").exists(), timeout=120,
                        what="the provisional verdict on screen")
            await cloud.set_online(True)
            c = (await result(proc, out))["checks"]
            assert c["provisional"]["tone"] == "provisional" and c["provisional"]["rule"] == "offline_cache"
            assert c["provisional"]["todo"].startswith("暂定")
            assert c["final"] == {"tone": "genuine", "verdict": "genuine", "reason": "received at this store on 2026-11-20"}
        await cloud.close()

    arun(main(), timeout=300)
