"""The cloud shelf against the real cloud: `create_app` with its bus and every engine on a migrated
database, served by uvicorn; the real box reading stock figures from it with a store's API key;
the real kiosk app under Xvfb. What the shopper sees on the product page are the cloud's own
available-to-promise figures, and the pickup order the kiosk places arrives in the cloud and is
routed and reserved at this store. (`test_app.py` drives every screen against stand-ins; the box
once asked the cloud for `/api/stock`, a route only its stand-in had. SQLite only, to keep the
suite's time: the cloud side is tested on both databases in `tests/orders`.)"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine, select

from broker.mosquitto import free_port
from cloud.access.bootstrap import create_api_key
from cloud.api.app import create_app
from cloud.db import write_transaction
from cloud.orders import service
from edge.agent import EdgeAgent
from tests.cloud.conftest import cloud_settings, db_url, engine, until_db  # noqa: F401
from tests.conftest import Broker
from tests.edge.conftest import arun, until
from tests.kiosk.conftest import CATALOGUE, NODE, STORE, box_config
from tests.kiosk.test_app import SIZES, drive
from tests.kiosk.test_box_api import kiosk_of
from tests.orders.conftest import seed, stock

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")


def seed_cloud(eng: Engine) -> None:
    """This store and the nearby one the box's config names, a warehouse, the catalogue's SKUs, and
    stock of the tea in all three."""
    seed(eng, [p["sku"] for p in CATALOGUE], {STORE: (30.2590, 120.1680, NODE), "st2": (30.2700, 120.1500, "st2-k1")})
    with write_transaction(eng) as conn:
        service.put_location(conn, "wh-east", service.LocationInput(lat=30.9, lon=121.2), actor="test")
        service.save_rules(conn, {"groups": [{"name": "all", "rules": [{"name": "nearest"}]}],
                                  "accept_minutes": 10}, actor="test")
    stock(eng, STORE, {"TEA-LJ-250": 3})
    stock(eng, "st2", {"TEA-LJ-250": 5})
    stock(eng, "wh-east", {"TEA-LJ-250": 40})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_shopper_sees_the_clouds_figures_and_the_order_is_routed_in_the_cloud(
    broker: Broker, engine: Engine, tmp_path: Path  # noqa: F811
) -> None:
    seed_cloud(engine)
    # The box's own key: a store user's, scoped to this store.
    key = create_api_key(engine, "kiosk-st1", "store", stores=[STORE])

    async def main() -> str:
        port = free_port()
        app = create_app(await cloud_settings(broker, engine), run_worker=True, engine=engine)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        serving = asyncio.create_task(server.serve())
        await until(lambda: server.started or serving.done(), what="the cloud API to start")
        try:
            # The API shares this test's event loop with the cloud bus and the box, on a machine that
            # may be busy: a longer wait than a box's 2 s before it says "cannot look stock up".
            box = EdgeAgent(box_config(broker, tmp_path, f"http://127.0.0.1:{port}", stock_api_key=key,
                                       stock_timeout_s=20))
            running = asyncio.create_task(box.run())
            try:
                await asyncio.wait_for(box.ready.wait(), 20)
                await until(lambda: bool(kiosk_of(box).db.indexed), what="the kiosk's search index built")
                # Until the box has seen a cloud host online it does not ask it (and says so).
                await until(lambda: box.bus is not None and box.bus.cloud_online, what="the box to see the cloud")
                assert box.api is not None
                result = await drive("shop", box.api.url, SIZES["portrait"], tmp_path)
                checks = result["checks"]
                # The cloud's figures: 3 on this store's shelf, 5 at the nearby store, the warehouse's.
                assert checks["availability"] == ["本店：货架上有 3 件", "Xihu Road（2.4 公里）：5 件", "仓库发货，2 天送达"], kiosk_of(box).last_error  # noqa: RUF001
                order_id = str(result["order_id"])

                def routed(_s: object) -> bool:
                    with engine.connect() as conn:
                        state = conn.execute(select(service.ORDERS.c.state).where(
                            service.ORDERS.c.channel == "kiosk", service.ORDERS.c.channel_order_id == order_id)).scalar()
                    return state == "routed"

                await until_db(engine, routed, what="the kiosk's order routed in the cloud")
            finally:
                await box.stop()
                await asyncio.wait_for(running, 20)
        finally:
            server.should_exit = True
            await serving
        return order_id

    order_id = arun(main(), timeout=300)
    with engine.connect() as conn:
        order = conn.execute(select(service.ORDERS).where(service.ORDERS.c.channel_order_id == order_id)).one()
        assert (order.fulfilment, order.pickup_location_id) == ("pickup", service.location_id(conn, STORE))
        # Two reserved on this store's shelf: what the shopper is told is left there drops to one.
        assert service.totals(conn, ["TEA-LJ-250"]) == {"TEA-LJ-250": (48, 2)}
