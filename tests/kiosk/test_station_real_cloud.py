"""The clerk's station app against the real cloud: the cloud worker with every engine (orders, staff,
trace …) on a migrated database, the real box on a real Mosquitto, the real app under Xvfb.

The cloud routes a pickup order to the store, the staff engine sends the store's roster and the
trace engine its offline lists; then the cloud becomes unreachable (its worker stops), and the
clerk accepts, picks (each item verified from the lists), packs and hands the order over anyway;
when the link returns, the cloud's order and its timeline match what the clerk did, step by step
and by name. Away again, a scan gets the box's provisional verdict, and once the link is back the
trace engine's verdict replaces it on screen, as the cloud recorded it. (`test_station_app.py` drives every screen against a cloud on the
bus that answers by script; the cloud side of these flows is tested on both databases in
`tests/orders/test_end_to_end.py` and `tests/trace/test_bus.py`. This is the whole chain once, on
SQLite, to keep the suite's time.)"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from broker.payloads import ScanPurpose, VerdictClass
from broker.pins import hash_pin
from cloud.bus.worker import CloudBus
from cloud.db import write_transaction
from cloud.models import Store
from cloud.orders import service
from cloud.staff.models import Clerk, Roster
from cloud.trace.events import LOCATIONS
from cloud.trace.handlers import RULES
from cloud.trace.models import Scan
from cloud.trace.service import commission_csv
from cloud.trace.verify import ScanIn, location_for_store, verify_many
from edge.clerks.component import ClerksComponent
from edge.orders.component import OrderDeskComponent
from edge.station.component import StationComponent
from tests.cloud.conftest import cloud_settings, db_url, engine, running, until_db  # noqa: F401
from tests.conftest import Broker
from tests.edge.conftest import arun, until
from tests.kiosk.conftest import NODE, STORE
from tests.kiosk.station_box import (
    BLACK_GTIN,
    CLERKS,
    PIN,
    RICE_GTIN,
    STATION_CATALOGUE,
    TEA_GTIN,
    StationBox,
    gs1_unit,
)
from tests.kiosk.test_station_app import SIZES, drive, result
from tests.orders.conftest import seed, stock

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")


def seed_cloud(eng: Engine) -> None:
    """The store and its box, the catalogue's SKUs, stock on the shelf, the nearest-store rule, the
    store's clerks (as the console would create them: a roster version the birth sends), and the
    units on its shelf (commissioned at a factory, received here)."""
    seed(eng, [p["sku"] for p in STATION_CATALOGUE], {STORE: (31.2304, 121.4737, NODE)})
    stock(eng, STORE, {"TEA-LJ-250": 5, "RICE-WC-5KG": 5})
    now = datetime.now(UTC)
    with write_transaction(eng) as conn:
        service.save_rules(conn, {"groups": [{"name": "all", "rules": [{"name": "nearest"}]}],
                                  "accept_minutes": 10}, actor="test")
        store_id = conn.execute(select(Store.id).where(Store.code == STORE)).scalar_one()
        conn.execute(insert(Clerk), [
            {"id": cid, "store_id": store_id, "name": name, "staff_number": number, "active": True,
             "pin_hash": hash_pin(PIN), "pin_set_at": now, "created_at": now, "created_by": "test", "updated_at": now}
            for cid, name, number in CLERKS])
        conn.execute(insert(Roster).values(store_id=store_id, version=1, updated_at=now))
        # Traceability in use: the units the clerk will scan were commissioned at the brand's
        # factory and received at this store, so the birth brings the box its offline lists.
        region = conn.execute(select(Store.region_id).where(Store.id == store_id)).scalar_one()
        conn.execute(insert(LOCATIONS).values(code="fac-1", kind="factory", name="Factory", gln=None, region_id=region,
                                              lat=30.25, lon=120.16, store_id=None))
        units = [(TEA_GTIN, "OK0001"), (RICE_GTIN, "OK0002"), (RICE_GTIN, "OK0003"), (BLACK_GTIN, "OK0004")]
        made = (now - timedelta(days=3)).isoformat()  # not "now": 160 km in no time would be a clone
        commission_csv(conn, "gtin,serial,batch,expiry,location,at\n" + "".join(
            f"{gtin},{serial},B1,,fac-1,{made}\n" for gtin, serial in units), "test", now)
        here = location_for_store(conn, store_id)
        for gtin, serial in units:
            [received] = verify_many(conn, [ScanIn(code=gs1_unit(gtin, serial), station="goods-in",
                                                   purpose=ScanPurpose.RECEIVE, at=now, msg_id=uuid.uuid4(),
                                                   location_id=here)], RULES, now)
            assert received.data.verdict is VerdictClass.GENUINE, received.data


async def app(scenario: str, box_url: str, tmp: Path, **env: str) -> tuple[asyncio.subprocess.Process, Path]:
    """The app under Xvfb running `scenario` (station_drive.py); its pictures are not the docs' (those
    come from the scripted cloud's runs)."""
    return await drive(scenario, box_url, SIZES["portrait"], tmp, OMNISHELF_SCREENSHOTS=str(tmp / "shots"), **env)


