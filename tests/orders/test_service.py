"""Intake, the state machine, routing with reservations, store steps, rejection, expiry, cancel."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from broker.envelope import MessageType
from broker.payloads import FulfilData, FulfilStatus
from cloud.bus import Context, Message
from cloud.db import write_transaction
from cloud.models import DownlinkCommand
from cloud.orders import handlers, service
from tests.orders.conftest import NOW, order, seed, stock


def _get(engine: Engine, order_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        from cloud.access.scope import Scope

        return service.get_order(conn, Scope(all=True), order_id)


def _intake(engine: Engine, o: service.OrderInput, **kw: object) -> service.IntakeResult:
    with write_transaction(engine) as conn:
        return service.intake(conn, o, actor="test", now=NOW, **kw)  # type: ignore[arg-type]


def _step(engine: Engine, order_id: int, status: FulfilStatus, node: str | None, seq: int, **kw: Any) -> str:
    with write_transaction(engine) as conn:
        return service.apply_fulfil(conn, FulfilData(order_id=str(order_id), status=status, **kw), actor=f"bus:{node}",
                                    node=node, pos=(1, seq) if node else None, now=NOW)


def test_routes_to_the_nearest_location_with_stock_and_reserves(engine: Engine) -> None:
    seed(engine)
    stock(engine, "sta", {"TEA-1": 5})
    stock(engine, "stb", {"TEA-1": 1})
    stock(engine, "stc", {"TEA-1": 9})
    r = _intake(engine, order("W1", [("TEA-1", 2)]))
    assert r.created and r.state == "routed"
    got = _get(engine, r.id)
    # stb is nearest but has 1 of 2: sta (next nearest) takes it whole.
    assert [(a["location"], a["lines"]) for a in got["assignments"]] == [("sta", [["TEA-1", 2]])]
    cands = {c["code"]: c for c in got["decisions"][0]["explanation"]["rules"][0]["candidates"]}
    assert cands["stb"]["dropped"] == "not enough stock: TEA-1 needs 2, has 1"
    assert cands["sta"]["chosen"] and cands["stb"]["distance_km"] < cands["sta"]["distance_km"]
    with engine.connect() as conn:
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (15, 2)}
        cmd = conn.execute(select(DownlinkCommand.__table__)).one()
    assert (cmd.node, cmd.type, cmd.data["assignment"], cmd.data["action"]) == ("sta-k1", "assign",
                                                                                got["assignments"][0]["id"], "assign")
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed"]


def test_same_channel_order_twice_is_stored_once(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 5})
    first = _intake(engine, order("DUP", [("TEA-1", 1)]))
    again = _intake(engine, order("DUP", [("TEA-1", 1)]))
    assert (again.id, again.created, first.created) == (first.id, False, True)
    with engine.connect() as conn:
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (5, 1)}
        assert conn.execute(select(service.ORDERS.c.id)).scalars().all() == [first.id]


REFUSALS = [
    ({"lines": [("NOPE-9", 1)]}, service.Refusal.UNKNOWN_SKU, "unknown SKU NOPE-9: not in the catalogue"),
    ({"lat": None}, service.Refusal.NO_COORDINATES, "a delivery address needs lat and lon (geocoding is not done here)"),
    ({"lines": [("TEA-1", 0)]}, service.Refusal.BAD_QUANTITY, "line 1 (TEA-1): quantity 0 must be 1..10000"),
    ({"lines": [("TEA-1", -2)]}, service.Refusal.BAD_QUANTITY, "line 1 (TEA-1): quantity -2 must be 1..10000"),
    ({"fulfilment": "pickup", "pickup_store": "zz9"}, service.Refusal.UNKNOWN_STORE,
     "pickup store 'zz9' is not a known location"),
]


@pytest.mark.parametrize(("change", "reason", "detail"), REFUSALS)
def test_each_bad_order_is_refused_with_its_reason(engine: Engine, change: dict[str, Any], reason: service.Refusal,
                                                    detail: str) -> None:
    seed(engine)
    change = dict(change)
    lines = change.pop("lines", [("TEA-1", 1)])
    with pytest.raises(service.Refused) as exc:
        _intake(engine, order("BAD", lines, **change))
    assert (exc.value.reason, exc.value.detail) == (reason, detail)


def test_full_store_flow_with_implied_steps_and_order_safety(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    r = _intake(engine, order("FLOW", [("TEA-1", 2)]))
    aid = _get(engine, r.id)["assignments"][0]["id"]
    # `picking` (seq 11) arrives before `accepted` (seq 10): accepted is implied, the late one ignored.
    assert _step(engine, r.id, FulfilStatus.PICKING, "stb-k1", 11, assignment=aid) == "picking"
    assert _step(engine, r.id, FulfilStatus.ACCEPTED, "stb-k1", 10, assignment=aid) == "picking"
    assert _step(engine, r.id, FulfilStatus.PACKED, "stb-k1", 12, assignment=aid) == "packed"
    assert _step(engine, r.id, FulfilStatus.SHIPPED, "stb-k1", 13, assignment=aid, carrier="SF",
                 tracking="SF123") == "shipped"
    got = _get(engine, r.id)
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed", "accepted", "picking", "packed", "shipped"]
    assert got["timeline"][2]["reason"] == "implied by picking"
    assert (got["carrier"], got["tracking"]) == ("SF", "SF123")
    with engine.connect() as conn:
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (1, 0)}  # consumed: on hand 3 → 1, nothing reserved


def test_a_store_cannot_act_on_another_stores_assignment(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    r = _intake(engine, order("FOREIGN", [("TEA-1", 1)]))
    with pytest.raises(service.Refused) as exc:
        _step(engine, r.id, FulfilStatus.ACCEPTED, "sta-k1", 5)
    assert exc.value.reason is service.Refusal.CONFLICT


def test_illegal_transition_names_the_current_state(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    r = _intake(engine, order("ILLEGAL", [("TEA-1", 1)]))
    aid = _get(engine, r.id)["assignments"][0]["id"]
    _step(engine, r.id, FulfilStatus.SHIPPED, "stb-k1", 3, assignment=aid)
    with write_transaction(engine) as conn, pytest.raises(service.IllegalTransition) as exc:
        service.cancel(conn, r.id, actor="test", reason="too late")
    assert str(exc.value) == f"order {r.id} is shipped: it cannot be cancelled any more"
    with write_transaction(engine) as conn, pytest.raises(service.IllegalTransition) as exc2:
        service.set_state(conn, r.id, "routed", actor="t", reason="x", now=NOW)
    assert str(exc2.value) == f"order {r.id} is shipped: it cannot become routed (from shipped: delivered)"


def test_rejection_routes_again_excluding_the_store(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    stock(engine, "sta", {"TEA-1": 3})
    r = _intake(engine, order("REJ", [("TEA-1", 2)]))
    first = _get(engine, r.id)["assignments"][0]
    assert first["location"] == "stb"
    assert _step(engine, r.id, FulfilStatus.REJECTED, "stb-k1", 4, assignment=first["id"], note="broken shelf") == "routed"
    got = _get(engine, r.id)
    assert [(a["location"], a["state"]) for a in got["assignments"]] == [("stb", "rejected"), ("sta", "routed")]
    assert [t["to_state"] for t in got["timeline"]] == ["received", "routed", "rejected", "routed"]
    with engine.connect() as conn:
        rows = {(x.location_id, x.sku): x.reserved for x in conn.execute(select(service.STOCK))}
        assert sorted(rows.values()) == [0, 2]


def test_expired_reservation_is_released_the_box_told_and_the_order_routed_again(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    stock(engine, "stc", {"TEA-1": 3})
    r = _intake(engine, order("EXP", [("TEA-1", 1)]))
    with write_transaction(engine) as conn:
        assert service.expire_due(conn, NOW + timedelta(minutes=29)) == 0
        assert service.expire_due(conn, NOW + timedelta(minutes=31)) == 1
    got = _get(engine, r.id)
    assert [(a["location"], a["state"]) for a in got["assignments"]] == [("stb", "expired"), ("stc", "routed")]
    with engine.connect() as conn:
        cmds = [(c.node, c.data["action"]) for c in conn.execute(select(DownlinkCommand.__table__).order_by(DownlinkCommand.id))]
    assert cmds == [("stb-k1", "assign"), ("stb-k1", "withdraw"), ("stc-k1", "assign")]


def test_pickup_goes_to_the_chosen_store_and_needs_the_code_over_rest(engine: Engine) -> None:
    seed(engine)
    stock(engine, "sta", {"SOY-1": 2})
    stock(engine, "stb", {"SOY-1": 2})
    r = _intake(engine, order("PU", [("SOY-1", 1)], fulfilment="pickup", pickup_store="sta", lat=None, lon=None))
    assert r.pickup_code is not None and len(r.pickup_code) == 6
    got = _get(engine, r.id)
    assert [a["location"] for a in got["assignments"]] == ["sta"]
    aid = got["assignments"][0]["id"]
    _step(engine, r.id, FulfilStatus.READY, "sta-k1", 2, assignment=aid)
    with write_transaction(engine) as conn, pytest.raises(service.Refused, match="pickup code does not match"):
        service.apply_fulfil(conn, FulfilData(order_id=str(r.id), status=FulfilStatus.PICKED_UP, assignment=aid),
                             actor="user:x", node=None, pickup_code="000000" if r.pickup_code != "000000" else "1")
    with write_transaction(engine) as conn:
        state = service.apply_fulfil(conn, FulfilData(order_id=str(r.id), status=FulfilStatus.PICKED_UP, assignment=aid),
                                     actor="user:x", node=None, pickup_code=r.pickup_code)
    assert state == "picked_up"


def test_outside_every_delivery_zone_is_unfulfillable_with_that_reason(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    with write_transaction(engine) as conn:
        for code in ("sta", "stb", "stc"):
            conn.execute(service.LOCS.update().where(service.LOCS.c.code == code).values(zone_radius_km=1.0))
    service.invalidate_locations()
    r = _intake(engine, order("ZONE", [("TEA-1", 1)], lat=31.30, lon=121.60))
    got = _get(engine, r.id)
    assert got["state"] == "unfulfillable"
    assert got["timeline"][-1]["reason"] == "the address is outside every delivery zone"


def test_held_by_a_check_then_approved(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 300})
    with write_transaction(engine) as conn:
        service.save_rules(conn, {"checks": [{"name": "big", "amount_over": 500}],
                                  "groups": [{"name": "all", "rules": [{"name": "nearest"}]}]}, actor="test")
    r = _intake(engine, order("BIG", [("TEA-1", 60)]))
    assert r.state == "held"
    with engine.connect() as conn:
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (300, 0)}
    with write_transaction(engine) as conn:
        assert service.approve(conn, r.id, actor="user:boss") == "routed"
    assert [t["actor"] for t in _get(engine, r.id)["timeline"]] == ["test", "system:checks", "user:boss"]


def test_cancel_releases_and_withdraws(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    r = _intake(engine, order("CAN", [("TEA-1", 2)]))
    with write_transaction(engine) as conn:
        service.cancel(conn, r.id, actor="user:cc", reason="customer called")
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (3, 0)}
        actions = [c.data["action"] for c in conn.execute(select(DownlinkCommand.__table__).order_by(DownlinkCommand.id))]
    assert actions == ["assign", "withdraw"]


def test_stock_snapshot_never_overwritten_by_an_older_message(engine: Engine) -> None:
    from cloud.orders.stock import LevelIn, apply_levels

    seed(engine)
    with write_transaction(engine) as conn:
        loc = service.location_id(conn, "sta")
        apply_levels(conn, loc, [LevelIn("TEA-1", 7), LevelIn("RICE-1", 4)], source="m2", now=NOW, pos=(2, 5),
                     snapshot=True)
        apply_levels(conn, loc, [LevelIn("TEA-1", 1)], source="m1", now=NOW, pos=(2, 4), snapshot=True)
        apply_levels(conn, loc, [LevelIn("TEA-1", 9)], source="m3", now=NOW, pos=(2, 6), snapshot=True)
        rows = {r.sku: r.on_hand for r in conn.execute(select(service.STOCK))}
    assert rows == {"TEA-1": 9, "RICE-1": 0}


def test_store_deltas_and_levels_in_any_order_give_the_same_count(engine: Engine) -> None:
    """A snapshot (seq 5: 10), a sale (seq 6: -1) and goods in (seq 7: +4) give 13 whatever order the
    workers handle them in; a delta older than the snapshot is already in it."""
    import itertools

    from cloud.orders.stock import LevelIn, apply_deltas, apply_levels

    seed(engine)
    steps = [("level", (1, 5), 10), ("delta", (1, 6), -1), ("delta", (1, 7), 4)]
    for i, order_ in enumerate(itertools.permutations(steps)):
        sku = f"S{i}"
        with write_transaction(engine) as conn:
            loc = service.location_id(conn, "sta")
            for kind, pos, n in order_:
                if kind == "level":
                    apply_levels(conn, loc, [LevelIn(sku, n)], source="t", now=NOW, pos=pos)
                else:
                    apply_deltas(conn, loc, [(sku, n, "sale")], source="t", now=NOW, pos=pos)
            apply_deltas(conn, loc, [(sku, -3, "sale")], source="t", now=NOW, pos=(1, 4))  # older than the level
            got = conn.execute(select(service.STOCK.c.on_hand).where(service.STOCK.c.sku == sku)).scalar_one()
        assert got == 13, order_


def test_a_merge_check_sends_a_second_order_out_with_the_first(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3, "SOY-1": 2})
    stock(engine, "sta", {"SOY-1": 9})
    with write_transaction(engine) as conn:
        service.save_rules(conn, {"checks": [{"name": "same parcel", "action": "merge", "window_minutes": 60}],
                                  "groups": [{"name": "all", "rules": [{"name": "nearest"}]}]}, actor="test")
    first = _intake(engine, order("M1", [("TEA-1", 1)], customer="c-7", address="Nanjing Rd 1"))
    # The second order's coordinates are sta's: alone it would go there (the control, another customer).
    second = _intake(engine, order("M2", [("SOY-1", 1)], customer="c-7", address="Nanjing Rd 1", lat=31.2304,
                                   lon=121.4737))
    other = _intake(engine, order("M3", [("SOY-1", 1)], customer="c-8", address="Nanjing Rd 1", lat=31.2304,
                                  lon=121.4737))
    got, control = _get(engine, second.id), _get(engine, other.id)
    assert [a["location"] for a in _get(engine, first.id)["assignments"]] == ["stb"]
    assert [a["location"] for a in got["assignments"]] == ["stb"]
    assert got["decisions"][-1]["rule"] == f"merge with order {first.id}"
    assert [a["location"] for a in control["assignments"]] == ["sta"]  # nearest to that point, no merge


def test_a_refused_store_step_is_kept_and_applied_once_when_replayed_after_a_fix(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 3})
    r = _intake(engine, order("REPLAY", [("TEA-1", 1)]))
    with engine.connect() as conn:
        aid = conn.execute(select(service.ASSIGN.c.id).where(service.ASSIGN.c.order_id == r.id)).scalar_one()
    step = FulfilData(order_id=str(r.id), status=FulfilStatus.ACCEPTED, assignment=aid + 100)  # a stale assignment id
    msg = Message(msg_id=uuid.uuid4(), node="stb-k1", type=MessageType.FULFIL, session=1, seq=5, ts=NOW,
                  received_at=NOW, historical=False, corr=None, data=step)
    with write_transaction(engine) as conn:
        handlers.on_fulfil(Context(conn, "orders", NOW), msg)
    with engine.connect() as conn:
        [item] = service.inbox(conn)
    assert (item["source"], item["reason"]) == ("fulfil", "conflict")
    assert item["detail"] == f"order {r.id} has no assignment {aid + 100} for stb-k1"
    kept = json.loads(item["raw"])
    assert (kept["node"], kept["position"], kept["msg_id"]) == ("stb-k1", [1, 5], str(msg.msg_id))
    # Replayed as it is: refused again, still open, nothing applied.
    with write_transaction(engine) as conn, pytest.raises(service.Refused, match="has no assignment"):
        service.replay_inbox(conn, item["id"], actor="user:ops")
    assert _get(engine, r.id)["state"] == "routed"
    # Fixed (the right assignment) and replayed: applied as the box sent it, once.
    kept["fulfil"]["assignment"] = aid
    with write_transaction(engine) as conn:
        done = service.replay_inbox(conn, item["id"], actor="user:ops", body=json.dumps(kept))
    assert (done.id, done.state) == (r.id, "accepted")
    with write_transaction(engine) as conn, pytest.raises(service.IllegalTransition, match="only open items"):
        service.replay_inbox(conn, item["id"], actor="user:ops", body=json.dumps(kept))
    got = _get(engine, r.id)
    assert [t["to_state"] for t in got["timeline"]].count("accepted") == 1
    assert got["timeline"][-1]["actor"] == f"user:ops (replay of inbox item {item['id']})"
    with engine.connect() as conn:
        assert service.inbox(conn, status="replayed")[0]["order_id"] == r.id
        pos = conn.execute(select(service.ASSIGN.c.pos_session, service.ASSIGN.c.pos_seq)
                           .where(service.ASSIGN.c.id == aid)).one()
    assert tuple(pos) == (1, 5)  # order-safe: a later step of the box still compares against it
