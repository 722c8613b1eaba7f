"""The worked example engine of docs/architecture.md, extracted from the Markdown and run: a doc
that shows an engine that does not work fails the build."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from broker.envelope import MessageType, decode
from broker.payloads import CommandData, StockData, StockLevel
from cloud.access.bootstrap import create_api_key
from cloud.api import create_app
from cloud.engines import load_engines
from cloud.models import Base, DownlinkCommand
from cloud.seed import seed
from tests.cloud.conftest import box, cloud_settings, until
from tests.conftest import Broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[ModuleType]:
    text = DOC.read_text()
    match = re.search(r"<!-- example-engine -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md lost its example engine block"
    code = match.group(1)
    assert len(code.splitlines()) < 100, "the worked example is meant to stay under 100 lines"
    path = tmp_path / "shelf_alerts_example.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("shelf_alerts_example", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["shelf_alerts_example"] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        # Its table must not leak into the product's schema for the other tests.
        Base.metadata.remove(module.shelf)
        sys.modules.pop("shelf_alerts_example", None)


def test_the_documented_engine_works(broker: Broker, engine: Engine, example: ModuleType) -> None:
    seed(engine)
    example.shelf.create(engine)
    engines = (*load_engines(), example.ENGINE)
    key = create_api_key(engine, "hq", "hq")
    store_key = create_api_key(engine, "south", "store", stores=["st0003"])

    async def body() -> None:
        settings = await cloud_settings(broker, engine)
        app = create_app(settings, run_worker=True, engine=engine, engines=engines)
        with TestClient(app) as client:
            await until(lambda: app.state.bus.consuming, what="bus connected")
            async with box(broker, "st0001-k1") as b:
                await b.birth()
                levels = {1: 3, 2: 0, 3: 5}  # seq → on hand of TEA: sent out of order below
                envs = {seq: b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(sku="TEA", on_hand=n),)),
                                        seq=seq) for seq, n in levels.items()}
                for seq in (1, 3, 2):
                    await b.send(envs[seq])
                await until(lambda: _rows(engine, example) == [("st0001-k1", "TEA", 5)], what="the newest figure")
                # seq 2 (empty) arrived last but is older than seq 3: no alert now, the shelf is not empty.
                await b.send(b.envelope(MessageType.STOCK, StockData(levels=(StockLevel(sku="TEA", on_hand=0),)), seq=4))
                await until(lambda: any(t.endswith("/command") for t, _ in b.received), what="the restock alert")
                (cmd,) = [decode(raw, t) for t, raw in b.received if t.endswith("/command")]
                assert cmd.data == CommandData(name="restock-alert", args={"sku": "TEA"})
                with Session(engine) as s:
                    # The seq 2 zero, handled out of order, sent nothing: one command in all.
                    assert s.scalars(select(DownlinkCommand.engine).where(DownlinkCommand.type == "command")).all() == [
                        "shelf-alerts"]
            seen = client.get("/shelf-alerts", headers={"Authorization": f"Bearer {key}"})
            assert seen.status_code == 200 and seen.json() == [{"node": "st0001-k1", "sku": "TEA"}]
            other = client.get("/shelf-alerts", headers={"Authorization": f"Bearer {store_key}"})
            assert other.status_code == 200 and other.json() == [], "scoped: a Shenzhen key sees no Shanghai shelf"

    asyncio.run(body())


def _rows(engine: Engine, example: ModuleType) -> list[tuple[str, str, int]]:
    with Session(engine) as s:
        return [tuple(r) for r in s.execute(select(example.shelf.c.node, example.shelf.c.sku, example.shelf.c.on_hand))]
