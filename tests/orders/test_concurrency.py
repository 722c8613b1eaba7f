"""Concurrency on PostgreSQL: 8 processes route orders at once against scarce stock, one order a
transaction and in batches. Total reserved never exceeds what may be promised, every order ends
routed or unfulfillable, no deadlock (a deadlock would abort a transaction and fail a worker)."""

from __future__ import annotations

import multiprocessing
import random
import time

import pytest
from sqlalchemy import Engine, func, select

from cloud.db import make_engine, write_transaction
from cloud.orders import batch, service
from tests.orders.conftest import order, seed, stock

WORKERS = 8
SKUS = ("TEA-1", "RICE-1", "SOY-1")


def _worker(url: str, worker: int, count: int, seed_: int, per_transaction: int = 1) -> tuple[int, float]:
    rng = random.Random(seed_ + worker)
    engine = make_engine(url, pool_size=1)
    errors = 0
    start = time.perf_counter()
    try:
        orders = []
        for i in range(count):
            lines = {rng.choice(SKUS): rng.randint(1, 3) for _ in range(rng.randint(1, 3))}
            orders.append(order(f"C{worker}-{i}", sorted(lines.items()), lat=31.0 + rng.random() * 0.4,
                                lon=121.2 + rng.random() * 0.4))
        for first in range(0, count, per_transaction):
            with write_transaction(engine) as conn:
                if per_transaction == 1:
                    service.intake(conn, orders[first], actor=f"worker:{worker}")
                else:
                    results = batch.intake_batch(conn, orders[first:first + per_transaction], actor=f"worker:{worker}")
                    assert all(isinstance(r, service.IntakeResult) for r in results), results
    except Exception:
        errors += 1
        raise
    finally:
        engine.dispose()
    return errors, time.perf_counter() - start


def run(engine: Engine, url: str, total: int, per_transaction: int = 1) -> None:
    stores = {f"s{i:02d}": (31.0 + (i % 5) * 0.1, 121.2 + (i // 5) * 0.1, f"s{i:02d}-k1") for i in range(20)}
    seed(engine, SKUS, stores)
    for code in stores:
        stock(engine, code, {s: 3 for s in SKUS}, safety=1)
    ctx = multiprocessing.get_context("spawn")
    per = total // WORKERS
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap(_worker, [(url, w, per, 42, per_transaction) for w in range(WORKERS)])
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


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_eight_processes_route_batches_against_scarce_stock(engine: Engine, db_url: str) -> None:
    """Batches of 10 orders a transaction (`intake_batch`): rows locked in one order across the
    batch, a lost race routed order by order; the same guarantees."""
    run(engine, db_url, 400, per_transaction=10)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_eight_processes_route_2000_orders_in_batches(engine: Engine, db_url: str) -> None:
    run(engine, db_url, 2000, per_transaction=20)
