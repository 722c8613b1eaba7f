"""Alembic environment: runs with the connection `cloud.db.migrate` passes in (no alembic.ini).

For `alembic` on the command line, the URL comes from `OMNISHELF_DATABASE_URL` via the settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cloud import schema_check
from cloud.engines import load_engines
from cloud.models import Base

load_engines()  # the engines' models register their tables on Base.metadata
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The revision record (cloud.schema_check) is bookkeeping like alembic_version, not a model.
        include_name=schema_check.include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
        # In the same transaction: older software reads the record to decide whether it may run
        # against revisions it does not have (rolling upgrades).
        schema_check.record_revisions(connection, context.script)


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from cloud.db import make_engine, write_transaction
    from cloud.settings import load_settings

    engine = make_engine(load_settings().DATABASE_URL)
    try:
        with write_transaction(engine) as conn:
            run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run 'omnishelf cloud migrate'")
main()
