"""Signage: media, playlists, campaigns, publications, screens, proof of play (tables prefixed signage_).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# True only for an "expand" step that software of the previous revision runs unchanged against (a
# new table, a nullable column, an index); it lets hosts not yet upgraded keep starting during a
# rolling upgrade. Dropping or renaming anything older code uses is a "contract" step: False.
# See docs/operator.md, "Backup, restore, upgrade".
compatible: bool = True
"""New tables only."""


def upgrade() -> None:
    op.create_table("signage_media",
    sa.Column("sha256", sa.String(length=64), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("kind", sa.String(length=8), nullable=False),
    sa.Column("mime", sa.String(length=64), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("duration_s", sa.Float(), nullable=True),
    sa.Column("thumb_sha256", sa.String(length=64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint("sha256", name=op.f("pk_signage_media"))
    )
    op.create_table("signage_playlists",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("items", sa.JSON(), nullable=False),
    sa.Column("is_default", sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_signage_playlists")),
    sa.UniqueConstraint("name", name=op.f("uq_signage_playlists_name"))
    )
    op.create_table("signage_plays",
    sa.Column("msg_id", sa.String(length=36), nullable=False),
    sa.Column("node", sa.String(length=63), nullable=False),
    sa.Column("screen", sa.String(length=200), nullable=False),
    sa.Column("store_id", sa.Integer(), nullable=True),
    sa.Column("region_id", sa.Integer(), nullable=True),
    sa.Column("campaign", sa.String(length=64), nullable=True),
    sa.Column("media", sa.String(length=64), nullable=False),
    sa.Column("layer", sa.String(length=16), nullable=False),
    sa.Column("schedule_version", sa.Integer(), nullable=True),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("duration_ms", sa.BigInteger(), nullable=False),
    sa.Column("day", sa.String(length=10), nullable=False),
    sa.PrimaryKeyConstraint("msg_id", name=op.f("pk_signage_plays"))
    )
    op.create_index("ix_signage_plays_campaign", "signage_plays", ["campaign"])
    op.create_index("ix_signage_plays_day", "signage_plays", ["day"])
    op.create_index("ix_signage_plays_node_started", "signage_plays", ["node", "started_at"])
    op.create_index("ix_signage_plays_store_id", "signage_plays", ["store_id"])

    op.create_table("signage_plays_dropped",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    sa.Column("node", sa.String(length=63), nullable=False),
    sa.Column("reason", sa.String(length=32), nullable=False),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("last_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_signage_plays_dropped")),
    sa.UniqueConstraint("node", "reason", name=op.f("uq_signage_plays_dropped_node_reason"))
    )
    op.create_table("signage_publications",
    sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.Column("rules", sa.JSON(), nullable=False),
    sa.Column("rules_hash", sa.String(length=64), nullable=False),
    sa.Column("note", sa.Text(), nullable=True),
    sa.Column("rollback_of", sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint("version", name=op.f("pk_signage_publications"))
    )
    op.create_table("signage_campaigns",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("layer", sa.String(length=16), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("playlist_id", sa.Integer(), nullable=False),
    sa.Column("start_date", sa.Date(), nullable=True),
    sa.Column("end_date", sa.Date(), nullable=True),
    sa.Column("dayparts", sa.JSON(), nullable=False),
    sa.Column("regions", sa.JSON(), nullable=False),
    sa.Column("stores", sa.JSON(), nullable=False),
    sa.Column("tags", sa.JSON(), nullable=False),
    sa.Column("sov_s", sa.Integer(), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(["playlist_id"], ["signage_playlists.id"], name=op.f("fk_signage_campaigns_playlist_id_signage_playlists")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_signage_campaigns"))
    )
    op.create_index("ix_signage_campaigns_playlist_id", "signage_campaigns", ["playlist_id"])

    op.create_table("signage_screens",
    sa.Column("node", sa.String(length=63), nullable=False),
    sa.Column("screen", sa.String(length=200), nullable=False),
    sa.Column("tags", sa.JSON(), nullable=False),
    sa.Column("sent_version", sa.Integer(), nullable=True),
    sa.Column("sent_hash", sa.String(length=32), nullable=True),
    sa.Column("sent_from", UtcDateTime(), nullable=True),
    sa.Column("sent_msg_id", sa.String(length=36), nullable=True),
    sa.Column("playing_version", sa.Integer(), nullable=True),
    sa.Column("playing_hash", sa.String(length=32), nullable=True),
    sa.Column("playing_since", UtcDateTime(), nullable=True),
    sa.Column("refused", sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(["node"], ["nodes.id"], name=op.f("fk_signage_screens_node_nodes")),
    sa.PrimaryKeyConstraint("node", name=op.f("pk_signage_screens"))
    )


def downgrade() -> None:
    op.drop_table("signage_screens")
    op.drop_index("ix_signage_campaigns_playlist_id", table_name="signage_campaigns")

    op.drop_table("signage_campaigns")
    op.drop_table("signage_publications")
    op.drop_table("signage_plays_dropped")
    op.drop_index("ix_signage_plays_store_id", table_name="signage_plays")
    op.drop_index("ix_signage_plays_node_started", table_name="signage_plays")
    op.drop_index("ix_signage_plays_day", table_name="signage_plays")
    op.drop_index("ix_signage_plays_campaign", table_name="signage_plays")

    op.drop_table("signage_plays")
    op.drop_table("signage_playlists")
    op.drop_table("signage_media")
