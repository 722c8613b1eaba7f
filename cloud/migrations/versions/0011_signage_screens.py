"""Signage: several screens per box (the screens table's key becomes node + screen).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot change a primary key in place (the table is copied).
    with op.batch_alter_table("signage_screens", recreate="auto") as batch:
        batch.drop_constraint("pk_signage_screens", type_="primary")
        batch.create_primary_key("pk_signage_screens", ["node", "screen"])


def downgrade() -> None:
    # Back to one screen per box: keep the first screen of each (by name).
    op.execute("DELETE FROM signage_screens WHERE screen > (SELECT min(s2.screen) FROM signage_screens s2 "
               "WHERE s2.node = signage_screens.node)")
    with op.batch_alter_table("signage_screens", recreate="auto") as batch:
        batch.drop_constraint("pk_signage_screens", type_="primary")
        batch.create_primary_key("pk_signage_screens", ["node"])
