"""Trace: what a verified scan pays PostgreSQL, made cheaper (HOT unit updates, two fewer indexes).

Each scan updates its unit (`last_scan_id`, where and when it was last seen; a sale also its state):
no indexed column changes, so PostgreSQL could keep the new row version on the same page (a HOT
update: no index entry written) but for the room. A commissioning's COPY filled every page, so
each such update moved the row to another page and wrote an entry into each of the units' indexes.
`fillfactor = 80` keeps a fifth of every page free for those versions. It applies to pages written
from now on: a unit commissioned before stays on its full page until its next update moves it (to a
page filled to 80 % at most, where the updates after are HOT), or until `VACUUM FULL trace_units`
(or a tool such as pg_repack) rewrites the table at a quiet hour. This migration rewrites nothing
and holds its locks for a moment only.

The scans' indexes on `node` and `at` had no reader (every query of `trace_scans` is by `id` or
`msg_id`); each was one more index entry written per scan.

On the benchmark's data (100,000 units, batches of 100 scans; auto_explain, load 2.4-4.8) the
server's time per scan went from 23-40 to 11-19 us in the units' UPDATE and from 17-28 to 9-18 us in
the scans' INSERT; its CPU per scan fell by a fifth (docs/trace.md). SQLite has no fillfactor: there
only the indexes go.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""Two indexes nobody reads dropped and a storage parameter set: software of 0016 runs on this
schema unchanged."""

_FILLFACTOR = 80
"""`cloud.trace.models.UNITS_FILLFACTOR` when this was written (a migration keeps its own value)."""


def upgrade() -> None:
    with op.batch_alter_table("trace_scans") as batch:
        batch.drop_index("ix_trace_scans_node")
        batch.drop_index("ix_trace_scans_at")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE trace_units SET (fillfactor = {_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE trace_units RESET (fillfactor)")
    with op.batch_alter_table("trace_scans") as batch:
        batch.create_index("ix_trace_scans_at", ["at"])
        batch.create_index("ix_trace_scans_node", ["node"])
