"""Concurrency on PostgreSQL: 8 processes route orders at once against scarce stock. Total reserved
never exceeds what may be promised, every order ends routed or unfulfillable, no deadlock (a
deadlock would abort a transaction and fail a worker)."""

from __future__ import annotations

import multiprocessing
import random
import time

import pytest
from sqlalchemy import Engine, func, select

from cloud.db import make_engine, write_transaction
from cloud.orders import service
from tests.orders.conftest import order, seed, stock

WORKERS = 8
SKUS = ("TEA-1", "RICE-1", "SOY-1")


def _worker(url: str, worker: int, count: int, seed_: int) -> tuple[int, float]:
    rng = random.Random(seed_ + worker)
    engine = make_engine(url, pool_size=1)
    errors = 0
    start = time.perf_counter()
    try:
        for i in range(count):
            lines = {rng.choice(SKUS): rng.randint(1, 3) for _ in range(rng.randint(1, 3))}
            o = order(f"C{worker}-{i}", sorted(lines.items()), lat=31.0 + rng.random() * 0.4, lon=121.2 + rng.random() * 0.4)
            with write_transaction(engine) as conn:
                service.intake(conn, o, actor=f"worker:{worker}")
    except Exception:
        errors += 1
        raise
    finally:
        engine.dispose()
    return errors, time.perf_counter() - start


def run(engine: Engine, url: str, total: int) -> None:
    stores = {f"s{i:02d}": (31.0 + (i % 5) * 0.1, 121.2 + (i // 5) * 0.1, f"s{i:02d}-k1") for i in range(20)}
    seed(engine, SKUS, stores)
    for code in stores:
        stock(engine, code, {s: 3 for s in SKUS}, safety=1)
    ctx = multiprocessing.get_context("spawn")
    per = total // WORKERS
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap(_worker, [(url, w, per, 42) for w in range(WORKERS)])
    assert [e for e, _ in results] == [0] * WORKERS
    with engine.connect() as conn:
        assert service.oversold(conn) == 0
        states: dict[str, int] = {s: int(n) for s, n in conn.execute(
            select(service.ORDERS.c.state, func.count()).group_by(service.ORDERS.c.state))}
        reserved = dict(conn.execute(select(service.STOCK.c.sku, func.sum(service.STOCK.c.reserved))
                                     .group_by(service.STOCK.c.sku)).all())
        held = dict(conn.execute(select(service.RESV.c.sku, func.sum(service.RESV.c.qty))
                                 .where(service.RESV.c.status == "active").group_by(service.RESV.c.sku)).all())
    assert sum(states.values()) == per * WORKERS
    assert set(states) <= {"routed", "unfulfillable"}, states
    assert states.get("routed") and states.get("unfulfillable"), f"stock should run out part way: {states}"
    # The ledger's reserved column and the reservations agree, and stay within what may be promised.
    assert {k: int(v) for k, v in reserved.items()} == {k: int(v) for k, v in held.items()}
    assert all(int(v) <= 20 * 2 for v in reserved.values())


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_eight_processes_route_against_scarce_stock(engine: Engine, db_url: str) -> None:
    run(engine, db_url, 200)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_eight_processes_route_2000_orders(engine: Engine, db_url: str) -> None:
    run(engine, db_url, 2000)
