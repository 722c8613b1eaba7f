"""Staff: clerks of each store (PIN hashes only) and each store's roster version.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""New tables only: software of 0012 runs on this schema unchanged."""


def upgrade() -> None:
    op.create_table(
        "staff_clerks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("staff_number", sa.String(32), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("pin_hash", sa.String(200), nullable=False),
        sa.Column("pin_set_at", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], name="fk_staff_clerks_store_id_stores"),
        sa.PrimaryKeyConstraint("id", name="pk_staff_clerks"),
        sa.UniqueConstraint("store_id", "staff_number", name="uq_staff_clerks_store_id_staff_number"),
    )
    op.create_index("ix_staff_clerks_store_id", "staff_clerks", ["store_id"])
    op.create_table(
        "staff_rosters",
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], name="fk_staff_rosters_store_id_stores"),
        sa.PrimaryKeyConstraint("store_id", name="pk_staff_rosters"),
    )


def downgrade() -> None:
    op.drop_table("staff_rosters")
    op.drop_index("ix_staff_clerks_store_id", table_name="staff_clerks")
    op.drop_table("staff_clerks")
