"""The cloud shelf's fixtures: a box (real agent, real Mosquitto) with a catalogue, cached images and
the kiosk component, a cloud listener on the bus, and the cloud's stock API as a real HTTP peer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge.agent import EdgeAgent
from edge.catalogue.store import CatalogueStore
from firmware_config import NodeConfig
from tests.conftest import Broker

# The view-model tests import Kivy in this process: no argument parsing, no ~/.kivy, quiet logs.
os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_HOME", tempfile.mkdtemp(prefix="kivy-home-"))
os.environ.setdefault("KCFG_KIVY_LOG_LEVEL", "warning")

NODE = "st1-k1"
STORE = "st1"


def png(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    """A small solid-colour PNG, made here (no file is copied into the project)."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def product(sku: str, en: str, zh: str, price: str, *, brand: str = "West Lake", category: str = "Food > Tea",
            image: bytes | None = None, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"sku": sku, "name_en": en, "name_zh": zh, "list_price": price, "brand": brand,
                         "category": category, **extra}
    if image is not None:
        sha = hashlib.sha256(image).hexdigest()
        p["images"] = [{"sha256": sha, "thumb": sha}]
    return p


TEA_IMG = png((40, 140, 60))
RICE_IMG = png((230, 210, 150))
CATALOGUE = [
    product("TEA-LJ-250", "Longjing green tea 250 g", "西湖龙井茶 250克", "168.00", image=TEA_IMG,
            attributes={"origin": "Hangzhou", "weight": "250 g"}, desc_en="Spring harvest.", desc_zh="明前春茶。"),
    product("TEA-BL-100", "Keemun black tea 100 g", "祁门红茶 100克", "45.00", brand="Qimen", image=png((200, 40, 40))),
    product("RICE-WC-5KG", "Wuchang rice 5 kg", "五常大米 5公斤", "89.90", brand="Wuchang", category="Food > Rice",
            image=RICE_IMG),
    product("MUG-01", "Celadon tea mug", "青瓷茶杯", "260.00", brand="Longquan", category="Home > Kitchen",
            image=b"not an image at all"),
] + [product(f"SNACK-{i:03d}", f"Sesame snack no. {i}", f"芝麻小吃 {i} 号", f"{10 + i % 40}.50", brand="Daoxiang",
             category="Food > Snacks") for i in range(60)]


def seed_catalogue(directory: Path, products: list[dict[str, Any]] = CATALOGUE, *, version: int = 1) -> CatalogueStore:
    store = CatalogueStore(directory)
    header = json.dumps({"format": 1, "kind": "snapshot", "from": 0, "to": version})
    store.apply([header, *(json.dumps({"op": "put", "p": p}, ensure_ascii=False) for p in products)],
                expect_from=0, expect_to=version, region=None)
    # The images the box has already fetched and verified (the catalogue sync's job in production).
    for data in (TEA_IMG, RICE_IMG, b"not an image at all"):
        sha = hashlib.sha256(data).hexdigest()
        path = store.image_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        store.image_stored(sha, len(data))
    return store


class StockApi:
    """The cloud's `GET /stock` (the shape `cloud.orders.stock.atp_rows` answers), on a real socket.
    Any other path is a 404, as on the cloud: the box once asked `/api/stock`, which only this
    stand-in answered."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.up = True
        self.calls: list[str] = []
        self.auth: list[str | None] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.calls.append(self.path)
                api.auth.append(self.headers.get("Authorization"))
                if not api.up or urlsplit(self.path).path != "/stock":
                    self.send_response(503 if not api.up else 404)
                    self.end_headers()
                    return
                q = parse_qs(urlsplit(self.path).query)
                rows = [r for r in api.rows if ("sku" not in q or r["sku"] == q["sku"][0])
                        and ("location" not in q or r["location"] == q["location"][0])]
                body = json.dumps(rows).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, sku: str, location: str, atp: int, kind: str = "store") -> None:
        self.rows = [r for r in self.rows if (r["sku"], r["location"]) != (sku, location)]
        self.rows.append({"sku": sku, "location": location, "kind": kind, "atp": atp, "on_hand": atp})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stock_api() -> Iterator[StockApi]:
    s = StockApi()
    yield s
    s.close()


def box_config(broker: Broker, tmp: Path, stock_url: str | None, **kiosk: Any) -> NodeConfig:
    password = broker.add_node(NODE)
    seed_catalogue(tmp / NODE / "edge" / NODE / "catalogue")
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": STORE, "data_dir": str(tmp / NODE), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": password},
        "backoff": {"base_s": 0.05, "cap_s": 0.5}, "local_api": {"port": 0},
        # The catalogue component serves product details and images; no announcement ever comes here,
        # so it never fetches from this (closed) address.
        "catalogue": {"cloud_url": "http://127.0.0.1:9"},
        "kiosk": {"enabled": True, "stock_url": stock_url, "stock_api_key": "osk_test",
                  "nearby": [{"code": "st2", "name": "Xihu Road", "km": 2.4}, {"code": "st3", "name": "Binjiang", "km": 7.9}],
                  "warehouse": "wh-east", "confirm_url": "https://shop.example/o/{order_id}", **kiosk},
    })


def call(agent: EdgeAgent, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert agent.api is not None
    req = urllib.request.Request(agent.api.url + path, method=method,
                                 data=json.dumps(body, ensure_ascii=False).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def acall(agent: EdgeAgent, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, agent, method, path, body)


class SignageBox:
    """The box's signage routes as the kiosk's attract loop sees them (`GET /signage/now`, `GET
    /signage/media/{sha256}`), on a real socket; what plays is set by the test. Everything else
    answers 404 the way the box's local API does."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.now: dict[str, Any] | None = None
        self.calls: list[str] = []
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                box.calls.append(self.path)
                path = urlsplit(self.path).path
                if path == "/signage/now":
                    self._send(200, json.dumps({"now": box.now, "next": []}).encode(), "application/json")
                elif path.startswith("/signage/media/") and path.rsplit("/", 1)[1] in box.files:
                    data, mime = box.files[path.rsplit("/", 1)[1]]
                    self._send(200, data, mime)
                else:
                    self._send(404, json.dumps({"error": f"nothing at {path}", "status": 404}).encode(), "application/json")

            def _send(self, status: int, body: bytes, mime: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def play(self, data: bytes, mime: str, campaign: str = "Spring tea") -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.files[sha] = (data, mime)
        self.now = {"media": sha, "campaign": campaign, "layer": "campaign"}
        return sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def signage_box() -> Iterator[SignageBox]:
    s = SignageBox()
    yield s
    s.close()
