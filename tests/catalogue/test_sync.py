"""Sync end to end over the real broker and real HTTP: cloud (uvicorn, worker, publisher) → box agent."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from broker.client import JitteredBackoff
from broker.mosquitto import free_port
from broker.payloads import CatalogData
from cloud.api.app import create_app
from cloud.catalogue.files import FileStore
from cloud.catalogue.importer import import_file
from cloud.catalogue.sync import ensure_artifacts
from cloud.models import Node, Region, Store
from edge.agent import EdgeAgent
from edge.catalogue.store import CatalogueStore
from edge.catalogue.sync import CatalogueSync, FetchError
from firmware_config import NodeConfig
from tests.catalogue.gen import HEADER, product_row
from tests.cloud.conftest import cloud_settings, until
from tests.conftest import Broker

NODE = "st1-k1"


def setup_fleet(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        region = Region(code="east", name="East China")
        store = Store(code="st1", name="Store 1", region=region, lat=31.2, lon=121.4, timezone="Asia/Shanghai")
        s.add_all([region, store, Node(id=NODE, store=store)])


def write_rows(path: Path, rows: list[list[str]]) -> None:
    path.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, "PNG")
    return out.getvalue()


@contextlib.asynccontextmanager
async def cloud(broker: Broker, engine: Engine, catalogue_dir: Path) -> AsyncIterator[str]:
    settings = await cloud_settings(broker, engine, CATALOGUE_DIR=str(catalogue_dir), CATALOGUE_POLL_S=0.05)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, run_worker=True, engine=engine), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), what="cloud API to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def box_config(tmp: Path, broker: Broker, cloud_url: str) -> NodeConfig:
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1",
        "broker": {"url": broker.url, "password": broker.add_node(NODE), "keepalive_s": 5},
        "outbox": {"path": str(tmp / "outbox.db")},
        "backoff": {"base_s": 0.05, "cap_s": 0.5},
        "catalogue": {"cloud_url": cloud_url, "path": str(tmp / "box-catalogue"), "image_budget_mb": 1},
        "local_api": {"port": 0},
    })


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: bytes = resp.read()
        return data


@contextlib.asynccontextmanager
async def agent(cfg: NodeConfig) -> AsyncIterator[EdgeAgent]:
    a = EdgeAgent(cfg)
    task = asyncio.create_task(a.run())
    await until(lambda: a.ready.is_set() or task.done(), what="agent ready")
    try:
        yield a
    finally:
        await a.stop()
        await task


def test_cloud_change_reaches_the_box_and_an_offline_box_catches_up_with_one_delta(
    broker: Broker, engine: Engine, tmp_path: Path
) -> None:
    setup_fleet(engine)
    cat_dir = tmp_path / "cloud-cat"
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "red.png").write_bytes(png("red"))
    src = tmp_path / "p.csv"
    rows = [product_row(i) for i in range(1, 51)]
    rows[0][12] = "red.png"
    write_rows(src, rows)
    import_file(engine, src, cat_dir, image_dir=pics)

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            cfg = box_config(tmp_path, broker, url)
            async with agent(cfg) as a:
                assert a.catalogue is not None
                sync, store, api = a.catalogue.sync, a.catalogue.store, a.api
                assert api is not None
                await until(lambda: store.version == 1, what="box at version 1 (snapshot)")
                assert store.count() == 50 and sync.stats.snapshots == 1
                # The local API answers from the copy, with the store's region price.
                p1 = get_json(f"{api.url}/products/SKU-0000001")
                assert p1["price"] == "1.25" and p1["list_price"] == "1.50"
                assert get_json(f"{api.url}/search?q={quote('绿茶1')}")[0]["sku"] == "SKU-0000010"
                # Images arrive in the background, verified; only then are they served.
                thumb = p1["images"][0]["thumb"]
                await until(lambda: store.image_ok(thumb), what="thumbnail cached")
                assert hashlib.sha256(get_bytes(f"{api.url}/images/{thumb}")).hexdigest() == thumb

                # A change in the cloud reaches the box as a delta, within seconds.
                rows[1][6] = "77.00"
                write_rows(src, rows)
                assert import_file(engine, src, cat_dir, image_dir=pics).version == 2
                await until(lambda: store.version == 2, timeout=5, what="box at version 2 (delta)")
                assert sync.stats.snapshots == 1 and sync.stats.applied == 2
                assert store.product("SKU-0000002")["list_price"] == "77.00"  # type: ignore[index]

            # Offline across several versions, one of them discontinuing a product.
            for v, change in enumerate(("70.00", "71.00", "72.00"), start=3):
                rows[2][6] = change
                rows[3][10] = "discontinued" if v == 4 else rows[3][10]
                write_rows(src, rows)
                assert import_file(engine, src, cat_dir, image_dir=pics).version == v
            async with agent(cfg) as a:
                assert a.catalogue is not None
                sync, store = a.catalogue.sync, a.catalogue.store
                await until(lambda: store.version == 5, timeout=5, what="box caught up to version 5")
                assert (sync.stats.applied, sync.stats.snapshots) == (1, 0)  # one delta, 2 → 5
                assert store.product("SKU-0000003")["list_price"] == "72.00"  # type: ignore[index]
                assert store.product("SKU-0000004") is None and store.count() == 49

    asyncio.run(asyncio.wait_for(main(), 60))


def test_corrupted_delta_and_image_are_rejected_then_fetched_again(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    setup_fleet(engine)
    cat_dir = tmp_path / "cloud-cat"
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "blue.png").write_bytes(png("blue"))
    src = tmp_path / "p.csv"
    rows = [product_row(i) for i in range(1, 11)]
    write_rows(src, rows)
    import_file(engine, src, cat_dir)
    v1 = ensure_artifacts(engine, cat_dir)
    rows[0][12] = "blue.png"
    write_rows(src, rows)
    import_file(engine, src, cat_dir, image_dir=pics)
    v2 = ensure_artifacts(engine, cat_dir)
    assert v1 is not None and v2 is not None and v2.deltas[0].from_version == 1
    files = FileStore(cat_dir)
    v2_image = hashlib.sha256(png("blue")).hexdigest()

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            store = CatalogueStore(tmp_path / "box")
            sync = CatalogueSync(store, url, backoff=JitteredBackoff(0.05, 0.1))
            task = asyncio.create_task(sync.run())
            sync.on_announcement(CatalogData(version=1, epoch=v1.epoch, region="east", snapshot=v1.snapshot))
            await until(lambda: store.version == 1, what="version 1")

            # The delta's bytes on the server no longer match the announced hash.
            delta = files.path(v2.deltas[0].sha256)
            good = delta.read_bytes()
            bad = gzip.compress(gzip.decompress(good).replace(b"Brand0", b"Brand9"), mtime=0)
            delta.write_bytes(bad)
            # And the new product image's bytes do not match its name either.
            image = files.path(v2_image)
            image_good = image.read_bytes()
            image.write_bytes(png("green"))
            sync.on_announcement(CatalogData(version=2, epoch=v2.epoch, region="east", snapshot=v2.snapshot, deltas=v2.deltas))
            await until(lambda: sync.stats.rejected >= 2, what="corrupt delta rejected (and retried)")
            assert store.version == 1 and "does not match the announced" in (sync.stats.last_error or "")
            delta.write_bytes(good)
            await until(lambda: store.version == 2, what="delta applied once the file is right")

            # An image whose bytes do not hash to its name is never stored nor served.
            product = store.product("SKU-0000001")
            assert product is not None
            full = product["images"][0]["sha256"]
            assert full == v2_image
            await until(lambda: sync.stats.images_rejected >= 1, what="bad image rejected")
            assert not store.image_ok(full) and not store.image_path(full).exists()
            image.write_bytes(image_good)
            sync.request_image(full)
            await until(lambda: store.image_ok(full), what="image fetched again")
            assert hashlib.sha256(store.image_path(full).read_bytes()).hexdigest() == full
            await sync.stop()
            await task

    asyncio.run(asyncio.wait_for(main(), 60))


def test_image_cache_stays_within_budget_evicting_least_recently_used(tmp_path: Path) -> None:
    store = CatalogueStore(tmp_path / "box")
    sync = CatalogueSync(store, "http://127.0.0.1:9", image_budget_bytes=250)
    blobs = {hashlib.sha256(bytes([i]) * 100).hexdigest(): bytes([i]) * 100 for i in range(4)}
    sync._get = lambda path, limit: blobs[path.rsplit("/", 1)[1]]  # type: ignore[method-assign]
    shas = list(blobs)
    conn = store._conn()
    conn.executemany("INSERT INTO images(sha256, kind, state, last_access) VALUES (?, 'thumb', 'want', 0)", [(s,) for s in shas])
    assert sync.fetch_images() == 2  # two fit; the cache is full
    cached = [s for s in shas if store.image_state(s) == "ok"]
    assert len(cached) == 2 and store.image_bytes_used() == 200
    assert sync.fetch_images() == 0  # unused images do not push out cached ones
    wanted = next(s for s in shas if s not in cached)
    store.image_ok(wanted)  # asked for by the kiosk: now more recent than the cached ones
    assert sync.fetch_images() == 1
    assert store.image_state(wanted) == "ok" and store.image_bytes_used() <= 250 and sync.stats.images_evicted == 1


def test_an_image_the_cloud_cannot_serve_does_not_hold_up_the_others(tmp_path: Path) -> None:
    store = CatalogueStore(tmp_path / "box")
    sync = CatalogueSync(store, "http://127.0.0.1:9", image_budget_bytes=10_000)
    blobs = {hashlib.sha256(bytes([i]) * 10).hexdigest(): bytes([i]) * 10 for i in range(3)}
    gone = hashlib.sha256(b"gone").hexdigest()

    def get(path: str, limit: int) -> bytes:
        sha = path.rsplit("/", 1)[1]
        if sha == gone:
            raise FetchError(f"GET {path}: HTTP 404", 404)
        return blobs[sha]

    sync._get = get  # type: ignore[method-assign]
    conn = store._conn()
    conn.executemany("INSERT INTO images(sha256, kind, state, last_access) VALUES (?, 'thumb', 'want', ?)",
                     [(gone, 9.0)] + [(s, 0.0) for s in blobs])
    assert sync.fetch_images(batch=2) == 1  # the missing one first, then one more in this round
    assert sync.fetch_images(batch=2) == 2  # the missing one went to the back of the queue
    assert store.image_state(gone) == "want" and sync.stats.fetch_errors == 1


def test_a_busy_local_api_port_is_a_config_error_not_a_traceback(broker: Broker, tmp_path: Path) -> None:
    import socket

    from edge.agent import AgentConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = box_config(tmp_path, broker, "http://127.0.0.1:9").model_copy(
            update={"local_api": box_config(tmp_path, broker, "http://127.0.0.1:9").local_api.model_copy(
                update={"port": busy.getsockname()[1]})}
        )

        async def build() -> None:
            EdgeAgent(cfg)

        try:
            asyncio.run(build())
        except AgentConfigError as exc:
            assert "local_api: cannot listen on 127.0.0.1" in str(exc) and "local_api.enabled: false" in str(exc)
        else:
            raise AssertionError("a busy port was accepted")
