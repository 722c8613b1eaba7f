"""Migration 0017 (the units' fillfactor, the scans' unread indexes) down and up again, on SQLite
and PostgreSQL, with a unit and a scan in the tables that both ways keep."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, select, text

from cloud.db import write_transaction
from cloud.trace.events import UNITS
from cloud.trace.models import UNITS_FILLFACTOR
from cloud.trace.verify import SCANS


def _step(engine: Engine, upgrade: bool, revision: str) -> None:
    from alembic import command

    from cloud.db import alembic_config

    cfg = alembic_config()
    with write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        (command.upgrade if upgrade else command.downgrade)(cfg, revision)


def _scan_indexes(engine: Engine) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes("trace_scans") if i["name"]}


def _fillfactor(engine: Engine) -> str | None:
    """The units' fillfactor storage parameter on PostgreSQL (None when unset); SQLite has none."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        options = conn.execute(text("SELECT reloptions FROM pg_class WHERE oid = 'trace_units'::regclass")).scalar()
    found = [o.split("=", 1)[1] for o in options or [] if o.startswith("fillfactor=")]
    return found[0] if found else None


def test_0017_goes_down_and_up_keeping_units_and_scans(engine: Engine) -> None:
    msg_id = uuid.uuid4()
    with write_transaction(engine) as conn:
        conn.execute(UNITS.insert().values(gtin="09506000134352", serial="M1", batch="L1", state="received",
                                           received_at_store=True, recalled=False))
        conn.execute(SCANS.insert().values(msg_id=msg_id, node="st9001-k1", station="till-1", purpose="verify",
                                           code="c", at=datetime.now(UTC), verdict="genuine", rule="commissioned_unit",
                                           message="genuine", evidence={"k": 1}))
    unread = {"ix_trace_scans_node", "ix_trace_scans_at"}
    pg = engine.dialect.name == "postgresql"
    assert not unread & _scan_indexes(engine)
    assert _fillfactor(engine) == (str(UNITS_FILLFACTOR) if pg else None)
    _step(engine, False, "0016")
    assert unread <= _scan_indexes(engine)
    assert _fillfactor(engine) is None
    _step(engine, True, "head")
    assert not unread & _scan_indexes(engine)
    assert _fillfactor(engine) == (str(UNITS_FILLFACTOR) if pg else None)
    with engine.connect() as conn:
        assert conn.execute(select(UNITS.c.serial, UNITS.c.state)).all() == [("M1", "received")]
        assert conn.execute(select(SCANS.c.msg_id, SCANS.c.evidence)).all() == [(msg_id, {"k": 1})]
