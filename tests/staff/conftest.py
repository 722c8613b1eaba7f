"""Staff fixtures: the access world (a user and an API key per role over seeded regions, stores and
boxes; SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

from tests.access.conftest import PASSWORD, World, make_world, sign_in, world  # noqa: F401 (fixtures)
from tests.cloud.conftest import db_url, engine  # noqa: F401 (fixtures)
