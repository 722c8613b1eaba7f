"""The standing HTTP fuzz test: the API fuzzed from its own OpenAPI document with schemathesis.

An admin's console session (API keys cannot be admin) drives every operation, user and key
management included, with valid and invalid input, on SQLite. Every answer must be other than a 5xx
and conform to what the document declares: status code, content type, headers and body schema;
input the schema forbids must be refused. Bounded to well under a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks
from sqlalchemy import Engine

from cloud.access.models import ApiKey, User
from cloud.access.web import COOKIE
from cloud.api import create_app
from cloud.db import make_engine, migrate
from cloud.settings import Settings
from tests.access.conftest import GRANTS, PASSWORD, make_world, row_count, sign_in

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.negative_data_rejection]


# More examples per operation for a deeper local run: OMNISHELF_FUZZ_EXAMPLES=500 pytest tests/test_api_fuzz.py
EXAMPLES = int(os.environ.get("OMNISHELF_FUZZ_EXAMPLES", "25"))


class Admin:
    """The app, its database and an admin's session: the cookie and the session's CSRF token."""

    def __init__(self, app: Any, engine: Engine, cookie: str, csrf: str) -> None:
        self.app, self.engine, self.cookie, self.csrf = app, engine, cookie, csrf


@pytest.fixture(scope="module")
def admin_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'cloud.db'}")
    migrate(engine)
    world = make_world(engine)
    app = create_app(world.settings.model_copy(update={"CATALOGUE_DIR": str(tmp_path_factory.mktemp("cat"))}),
                     run_worker=False, engine=engine)
    # The lifespan sets the app's state (engine, sessions) and keeps it while this client is open.
    with TestClient(app) as client:
        csrf = sign_in(client, "admin", PASSWORD)
        yield Admin(app, engine, client.cookies[COOKIE], csrf)
    engine.dispose()


# The document is read from an app built at import (no database is touched to draw it), so that
# pytest sees one test per operation; the calls go to the fixture's app. (schemathesis's lazy
# `from_fixture` loader does not run on pytest 9.)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(DATABASE_URL="sqlite:///:memory:"), run_worker=False))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api(case: schemathesis.Case[Any], admin_session: Admin) -> None:
    case.call_and_validate(app=admin_session.app, headers={"X-CSRF-Token": admin_session.csrf},
                           cookies={COOKIE: admin_session.cookie}, checks=CHECKS)


def test_the_fuzzing_ran_signed_in_as_admin(admin_session: Admin) -> None:
    """Runs after the operations: their answers would all be 401s (documented, so no failure) had
    the session been lost, e.g. by the fuzzer disabling or demoting its own admin. The session is
    still the admin's, and the fuzzer did create users and keys (only an admin can)."""
    with TestClient(admin_session.app, cookies={COOKIE: admin_session.cookie}) as client:
        me = client.get("/me")
        assert me.status_code == 200, me.text
        assert me.json() == {"kind": "user", "name": "admin", "role": "admin", "regions": [], "stores": []}
    assert row_count(admin_session.engine, User) > len(GRANTS)
    assert row_count(admin_session.engine, ApiKey) > len(GRANTS) - 1
