"""What one verification costs the database, counted at the driver (SQLite's trace callback sees
every statement, those SQLAlchemy runs and those `hotsql.Prepared` runs on the cursor): a
regression that adds a query per scan fails here, not months later in a benchmark."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session

from broker.payloads import ScanPurpose, VerdictClass, VerdictRule
from cloud.access.service import write_session
from cloud.db import make_engine, migrate
from cloud.models import Region, Store
from cloud.trace import service
from cloud.trace.events import UNITS
from cloud.trace.rules import TraceRules
from cloud.trace.verify import ScanIn, Verdict, location_for_store, verify

GTIN = "09506000134352"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Engine, int]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'trace.db'}")
    migrate(engine)
    with Session(engine) as s, s.begin():
        store = Store(code="st1", name="One", region=Region(code="east", name="East"), lat=31.2, lon=121.5,
                      timezone="Asia/Shanghai")
        s.add(store)
        s.flush()
        loc = location_for_store(s.connection(), store.id)
        assert loc is not None
    csv = "gtin,serial,batch,expiry,location\n" + "".join(f"{GTIN},S{i},L1,2031-12-31,st1\n" for i in range(5))
    with write_session(engine) as s, s.begin():
        service.commission_csv(s.connection(), csv, "test", datetime.now(UTC))
    with engine.begin() as c:
        c.execute(sa.update(UNITS).values(state="received", received_at_store=True, location_id=loc,
                                          seen_location_id=loc, seen_at=datetime.now(UTC) - timedelta(days=1)))
    try:
        yield engine, loc
    finally:
        engine.dispose()


def _counted(engine: Engine, loc: int, serial: str, purpose: ScanPurpose, station: str = "till-1",
             ) -> tuple[Verdict, list[str], int]:
    """The verdict, the statements the driver ran for it, and those SQLAlchemy itself executed."""
    seen: list[str] = []
    through_sqlalchemy: list[str] = []

    def count(_conn: Connection, _cursor: object, statement: str, *_a: object) -> None:
        through_sqlalchemy.append(statement)

    with write_session(engine) as s, s.begin():
        conn = s.connection()
        raw = conn.connection.driver_connection
        assert raw is not None
        event.listen(engine, "before_cursor_execute", count)
        raw.set_trace_callback(seen.append)
        try:
            verdict = verify(conn, ScanIn(code=f"]d201{GTIN}17311231" f"10L1\x1d21{serial}", station=station,
                                          purpose=purpose, at=datetime.now(UTC), msg_id=uuid.uuid4(), node="n1",
                                          location_id=loc), TraceRules(), datetime.now(UTC))
        finally:
            raw.set_trace_callback(None)
            event.remove(engine, "before_cursor_execute", count)
    return verdict, [" ".join(q.split()[:3]) for q in seen], len(through_sqlalchemy)


def test_a_genuine_verification_is_three_statements(world: tuple[Engine, int]) -> None:
    engine, loc = world
    _counted(engine, loc, "S0", ScanPurpose.VERIFY)  # the location is read once, then cached
    verdict, statements, via_sqlalchemy = _counted(engine, loc, "S1", ScanPurpose.VERIFY)
    assert (verdict.data.verdict, verdict.data.rule) == (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT)
    assert statements == ["SELECT trace_units.id, trace_units.gtin,", "INSERT INTO trace_scans",
                          "UPDATE trace_units SET"], statements
    assert via_sqlalchemy == 0


def test_a_repeat_scan_reads_its_first_scan_with_the_unit(world: tuple[Engine, int]) -> None:
    engine, loc = world
    _counted(engine, loc, "S2", ScanPurpose.VERIFY)
    verdict, statements, _n = _counted(engine, loc, "S2", ScanPurpose.VERIFY)
    assert verdict.data.rule is VerdictRule.DUPLICATE_SCAN
    assert len(statements) == 3, statements


def test_a_sale_adds_its_event_and_nothing_else(world: tuple[Engine, int]) -> None:
    engine, loc = world
    _counted(engine, loc, "S0", ScanPurpose.VERIFY)
    verdict, statements, _n = _counted(engine, loc, "S3", ScanPurpose.SELL)
    assert verdict.data.verdict is VerdictClass.GENUINE
    assert statements == ["SELECT trace_units.id, trace_units.gtin,", "INSERT INTO trace_scans",
                          "UPDATE trace_units SET", "INSERT INTO trace_events", "INSERT INTO trace_event_epcs"], statements


def test_a_batch_recall_costs_one_more_read_only_when_it_fires(world: tuple[Engine, int]) -> None:
    engine, loc = world
    _counted(engine, loc, "S0", ScanPurpose.VERIFY)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO trace_recalls (gtin, batch, serial, reason, actor, created_at) "
                          "VALUES (:g, 'L1', NULL, 'mould', 't', '2026-01-01 00:00:00')"), {"g": GTIN})
    verdict, statements, _n = _counted(engine, loc, "S4", ScanPurpose.VERIFY)
    assert verdict.data.rule is VerdictRule.BATCH_RECALLED and "mould" in verdict.data.message
    assert len(statements) == 4, statements
