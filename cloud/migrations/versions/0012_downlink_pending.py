"""Downlink: a partial index of the commands not yet published, by box.

The worker that writes a command in its ingest transaction publishes it itself right after the
commit, unless an older command to the same box is still waiting (that one goes first, through the
relay, to keep each box's commands in order). This index answers "does this box have a command
waiting?" from the few pending rows only, however many delivered ones the box has.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""An index only: software of 0011 runs on this schema unchanged."""

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index("ix_downlink_pending_node", "downlink", ["node"], postgresql_where=_PENDING,
                    sqlite_where=_PENDING)


def downgrade() -> None:
    op.drop_index("ix_downlink_pending_node", table_name="downlink")
