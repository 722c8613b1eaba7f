"""The set-based verification of a bus batch (`verify_many`, the trace engine's `Handler.batch`)
gives the same verdicts, effects and alerts as verifying the same scans one by one, in a fixed
number of statements, and a batch that fails falls back to the per-message handler without losing
a scan."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import ScanData, ScanPurpose, VerdictClass, VerdictRule
from cloud.access.service import write_session
from cloud.bus import Message
from cloud.bus.dispatch import Call, run_calls
from cloud.db import write_transaction
from cloud.models import FailedMessage, Node, Region, Store
from cloud.trace import handlers, service
from cloud.trace.events import EVENTS, UNITS
from cloud.trace.models import Alert, Scan
from cloud.trace.rules import TraceRules
from cloud.trace.verify import ScanIn, Verdict, location_for_store, verify, verify_many
from tests.cloud.conftest import db_url, engine  # noqa: F401 - fixtures

GTIN = "09506000134352"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def code(serial: str, batch: str = "L1", expiry: str = "311231") -> str:
    return f"]d201{GTIN}17{expiry}10{batch}\x1d21{serial}"


@pytest.fixture
def places(engine: Engine) -> Iterator[tuple[Engine, int, int]]:  # noqa: F811
    """Store A in Shanghai (node n1) and store B in Guangzhou (node n2), 1,200 km apart; units
    A*/B* (the same scenario twice: one set verified one by one, the other in a batch) received
    at A a day before."""
    with Session(engine) as s, s.begin():
        east = Region(code="east", name="East")
        a = Store(code="sa", name="Shanghai", region=east, lat=31.2, lon=121.5, timezone="Asia/Shanghai")
        b = Store(code="sb", name="Guangzhou", region=east, lat=23.13, lon=113.26, timezone="Asia/Shanghai")
        s.add_all([a, b, Node(id="n1", store=a), Node(id="n2", store=b)])
        s.flush()
        loc_a, loc_b = location_for_store(s.connection(), a.id), location_for_store(s.connection(), b.id)
        assert loc_a is not None and loc_b is not None
    special = {6: "L9,2031-12-31", 7: "L1,2020-01-01"}  # a recalled batch, an expired unit
    rows = [f"{GTIN},{p}{i},{special.get(i, 'L1,2031-12-31')},sa" for p in "AB" for i in range(1, 10)]
    with write_session(engine) as s, s.begin():
        service.commission_csv(s.connection(), "gtin,serial,batch,expiry,location\n" + "\n".join(rows) + "\n", "t", T0)
    with engine.begin() as c:
        c.execute(sa.update(UNITS).values(state="received", received_at_store=True, location_id=loc_a,
                                          seen_location_id=loc_a, seen_at=T0 - timedelta(days=1)))
        c.execute(sa.text("INSERT INTO trace_recalls (gtin, batch, serial, reason, actor, created_at) "
                          "VALUES (:g, 'L9', NULL, 'mould', 't', :at)"), {"g": GTIN, "at": T0})
    yield engine, loc_a, loc_b


def scenario(p: str, loc_a: int, loc_b: int) -> list[ScanIn]:
    """Every rule, and scans of one unit that depend on each other, in the boxes' order."""
    steps: list[tuple[str, str, ScanPurpose, str, dict[str, Any]]] = [
        ("n1", code(f"{p}1"), ScanPurpose.SELL, "till-1", {}),
        ("n1", code(f"{p}1"), ScanPurpose.VERIFY, "till-1", {}),  # sold a moment ago: already_sold
        ("n1", code(f"{p}2"), ScanPurpose.SELL, "till-1", {}),
        ("n1", code(f"{p}2"), ScanPurpose.SELL, "till-1", {}),  # a double scan: answered like the first
        ("n1", code(f"{p}3"), ScanPurpose.SELL, "till-2", {}),
        ("n1", code(f"{p}3"), ScanPurpose.UNDO, "till-2", {}),
        ("n1", code(f"{p}3"), ScanPurpose.SELL, "till-3", {}),  # sold again after the undo: genuine
        ("n1", code(f"{p}4"), ScanPurpose.RETURN, "till-1", {}),  # never sold
        ("n1", code(f"{p}5"), ScanPurpose.VERIFY, "till-1", {}),
        ("n2", code(f"{p}5"), ScanPurpose.VERIFY, "till-9", {}),  # 1,200 km in a second: cloned
        ("n1", code(f"{p}6", "L9"), ScanPurpose.SELL, "till-1", {}),  # batch recalled
        ("n1", code(f"{p}7", expiry="200101"), ScanPurpose.VERIFY, "till-1", {}),  # expired
        ("n1", code(f"{p}8", "L2"), ScanPurpose.VERIFY, "till-1", {}),  # printed batch differs
        ("n1", code(f"{p}99999"), ScanPurpose.VERIFY, "till-1", {}),  # never commissioned
        ("n1", "]d201" + GTIN[:-1] + "5" + "21X", ScanPurpose.VERIFY, "till-1", {}),  # check digit wrong
        ("n1", code(f"{p}9"), ScanPurpose.VERIFY, "till-1", {"provisional": VerdictClass.EXPIRED}),  # overturned
        ("n1", code(f"{p}9"), ScanPurpose.SELL, "till-4", {}),
        ("n1", code(f"{p}9"), ScanPurpose.RETURN, "till-4", {}),
    ]
    locs = {"n1": loc_a, "n2": loc_b}
    return [ScanIn(code=c, station=st, purpose=pur, at=T0 + timedelta(seconds=i), msg_id=uuid.uuid4(), node=node,
                   location_id=locs[node], position=(1, i + 1), **kw)
            for i, (node, c, pur, st, kw) in enumerate(steps)]