def order_state(eng: Engine, order_id: int) -> str | None:
    with Session(eng) as s:
        return s.execute(select(service.ORDERS.c.state).where(service.ORDERS.c.id == order_id)).scalar()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_routed_order_fulfilled_while_the_cloud_is_away_matches_in_the_cloud(
    broker: Broker, engine: Engine, tmp_path: Path  # noqa: F811
) -> None:
    seed_cloud(engine)

    async def main() -> int:
        async with StationBox(broker, tmp_path) as box:
            clerks, desk, station = box.component("clerks"), box.component("orders"), box.component("station")
            assert isinstance(clerks, ClerksComponent) and isinstance(desk, OrderDeskComponent)
            assert isinstance(station, StationComponent)

            def online() -> bool:
                return box.bus is not None and box.bus.cloud_online
            bus = CloudBus(await cloud_settings(broker, engine), engine)
            async with running(bus):
                await until(lambda: clerks.db.version == 1, what="the roster the staff engine sends on the birth")
                await until(lambda: station.db.list_version > 0, what="the offline lists the trace engine sends")
                with write_transaction(engine) as conn:
                    placed = service.intake(conn, service.OrderInput.model_validate({
                        "channel": "web", "channel_order_id": "W-1", "fulfilment": "pickup", "pickup_store": STORE,
                        "customer": "Zhang San", "contact": "13800000000",
                        "lines": [{"sku": "TEA-LJ-250", "qty": 1, "price": 168},
                                  {"sku": "RICE-WC-5KG", "qty": 1, "price": 89.9}]}), actor="test")
                assert placed.state == "routed" and placed.pickup_code is not None
                await until(lambda: bool(desk.db.list()), what="the assignment on the box")
            # The worker stopped: the cloud is unreachable for the box from here on.
            await until(lambda: not online(), what="the box to see the cloud gone")
            assert box.api is not None
            checks = (await result(*await app("orders", box.api.url, tmp_path,
                                              STATION_PICKUP_CODE=placed.pickup_code)))["checks"]
            assert "pickup code" in checks["wrong_code"]
            assert checks["too_many"] and checks["wrong"]
            assert order_state(engine, placed.id) == "routed"  # nothing reached the cloud while it was away
            async with running(CloudBus(await cloud_settings(broker, engine), engine)):
                await until_db(engine, lambda _s: order_state(engine, placed.id) == "picked_up", timeout=60,
                               what="the clerk's steps in the cloud once the link is back")

            # Away again: a scan at the counter gets the box's provisional answer from the lists the
            # trace engine sent; with the link back, the engine's own verdict replaces it on screen.
            await until(lambda: not online(), what="the box to see the cloud gone again")
            proc, out = await app("offline", box.api.url, tmp_path)
            await until(lambda: (tmp_path / "signals" / "provisional").exists(), timeout=120,
                        what="the provisional verdict on screen")
            async with running(CloudBus(await cloud_settings(broker, engine), engine)):
                shown = (await result(proc, out))["checks"]
            assert (shown["provisional"]["tone"], shown["provisional"]["rule"]) == ("provisional", "offline_cache")
            with Session(engine) as s:
                # The latest: the same unit was scanned while picking the order, also offline.
                scan = s.scalars(select(Scan).where(Scan.purpose == "verify", Scan.serial == "OK0001",
                                                    Scan.clerk_name == CLERKS[0][1]).order_by(Scan.id.desc())).first()
            assert scan is not None
            assert (scan.verdict, scan.provisional, scan.node) == ("genuine", "genuine", NODE)
            assert shown["final"] == {"tone": "genuine", "verdict": "genuine", "reason": scan.message}
        return placed.id

    order_id = arun(main(), timeout=300)
    with engine.connect() as conn:
        rows = conn.execute(select(service.TRANS.c.to_state, service.TRANS.c.actor)
                            .where(service.TRANS.c.order_id == order_id).order_by(service.TRANS.c.id)).all()
    trail = [r.to_state for r in rows]
    assert trail == ["received", "routed", "accepted", "picking", "packed", "ready_for_pickup", "picked_up"]
    by = {r.to_state: r.actor for r in rows}
    clerk = f"{CLERKS[0][1]} (clerk {CLERKS[0][0]}) at bus:{NODE}"
    assert by["accepted"] == by["picking"] == by["packed"] == by["ready_for_pickup"] == clerk, by
