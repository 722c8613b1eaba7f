"""Orders routed in batches (`cloud.orders.batch.intake_batch`): the same decisions, explanations,
reservations, movements and transitions as the same orders routed one after the other, in a fixed
number of statements per batch; refusals and duplicates answered per order; a reservation that
loses a race reads and plans again, then locks its SKUs' rows, never reserving what is not there."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import Engine, Text, cast, func, select

from cloud.db import write_transaction
from cloud.orders import batch, service
from cloud.orders.service import LocationInput
from tests.orders.conftest import counted, order, seed, stock

# Ten stores in a 4 x 3 km grid, each with little of each SKU: orders compete for stock, some split,
# some find nothing.
GRID = {f"g{i}": (31.20 + (i % 5) * 0.01, 121.45 + (i // 5) * 0.01, f"g{i}-k1") for i in range(10)}
GRID_SKUS = ("TEA-1", "RICE-1", "SOY-1", "OIL-1")


def _grid(engine: Engine, rng: random.Random, *, boxes: bool = True) -> None:
    """The grid as stores with boxes (assignments go out as commands), or as warehouses."""
    if boxes:
        seed(engine, GRID_SKUS, GRID)
    else:
        seed(engine, GRID_SKUS, {})
        with write_transaction(engine) as conn:
            for code, (lat, lon, _) in GRID.items():
                service.put_location(conn, code, LocationInput(lat=lat, lon=lon), actor="test")
    for code in GRID:
        stock(engine, code, {s: rng.randint(0, 4) for s in GRID_SKUS}, safety=rng.choice([None, 1]))


def _orders(n: int, rng: random.Random, prefix: str = "B") -> list[service.OrderInput]:
    out = []
    for i in range(n):
        skus = rng.sample(GRID_SKUS, rng.randint(1, 3))
        out.append(order(f"{prefix}{i}", [(s, rng.randint(1, 3)) for s in skus], lat=31.19 + rng.random() * 0.06,
                         lon=121.44 + rng.random() * 0.04))
    return out


def _outcome(engine: Engine) -> dict[str, Any]:
    """Everything routing wrote, keyed by channel order id (ids and times differ between runs)."""
    o, a, d, t, m = service.ORDERS, service.ASSIGN, service.DECIDE, service.TRANS, service.MOVES
    with engine.connect() as conn:
        key = {r.id: r.channel_order_id for r in conn.execute(select(o.c.id, o.c.channel_order_id))}
        return {
            "states": sorted((key[r.id], r.state, r.store_id) for r in conn.execute(select(o.c.id, o.c.state, o.c.store_id))),
            "orders": sorted((key[r.id], str(r.amount), repr(r.raw), r.fulfilment, r.lat, r.lon, r.region)
                             for r in conn.execute(select(o))),
            "lines": sorted((key[r.order_id], r.line_no, r.sku, r.qty, str(r.price), str(r.discount))
                            for r in conn.execute(select(service.LINES))),
            "assignments": sorted((key[r.order_id], r.location_id, r.node, r.state, str(r.lines))
                                  for r in conn.execute(select(a))),
            "decisions": sorted((key[r.order_id], r.outcome, r.rule or "", repr(r.explanation))
                                for r in conn.execute(select(d))),
            # As stored, byte for byte: a batch writes a JSON column's text as the one-by-one path does.
            "documents": sorted((key[r[0]], r[1], r[2]) for r in conn.execute(
                select(d.c.order_id, cast(d.c.explanation, Text), cast(o.c.raw, Text)).join(o, o.c.id == d.c.order_id))),
            "assignment_lines": sorted((key[r[0]], r[1], r[2]) for r in conn.execute(
                select(a.c.order_id, a.c.location_id, cast(a.c.lines, Text)))),
            "transitions": sorted((key[r.order_id], r.from_state or "", r.to_state, r.actor, r.reason)
                                  for r in conn.execute(select(t))),
            "movements": sorted((key[int(r.source.split(":")[1])], r.location_id, r.sku, r.reserved_delta,
                                 r.reserved_after, r.on_hand_after) for r in conn.execute(select(m).where(
                                     m.c.kind == "reserve"))),
            "feed": sorted((r.channel, r.kind, r.status, r.attempts, repr({k: v for k, v in r.body.items()
                                                                              if k not in ("omnishelf_id", "at")}))
                           for r in conn.execute(select(service.FEED))),
            "stock": sorted(tuple(r) for r in conn.execute(select(service.STOCK.c.location_id, service.STOCK.c.sku,
                                                                  service.STOCK.c.reserved))),
            "oversold": service.oversold(conn),
        }


@pytest.mark.parametrize(("size", "nearest"), [(1, 64), (7, 64), (40, 64), (7, 2), (40, 2)])
def test_a_batch_decides_exactly_as_the_orders_routed_one_after_the_other(engine: Engine, size: int,
                                                                         nearest: int) -> None:
    """`nearest` 2: rules that look at the 2 nearest only, so that most orders are planned on the
    holders of their SKUs (found by SKU, as at full size) rather than on their nearest."""
    rng = random.Random(size)
    _grid(engine, rng)
    with write_transaction(engine) as conn:  # the orders' channel has a status feed: its rows too
        conn.execute(service.CHANNELS.insert().values(name="web", status_url="http://feed/status"))
    service.invalidate_channels()
    if nearest != 64:
        with engine.connect() as conn:
            spec = service.current_rules(conn)[1].model_dump(mode="json")
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule["candidates"] = nearest
        with write_transaction(engine) as conn:
            service.save_rules(conn, spec, actor="test")
    orders = _orders(40, random.Random(100 + size))
    # One after the other, each in its own transaction …
    for o in orders:
        with write_transaction(engine) as conn:
            service.intake(conn, o, actor="test")
    serial = _outcome(engine)
    # … then the same orders again on the same stock, in batches.
    with write_transaction(engine) as conn:
        for table in (service.MOVES, service.RESV, service.ASSIGN, service.DECIDE, service.TRANS, service.FEED,
                      service.LINES, service.ORDERS):
            conn.execute(table.delete())
        conn.execute(service.STOCK.update().values(reserved=0))
    for first in range(0, len(orders), size):
        with write_transaction(engine) as conn:
            results = batch.intake_batch(conn, orders[first:first + size], actor="test")
        assert [r.created for r in results if isinstance(r, service.IntakeResult)] == [True] * len(results)
    batched = _outcome(engine)
    assert serial["oversold"] == batched["oversold"] == 0
    states = {s for _, s, _ in serial["states"]}
    assert {"routed", "unfulfillable"} <= states, f"the stock should run out part way: {states}"
    assert any(len({loc for k, loc, *_ in serial["assignments"] if k == key}) > 1
               for key, *_ in serial["assignments"]), "some order should be split"
    assert serial["feed"], "the channel's status feed should have rows"
    for what in ("states", "orders", "lines", "assignments", "decisions", "transitions", "movements", "feed", "stock"):
        assert batched[what] == serial[what], what


BATCH_STATEMENTS = {"sqlite": 19, "postgresql": 11}
"""Versions; SKUs; orders; lines; the nearest's stock, the holders of each SKU (a round or two);
the reservation (in a savepoint on PostgreSQL: +2); on PostgreSQL everything after it in one
statement, on SQLite assignments, reservations, movements, the decisions of routed and of
unfulfillable orders, their states (one each), transitions; the channels with a status feed; on
SQLite `BEGIN IMMEDIATE`. (Measured: PostgreSQL 9 for 5 orders, 10 for 40; SQLite 13, 16.)"""


def test_a_batch_costs_the_same_statements_for_5_orders_as_for_40(engine: Engine) -> None:
    _grid(engine, random.Random(3), boxes=False)
    service.invalidate_channels()
    with write_transaction(engine) as conn:  # rules and locations loaded once per process
        batch.intake_batch(conn, _orders(1, random.Random(9), "W"), actor="test")
    counts = []
    for n, prefix in ((5, "S"), (40, "L")):
        orders = _orders(n, random.Random(n), prefix)
        with counted(engine) as seen, write_transaction(engine) as conn:
            results = batch.intake_batch(conn, orders, actor="test")
        assert {r.state for r in results if isinstance(r, service.IntakeResult)} >= {"routed"}
        counts.append(len(seen))
        with engine.connect() as conn:
            # Nothing traded away for the count: every order has its decision and transitions.
            ids = [r.id for r in results if isinstance(r, service.IntakeResult)]
            assert conn.execute(select(func.count()).select_from(service.DECIDE).where(
                service.DECIDE.c.order_id.in_(ids))).scalar_one() == n
            assert conn.execute(select(func.count()).select_from(service.TRANS).where(
                service.TRANS.c.order_id.in_(ids))).scalar_one() == 2 * n
    budget = BATCH_STATEMENTS[engine.dialect.name]
    assert counts[0] <= budget and counts[1] <= budget, counts


def test_refused_and_repeated_orders_in_a_batch_are_answered_one_by_one(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 10})
    with write_transaction(engine) as conn:
        before = service.intake(conn, order("OLD", [("TEA-1", 1)]), actor="test")
    batch_in = [
        order("N1", [("TEA-1", 2)]),
        order("BAD", [("NOPE-9", 1)]),
        order("OLD", [("TEA-1", 1)]),
        order("N1", [("TEA-1", 5)]),  # the channel retried within the batch (its first delivery is kept)
        order("NOXY", [("TEA-1", 1)], lat=None, lon=None),
    ]
    with write_transaction(engine) as conn:
        results = batch.intake_batch(conn, batch_in, actor="test")
    assert len(results) == 5
    first, bad, old, again, noxy = results
    assert isinstance(first, service.IntakeResult) and first.created and first.state == "routed"
    assert isinstance(bad, service.Refused) and bad.reason is service.Refusal.UNKNOWN_SKU and "NOPE-9" in bad.detail
    assert isinstance(old, service.IntakeResult) and (old.id, old.created) == (before.id, False)
    assert isinstance(again, service.IntakeResult) and (again.id, again.state, again.created) == (first.id, "routed",
                                                                                                 False)
    assert isinstance(noxy, service.Refused) and noxy.reason is service.Refusal.NO_COORDINATES
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(service.ORDERS.c.channel_order_id)).scalars())
        reserved = conn.execute(select(service.STOCK.c.reserved)).scalar_one()
        lines = sorted(conn.execute(select(service.ORDERS.c.channel_order_id, service.LINES.c.line_no,
                                           service.LINES.c.sku, service.LINES.c.qty).join(
            service.ORDERS, service.ORDERS.c.id == service.LINES.c.order_id)).all())
    assert ids == ["N1", "OLD"]  # nothing of the refused ones, the repeated one once
    assert reserved == 3
    assert [tuple(r) for r in lines] == [("N1", 1, "TEA-1", 2), ("OLD", 1, "TEA-1", 1)]


def test_a_batch_that_loses_the_race_for_stock_reads_and_plans_again(engine: Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock taken by someone else between the batch's reads and its reservation: the batch reserves
    nothing, reads again and plans on the stock now there; none oversold."""
    seed(engine)
    stock(engine, "stb", {"TEA-1": 4})
    stock(engine, "stc", {"TEA-1": 4})
    reads = batch._fetch

    def then_someone_takes_stb(conn: Any, *args: Any) -> None:
        reads(conn, *args)
        conn.execute(service.STOCK.update().where(service.STOCK.c.location_id == service.location_id(conn, "stb"))
                     .values(on_hand=1))

    monkeypatch.setattr(batch, "_fetch", then_someone_takes_stb)
    with write_transaction(engine) as conn:
        results = batch.intake_batch(conn, [order("R1", [("TEA-1", 2)]), order("R2", [("TEA-1", 2)]),
                                            order("R3", [("TEA-1", 2)])], actor="test")
    states = [r.state for r in results if isinstance(r, service.IntakeResult)]
    assert states == ["routed", "routed", "unfulfillable"]
    with engine.connect() as conn:
        assert service.oversold(conn) == 0
        where = dict(conn.execute(select(service.STOCK.c.location_id, service.STOCK.c.reserved)).all())
        got = service.get_order(conn, _All(), results[0].id)  # type: ignore[union-attr]
    assert sorted(where.values()) == [0, 4]  # stb has 1 left on hand: both orders went to stc
    assert got["assignments"][0]["location"] == "stc"
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed"]