def outcome(eng: Engine, p: str, verdicts: list[Verdict]) -> dict[str, Any]:
    """What a scenario left, with its units' serials made comparable."""
    def plain(text: str) -> str:
        return re.sub(rf"\b{p}(\d)", r"X\1", text)

    with eng.connect() as c:
        units = {plain(r.serial): (r.state, r.sold_at, r.sold_node, r.sold_seq, r.seen_location_id, r.seen_at,
                                   r.location_id) for r in c.execute(sa.select(UNITS).where(UNITS.c.serial.like(f"{p}%")))}
        alerts = Counter((r.kind, plain(r.serial or "")) for r in c.execute(
            sa.select(Alert.__table__).where(Alert.__table__.c.serial.like(f"{p}%") | Alert.__table__.c.serial.is_(None))))
        steps = Counter(r.biz_step for r in c.execute(sa.select(EVENTS).where(EVENTS.c.doc["epcList"].as_string()
                                                                             .like(f"%{p}%"))))
        last = {plain(r.serial): r.verdict for r in c.execute(
            sa.select(UNITS.c.serial, Scan.__table__.c.verdict).join(Scan.__table__, Scan.__table__.c.id == UNITS.c.last_scan_id)
            .where(UNITS.c.serial.like(f"{p}%")))}
    return {"verdicts": [(v.data.verdict, v.data.rule, plain(v.data.message)) for v in verdicts], "units": units,
            "alerts": alerts, "events": steps, "last": last}


def test_a_batch_decides_like_one_scan_at_a_time(places: tuple[Engine, int, int]) -> None:
    eng, loc_a, loc_b = places
    rules, now = TraceRules(), T0 + timedelta(minutes=1)
    with write_session(eng) as s, s.begin():
        one = [verify(s.connection(), scan, rules, now) for scan in scenario("A", loc_a, loc_b)]
    batch = scenario("B", loc_a, loc_b)
    # The box's outbox resent an older scan late: it arrives after a newer one of the same unit.
    arrival = [*batch]
    arrival[0], arrival[1] = batch[1], batch[0]
    with write_session(eng) as s, s.begin():
        many = verify_many(s.connection(), arrival, rules, now)
    assert [v.data.scan_id for v in many] == [s.msg_id for s in arrival]  # answers in the order asked
    by_id = {v.data.scan_id: v for v in many}
    many = [by_id[s.msg_id] for s in batch]
    expected, got = outcome(eng, "A", one), outcome(eng, "B", many)
    assert [(c, r) for c, r, _m in expected["verdicts"]] == [
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.ALREADY_SOLD, VerdictRule.SOLD_BEFORE),
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.GENUINE, VerdictRule.DUPLICATE_SCAN),
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.GENUINE, VerdictRule.RETURN_ACCEPTED),
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.NOT_FOR_SALE_HERE, VerdictRule.NEVER_RECEIVED),
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.CLONED, VerdictRule.IMPOSSIBLE_TRAVEL),
        (VerdictClass.RECALLED, VerdictRule.BATCH_RECALLED), (VerdictClass.EXPIRED, VerdictRule.EXPIRY_PASSED),
        (VerdictClass.BATCH_OR_EXPIRY_MISMATCH, VerdictRule.ATTRIBUTES_DIFFER),
        (VerdictClass.UNKNOWN_CODE, VerdictRule.NEVER_COMMISSIONED), (VerdictClass.MALFORMED, VerdictRule.PARSE_ERROR),
        (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT), (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT),
        (VerdictClass.GENUINE, VerdictRule.RETURN_ACCEPTED),
    ], expected["verdicts"]  # the reference itself covers every rule
    for key in expected:
        assert got[key] == expected[key], key


