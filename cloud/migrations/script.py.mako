"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}

# True only for an "expand" step that software of the previous revision runs unchanged against (a
# new table, a nullable column, an index); it lets hosts not yet upgraded keep starting during a
# rolling upgrade. Dropping or renaming anything older code uses is a "contract" step: False.
# See docs/operator.md, "Backup, restore, upgrade".
compatible: bool = False


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
