"""Property tests (hypothesis) of the routing decision and of reservations in the database."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cloud.db import make_engine, migrate, write_transaction
from cloud.orders import service
from cloud.orders.candidates import _may_fill
from cloud.orders.geo import great_circle_km
from cloud.orders.routing import EXPLAIN_MAX, Candidate, OrderIn, _first_cover, plan, round_km
from cloud.orders.rules import Filter, FilterField, Op, Rule
from tests.orders.conftest import order, seed, stock

SKUS = ("A", "B", "C")

locations = st.lists(
    st.tuples(st.floats(30.0, 32.0), st.floats(120.0, 122.0), st.dictionaries(st.sampled_from(SKUS), st.integers(0, 6)),
              st.sampled_from(["store", "warehouse"]), st.sampled_from(["east", "south"])),
    min_size=1, max_size=6,
)
orders = st.tuples(
    st.floats(30.0, 32.0), st.floats(120.0, 122.0),
    st.dictionaries(st.sampled_from(SKUS), st.integers(1, 6), min_size=1),
)
filters = st.lists(st.one_of(
    st.builds(Filter, field=st.just(FilterField.DISTANCE_KM), op=st.just(Op.LE), value=st.floats(5, 300)),
    st.builds(Filter, field=st.just(FilterField.KIND), op=st.just(Op.EQ), value=st.sampled_from(["store", "warehouse"])),
    st.builds(Filter, field=st.just(FilterField.REGION), op=st.just(Op.IN), value=st.just(["east"])),
    st.builds(Filter, field=st.just(FilterField.AVAILABLE_STOCK), op=st.just(Op.GE), value=st.integers(0, 4)),
), max_size=2)


def _cands(locs: list[tuple[float, float, dict[str, int], str, str]]) -> list[Candidate]:
    return [Candidate(id=i + 1, code=f"L{i + 1}", kind=k, region=r, lat=la, lon=lo, atp=atp)
            for i, (la, lo, atp, k, r) in enumerate(locs)]


def _passes(o: OrderIn, c: Candidate, fs: list[Filter]) -> bool:
    dist = great_circle_km(o.lat or 0, o.lon or 0, c.lat, c.lon)
    for f in fs:
        actual = {FilterField.DISTANCE_KM: dist, FilterField.KIND: c.kind, FilterField.REGION: c.region,
                  FilterField.AVAILABLE_STOCK: min(c.atp.get(s, 0) for s, _ in o.lines)}[f.field]
        if not f.test(actual):
            return False
    return True


def _covers(o: OrderIn, group: tuple[Candidate, ...]) -> bool:
    return all(sum(c.atp.get(s, 0) for c in group) >= q for s, q in o.lines)


@settings(max_examples=300, deadline=None)
@given(locations, orders, filters, st.sampled_from(["single", "partial"]))
def test_plan_never_over_allocates_and_honours_every_filter(locs, o_, fs, mode) -> None:
    cands = _cands(locs)
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    p = plan(o, cands, Rule(name="r", filters=tuple(fs), assignment=mode, max_locations=6))
    by_id = {c.id: c for c in cands}
    if p.filled:
        got: dict[str, int] = {}
        for loc, lines in p.allocation.items():
            assert _passes(o, by_id[loc], fs)
            for sku, qty in lines:
                assert 0 < qty <= by_id[loc].atp.get(sku, 0)
                got[sku] = got.get(sku, 0) + qty
        assert got == dict(o.lines)
    else:
        eligible = [c for c in cands if _passes(o, c, fs)]
        assert not _covers(o, tuple(eligible)) or mode == "single"
        if mode == "single":
            assert not any(_covers(o, (c,)) for c in eligible)


@settings(max_examples=300, deadline=None)
@given(locations, orders, filters)
def test_single_picks_the_nearest_eligible_location(locs, o_, fs) -> None:
    cands = _cands(locs)
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    p = plan(o, cands, Rule(name="r", filters=tuple(fs), assignment="single"))
    eligible = [c for c in cands if _passes(o, c, fs) and _covers(o, (c,))]
    if not eligible:
        assert not p.filled
        return
    [chosen] = p.allocation
    best = min(great_circle_km(o.lat or 0, o.lon or 0, c.lat, c.lon) for c in eligible)
    chosen_c = next(c for c in cands if c.id == chosen)
    # Routing compares distances in whole metres: two places less than a metre apart are a tie.
    assert abs(great_circle_km(o.lat or 0, o.lon or 0, chosen_c.lat, chosen_c.lon) - best) < 1e-3


@settings(max_examples=300, deadline=None)
@given(locations, orders)
def test_partial_uses_the_fewest_locations_it_can(locs, o_) -> None:
    cands = _cands(locs)
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    p = plan(o, cands, Rule(name="r", assignment="partial", max_locations=6))
    useful = [c for c in cands if any(c.atp.get(s, 0) > 0 for s, _ in o.lines)]
    fewest = next((k for k in range(1, len(useful) + 1)
                   if any(_covers(o, g) for g in itertools.combinations(useful, k))), None)
    if fewest is None:
        assert not p.filled
    else:
        assert len(p.allocation) == fewest


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 4).flatmap(lambda width: st.tuples(
    st.lists(st.lists(st.integers(0, 4), min_size=width, max_size=width), max_size=14),
    st.lists(st.integers(1, 6), min_size=width, max_size=width))), st.integers(1, 4))
def test_the_first_cover_is_the_first_combination_that_covers(rows_need, k) -> None:
    """The vectorised search returns what walking `itertools.combinations` returns (a partial plan
    takes the first covering combination, so which one is found decides the allocation)."""
    rows, need = rows_need
    atp = np.array(rows, dtype=np.int64).reshape(len(rows), len(need))
    want = np.array(need, dtype=np.int64)
    first = next((c for c in itertools.combinations(range(len(rows)), k)
                  if bool((atp[list(c)].sum(axis=0) >= want).all())), None)
    assert _first_cover(atp, want, k) == first


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["TEA-1", "RICE-1"]), st.integers(1, 4), min_size=1),
                min_size=1, max_size=12),
       st.dictionaries(st.sampled_from(["sta", "stb", "stc"]), st.integers(0, 5)))
def test_routing_orders_in_the_database_never_reserves_more_than_available(tmp_path: Path, batch, levels) -> None:
    db = tmp_path / f"p{abs(hash((str(batch), str(levels))))}.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        migrate(engine)
        seed(engine)
        for code, n in levels.items():
            stock(engine, code, {"TEA-1": n, "RICE-1": n}, safety=1)
        for i, lines in enumerate(batch):
            with write_transaction(engine) as conn:
                service.intake(conn, order(f"P{i}", sorted(lines.items())), actor="test")
        with engine.connect() as conn:
            assert service.oversold(conn) == 0
            states = set(conn.execute(select(service.ORDERS.c.state)).scalars())
        assert states <= {"routed", "unfulfillable"}
    finally:
        engine.dispose()
        service.invalidate_locations()


def _shown_eagerly(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an explanation kept when every candidate's row was built (before `Plan.shown`)."""
    if len(cands) <= EXPLAIN_MAX:
        return cands
    ranked = sorted(cands, key=lambda c: (not c.get("chosen"), c.get("distance_km") or 0.0))
    kept, rest = ranked[:EXPLAIN_MAX], ranked[EXPLAIN_MAX:]
    reasons: dict[str, int] = {}
    for c in rest:
        reason = str(c.get("dropped", "")).split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    summary = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return [*kept, {"code": f"(+{len(rest)} more)", "distance_km": None, "stock": {}, "dropped": summary}]


