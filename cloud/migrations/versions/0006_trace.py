"""Traceability (cloud.trace): locations, units, cases, EPCIS events, captures, scans, recalls,
alerts, registrations; the downlink's `corr` (a command that answers a message names it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible = True
"""An expand step: new tables and one new nullable column."""

_TABLES = ("trace_locations", "trace_units", "trace_cases", "trace_captures", "trace_events", "trace_event_epcs",
           "trace_scans", "trace_recalls", "trace_alerts", "trace_registrations")


def upgrade() -> None:
    # The tables as the models declare them at this revision (written out by hand would be 200
    # lines repeating cloud/trace/models.py; a later change to them gets its own migration).
    from cloud.models import Base
    from cloud.trace import models  # noqa: F401

    bind = op.get_bind()
    Base.metadata.create_all(bind, tables=[Base.metadata.tables[t] for t in _TABLES])
    with op.batch_alter_table("downlink") as batch:
        batch.add_column(sa.Column("corr", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("downlink") as batch:
        batch.drop_column("corr")
    for table in reversed(_TABLES):
        op.drop_table(table)
