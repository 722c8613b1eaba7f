"""Clerk attribution: who scanned (trace scans) and a clerk's stock adjustments (reason, who, note, ref).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""Nullable columns only: software of 0014 runs on this schema unchanged (it leaves them null)."""


def upgrade() -> None:
    with op.batch_alter_table("trace_scans") as batch:
        batch.add_column(sa.Column("clerk_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("clerk_name", sa.String(200), nullable=True))
    with op.batch_alter_table("orders_movements") as batch:
        batch.add_column(sa.Column("reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("clerk_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("clerk_name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("note", sa.String(200), nullable=True))
        batch.add_column(sa.Column("ref", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders_movements") as batch:
        for name in ("ref", "note", "clerk_name", "clerk_id", "reason"):
            batch.drop_column(name)
    with op.batch_alter_table("trace_scans") as batch:
        batch.drop_column("clerk_name")
        batch.drop_column("clerk_id")
