"""The clerk's station app figures (`python -m bench.station --app`): from a keyboard-wedge line to
the repainted screen showing its verdict, online (a cloud on the bus answers every scan) and with
the cloud unreachable (the box's provisional verdict), next to the bare bus round trip measured in
the same run; the app's resident memory after the scans, next to an empty Kivy app's (and its
frame times) measured in the same run.

The box is the real edge agent (station, clerks, catalogue) in this process on a local Mosquitto;
the "cloud" is a bus peer that answers each scan with a verdict at once (the trace engine's own
time is not in this figure: see bench/trace.py). The app runs under Xvfb in its own process,
started as `omnishelf station --box URL` starts it and importing only what that imports (no edge
agent, pydantic or paho: its RSS is the app's; bench/app_drive.py, which reports the process's
packages); its scanner lines are typed through Kivy's keyboard event, the simulated HID input.

Each latency ends when the buffer swap of the first frame drawn after the verdict was applied has
returned: the frame presented. Kivy's `on_flip` event, where the app itself stops its clock, comes
before that swap, and on software GL (Mesa's llvmpipe under Xvfb) the swap, where the frame is
rasterised and handed to the X server, is most of the frame; the figure to the `on_flip` event is
kept beside it (`latency_to_flip_event`, `paint_to_flip_event`) to compare with older runs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import app_drive
from bench.baseline import bare_round_trip, percentiles_ms
from broker import topics
from broker.client import BrokerAddress, MqttConnection
from broker.envelope import Envelope, MessageType, decode, encode
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.payloads import (
    CLERK_ROSTER,
    ClerkRosterArgs,
    CommandData,
    HostStateData,
    RosterClerk,
    ScanData,
    VerdictClass,
    VerdictData,
    VerdictRule,
)
from broker.pins import hash_pin
from edge.agent import EdgeAgent
from firmware_config import NodeConfig

__all__ = ["app_figures"]

NODE = "bench-st1"
STORE = "bench"
PIN = "2580"
GTIN = "06950000000019"
TARGETS = {"online_p99_ms": "< 150", "provisional_p99_ms": "< 50", "rss_mb": "< 200"}


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if cond():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


class _Cloud:
    """Answers every scan with a genuine verdict; sends the roster; says online/offline."""

    def __init__(self, layout: BrokerLayout, password: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.received: list[Envelope] = []
        self.conn = MqttConnection(BrokerAddress.from_url(layout.url), "cloud-1", password, on_message=self._on, max_inflight=1000)

    def _on(self, msg: Any) -> None:
        env = decode(bytes(msg.payload), msg.topic)
        self.received.append(env)
        if env.type == MessageType.SCAN:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._answer(env)))

    async def _answer(self, scan: Envelope) -> None:
        from edge.station.codes import read_code

        data = scan.data
        assert isinstance(data, ScanData)
        v = VerdictData(scan_id=scan.msg_id, code=data.code, parsed=read_code(data.code, data.symbology),
                        verdict=VerdictClass.GENUINE, rule=VerdictRule.COMMISSIONED_UNIT,
                        message="received at this store", decided_at=datetime.now(UTC))
        env = Envelope(type=MessageType.VERDICT, node=NODE, session=1, seq=0, corr=scan.msg_id, data=v)
        await self.conn.publish(topics.dn(NODE, "verdict"), encode(env))

    async def start(self) -> None:
        await self.conn.connect()
        await self.conn.subscribe([*topics.cloud_ingest_filters(), *topics.cloud_lifecycle_filters()])

    async def online(self, up: bool) -> None:
        env = Envelope(type=MessageType.STATE, node="cloud-1", session=1, seq=0, data=HostStateData(online=up))
        await self.conn.publish(topics.host_state("cloud-1"), encode(env), retain=True)

    async def roster(self) -> None:
        args = ClerkRosterArgs(version=1, store=STORE, clerks=(RosterClerk(id=1, name="Bench", pin_hash=hash_pin(PIN)),))
        env = Envelope(type=MessageType.COMMAND, node=NODE, session=1, seq=0,
                       data=CommandData(name=CLERK_ROSTER, args=args.model_dump(mode="json")))
        await self.conn.publish(topics.dn(NODE, "command"), encode(env))
        await _until(lambda: any(e.type == MessageType.ACK and e.corr == env.msg_id for e in self.received),
                     "the box's ack of the roster")


def _seed(directory: Path) -> None:
    from edge.catalogue.store import CatalogueStore

    store = CatalogueStore(directory)
    p = {"sku": "TEA-LJ-250", "name_en": "Longjing green tea 250 g", "name_zh": "西湖龙井茶 250克", "list_price": "168.00",
         "brand": "West Lake", "category": "Food > Tea", "gtins": [GTIN]}
    store.apply([json.dumps({"format": 1, "kind": "snapshot", "from": 0, "to": 1}),
                 json.dumps({"op": "put", "p": p}, ensure_ascii=False)], expect_from=0, expect_to=1, region=None)


def _api_scans(box_url: str, n: int) -> dict[str, Any]:
    """The same scans posted straight to the box's API (no app): what the app's figure is made of."""
    from kiosk.client import BoxClient

    client = BoxClient(box_url)
    times = []
    late = 0
    for i in range(n):
        t = time.perf_counter()
        out = client.call("POST", "/station/scans", {"code": f"]d201{GTIN}21A{i:06d}{time.time_ns() % 10**6:06d}",
                                                      "station": "bench", "wait_s": 0.9})
        times.append(time.perf_counter() - t)
        late += out.get("verdict") is None
    return {"scans": n, "answered_without_verdict": late, **percentiles_ms(times)}


def _run_child(box_url: str, tmp: Path, name: str, n: int) -> dict[str, Any]:
    """The app as `omnishelf station` runs it, in its own process (bench/app_drive.py), signed in
    here on the box's API (the clerk's PIN pad is not what is measured)."""
    from kiosk.client import BoxClient

    signin = BoxClient(box_url).call("POST", "/clerks/sign-in", {"clerk_id": 1, "pin": PIN})
    spec = {"driver": "station", "n": n, "gtin": GTIN, "signin": signin,
            "argv": ["station", "--box", box_url, "--windowed", "--size", "1080x1920"]}
    found = app_drive.run(name, spec, tmp, timeout=60 + 5 * n)
    if "error" in found:
        return found
    # NaN: a scan never answered (counted in "lost").
    lat = [x for x in map(float, found.pop("latencies_s")) if x == x]
    flip = [x for x in map(float, found.pop("to_flip_event_s")) if x == x]
    return {"scans": len(lat), **percentiles_ms(lat), "latency_to_flip_event": percentiles_ms(flip), **found}


def app_figures(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-station-app-") as d:
        tmp = Path(d)
        pw = {u: secrets.token_urlsafe(12) for u in ("cloud-1", "cloud-2", NODE)}
        layout = BrokerLayout(tmp / "broker", free_port(), cloud_users={"cloud-1": pw["cloud-1"], "cloud-2": pw["cloud-2"]},
                              node_users={NODE: pw[NODE]})
        broker = MosquittoProcess(layout)
        broker.start()
        try:
            bare = bare_round_trip(layout.port, (NODE, pw[NODE], topics.up(NODE, "scan"), topics.dn(NODE, "verdict")),
                                   ("cloud-2", pw["cloud-2"], topics.up(NODE, "scan"), topics.dn(NODE, "verdict")), 300)
            figures = _with_box(tmp, layout, pw, n)
            # What any Kivy window costs here (SDL, the GL driver: Mesa's llvmpipe under Xvfb), so
            # the app's memory and frames can be read against it: bench/kiosk.py's empty app.
            return {"bare_bus_round_trip": bare, **figures, **app_drive.empty_baselines(tmp), "targets": TARGETS}
        finally:
            broker.stop()


def _with_box(tmp: Path, layout: BrokerLayout, pw: dict[str, str], n: int) -> dict[str, Any]:
    _seed(tmp / NODE / "edge" / NODE / "catalogue")
    cfg = NodeConfig.model_validate({
        "node_id": NODE, "store_id": STORE, "data_dir": str(tmp / NODE), "telemetry_every_s": 0,
        "broker": {"url": layout.url, "keepalive_s": 5, "password": pw[NODE]},
        "backoff": {"base_s": 0.05, "cap_s": 0.5}, "local_api": {"port": 0},
        "catalogue": {"cloud_url": "http://127.0.0.1:9"}, "station": {"enabled": True, "final_wait_s": 5},
    })
    agent = EdgeAgent(cfg)
    loop = asyncio.new_event_loop()
    figures: dict[str, Any] = {}

    async def main() -> None:
        cloud = _Cloud(layout, pw["cloud-1"])
        await cloud.start()
        await cloud.online(True)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 20)
        await _until(lambda: any(e.type == MessageType.BIRTH for e in cloud.received), "the box's birth")
        await cloud.roster()
        assert agent.api is not None
        url = agent.api.url
        figures["api_scan_online"] = await asyncio.to_thread(_api_scans, url, n)
        figures["online"] = await asyncio.to_thread(_run_child, url, tmp, "online", n)
        await cloud.online(False)
        station = agent.component("station")
        assert station is not None
        await _until(lambda: not station.status().get("cloud_online"), "the box to see the cloud offline")
        figures["api_scan_cloud_unreachable"] = await asyncio.to_thread(_api_scans, url, n)
        figures["cloud_unreachable"] = await asyncio.to_thread(_run_child, url, tmp, "offline", n)
        await agent.stop()
        await task
        await cloud.conn.disconnect()

    loop.run_until_complete(main())
    loop.close()
    return figures
