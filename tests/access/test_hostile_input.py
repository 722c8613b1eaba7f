"""What an attacker test sends to the access endpoints, on SQLite and PostgreSQL: never a 500.

NUL is the PostgreSQL-only trap (its text type refuses it, so the driver raises a 500 unless the
input is refused first); times out of range in UTC and huge numbers are the portable ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud.access.models import ApiKey, AuditEntry, User
from tests.access.conftest import PASSWORD, World, row_count

# (method, path, request kwargs, status, text the answer must hold)
API: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("PATCH", "/users/a%00b", {"json": {"active": True}}, 422, "username"),
    ("PATCH", "/users/" + "u" * 65, {"json": {"active": True}}, 422, "username"),
    ("DELETE", "/api-keys/k%00", {}, 422, "name"),
    ("GET", "/audit", {"params": {"actor": "a\x00"}}, 422, "actor"),
    ("GET", "/audit", {"params": {"object_id": "x\x01"}}, 422, "object_id"),
    ("GET", "/audit", {"params": {"limit": "9223372036854775808"}}, 422, "limit"),
    ("GET", "/audit", {"params": {"limit": "0"}}, 422, "limit"),
    ("GET", "/audit", {"params": {"since": "0001-01-01T00:00:00+14:00"}}, 422,
     '"loc":["query","since"],"msg":"0001-01-01T00:00:00+14:00 is outside the years 1 to 9999 in UTC"'),
    ("GET", "/audit", {"params": {"until": "9999-12-31T23:59:59-14:00"}}, 422,
     '"loc":["query","until"],"msg":"9999-12-31T23:59:59-14:00 is outside'),
    ("GET", "/audit", {"params": {"actor": "%"}}, 200, "[]"),
    # The scope layer answers ids no row can have like unknown ones, before any query.
    ("GET", "/nodes/st0001-k1%00", {}, 404, r"No node 'st0001-k1\\x00'"),  # JSON escapes repr's backslash
    ("POST", "/users", {"json": {"username": "a\x00", "password": PASSWORD, "role": "hq"}}, 422, "username"),
    ("POST", "/users", {"json": {"username": "ok", "password": PASSWORD, "role": "regional", "regions": ["e\x00"]}}, 422, "regions"),
    ("POST", "/api-keys", {"json": {"name": "k\x00", "role": "hq"}}, 422, "name"),
    # The admin cannot take away the last admin (nobody could manage users or lift a lockout then).
    ("PATCH", "/users/admin", {"json": {"active": False}}, 422, '"loc":["body","active"],"msg":"\'admin\' is the last active admin'),
    ("PATCH", "/users/admin", {"json": {"role": "hq"}}, 422, '"loc":["body","role"],"msg":"\'admin\' is the last active admin'),
    ("POST", "/api-keys", {"json": {"name": "k", "role": "store", "stores": ["\x00"]}}, 422, "stores"),
    ("POST", "/api-keys", {"json": {"name": "k", "role": "hq", "expires_at": "9999-12-31T23:59:59-14:00"}}, 422,
     '"loc":["body","expires_at"],"msg":"9999-12-31T23:59:59-14:00 is outside'),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "code", "text"), API, ids=[f"{m} {p[:30]} {k}" for m, p, k, _, _ in API])
def test_hostile_api_input_is_refused_by_field(world: World, admin: tuple[TestClient, str], method: str, path: str,
                                               kwargs: dict[str, Any], code: int, text: str) -> None:
    client, csrf = admin
    before = row_count(world.engine, User), row_count(world.engine, ApiKey), row_count(world.engine, AuditEntry)
    answer = client.request(method, path, headers={"X-CSRF-Token": csrf}, **kwargs)
    assert answer.status_code == code, answer.text
    assert text in answer.text, answer.text
    assert (row_count(world.engine, User), row_count(world.engine, ApiKey), row_count(world.engine, AuditEntry)) == before


# Console forms take the same inputs outside the schema (a forged form can send anything).
CONSOLE: list[tuple[str, dict[str, Any], int, str]] = [
    ("/console/users", {"username": "ok", "password": PASSWORD, "role": "store", "stores": ["st\x000"]}, 422,
     "unknown store code(s): &#39;st\\x000&#39;"),
    ("/console/users/a%00b", {"role": "hq"}, 404, "No user"),
    ("/console/users/a%00b/active", {"active": "0"}, 404, "No user"),
    ("/console/api-keys", {"name": "k\x00", "role": "hq"}, 422, "control character"),
    ("/console/api-keys/k%00/revoke", {}, 404, "No API key"),
    ("/console/users/admin/active", {"active": "0"}, 422, "active: &#39;admin&#39; is the last active admin"),
    ("/console/users/admin", {"role": "hq"}, 422, "role: &#39;admin&#39; is the last active admin"),
]


@pytest.mark.parametrize(("path", "form", "code", "text"), CONSOLE, ids=[p for p, _, _, _ in CONSOLE])
def test_hostile_console_forms_are_refused_by_field(world: World, admin: tuple[TestClient, str], path: str,
                                                    form: dict[str, Any], code: int, text: str) -> None:
    client, csrf = admin
    before = row_count(world.engine, User), row_count(world.engine, ApiKey), row_count(world.engine, AuditEntry)
    answer = client.post(path, data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == code, answer.text
    assert text in answer.text
    assert (row_count(world.engine, User), row_count(world.engine, ApiKey), row_count(world.engine, AuditEntry)) == before


def test_hostile_console_fleet_filters_and_store_codes(world: World, admin: tuple[TestClient, str]) -> None:
    client, _ = admin
    for params in ({"q": "st\x00"}, {"region": "east\x00"}):
        answer = client.get("/console/fleet", params=params)
        assert answer.status_code == 200 and "No stores match." in answer.text, answer.text
    answer = client.get("/console/stores/st0001%00")
    assert answer.status_code == 404 and "No store" in answer.text


def test_hostile_console_audit_filters(world: World, admin: tuple[TestClient, str]) -> None:
    client, _ = admin
    for params, text in (({"actor": "a\x00"}, "actor: "), ({"since": "0001-01-01T00:00:00+14:00"}, "since: 0001-01-01")):
        answer = client.get("/console/audit", params=params)
        assert answer.status_code == 422 and text in answer.text, answer.text
