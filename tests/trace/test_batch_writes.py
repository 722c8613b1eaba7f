"""How a batch's verdicts are written (`hotsql.InsertRows` / `UpdateRows`): a fixed number of
statements on PostgreSQL too, every row matched back to its scan when a batch spans several
INSERTs, and a value too long for its column refused as the single-row statements refused it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from broker.payloads import ScanPurpose, VerdictClass
from cloud.access.service import write_session
from cloud.trace import hotsql
from cloud.trace.events import UNITS
from cloud.trace.models import Alert, Scan
from cloud.trace.rules import TraceRules
from cloud.trace.verify import ScanIn, verify_many
from tests.cloud.conftest import db_url, engine  # noqa: F401 - fixtures
from tests.trace.test_batch import T0, code, places  # noqa: F401 - fixture

SCANS = Scan.__table__
ALERTS = Alert.__table__


def scans(loc: int, serials: list[str], purpose: ScanPurpose = ScanPurpose.VERIFY,
          station: str = "till-1") -> list[ScanIn]:
    return [ScanIn(code=code(x), station=station, purpose=purpose, at=T0, msg_id=uuid.uuid4(), node="n1",
                   location_id=loc, position=(1, i)) for i, x in enumerate(serials)]


@pytest.fixture
def statements(places: tuple[Engine, int, int]) -> Iterator[list[str]]:  # noqa: F811
    """The statements psycopg sends (an executemany counts once per row: the server runs each)."""
    eng = places[0]
    if eng.dialect.name != "postgresql":
        pytest.skip("SQLite's are counted in test_batch.py")
    import psycopg

    seen: list[str] = []
    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def one(cur: Any, query: Any, *a: Any, **k: Any) -> Any:
        seen.append(" ".join(str(query).split()[:3]))
        return execute(cur, query, *a, **k)

    def many(cur: Any, query: Any, params: Any, *a: Any, **k: Any) -> Any:
        params = list(params)
        seen.extend([" ".join(str(query).split()[:3])] * len(params))
        return executemany(cur, query, params, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(psycopg.Cursor, "execute", one)
        mp.setattr(psycopg.Cursor, "executemany", many)
        yield seen


def test_a_batch_is_a_few_statements_on_postgresql_too(places: tuple[Engine, int, int],  # noqa: F811
                                                         statements: list[str]) -> None:
    eng, loc, _b = places
    with write_session(eng) as s, s.begin():
        verify_many(s.connection(), scans(loc, ["A1"]), TraceRules(), T0)  # the location is read once, then cached
    for batch, purpose in ((["A2", "A3", "A4", "A5", "B1", "B2", "B3", "B4"], ScanPurpose.VERIFY),
                           (["B5", "A6x", "B9"], ScanPurpose.SELL)):
        statements.clear()
        with write_session(eng) as s, s.begin():
            verify_many(s.connection(), scans(loc, batch, purpose), TraceRules(), T0)
        writes = [q for q in statements if not q.startswith(("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"))]
        # The scans and their units' changes (all alike in each batch) are one statement: an INSERT
        # of the scans with the UPDATE of their units in a `WITH`.
        expected = ["SELECT trace_units.id, trace_units.gtin,", "WITH s AS"]
        if purpose is ScanPurpose.SELL:
            expected += ["INSERT INTO trace_events", "INSERT INTO trace_event_epcs", "INSERT INTO trace_alerts"]
        assert writes == expected, writes


def test_each_unit_points_at_its_own_last_scan_of_the_batch(places: tuple[Engine, int, int]) -> None:  # noqa: F811
    """Units that all change alike are written with their scans in one statement on PostgreSQL:
    each unit takes the id of its own last scan (A1 is scanned twice), and its new state."""
    eng, loc, _b = places
    with write_session(eng) as s, s.begin():
        verdicts = verify_many(s.connection(), scans(loc, ["A1", "A2"], ScanPurpose.SELL), TraceRules(), T0)
        assert [v.data.verdict for v in verdicts] == [VerdictClass.GENUINE, VerdictClass.GENUINE]
    with write_session(eng) as s, s.begin():
        verdicts = verify_many(s.connection(), scans(loc, ["A1", "A4", "A1"]), TraceRules(), T0)
    with eng.connect() as c:
        units = {r.serial: (r.state, r.last_scan_id, r.seen_location_id)
                 for r in c.execute(sa.select(UNITS).where(UNITS.c.serial.in_(["A1", "A2", "A4"])))}
        stored = {r.id: r.msg_id for r in c.execute(sa.select(SCANS.c.id, SCANS.c.msg_id))}
    assert units["A1"] == ("sold", verdicts[2].scan_row, loc)
    assert units["A4"] == ("received", verdicts[1].scan_row, loc)
    assert units["A2"][0] == "sold" and units["A2"][1] not in {v.scan_row for v in verdicts}
    assert [stored[v.scan_row] for v in verdicts] == [v.data.scan_id for v in verdicts]


def test_a_batch_over_several_inserts_matches_every_row_to_its_scan(places: tuple[Engine, int, int],  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    eng, loc, _b = places
    monkeypatch.setattr(hotsql, "_ROWS_PER_INSERT", 3)
    batch = scans(loc, ["A1", "A2", "A3", "A4", "A5", "A6x", "A7x", "B1"], ScanPurpose.SELL)
    with write_session(eng) as s, s.begin():
        verdicts = verify_many(s.connection(), batch, TraceRules(), T0)
    with eng.connect() as c:
        stored = {r.id: (r.msg_id, r.verdict) for r in c.execute(sa.select(SCANS.c.id, SCANS.c.msg_id, SCANS.c.verdict))}
        alerted = {r.scan_id for r in c.execute(sa.select(ALERTS.c.scan_id).where(ALERTS.c.kind == "unknown_code"))}
    assert [stored[v.scan_row] for v in verdicts] == [(scan.msg_id, v.data.verdict.value)
                                                      for scan, v in zip(batch, verdicts, strict=True)]
    unknown = {v.scan_row for v in verdicts if v.data.verdict is VerdictClass.UNKNOWN_CODE}
    assert len(unknown) == 2 and alerted == unknown


def test_a_value_too_long_for_its_column_is_refused_not_cut(places: tuple[Engine, int, int]) -> None:  # noqa: F811
    """The arrays are cast without a length: a cast to varchar(200) would cut a longer station name
    silently, where the column (and the single-row INSERT before) refuses it."""
    eng, loc, _b = places
    if eng.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce a string's length")
    import psycopg

    with pytest.raises(psycopg.errors.StringDataRightTruncation, match="too long"), write_session(eng) as s, \
            s.begin():
        verify_many(s.connection(), scans(loc, ["A1"], station="t" * 201), TraceRules(), T0)
