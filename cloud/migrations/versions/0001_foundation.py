"""Foundation: regions, stores, nodes, the ingest ledger, rejected messages, products.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the id type of this revision (SQLite auto-numbers only INTEGER primary keys).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "regions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_regions"),
        sa.UniqueConstraint("code", name="uq_regions_code"),
    )
    op.create_table(
        "stores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region_id", sa.Integer(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stores"),
        sa.ForeignKeyConstraint(["region_id"], ["regions.id"], name="fk_stores_region_id_regions"),
        sa.UniqueConstraint("code", name="uq_stores_code"),
    )
    op.create_index("ix_stores_region_id", "stores", ["region_id"])
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=True),
        sa.Column("online", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=True),
        sa.Column("software_version", sa.String(200), nullable=True),
        sa.Column("config_hash", sa.String(128), nullable=True),
        sa.Column("devices", sa.JSON(), nullable=True),
        sa.Column("last_seen", UtcDateTime(), nullable=True),
        sa.Column("last_birth_at", UtcDateTime(), nullable=True),
        sa.Column("last_death_at", UtcDateTime(), nullable=True),
        sa.Column("seq_contig", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("seq_high", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("gap_since", UtcDateTime(), nullable=True),
        sa.Column("last_rebirth_at", UtcDateTime(), nullable=True),
        sa.Column("lost_seqs", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], name="fk_nodes_store_id_stores"),
    )
    op.create_index("ix_nodes_store_id", "nodes", ["store_id"])
    op.create_table(
        "ingested_messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("msg_id", sa.Uuid(), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("historical", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("corr", sa.Uuid(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ingested_messages"),
        sa.UniqueConstraint("msg_id", name="uq_ingested_messages_msg_id"),
    )
    op.create_index("ix_ingested_messages_node_seq", "ingested_messages", ["node", "seq"])
    op.create_table(
        "rejected_messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("topic", sa.String(1024), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_messages"),
    )
    op.create_index("ix_rejected_messages_received_at", "rejected_messages", ["received_at"])
    op.create_index("ix_rejected_messages_reason", "rejected_messages", ["reason"])
    op.create_table(
        "products",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("gtin", sa.String(14), nullable=True),
        sa.Column("name_en", sa.String(200), nullable=False),
        sa.Column("name_zh", sa.String(200), nullable=False),
        sa.Column("list_price", sa.Numeric(12, 2), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_products"),
        sa.UniqueConstraint("sku", name="uq_products_sku"),
    )


def downgrade() -> None:
    op.drop_table("products")
    op.drop_index("ix_rejected_messages_reason", table_name="rejected_messages")
    op.drop_index("ix_rejected_messages_received_at", table_name="rejected_messages")
    op.drop_table("rejected_messages")
    op.drop_index("ix_ingested_messages_node_seq", table_name="ingested_messages")
    op.drop_table("ingested_messages")
    op.drop_index("ix_nodes_store_id", table_name="nodes")
    op.drop_table("nodes")
    op.drop_index("ix_stores_region_id", table_name="stores")
    op.drop_table("stores")
    op.drop_table("regions")
