"""The system tests' cloud database (SQLite, and PostgreSQL when reachable: a database of its own,
dropped afterwards) and the system of processes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL, Broker
from tests.system.harness import System


def _pg_available() -> bool:
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), connect_args={"connect_timeout": 2})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set OMNISHELF_TEST_PG_URL)")
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    name = f"omnishelf_sys_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def system(tmp_path: Path, broker: Broker, db_url: str) -> Iterator[System]:
    s = System(tmp_path, broker, db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