def test_a_batch_stores_each_evidence_as_its_json_byte_for_byte(places: tuple[Engine, int, int]) -> None:
    """The batch encodes a scan's evidence itself (the place's brief once per batch): the stored text
    is `json.dumps` of the verdict's evidence, as the single-scan path stores it through the column."""
    eng, loc_a, loc_b = places
    rules, now = TraceRules(), T0 + timedelta(minutes=1)
    with write_session(eng) as s, s.begin():
        one = [verify(s.connection(), scan, rules, now) for scan in scenario("A", loc_a, loc_b)]
    nowhere = [ScanIn(code=c, station="api", purpose=ScanPurpose.VERIFY, at=T0 + timedelta(seconds=30, microseconds=m),
                      msg_id=uuid.uuid4(), location_id=None) for c, m in ((code("B1"), 5), ("09506000134352", 0))]
    with write_session(eng) as s, s.begin():
        many = verify_many(s.connection(), [*scenario("B", loc_a, loc_b), *nowhere], rules, now)
    alone = []  # batches of one (plain values rather than arrays on PostgreSQL)
    for k, serial in enumerate(["B1", "B2", "B5", "B7", "Z9"]):
        scan = ScanIn(code=code(serial), station="till-4", purpose=ScanPurpose.VERIFY, msg_id=uuid.uuid4(),
                      at=T0 + timedelta(minutes=2, seconds=k), node="n1", location_id=loc_a, position=(2, k))
        with write_session(eng) as s, s.begin():
            alone += verify_many(s.connection(), [scan], rules, now)
    scans = Scan.__table__
    with eng.connect() as c:
        stored: dict[int, str] = dict(c.execute(sa.select(scans.c.id, sa.cast(scans.c.evidence, sa.Text))).all())
    for v in [*one, *many, *alone]:
        assert stored[v.scan_row] == json.dumps(v.data.evidence), v.data.rule
    assert [json.loads(stored[v.scan_row])["location"] for v in many[-2:]] == [None, None]
    assert many[-1].data.verdict is VerdictClass.UNTRACKED and many[-2].data.evidence["scanned_at"].endswith(".000005+00:00")


def test_a_batch_costs_the_same_few_statements_however_many_scans(places: tuple[Engine, int, int]) -> None:
    eng, loc_a, _b = places
    if eng.dialect.name != "sqlite":
        pytest.skip("counted with SQLite's trace callback")

    def counted(scans: list[ScanIn]) -> list[str]:
        seen: list[str] = []
        with write_session(eng) as s, s.begin():
            conn = s.connection()
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.set_trace_callback(seen.append)
            try:
                verify_many(conn, scans, TraceRules(), T0)
            finally:
                raw.set_trace_callback(None)
        # An executemany shows once per row at the driver: one statement each run of them.
        heads = [" ".join(q.split()[:3]) for q in seen]
        return [q for i, q in enumerate(heads) if i == 0 or heads[i - 1] != q]

    def verifying(serials: list[str], purpose: ScanPurpose = ScanPurpose.VERIFY) -> list[ScanIn]:
        return [ScanIn(code=code(x), station="till-1", purpose=purpose, at=T0, msg_id=uuid.uuid4(), node="n1",
                       location_id=loc_a, position=(1, i)) for i, x in enumerate(serials)]

    counted(verifying(["A1"]))  # the location is read once, then cached
    two = counted(verifying(["A2", "A3"]))
    eight = counted(verifying(["B1", "B2", "B3", "B4", "B5", "B8", "B9", "A4"]))
    assert two == ["SELECT trace_units.id, trace_units.gtin,", "INSERT INTO trace_scans", "UPDATE trace_units SET"], two
    assert eight == two, eight
    sales = counted(verifying(["A5", "A6x", "B5"], ScanPurpose.SELL))
    assert sales == [*two, "INSERT INTO trace_events", "INSERT INTO trace_event_epcs", "INSERT INTO trace_alerts"], sales


def test_the_batch_read_probes_the_unit_index(places: tuple[Engine, int, int]) -> None:
    """Nothing scans the units table, however many keys a batch reads."""
    eng, _a, _b = places
    from cloud.trace.verify import _UNITS_BY_KEYS

    with eng.connect() as c:
        stmt = _UNITS_BY_KEYS[eng.dialect.name]
        sql = stmt._prepared(c).sql
        if eng.dialect.name == "sqlite":
            plan = " | ".join(str(r[-1]) for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ('[["1","a"]]',)))
            assert "SEARCH trace_units USING INDEX" in plan and "SCAN trace_units" not in plan, plan
        else:
            c.exec_driver_sql("SET enable_seqscan = off")  # the table is tiny: ask what it can do
            plan = " | ".join(r[0] for r in c.exec_driver_sql(
                "EXPLAIN " + sql, {"gtins": [GTIN], "serials": ["A1"]}))
            assert "Index" in plan and "Seq Scan on trace_units" not in plan, plan


