"""Catalogue fixtures: the cloud's migrated database (SQLite and PostgreSQL) with one region."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.models import Region
from tests.cloud.conftest import db_url, engine  # noqa: F401 - fixtures

__all__ = ["cat_engine"]


@pytest.fixture
def cat_engine(engine: Engine) -> Iterator[Engine]:  # noqa: F811 - the imported fixture
    """A migrated database with the regions the generated files price for."""
    with Session(engine) as s, s.begin():
        s.add_all([Region(code="east", name="East China"), Region(code="south", name="South China")])
    yield engine