def test_rule_sets_with_checks_take_the_one_by_one_path(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 10})
    with engine.connect() as conn:
        spec = service.current_rules(conn)[1].model_dump(mode="json")
    spec["checks"] = [{"name": "big", "action": "hold", "amount_over": 15}]
    with write_transaction(engine) as conn:
        service.save_rules(conn, spec, actor="test")
    with write_transaction(engine) as conn:
        small, big = batch.intake_batch(conn, [order("C1", [("TEA-1", 1)]), order("C2", [("TEA-1", 2)])],
                                        actor="test")
    assert [getattr(small, "state", None), getattr(big, "state", None)] == ["routed", "held"]


class _All:
    all = True


def test_after_its_optimistic_tries_a_batch_locks_its_skus_rows_and_plans_on_them(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 4, "RICE-1": 1})
    stock(engine, "stc", {"TEA-1": 4, "SOY-1": 3})
    monkeypatch.setattr(batch, "BATCH_TRIES", 0)
    with counted(engine) as seen, write_transaction(engine) as conn:
        results = batch.intake_batch(conn, [order("K1", [("TEA-1", 3)]), order("K2", [("TEA-1", 3)]),
                                            order("K3", [("TEA-1", 3)])], actor="test")
    assert [getattr(r, "state", None) for r in results] == ["routed", "routed", "unfulfillable"]
    locked = [x for x in seen if "FOR UPDATE" in x]
    if engine.dialect.name == "postgresql":
        # The SKUs' rows first, in one statement and in order; then the reservation (on rows held).
        assert locked[0].startswith("SELECT location_id, sku FROM orders_stock WHERE sku = ANY")
        assert "ORDER BY location_id, sku FOR UPDATE" in locked[0] and len(locked) == 2
    with engine.connect() as conn:
        assert service.oversold(conn) == 0
        assert sorted(conn.execute(select(service.STOCK.c.sku, service.STOCK.c.reserved)).all()) == [
            ("RICE-1", 0), ("SOY-1", 0), ("TEA-1", 3), ("TEA-1", 3)]


