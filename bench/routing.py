"""Routing benchmark: orders routed and reserved per second (p50/p99) on SQLite and PostgreSQL, with
one worker process and with four, next to two baselines measured in the same run: the bare
nearest-neighbour query (cKDTree on unit vectors) and a bare single-row `UPDATE … RETURNING`
committed on its own (the least a reservation can cost on that database).

Each order is the full intake: checks (catalogue, coordinates), the order and its lines (once per
channel order id), routing (spatial index → stock of the k nearest → plan → reserve under row
locks), the assignment, reservations, movements, the decision with its explanation, transitions;
committed. Locations are warehouses (no box), so no downlink rows are written. Each run reports the
worker's CPU time per order and the SQL statements per order (counted by SQLAlchemy's events), which
depend far less on a shared machine's load than the rates do, and on PostgreSQL on this host the
CPU time of the worker's database backends per order (from /proc). Workers freeze their start-up
objects out of the collector's full passes, as `omnishelf cloud worker` does.

`batched_N` (`--batch N`, 10 by default) routes N orders per transaction through
`cloud.orders.batch.intake_batch` (group commit: the same decisions as N orders routed one after
the other, in a few statements for the whole batch), as a caller with several orders at once does
(the bus worker's batch of kiosk orders, an import, the inbox). One order per transaction is how
the REST API, webhooks and the call centre take orders in (`cloud.orders.batch.intake_one`: a batch
of one); it cannot beat the bare committed `UPDATE`: its commit is the floor.

    python -m bench.routing --quick          (1,000 locations x 500 SKUs, 50 SKUs stocked per location)
    python -m bench.routing                  (10,000 locations x 5,000 SKUs, 200 stocked per location)
    python -m bench.routing --no-sqlite --orders 300   (the full size on PostgreSQL, 300 orders a worker)
    python -m bench.routing --quick --warm 50 --orders 300   (the steady state: 50 orders a worker first, untimed)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import secrets
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, event, insert, text

from broker.runtime import freeze_startup_objects
from cloud.catalogue.models import products
from cloud.db import make_engine, migrate, write_transaction
from cloud.orders import batch as batching
from cloud.orders import candidates, service
from cloud.orders.geo import SpatialIndex
from cloud.orders.models import Location, StockRow

PG_URL = os.environ.get("OMNISHELF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_one: Any = getattr(batching, "intake_one", service.intake)
"""One order a transaction as the REST API and webhooks take it in (`service.intake` in code from
before `intake_one`: this bench also runs older code, for comparisons)."""


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)


def setup(engine: Engine, locations: int, skus: int, per_location: int, rng: random.Random) -> None:
    migrate(engine)
    with write_transaction(engine) as conn:
        conn.execute(insert(products), [{"sku": f"B{i:05d}", "name_en": "b", "name_zh": "b",
                                         "list_price": Decimal("1.00")} for i in range(skus)])
        conn.execute(insert(Location), [{"code": f"W{i:05d}", "kind": "warehouse", "lat": rng.uniform(22, 41),
                                         "lon": rng.uniform(100, 122), "priority": 0, "cost": 0.0, "active": True}
                                        for i in range(locations)])
        batch: list[dict[str, Any]] = []
        for loc in range(1, locations + 1):
            for s in rng.sample(range(skus), per_location):
                batch.append({"location_id": loc, "sku": f"B{s:05d}", "on_hand": 1000, "reserved": 0, "safety": 0})
                if len(batch) >= 20_000:
                    conn.execute(insert(StockRow), batch)
                    batch = []
        if batch:
            conn.execute(insert(StockRow), batch)


def _worker(url: str, worker: int, n: int, skus: int, out: Any, batch: int = 1, warm: int = 0) -> None:
    try:
        _work(url, worker, n, skus, out, batch, warm)
    except BaseException:
        import traceback

        out.put((worker, None, traceback.format_exc(), {}))
        raise


def _backend_cpu_s(pids: set[int]) -> float | None:
    """CPU seconds the PostgreSQL backends `pids` used so far (user + system: the server on this
    host), or None when they cannot be read."""
    try:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
    except psutil.Error:
        return None


def _work(url: str, worker: int, n: int, skus: int, out: Any, batch: int, warm: int = 0) -> None:
    rng = random.Random(1000 + worker + 100 * batch)
    engine = make_engine(url, pool_size=2) if not url.startswith("sqlite") else make_engine(url)
    backends: set[int] = set()
    if not url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _backend(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                backends.add(int(cur.fetchone()[0]))
            dbapi_conn.rollback()
    # As `omnishelf cloud worker` does once started: start-up objects out of full collections (left
    # in, each full collection walked ~200,000 of them inside a timed transaction).
    freeze_startup_objects()
    with engine.connect() as conn:
        service.routing_state(conn)  # warm the rules and the spatial index outside the timing
        # … and, for batches, the holders cache they plan on (every SKU's holders, read when it
        # starts, as a worker's first batch would). Looked up by name: this bench also runs the code
        # from before it, for comparisons.
        cache = getattr(batching, "holders", None)
        store = cache.holders(conn) if cache is not None and batch > 1 else None
        if store is not None:
            conn.rollback()
            with conn.begin():
                store.view(conn)
    candidates.INDEX_TTL_S = 3600.0
    statements = [0]
    event.listen(engine, "before_cursor_execute", lambda *_: statements.__setitem__(0, statements[0] + 1))
    lat: list[float] = []
    states: dict[str, int] = {}
    orders = []
    for i in range(n + warm):
        lines = {f"B{rng.randrange(skus):05d}": rng.randint(1, 3) for _ in range(rng.randint(1, 5))}
        orders.append(service.OrderInput.model_validate({
            "channel": "bench", "channel_order_id": f"w{worker}-{batch}-{i}-{secrets.token_hex(3)}",
            "fulfilment": "delivery", "lat": rng.uniform(22, 41), "lon": rng.uniform(100, 122),
            "lines": [{"sku": s, "qty": q, "price": 1} for s, q in lines.items()]}))
    # `--warm`: orders routed before the timing (statements compiled and prepared, caches filled), so
    # that a short run measures the steady state; their statements are not counted either.
    for first in range(0, warm, batch):
        with write_transaction(engine) as conn:
            if batch == 1:
                _one(conn, orders[first], actor="bench")
            else:
                batching.intake_batch(conn, orders[first:min(first + batch, warm)], actor="bench")
    orders = orders[warm:]
    statements[0] = 0
    server = _backend_cpu_s(backends) if backends else None
    cpu = time.process_time()
    start = time.perf_counter()
    for first in range(0, n, batch):
        t0 = time.perf_counter()
        with write_transaction(engine) as conn:
            if batch == 1:
                results: list[Any] = [_one(conn, orders[first], actor="bench")]
            else:
                results = batching.intake_batch(conn, orders[first:first + batch], actor="bench")
            for r in results:
                states[r.state] = states.get(r.state, 0) + 1
        # Batched: each order of the batch waited for its commit, as its caller would.
        lat.extend([time.perf_counter() - t0] * len(orders[first:first + batch]))
    wall = time.perf_counter() - start
    cpu_per = (time.process_time() - cpu) / n
    server_after = _backend_cpu_s(backends) if server is not None else None
    server_per = (server_after - server) / n if server is not None and server_after is not None else None
    out.put((worker, wall, lat, states, cpu_per, statements[0] / n, server_per))
    engine.dispose()


def route_run(url: str, workers: int, per_worker: int, skus: int, batch: int = 1, warm: int = 0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, w, per_worker, skus, q, batch, warm)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    failed = [r for r in results if r[1] is None]
    if failed:
        raise RuntimeError(f"worker {failed[0][0]} failed:\n{failed[0][2]}")
    lat = [x for r in results for x in r[2]]
    wall = max(r[1] for r in results)
    states: dict[str, int] = {}
    for r in results:
        for k, v in r[3].items():
            states[k] = states.get(k, 0) + v
    cpu_ms = sum(r[4] for r in results) / len(results) * 1000
    server_ms = (sum(r[6] for r in results) / len(results) * 1000 if all(r[6] is not None for r in results)
                 else None)
    return {"workers": workers, "orders_per_transaction": batch, "orders": len(lat),
            "orders_per_s": round(len(lat) / wall, 1), "per_worker_orders_per_s": round(len(lat) / wall / workers, 1),
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
            "cpu_ms_per_order": round(cpu_ms, 2),
            # The database server's backends (PostgreSQL on this host): what an order costs there.
            "server_cpu_ms_per_order": None if server_ms is None else round(server_ms, 2),
            # How many of the host's cores the run kept busy (workers and their backends): near
            # `cpu_cores`, more workers cannot route more.
            "cores_busy": None if server_ms is None else round(len(lat) / wall * (cpu_ms + server_ms) / 1000, 2),
            "statements_per_order": round(sum(r[5] for r in results) / len(results), 2), "states": states}


def nn_baseline(locations: int, rng: random.Random, n: int = 5000) -> dict[str, Any]:
    ids = list(range(locations))
    idx = SpatialIndex(ids, [rng.uniform(22, 41) for _ in ids], [rng.uniform(100, 122) for _ in ids])
    lat = []
    for _ in range(n):
        la, lo = rng.uniform(22, 41), rng.uniform(100, 122)
        t0 = time.perf_counter()
        idx.nearest(la, lo, 64)
        lat.append(time.perf_counter() - t0)
    return {"what": "cKDTree k=64 nearest of one point", "queries_per_s": round(n / sum(lat)),
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99)}


def update_baseline(engine: Engine, n: int = 2000) -> dict[str, Any]:
    rng = random.Random(7)
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT location_id, sku FROM orders_stock LIMIT 5000")).all()
    lat = []
    for _ in range(n):
        loc, sku = rng.choice(keys)
        t0 = time.perf_counter()
        with write_transaction(engine) as conn:
            conn.execute(text("UPDATE orders_stock SET reserved = reserved + 1 WHERE location_id = :l AND sku = :s "
                              "AND on_hand - reserved - safety >= 1 RETURNING reserved"), {"l": loc, "s": sku}).first()
        lat.append(time.perf_counter() - t0)
    return {"what": "single-row UPDATE … RETURNING, one transaction each", "per_s": round(n / sum(lat)),
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99)}


def _pg_database() -> tuple[str, Any] | None:
    try:
        import psycopg

        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception:
        return None
    name = f"bench_routing_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return PG_URL.rsplit("/", 1)[0] + "/" + name, (admin, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute on a busy 2-core machine)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only (the full size's SQLite setup is long)")
    ap.add_argument("--batch", type=int, default=10, help="orders per transaction of the batched runs")
    ap.add_argument("--orders", type=int, default=None, help="orders per worker (default 150 quick, 2,000 full)")
    ap.add_argument("--warm", type=int, default=0, help="orders per worker routed before the timing (default 0)")
    args = ap.parse_args()
    if args.quick:
        locations, skus, per_location, per_worker = 1000, 500, 50, 150
    else:
        locations, skus, per_location, per_worker = 10_000, 5000, 200, 2000
    per_worker = args.orders or per_worker
    rng = random.Random(1)
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full", "locations": locations, "skus": skus,
                              "orders_per_worker": per_worker, "warm_per_worker": args.warm,
                              "stock_rows": locations * per_location, "lines_per_order": "1-5",
                              "cpu_cores": os.cpu_count(),
                              "nearest_neighbour": nn_baseline(locations, random.Random(2))}
    backends: list[tuple[str, str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="bench-routing-")
    if not args.no_sqlite:
        backends.append(("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", None))
    if not args.no_pg:
        pg = _pg_database()
        if pg is not None:
            backends.append(("postgresql", pg[0], pg[1]))
        else:
            result["postgresql"] = f"skipped: {PG_URL} not reachable"
    for name, url, cleanup in backends:
        engine = make_engine(url)
        try:
            t0 = time.perf_counter()
            setup(engine, locations, skus, per_location, rng)
            entry: dict[str, Any] = {"setup_s": round(time.perf_counter() - t0, 1),
                                     "update_returning": update_baseline(engine)}
            for workers, batch in ((1, 1), (4, 1), (1, args.batch), (4, args.batch)):
                key = f"workers_{workers}" + (f"_batched_{batch}" if batch > 1 else "")
                try:
                    entry[key] = route_run(url, workers, per_worker, skus, batch=batch, warm=args.warm)
                except RuntimeError as exc:  # e.g. SQLite's busy timeout on an overloaded machine: say so, go on
                    # The worker's traceback: its last line naming an error says what failed (the
                    # lines after it are SQLAlchemy's SQL and links).
                    said = [ln.strip() for ln in str(exc).splitlines() if "Error" in ln] or [str(exc).strip()]
                    entry[key] = {"failed": said[-1][:300]}
            with engine.connect() as conn:
                entry["oversold_rows"] = service.oversold(conn)
            one, four = (entry[k].get("orders_per_s") for k in ("workers_1", "workers_4"))
            entry["scaling_4_vs_1"] = round(four / one, 2) if one and four else None
            b1, b4 = (entry[k].get("orders_per_s") for k in (f"workers_1_batched_{args.batch}",
                                                              f"workers_4_batched_{args.batch}"))
            entry["scaling_4_vs_1_batched"] = round(b4 / b1, 2) if b1 and b4 else None
            entry["order_vs_update_cost"] = round(entry["update_returning"]["per_s"] / one, 1) if one else None
            # An order's cost in bare committed UPDATEs when routed in batches (alone: order_vs_update_cost).
            entry["batched_order_vs_update_cost"] = round(entry["update_returning"]["per_s"] / b1, 2) if b1 else None
            result[name] = entry
        finally:
            engine.dispose()
            if cleanup is not None:
                admin, dbname = cleanup
                admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
                admin.close()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
