"""The holders cache (`cloud.orders.holders`, PostgreSQL): after any change to the stock, by this
process or another connection, committed, rolled back or still running, its view is what a plain
read of every SKU's holders returns at that moment; a batch routed on it decides as one reading the
table."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, text

from cloud.db import write_transaction
from cloud.orders import batch, holders, service
from tests.orders.conftest import stock
from tests.orders.test_batch import GRID_SKUS, _grid, _orders, _outcome

_FRESH = text("SELECT sku, array_agg(location_id ORDER BY location_id), "
              "array_agg(on_hand - reserved - safety ORDER BY location_id) FROM orders_stock "
              "WHERE on_hand - reserved - safety >= 1 GROUP BY sku")


def _pg(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("the holders cache is PostgreSQL's (SQLite's batches read the holders)")


def _fresh(conn: Connection) -> dict[str, tuple[list[int], list[int]]]:
    return {sku: (list(ids), list(atp)) for sku, ids, atp in conn.execute(_FRESH)}


def _viewed(conn: Connection, cache: holders.Holders) -> dict[str, tuple[list[int], list[int]]]:
    got = cache.view(conn)
    assert got is not None
    per, complete, _ = got
    assert complete
    return {sku: (ids.tolist(), atp.tolist()) for sku, (ids, atp) in per.items() if len(ids)}


def _change(conn: Connection, rng: random.Random) -> None:
    """Some rows changed, one deleted, one added (as the engine, a store's message or SQL would)."""
    rows = conn.execute(text("SELECT location_id, sku FROM orders_stock ORDER BY location_id, sku")).all()
    for loc, sku in rng.sample(rows, 3):
        conn.execute(text("UPDATE orders_stock SET reserved = reserved + :q, on_hand = on_hand + :h "
                          "WHERE location_id = :l AND sku = :s"),
                     {"q": rng.randint(0, 2), "h": rng.randint(-1, 3), "l": loc, "s": sku})
    loc, sku = rng.choice(rows)
    conn.execute(text("DELETE FROM orders_stock WHERE location_id = :l AND sku = :s"), {"l": loc, "s": sku})
    conn.execute(text("INSERT INTO orders_stock (location_id, sku, on_hand, reserved, safety) VALUES (:l, :s, 5, 0, 0) "
                      "ON CONFLICT DO NOTHING"), {"l": loc, "s": sku})


def test_the_view_is_what_a_plain_read_gives_after_every_kind_of_change(engine: Engine) -> None:
    _pg(engine)
    _grid(engine, random.Random(1))
    cache = holders.Holders()
    rng = random.Random(2)
    with engine.connect() as conn, conn.begin():
        assert _viewed(conn, cache) == _fresh(conn)
    for _ in range(5):
        # Committed by another connection.
        with write_transaction(engine) as conn:
            _change(conn, rng)
        with engine.connect() as conn, conn.begin():
            assert _viewed(conn, cache) == _fresh(conn)
    # Changed in this transaction: seen in it; rolled back: gone at the next view.
    with engine.connect() as conn:
        tx = conn.begin()
        _change(conn, rng)
        mine = _fresh(conn)
        assert _viewed(conn, cache) == mine
        tx.rollback()
    with engine.connect() as conn, conn.begin():
        fresh = _fresh(conn)
        assert fresh != mine, "the rolled back changes should have changed some holder"
        assert _viewed(conn, cache) == fresh
    # Changed by a transaction still running: not seen; once it commits, seen.
    with engine.connect() as other, engine.connect() as conn:
        tx = other.begin()
        _change(other, rng)
        with conn.begin():
            before = _fresh(conn)
            assert _viewed(conn, cache) == before
        tx.commit()
        with conn.begin():
            after = _fresh(conn)
            assert after != before
            assert _viewed(conn, cache) == after
    # Emptied: the cache starts afresh.
    with write_transaction(engine) as conn:
        conn.execute(text("TRUNCATE orders_stock"))
    stock(engine, "g1", {"TEA-1": 7})
    with engine.connect() as conn, conn.begin():
        assert _viewed(conn, cache) == _fresh(conn) == {"TEA-1": ([service.location_id(conn, "g1")], [7])}


def test_a_cache_read_sku_by_sku_stays_fresh_too(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stock table too large to read whole: SKUs are read as batches need them, and kept fresh."""
    _pg(engine)
    monkeypatch.setattr(holders, "WARM_MAX_BYTES", -1)
    _grid(engine, random.Random(3))
    cache = holders.Holders()
    rng = random.Random(4)
    for n in range(4):
        with engine.connect() as conn, conn.begin():
            got = cache.view(conn)
            assert got is not None
            per, complete, generation = got
            assert not complete
            fresh = _fresh(conn)
            assert {s: (a.tolist(), b.tolist()) for s, (a, b) in per.items() if len(a)} == \
                {s: v for s, v in fresh.items() if s in per}
            if n == 0:
                cache.add({s: (np.array(v[0]), np.array(v[1])) for s, v in fresh.items() if s != GRID_SKUS[0]},
                          generation)
        with write_transaction(engine) as conn:
            _change(conn, rng)
    assert set(cache.per) == set(GRID_SKUS[1:])


def test_batches_on_the_cache_decide_as_batches_reading_the_table(engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same orders routed in batches twice on the same stock, with the cache and without it
    (`test_batch` compares batches with orders routed one by one), while another connection changes
    the stock between batches the same way both times."""
    _pg(engine)
    _grid(engine, random.Random(5), boxes=False)
    orders = _orders(60, random.Random(6))
    with engine.connect() as conn:
        base = conn.execute(text("SELECT location_id, sku, on_hand FROM orders_stock")).all()

    def run() -> dict[str, Any]:
        rng = random.Random(7)
        for first in range(0, len(orders), 6):
            with write_transaction(engine) as conn:
                batch.intake_batch(conn, orders[first:first + 6], actor="test")
            with write_transaction(engine) as conn:
                conn.execute(text("UPDATE orders_stock SET on_hand = on_hand + :d WHERE sku = :s"),
                             {"d": rng.randint(0, 2), "s": rng.choice(GRID_SKUS)})
        out = _outcome(engine)
        with write_transaction(engine) as conn:
            for table in (service.MOVES, service.RESV, service.ASSIGN, service.DECIDE, service.TRANS, service.FEED,
                          service.LINES, service.ORDERS):
                conn.execute(table.delete())
            conn.execute(text("UPDATE orders_stock SET reserved = 0"))
            for loc, sku, on_hand in base:
                conn.execute(text("UPDATE orders_stock SET on_hand = :h WHERE location_id = :l AND sku = :s"),
                             {"h": on_hand, "l": loc, "s": sku})
        return out

    holders.forget()
    calls: list[int] = []
    view = holders.Holders.view

    def counted_view(self: holders.Holders, conn: Connection) -> Any:
        calls.append(1)
        return view(self, conn)

    monkeypatch.setattr(holders.Holders, "view", counted_view)
    cached = run()
    assert len(calls) == 10, "every batch should have planned on the cache"
    monkeypatch.setattr(holders, "holders", lambda conn: None)
    read = run()
    assert cached["oversold"] == read["oversold"] == 0
    assert {s for _, s, _ in read["states"]} >= {"routed", "unfulfillable"}
    for what in ("states", "assignments", "decisions", "transitions", "movements", "stock"):
        assert cached[what] == read[what], what


def test_prune_deletes_only_the_changes_older_than_kept(engine: Engine) -> None:
    _pg(engine)
    _grid(engine, random.Random(8))
    with write_transaction(engine) as conn:
        logged = conn.execute(text("SELECT count(*) FROM orders_stock_changes")).scalar_one()
        assert logged >= 10  # the grid's stock rows, inserted and updated
        # Four old enough, written by a transaction long ended (txid 1: below any horizon, whatever
        # else runs on the server meanwhile, as other tests' transactions do); a fifth as old but
        # written by a transaction still running (this one, `pg_current_xact_id`): kept until it ends.
        conn.execute(text("UPDATE orders_stock_changes SET at = at - make_interval(secs => :s), txid = 1 "
                          "WHERE id IN (SELECT id FROM orders_stock_changes ORDER BY id LIMIT 4)"),
                     {"s": holders.KEEP_S + 60})
        conn.execute(text("UPDATE orders_stock_changes SET at = at - make_interval(secs => :s), "
                          "txid = pg_current_xact_id()::text::bigint "
                          "WHERE id = (SELECT id FROM orders_stock_changes ORDER BY id OFFSET 4 LIMIT 1)"),
                     {"s": holders.KEEP_S + 60})
        assert holders.prune(conn) == 4
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders_stock_changes")).scalar_one() == logged - 4


def test_a_rows_newest_figure_is_its_newest_logged_change_whatever_the_transactions_ids(engine: Engine) -> None:
    """Migration 0020: a changed row's figure comes from the log, from its newest change (log id
    order), not from the highest transaction id. Here the newest change of a row is by the older
    transaction; a third transaction, still running, keeps the horizon between the two; the view is
    what a plain read gives at every step (a figure taken from the older change would not be)."""
    _pg(engine)
    _grid(engine, random.Random(5))
    cache = holders.Holders()
    with engine.connect() as conn, conn.begin():
        loc, sku = conn.execute(text("SELECT location_id, sku FROM orders_stock ORDER BY 1, 2 LIMIT 1")).one()
        assert _viewed(conn, cache) == _fresh(conn)
    xid = text("SELECT pg_current_xact_id()::text::bigint")
    bump = text("UPDATE orders_stock SET on_hand = :h, reserved = 0, safety = 0 WHERE location_id = :l AND sku = :s")
    # Both ended before the view: both changes are read in one refresh.
    with engine.connect() as older, engine.connect() as newer:
        t_older, t_newer = older.begin(), newer.begin()
        assert older.execute(xid).scalar_one() < newer.execute(xid).scalar_one()
        newer.execute(bump, {"h": 33, "l": loc, "s": sku})
        t_newer.commit()
        older.execute(bump, {"h": 44, "l": loc, "s": sku})
        t_older.commit()
    with engine.connect() as conn, conn.begin():
        fresh = _fresh(conn)
        assert fresh[sku][1][fresh[sku][0].index(loc)] == 44
        assert _viewed(conn, cache) == fresh
    # The same with a transaction in between still running, holding the horizon between the two.
    with engine.connect() as older, engine.connect() as middle, engine.connect() as newer:
        t_older, t_middle, t_newer = older.begin(), middle.begin(), newer.begin()
        ids = [c.execute(xid).scalar_one() for c in (older, middle, newer)]
        assert ids == sorted(ids)
        newer.execute(bump, {"h": 11, "l": loc, "s": sku})
        t_newer.commit()
        older.execute(bump, {"h": 22, "l": loc, "s": sku})  # after `newer` committed: the newest change
        t_older.commit()
        for _ in range(2):  # `middle` still running: `newer`'s change is above the horizon
            with engine.connect() as conn, conn.begin():
                fresh = _fresh(conn)
                assert loc in fresh[sku][0] and fresh[sku][1][fresh[sku][0].index(loc)] == 22
                assert _viewed(conn, cache) == fresh
        t_middle.rollback()
    with engine.connect() as conn, conn.begin():
        assert _viewed(conn, cache) == _fresh(conn)
    # Logged with figures (not read again): the log says what each change left.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT atp FROM orders_stock_changes WHERE location_id = :l AND sku = :s "
                                 "ORDER BY id DESC LIMIT 2"), {"l": loc, "s": sku}).scalars().all() == [22, 11]