def test_explanations_are_stored_compressed_with_lz4_on_postgresql(engine: Engine) -> None:
    """Migration 0019: a decision's explanation (~5 KB at the benchmark's size) is compressed with
    lz4, a third less of the server's CPU than pglz for as small a result."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's TOAST compression")
    rng = random.Random(5)
    _grid(engine, rng, boxes=False)
    big = [order(f"Z{i}", [("TEA-1", 1)], lat=31.2, lon=121.45) for i in range(3)]
    with write_transaction(engine) as conn:
        batch.intake_batch(conn, big, actor="test")
    with engine.connect() as conn:
        method = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'orders_decisions'::regclass "
            "AND attname = 'explanation'").scalar()
        assert method == "l"
        # An explanation of more than TOAST's 2 KB threshold is written compressed, with lz4.
        conn.exec_driver_sql("INSERT INTO orders_decisions (order_id, at, ruleset_version, outcome, explanation) "
                             "SELECT order_id, at, ruleset_version, outcome, "
                             "json_build_object('pad', repeat('candidate ', 800)) FROM orders_decisions LIMIT 1")
        assert conn.exec_driver_sql("SELECT pg_column_compression(explanation) FROM orders_decisions "
                                    "WHERE length(explanation::text) > 2000").scalar() == "lz4"
