"""Trace: what a bulk commissioning pays the database per code, made cheaper.

A CSV commissioning writes one index row per code (`trace_event_epcs`) and one unit row
(`trace_units`). On PostgreSQL the foreign key from an index row to its event was checked row by
row (a trigger per row: half of the index rows' COPY); every one of those rows is written by
`cloud.trace.events` right after its event, in the same transaction, and events are never deleted,
so the key guarded nothing the code does not. The units' index on `parent` (the case a unit is
packed in) held every unit, packed or not; it now holds the packed ones only (every query of it
names a case, which implies `parent IS NOT NULL`, so both databases still use it).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""A constraint dropped and an index narrowed: software of 0015 runs on this schema unchanged."""

_FK = "fk_trace_event_epcs_event_id_trace_events"
_PACKED = sa.text("parent IS NOT NULL")


def upgrade() -> None:
    # SQLite: batch mode copies the table (its rows kept) without the constraint.
    with op.batch_alter_table("trace_event_epcs") as batch:
        batch.drop_constraint(_FK, type_="foreignkey")
    with op.batch_alter_table("trace_units") as batch:
        batch.drop_index("ix_trace_units_parent")
        batch.create_index("ix_trace_units_parent", ["parent"], postgresql_where=_PACKED, sqlite_where=_PACKED)


def downgrade() -> None:
    with op.batch_alter_table("trace_units") as batch:
        batch.drop_index("ix_trace_units_parent")
        batch.create_index("ix_trace_units_parent", ["parent"])
    with op.batch_alter_table("trace_event_epcs") as batch:
        batch.create_foreign_key(_FK, "trace_events", ["event_id"], ["id"])