def test_a_refresh_takes_the_newest_logged_figure_of_rows_changed_only_by_ended_transactions() -> None:
    """`holders.sort_changes`: which rows a refresh reads again. One worker's own batches, ended, are
    read from the log (the server's other transactions can hold the horizon back, so the test of the
    whole refresh above cannot count its reads)."""
    a, b, c = (1, "A"), (2, "A"), (3, "B")
    # Ended transactions only: each row's figure from its newest change, whatever the txids' order.
    cursor, running, known, dirty = holders.sort_changes(
        [(10, 5, *a, 7), (11, 4, *b, 3), (12, 3, *a, 9), (12, 6, *c, -2)], 20, (0, 0), set())
    assert (cursor, running, known, dirty) == ((12, 6), set(), {a: 7, b: 3, c: 0}, set())
    # A change above the horizon (committed while an older transaction runs, or this one's own):
    # its row is read again, now and at the next refresh; the cursor stays below it.
    cursor, running, known, dirty = holders.sort_changes(
        [(10, 5, *a, 7), (30, 2, *a, 1), (30, 3, *b, 4)], 20, (0, 0), set())
    assert (cursor, running, known, dirty) == ((10, 5), {a, b}, {}, {a, b})
    cursor, running, known, dirty = holders.sort_changes([(30, 2, *a, 1), (30, 3, *b, 4)], 40, cursor, running)
    assert (cursor, running, known, dirty) == ((30, 3), set(), {}, {a, b})
    # Logged before migration 0020 (no figure): read again.
    assert holders.sort_changes([(10, 5, *a, None), (10, 6, *b, 2)], 20, (0, 0), set())[2:] == ({b: 2}, {a})


def test_after_each_batch_the_view_is_a_plain_reads(engine: Engine) -> None:
    """The rows a batch reserved are logged with what they have left: the next refresh takes them
    from the log (or reads them again, if the server's other transactions held the horizon back),
    and sees what a plain read sees."""
    _pg(engine)
    rng = random.Random(6)
    _grid(engine, rng, boxes=False)
    holders.forget()
    orders = _orders(30, rng, prefix="P")
    for first in range(0, 30, 5):
        with write_transaction(engine) as conn:
            batch.intake_batch(conn, orders[first:first + 5], actor="test")
        with engine.connect() as conn, conn.begin():
            cache = holders.holders(conn)
            assert cache is not None
            assert _viewed(conn, cache) == _fresh(conn)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders_reservations")).scalar_one() > 0
