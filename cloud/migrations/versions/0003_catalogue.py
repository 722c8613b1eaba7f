"""Catalogue: products for every channel, GTINs, categories, prices, images, versions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the id type of this revision (SQLite auto-numbers only INTEGER primary keys).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_PRODUCT_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("brand", sa.String(200), nullable=True),
    sa.Column("category", sa.String(500), nullable=True),
    sa.Column("desc_en", sa.Text(), nullable=True),
    sa.Column("desc_zh", sa.Text(), nullable=True),
    sa.Column("attributes", sa.JSON(), nullable=True),
    sa.Column("region_prices", sa.JSON(), nullable=True),
    sa.Column("images", sa.JSON(), nullable=True),
    sa.Column("gtins", sa.JSON(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default=sa.text("'active'")),
    sa.Column("serialised", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("version", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    sa.Column("row_hash", sa.String(64), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=True),
]


def upgrade() -> None:
    # batch mode: SQLite cannot add NOT NULL columns with defaults to a table in every version.
    with op.batch_alter_table("products") as batch:
        for col in _PRODUCT_COLUMNS:
            batch.add_column(col._copy())
        batch.create_index("ix_products_category", ["category"])
        batch.create_index("ix_products_version", ["version"])
    op.create_table(
        "product_gtins",
        sa.Column("gtin", sa.String(14), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name="fk_product_gtins_product_id_products", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("gtin", name="pk_product_gtins"),
    )
    op.create_index("ix_product_gtins_product_id", "product_gtins", ["product_id"])
    op.create_table(
        "catalogue_versions",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_catalogue_versions"),
    )
    op.create_table(
        "catalogue_imports",
        sa.Column("id", BigId, nullable=False),
        sa.Column("file", sa.String(1000), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_ok", sa.Integer(), nullable=False),
        sa.Column("rows_failed", sa.Integer(), nullable=False),
        sa.Column("rows_changed", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("report_path", sa.String(1000), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_catalogue_imports"),
    )
    op.create_index("ix_catalogue_imports_started_at", "catalogue_imports", ["started_at"])
    op.create_table(
        "catalogue_images",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("mime", sa.String(32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("thumb_sha256", sa.String(64), nullable=False),
        sa.Column("thumb_size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_catalogue_images"),
    )
    op.create_table(
        "catalogue_artifacts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("from_version", sa.BigInteger(), nullable=False),
        sa.Column("to_version", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalogue_artifacts"),
        sa.UniqueConstraint(
            "kind", "from_version", "to_version", name="uq_catalogue_artifacts_kind_from_version_to_version"
        ),
    )
    op.create_index("ix_catalogue_artifacts_to_version", "catalogue_artifacts", ["to_version"])


def downgrade() -> None:
    op.drop_table("catalogue_artifacts")
    op.drop_table("catalogue_images")
    op.drop_table("catalogue_imports")
    op.drop_table("catalogue_versions")
    op.drop_table("product_gtins")
    with op.batch_alter_table("products") as batch:
        batch.drop_index("ix_products_version")
        batch.drop_index("ix_products_category")
        for col in reversed(_PRODUCT_COLUMNS):
            batch.drop_column(col.name)