def test_a_failing_batch_falls_back_to_one_scan_at_a_time(places: tuple[Engine, int, int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-based call raises (a bug): every scan still gets its verdict through `on_scan`, and
    the one that fails alone there is in the failed list, its effects rolled back."""
    eng, _a, _b = places
    real = verify

    def broken_batch(*_a: object) -> list[Verdict]:
        raise RuntimeError("a bug in the batch path")

    def picky(conn: Connection, scan: ScanIn, *rest: Any) -> Verdict:
        if scan.code == code("A3"):
            raise RuntimeError("a bug with this one scan")
        return real(conn, scan, *rest)

    monkeypatch.setattr(handlers, "verify_many", broken_batch)
    monkeypatch.setattr(handlers, "verify", picky)
    msgs = [Message(uuid.uuid4(), "n1", MessageType.SCAN, 1, i, T0, T0, False, None,
                    ScanData(code=code(f"A{i}"), station="till-1")) for i in range(1, 5)]
    call = Call("trace", "cloud.trace.handlers.on_scan", handlers.on_scan, many=handlers.on_scans)
    with write_transaction(eng) as conn:
        failures = run_calls(conn, [(call, m) for m in msgs], T0)
    assert failures == 1
    with eng.connect() as c:
        scans = {r.msg_id: r.verdict for r in c.execute(sa.select(Scan.__table__))}
        failed = [r.msg_id for r in c.execute(sa.select(FailedMessage.__table__))]
    assert failed == [msgs[2].msg_id]
    assert set(scans) == {m.msg_id for m in msgs} - {msgs[2].msg_id}
    assert set(scans.values()) == {"genuine"}


def test_the_handler_runs_the_batch_once_with_every_scan(places: tuple[Engine, int, int]) -> None:
    """Through the dispatcher: one call of `on_scans` for the batch's scans, each answered (a
    `verdict` command whose corr is the scan), a box without a store skipped as `on_scan` does."""
    eng, _a, _b = places
    with Session(eng) as s, s.begin():
        s.add(Node(id="n3"))
    calls: list[int] = []

    def spy(ctx: Any, batch: Any) -> None:
        calls.append(len(batch))
        handlers.on_scans(ctx, batch)

    msgs = [Message(uuid.uuid4(), node, MessageType.SCAN, 1, i, T0, T0, False, None,
                    ScanData(code=code(f"A{i}"), station="till-1")) for i, node in
            enumerate(["n1", "n2", "n3", "n1"], 1)]
    call = Call("trace", "cloud.trace.handlers.on_scan", handlers.on_scan, many=spy)
    with write_transaction(eng) as conn:
        assert run_calls(conn, [(call, m) for m in msgs], T0) == 0
    assert calls == [4]
    with eng.connect() as c:
        corr = {r.corr for r in c.execute(sa.text("SELECT corr FROM downlink WHERE type = 'verdict'"))}
    assert {uuid.UUID(str(x)) for x in corr} == {m.msg_id for m in msgs if m.node != "n3"}



def test_a_batch_writes_back_only_what_its_scans_changed(places: tuple[Engine, int, int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker sells the unit between the batch's read and its write (PostgreSQL: SQLite has
    one writer at a time): the batch's verify scan must not write the unit's old state back."""
    eng, loc_a, _b = places
    if eng.dialect.name != "postgresql":
        pytest.skip("SQLite lets no other writer in during the batch's transaction")
    from cloud.trace import verify as verify_module

    read = verify_module._read_units

    def read_then_sold_elsewhere(conn: Connection, keys: Any) -> Any:
        found = read(conn, keys)
        with eng.begin() as other:
            other.execute(sa.update(UNITS).where(UNITS.c.serial == "A1").values(state="sold", sold_node="n9"))
        return found

    monkeypatch.setattr(verify_module, "_read_units", read_then_sold_elsewhere)
    scan = ScanIn(code=code("A1"), station="till-1", purpose=ScanPurpose.VERIFY, at=T0, msg_id=uuid.uuid4(),
                  node="n1", location_id=loc_a, position=(1, 1))
    with write_session(eng) as s, s.begin():
        [verdict] = verify_many(s.connection(), [scan], TraceRules(), T0)
    assert verdict.data.verdict is VerdictClass.GENUINE  # decided on what it read
    with eng.connect() as c:
        state, sold_node, last = c.execute(sa.select(UNITS.c.state, UNITS.c.sold_node, UNITS.c.last_scan_id)
                                           .where(UNITS.c.serial == "A1")).one()
    assert (state, sold_node, last) == ("sold", "n9", verdict.scan_row)