@settings(max_examples=150, deadline=None)
@given(st.lists(locations.filter(bool), min_size=4, max_size=12).map(lambda ls: [x for xs in ls for x in xs]),
       orders, filters, st.sampled_from(["single", "partial"]))
def test_the_explanation_shows_what_building_every_row_showed(locs, o_, fs, mode) -> None:
    """Rows are built only for the candidates an explanation keeps: the same rows, chosen first then
    the nearest, the rest counted by reason."""
    cands = _cands(locs)
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    p = plan(o, cands, Rule(name="r", filters=tuple(fs), assignment=mode, max_locations=3))
    assert p.considered == len(cands) == len(p.candidates)
    assert all(("chosen" in c) != ("dropped" in c) for c in p.candidates)
    assert p.shown() == _shown_eagerly(p.candidates)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 20040.0), st.integers(0, 20_040_000).map(lambda m: (m + 0.5) / 1000)),
                max_size=80))
def test_distances_are_rounded_as_round_rounds_them(km: list[float]) -> None:
    """`round_km` (numpy, but for the few near a half metre) gives `round(d, 3)` of each, to the bit."""
    got = round_km(np.array(km, dtype=float))
    assert [x.hex() for x in got] == [round(d, 3).hex() for d in km]


@settings(max_examples=200, deadline=None)
@given(st.lists(locations.filter(bool), min_size=1, max_size=12).map(lambda ls: [x for xs in ls for x in xs]),
       orders, st.sampled_from(["single", "partial"]), st.booleans())
def test_plan_told_which_candidates_to_look_at_plans_the_same(locs, o_, mode, sparse) -> None:
    """With the positions of the candidates holding some of the order (as a pool gives them), the
    others' rows built at once: the same plan and explanation as looking at each."""
    cands = _cands([(la, lo, atp if not sparse or i % 3 == 0 else {}, k, r)
                    for i, (la, lo, atp, k, r) in enumerate(locs)])
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    rule = Rule(name="r", assignment=mode, max_locations=3)
    special = [n for n, c in enumerate(cands) if c.atp]
    each, told = plan(o, cands, rule), plan(o, cands, rule, None, special)
    assert (told.allocation, told.note, told.considered) == (each.allocation, each.note, each.considered)
    assert told.candidates == each.candidates and told.shown() == each.shown()


@settings(max_examples=300, deadline=None)
@given(st.lists(locations.filter(bool), min_size=1, max_size=8).map(lambda ls: [x for xs in ls for x in xs]),
       orders, st.sampled_from(["single", "partial"]), st.integers(1, 4))
def test_a_pass_skipped_as_unable_to_fill_could_not_have_filled(locs, o_, mode, most) -> None:
    """`_may_fill` says no only where `plan` fills nothing (that pass is then not planned at all)."""
    cands = _cands(locs)
    o = OrderIn(id=1, channel="web", fulfilment="delivery", lines=tuple(sorted(o_[2].items())), lat=o_[0], lon=o_[1])
    rule = Rule(name="r", assignment=mode, max_locations=most)
    if not _may_fill(o, cands, rule):
        assert not plan(o, cands, rule).filled
