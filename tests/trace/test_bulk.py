"""Bulk commissioning (COPY on PostgreSQL from `events.COPY_FROM` units, executemany below and on
SQLite): the same validation and the same idempotency either way."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access.service import InputError, write_session
from cloud.models import Region, Store
from cloud.trace import service
from cloud.trace.events import COPY_FROM, EPCS, UNITS
from cloud.trace.verify import location_for_store

GTIN = "09506000134352"


def _store(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        store = Store(code="st1", name="One", region=Region(code="east", name="East"), lat=31.2, lon=121.5,
                      timezone="Asia/Shanghai")
        s.add(store)
        s.flush()
        location_for_store(s.connection(), store.id)


def _csv(serials: range, batch: str = "L1") -> str:
    return "gtin,serial,batch,expiry,location\n" + "".join(f"{GTIN},S{i},{batch},2031-12-31,st1\n" for i in serials)


@pytest.mark.parametrize(("units", "again"), [(COPY_FROM - 1, 20), (COPY_FROM + 100, 20), (COPY_FROM + 100, COPY_FROM + 20)])
def test_commissioning_twice_stores_each_unit_once(engine: Engine, units: int, again: int) -> None:
    """`again` units from the 10 last ones of the first file: a bulk one (PostgreSQL's COPY straight
    into the table fails on the 10, and the units go through the scratch table instead)."""
    _store(engine)
    with write_session(engine) as s, s.begin():
        assert service.commission_csv(s.connection(), _csv(range(units)), "t", datetime.now(UTC)) == units
    # Again, overlapping, with another batch: the units already commissioned keep their first batch.
    with write_session(engine) as s, s.begin():
        service.commission_csv(s.connection(), _csv(range(units - 10, units - 10 + again), batch="L2"), "t",
                               datetime.now(UTC))
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(UNITS)).scalar() == units - 10 + again
        rows = c.execute(sa.select(UNITS.c.serial, UNITS.c.batch, UNITS.c.expiry, UNITS.c.state, UNITS.c.seen_at)
                         .where(UNITS.c.serial.in_([f"S{units - 1}", f"S{units}"])).order_by(UNITS.c.serial)).all()
        assert [(r.serial, r.batch, r.expiry, r.state) for r in rows] == [
            (f"S{units - 1}", "L1", date(2031, 12, 31), "commissioned"), (f"S{units}", "L2", date(2031, 12, 31), "commissioned")]
        assert rows[0].seen_at is not None and rows[0].seen_at.tzinfo is not None
        epcs = c.execute(sa.select(EPCS.c.epc).where(EPCS.c.epc == f"https://id.gs1.org/01/{GTIN}/21/S{units - 1}")).all()
        assert len(epcs) == 2  # named by both commissioning events (the journey shows both)


def test_a_bad_line_refuses_the_whole_file(engine: Engine) -> None:
    _store(engine)
    text = _csv(range(COPY_FROM + 5)) + f"{GTIN},bad serial,L1,2031-12-31,st1\n"
    with write_session(engine) as s, s.begin(), pytest.raises(InputError, match=f"line {COPY_FROM + 7}"):
        service.commission_csv(s.connection(), text, "t", datetime.now(UTC))
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(UNITS)).scalar() == 0


@pytest.mark.parametrize(("batch", "why"), [
    ("L" * 21, "batch must be 1-20 characters, got 21"),
    ("批次1", "Batch '批次1': expected GS1 character set 82"),
    ("L 1", "Batch 'L 1': expected GS1 character set 82"),
])
def test_a_batch_that_is_no_ai_10_value_is_refused_naming_the_line(engine: Engine, batch: str, why: str) -> None:
    """The batch is printed as AI (10), with a serial's rules: one a code cannot carry is refused
    with its line, before anything is stored (it used to be stored, or to fail the insert)."""
    _store(engine)
    text = _csv(range(3)) + f"{GTIN},S9,{batch},2031-12-31,st1\n"
    with write_session(engine) as s, s.begin(), pytest.raises(InputError) as refused:
        service.commission_csv(s.connection(), text, "t", datetime.now(UTC))
    assert refused.value.message == f"line 5: {why}"
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(UNITS)).scalar() == 0
