"""Orders: a log of the stock rows that changed, for the routing workers' holders caches.

`cloud.orders.holders` keeps, in each worker process, every SKU's holders (the locations with some
available, and how many): reading them from `orders_stock` was most of the database's work for an
order at the issue's size (a SKU's ~400 holders are ~400 random heap pages). A worker keeps its copy
fresh by reading, before it plans, which rows changed since it last looked, and reading those rows
again. On PostgreSQL statement triggers on `orders_stock` write the key of every row inserted,
updated or deleted (whoever changes it: the engine, a store's message, SQL by hand) into
`orders_stock_changes`, with the writing transaction's id; a TRUNCATE writes a row without a key
(everything changed). It is read as followers read the ledger, by (txid, id) up to the oldest running
transaction. SQLite has no log (its workers read the holders as before).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""A table and triggers added: software of 0017 runs on this schema unchanged."""

_LOG = "INSERT INTO orders_stock_changes (location_id, sku) SELECT location_id, sku FROM"


def upgrade() -> None:
    op.create_table(
        "orders_stock_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.Column("location_id", sa.Integer(), nullable=True),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders_stock_changes")),
    )
    op.create_index("ix_orders_stock_changes_txid_id", "orders_stock_changes", ["txid", "id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE orders_stock_changes ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)")
    op.execute("ALTER TABLE orders_stock_changes ALTER COLUMN at SET DEFAULT clock_timestamp()")
    op.execute(f"""
CREATE FUNCTION orders_stock_logged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_LOG} new_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        {_LOG} new_rows;
        -- A key changed (never by the engine): the old one is gone.
        {_LOG} (SELECT location_id, sku FROM old_rows EXCEPT SELECT location_id, sku FROM new_rows) AS gone;
    ELSIF TG_OP = 'DELETE' THEN
        {_LOG} old_rows;
    ELSE
        INSERT INTO orders_stock_changes (location_id, sku) VALUES (NULL, NULL);
    END IF;
    RETURN NULL;
END $$""")
    op.execute("CREATE TRIGGER orders_stock_inserted AFTER INSERT ON orders_stock REFERENCING NEW TABLE AS new_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION orders_stock_logged()")
    op.execute("CREATE TRIGGER orders_stock_updated AFTER UPDATE ON orders_stock "
               "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION orders_stock_logged()")
    op.execute("CREATE TRIGGER orders_stock_deleted AFTER DELETE ON orders_stock REFERENCING OLD TABLE AS old_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION orders_stock_logged()")
    op.execute("CREATE TRIGGER orders_stock_truncated AFTER TRUNCATE ON orders_stock "
               "FOR EACH STATEMENT EXECUTE FUNCTION orders_stock_logged()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("inserted", "updated", "deleted", "truncated"):
            op.execute(f"DROP TRIGGER orders_stock_{name} ON orders_stock")
        op.execute("DROP FUNCTION orders_stock_logged()")
    op.drop_index("ix_orders_stock_changes_txid_id", "orders_stock_changes")
    op.drop_table("orders_stock_changes")
