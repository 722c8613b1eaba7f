"""Orders: the versions in-process caches check (the location index), and the transaction id of
each stock movement so that the ATP feed reads movements in commit order from a durable cursor.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""A new table and a nullable column with a default: software of 0009 runs on this schema unchanged."""


def upgrade() -> None:
    op.create_table(
        "orders_versions",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orders_versions")),
    )
    op.bulk_insert(sa.table("orders_versions", sa.column("name", sa.String), sa.column("version", sa.BigInteger)),
                   [{"name": "locations", "version": 1}])
    with op.batch_alter_table("orders_movements") as batch:
        batch.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # As the ledger's (0004): read in commit order by (txid, id) up to the oldest running transaction.
        op.execute("ALTER TABLE orders_movements ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)")
    op.create_index("ix_orders_movements_txid_id", "orders_movements", ["txid", "id"])


def downgrade() -> None:
    op.drop_index("ix_orders_movements_txid_id", "orders_movements")
    with op.batch_alter_table("orders_movements") as batch:
        batch.drop_column("txid")
    op.drop_table("orders_versions")
