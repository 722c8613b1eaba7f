"""Engine seam: handler failures, durable downlink, follower cursors, ingest hardening, catalogue epoch.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the id type of this revision (SQLite auto-numbers only INTEGER primary keys).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("rebirths", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("gap_abandoned_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("retired_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("devices_session", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("devices_seq", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("ingested_messages") as batch:
        batch.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # The id of the storing transaction, for followers that read in commit order (cloud.bus.followers).
        op.execute("ALTER TABLE ingested_messages ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)")
    op.create_index("ix_ingested_messages_txid_id", "ingested_messages", ["txid", "id"])

    with op.batch_alter_table("rejected_messages") as batch:
        batch.add_column(sa.Column("node", sa.String(63), nullable=True))
    op.create_index("ix_rejected_messages_node", "rejected_messages", ["node"])

    op.create_table(
        "failed_messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("msg_id", sa.Uuid(), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("handler", sa.String(200), nullable=False),
        sa.Column("error", sa.String(500), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("first_failed_at", UtcDateTime(), nullable=False),
        sa.Column("last_failed_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("resolved_at", UtcDateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(108), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_failed_messages"),
        sa.UniqueConstraint("msg_id", "engine", "handler", name="uq_failed_messages_msg_id_engine_handler"),
    )
    op.create_index("ix_failed_messages_node", "failed_messages", ["node"])
    op.create_index("ix_failed_messages_status", "failed_messages", ["status"])

    op.create_table(
        "downlink",
        sa.Column("id", BigId, nullable=False),
        sa.Column("msg_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(200), nullable=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("retain", sa.Boolean(), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_sent_at", UtcDateTime(), nullable=True),
        sa.Column("acked_at", UtcDateTime(), nullable=True),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_downlink"),
        sa.UniqueConstraint("msg_id", name="uq_downlink_msg_id"),
        sa.UniqueConstraint("key", name="uq_downlink_key"),
    )
    op.create_index("ix_downlink_due", "downlink", ["status", "next_attempt_at"])
    op.create_index("ix_downlink_node_type", "downlink", ["node", "type", "status"])

    op.create_table(
        "follower_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("processed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_follower_cursors"),
    )

    epoch = op.create_table(
        "catalogue_epoch",
        sa.Column("epoch", sa.String(32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", name="pk_catalogue_epoch"),
    )
    # This database's catalogue identity: a copy of the database (a backup, a move to another
    # server) keeps it, a new database gets its own.
    op.bulk_insert(epoch, [{"epoch": uuid.uuid4().hex, "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("catalogue_epoch")
    op.drop_table("follower_cursors")
    op.drop_table("downlink")
    op.drop_table("failed_messages")
    op.drop_index("ix_rejected_messages_node", "rejected_messages")
    with op.batch_alter_table("rejected_messages") as batch:
        batch.drop_column("node")
    op.drop_index("ix_ingested_messages_txid_id", "ingested_messages")
    with op.batch_alter_table("ingested_messages") as batch:
        batch.drop_column("txid")
    with op.batch_alter_table("nodes") as batch:
        for col in ("devices_seq", "devices_session", "retired_at", "gap_abandoned_at", "rebirths"):
            batch.drop_column(col)
