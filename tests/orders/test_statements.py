"""The work one routed order costs, counted in SQL statements (SQLAlchemy's cursor events), so that
a change putting a query back into the hot path fails here rather than in a benchmark."""

from __future__ import annotations

from sqlalchemy import Engine, select

from cloud.db import write_transaction
from cloud.orders import batch, service
from cloud.orders.service import LocationInput
from tests.orders.conftest import counted, order, seed, stock

ROUTED_TO_A_WAREHOUSE = 13
"""Rules and locations' versions; the known SKUs; the order, its lines; the nearest locations'
stock; the reservation; its movements; the assignment, its reservations; the decision; the order's
new state; its two transitions (one statement); and on SQLite `BEGIN IMMEDIATE` (PostgreSQL's driver
begins implicitly, but reserves inside a savepoint: two statements more)."""
ROUTED_TO_A_STORE = ROUTED_TO_A_WAREHOUSE + 4
"""And the `assign` command to the store's box through the durable downlink (its key looked up,
its row, the relay woken on PostgreSQL, the assignment's pointer to it)."""


def _warm(engine: Engine) -> None:
    """Route one order first: the rule set and the location index are loaded once per process."""
    with write_transaction(engine) as conn:
        service.intake(conn, order("WARM", [("TEA-1", 1)]), actor="test")


def _warehouse(engine: Engine) -> None:
    """The catalogue, one warehouse with TEA-1 and RICE-1, and the process warmed (`_warm`)."""
    seed(engine)
    with write_transaction(engine) as conn:
        service.put_location(conn, "wh1", LocationInput(lat=31.2411, lon=121.4911), actor="test")
        loc = service.location_id(conn, "wh1")
        service.apply_levels(conn, loc, [service.LevelIn("TEA-1", 50), service.LevelIn("RICE-1", 50)],
                             source="test", now=service._now())
    _warm(engine)


def _budget(engine: Engine, warehouse: int) -> int:
    return warehouse + (1 if engine.dialect.name == "postgresql" else 0)


def test_an_order_routed_to_a_warehouse_costs_a_fixed_number_of_statements(engine: Engine) -> None:
    _warehouse(engine)
    with counted(engine) as seen, write_transaction(engine) as conn:
        r = service.intake(conn, order("W1", [("TEA-1", 2), ("RICE-1", 1)]), actor="test")
    assert r.state == "routed"
    assert len(seen) <= _budget(engine, ROUTED_TO_A_WAREHOUSE), "\n".join(x[:90] for x in seen)
    with engine.connect() as conn:
        got = service.get_order(conn, _all(), r.id)
    # What the statements must still have written: nothing traded away for the count.
    assert [a["location"] for a in got["assignments"]] == ["wh1"]
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed"]
    assert got["decisions"][0]["rule"] and got["decisions"][0]["explanation"]["rules"][0]["candidates"]
    with engine.connect() as conn:
        moves = conn.execute(select(service.MOVES.c.kind, service.MOVES.c.reserved_delta)
                             .where(service.MOVES.c.source == f"order:{r.id}")).all()
    assert sorted(moves) == [("reserve", 1), ("reserve", 2)]


def test_an_order_routed_to_a_store_adds_only_its_command(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 5})
    _warm(engine)
    with counted(engine) as seen, write_transaction(engine) as conn:
        r = service.intake(conn, order("S1", [("TEA-1", 1)]), actor="test")
    assert r.state == "routed"
    assert len(seen) <= _budget(engine, ROUTED_TO_A_STORE), "\n".join(x[:90] for x in seen)
    with engine.connect() as conn:
        assert service.get_order(conn, _all(), r.id)["assignments"][0]["node"] == "stb-k1"


def test_the_location_index_is_reloaded_when_a_location_changes_elsewhere(engine: Engine) -> None:
    """Another process's edit (simulated: this process's cache is kept, the version moves on) is seen
    by the next order, with no reload before it."""
    seed(engine)
    stock(engine, "stb", {"TEA-1": 5})
    _warm(engine)
    with counted(engine) as seen, write_transaction(engine) as conn:
        service.intake(conn, order("V1", [("TEA-1", 1)]), actor="test")
    assert not any("FROM orders_locations" in s for s in seen)
    with write_transaction(engine) as conn:
        conn.execute(service.LOCS.update().where(service.LOCS.c.code == "stb").values(active=False))
        conn.execute(service.VERSIONS.update().values(version=service.VERSIONS.c.version + 1))
    with counted(engine) as seen, write_transaction(engine) as conn:
        r = service.intake(conn, order("V2", [("TEA-1", 1)]), actor="test")
    assert any("FROM orders_locations" in s for s in seen)
    assert r.state == "unfulfillable"  # stb was the only one with stock, and it is inactive now


def _all() -> object:
    class Everything:
        all = True

    return Everything()


ALONE_ON_THE_BATCH_PATH = {"postgresql": 9, "sqlite": 14}
"""`batch.intake_one` (the REST API's, webhooks', call centre's path): the versions; the known SKUs;
the order and its lines (one statement on PostgreSQL); the holders cache's refresh (PostgreSQL) or
the nearest's stock (SQLite); the reservation (in a savepoint on PostgreSQL); everything after it
(one statement on PostgreSQL, one a table on SQLite)."""


def test_an_order_taken_in_alone_on_the_batch_path_costs_fewer_statements(engine: Engine) -> None:
    """The same order twice, once per path: the same outcome; on PostgreSQL 8 statements against 14."""
    _warehouse(engine)
    with write_transaction(engine) as conn:
        batch.intake_one(conn, order("WARM2", [("TEA-1", 1)]), actor="test")
    with counted(engine) as alone, write_transaction(engine) as conn:
        one = service.intake(conn, order("A1", [("TEA-1", 2), ("RICE-1", 1)]), actor="test")
    with counted(engine) as seen, write_transaction(engine) as conn:
        r = batch.intake_one(conn, order("B1", [("TEA-1", 2), ("RICE-1", 1)]), actor="test")
    assert (r.state, r.created) == (one.state, one.created) == ("routed", True)
    assert len(seen) <= ALONE_ON_THE_BATCH_PATH[engine.dialect.name], "\n".join(x[:90] for x in seen)
    if engine.dialect.name == "postgresql":  # on SQLite as many as alone (a statement a table), less CPU
        assert len(seen) < len(alone)
    with engine.connect() as conn:
        got, before = service.get_order(conn, _all(), r.id), service.get_order(conn, _all(), one.id)
    assert [a["location"] for a in got["assignments"]] == [a["location"] for a in before["assignments"]] == ["wh1"]
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed"]
