"""Provisioning: enrolment tokens, box identities (broker credentials), config pushes, node tags.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_enrol_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("used_at", UtcDateTime(), nullable=True),
        sa.Column("used_serial", sa.String(64), nullable=True),
        sa.Column("node_id", sa.String(63), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], name="fk_fleet_enrol_tokens_store_id_stores"),
        sa.PrimaryKeyConstraint("id", name="pk_fleet_enrol_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_fleet_enrol_tokens_token_hash"),
    )
    op.create_index("ix_fleet_enrol_tokens_store_id", "fleet_enrol_tokens", ["store_id"])
    op.create_table(
        "fleet_identities",
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("broker_synced", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("credential_version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("enrolled_at", UtcDateTime(), nullable=False),
        sa.Column("enrolled_by", sa.String(200), nullable=False),
        sa.Column("first_birth_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_reason", sa.String(500), nullable=True),
        sa.Column("retired_at", UtcDateTime(), nullable=True),
        sa.Column("pending_password", sa.String(100), nullable=True),
        sa.Column("pending_command_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_fleet_identities_node_id_nodes"),
        sa.ForeignKeyConstraint(["token_id"], ["fleet_enrol_tokens.id"], name="fk_fleet_identities_token_id_fleet_enrol_tokens"),
        sa.PrimaryKeyConstraint("node_id", name="pk_fleet_identities"),
    )
    op.create_index("ix_fleet_identities_serial", "fleet_identities", ["serial"])
    op.create_table(
        "fleet_config_pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=False),
        sa.Column("batch", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("field", sa.String(200), nullable=True),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.Column("command_id", sa.String(36), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fleet_config_pushes"),
    )
    op.create_index("ix_fleet_config_pushes_node_id", "fleet_config_pushes", ["node_id"])
    op.create_index("ix_fleet_config_pushes_batch", "fleet_config_pushes", ["batch"])
    op.create_index("ix_fleet_config_pushes_command_id", "fleet_config_pushes", ["command_id"])
    op.create_table(
        "fleet_node_config",
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("desired_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("desired_hash", sa.String(128), nullable=True),
        sa.Column("applied_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_rollback_at", UtcDateTime(), nullable=True),
        sa.Column("last_rollback_version", sa.Integer(), nullable=True),
        sa.Column("last_rollback_reason", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_fleet_node_config_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", name="pk_fleet_node_config"),
    )


    op.create_table(
        "fleet_node_tags",
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("tag", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_fleet_node_tags_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", "tag", name="pk_fleet_node_tags"),
    )
    op.create_index("ix_fleet_node_tags_tag", "fleet_node_tags", ["tag"])


def downgrade() -> None:
    op.drop_index("ix_fleet_node_tags_tag", "fleet_node_tags")
    op.drop_table("fleet_node_tags")
    op.drop_table("fleet_node_config")
    op.drop_index("ix_fleet_config_pushes_command_id", "fleet_config_pushes")
    op.drop_index("ix_fleet_config_pushes_batch", "fleet_config_pushes")
    op.drop_index("ix_fleet_config_pushes_node_id", "fleet_config_pushes")
    op.drop_table("fleet_config_pushes")
    op.drop_index("ix_fleet_identities_serial", "fleet_identities")
    op.drop_table("fleet_identities")
    op.drop_index("ix_fleet_enrol_tokens_store_id", "fleet_enrol_tokens")
    op.drop_table("fleet_enrol_tokens")
