"""The system tests' cloud database (SQLite, and PostgreSQL when reachable: a schema of its own,
dropped afterwards; see tests/cloud/conftest.py) and the system of processes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# A schema, not a database of its own: DROP DATABASE makes PostgreSQL checkpoint the whole cluster,
# which took up to a minute while other tests were writing.
from tests.cloud.conftest import db_url  # noqa: F401 - fixture
from tests.conftest import Broker
from tests.system.harness import System


@pytest.fixture
def system(tmp_path: Path, broker: Broker, db_url: str) -> Iterator[System]:  # noqa: F811 - the imported fixture
    s = System(tmp_path, broker, db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
