"""The REST API over a real database: credentials, scoping per role, bad input, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from cloud.access.bootstrap import create_api_key
from cloud.access.models import ApiKey, AuditEntry, User
from tests.access.conftest import GRANTS, PASSWORD, SEES, World, row_count

# Public on purpose: load balancers, API docs, and the content-addressed catalogue files that boxes
# (which hold no HTTP credentials) download. Anything else must refuse to answer without credentials.
# The claim of a box in setup mode and its status are authorised by the single-use enrolment token in
# the body (the technician needs no console account): tests/provisioning checks every refusal.
PUBLIC = {"/health", "/openapi.json", "/docs", "/catalogue/files/{sha256}", "/signage/media/{sha256}",
          "/provision/claim", "/provision/status",
          # A marketplace's webhook: authenticated by its HMAC signature instead (tests/orders/test_api.py).
          "/channels/{name}/webhook"}


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every documented endpoint (the OpenAPI document is the list clients see)."""
    out: list[tuple[str, str]] = []
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        if path in PUBLIC:
            continue
        for param, value in (("node_id", "st0001-k1"), ("username", "admin"), ("name", "hq-key"), ("sku", "TEA-LJ-250"),
                             ("import_id", "1"), ("code", "east"), ("failed_id", "1"), ("alert_id", "1"),
                             ("capture_id", "00000000-0000-4000-8000-000000000001"), ("campaign_id", "c1"),
                             ("version", "1"), ("region", "east"), ("order_id", "1"),
                             ("item_id", "1"), ("location", "st0001"), ("token_id", "1"),
                             ("batch", "00000000-0000-0000-0000-000000000000"), ("screen", "main"), ("clerk_id", "1")):
            path = path.replace("{" + param + "}", value)
        assert "{" not in path, f"give {path} a sample id in this test"
        out.extend((m.upper(), path) for m in ops)
    return out


def test_every_endpoint_refuses_missing_expired_and_revoked_credentials(world: World) -> None:
    expired = create_api_key(world.engine, "old", "hq", expires_at=datetime.now(UTC) + timedelta(days=1))
    revoked = create_api_key(world.engine, "gone", "hq")
    with world.app_client() as client:
        routes = api_routes(client)
        assert {("GET", "/nodes"), ("GET", "/stores"), ("GET", "/regions"), ("GET", "/audit"), ("POST", "/api-keys")} <= set(routes)
        doc = client.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        # Either credential will do; the role each operation needs is the requirement's role.
        for path, perm in (("/nodes", "fleet"), ("/stores", "fleet"), ("/regions", "fleet"), ("/me", None),
                           ("/users", "users"), ("/api-keys", "users"), ("/audit", "audit")):
            op = doc["paths"][path]["get"]
            roles = [perm] if perm else []
            assert op["security"] == [{"apiKey": roles}, {"session": roles}], path
            assert set(op["responses"]) >= ({"401", "403"} if perm else {"401"}), path
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert "schema" in op["responses"]["200"]["content"]["application/json"], path
        assert "UserCreate" in doc["components"]["schemas"] and "ApiKeyCreate" in doc["components"]["schemas"]
        # Both work before they expire / are revoked: the refusals below are about the state change.
        assert client.get("/me", headers={"Authorization": f"Bearer {expired}"}).status_code == 200
        assert client.get("/me", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
        with Session(world.engine) as s, s.begin():
            s.execute(update(ApiKey).where(ApiKey.name == "old").values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        admin_key_free = TestClient(client.app)
        from tests.access.conftest import sign_in

        csrf = sign_in(admin_key_free, "admin")
        gone = admin_key_free.delete("/api-keys/gone", headers={"X-CSRF-Token": csrf})
        assert gone.status_code == 200 and gone.json()["revoked_at"]

        health = client.get("/health")
        assert health.status_code == 200 and "st0001" not in health.text  # public, but says nothing per box
        for creds in (None, "Bearer osk_nothing_here", f"Bearer {expired}", f"Bearer {revoked}", "Basic YWRtaW46eA=="):
            headers = {"Authorization": creds} if creds else {}
            for method, path in routes:
                answer = client.request(method, path, headers=headers, json={})
                assert answer.status_code == 401, f"{method} {path} with {creds!r}: {answer.status_code} {answer.text}"
                assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("role", ["hq", "regional", "store", "technician"])
def test_scoping_of_every_list_endpoint_for_api_keys(world: World, role: str) -> None:
    with world.app_client(headers={"Authorization": f"Bearer {world.keys[role]}"}) as client:
        sees = SEES[role]
        assert [r["code"] for r in client.get("/regions").json()] == sees["regions"]
        assert [s["code"] for s in client.get("/stores").json()] == sees["stores"]
        assert [n["id"] for n in client.get("/nodes").json()] == sees["nodes"]
        for node in ("st0001-k1", "st0003-k1", "stray-1"):
            answer = client.get(f"/nodes/{node}")
            if node in sees["nodes"]:
                assert answer.status_code == 200
            else:
                # Out of scope looks exactly like unknown: nothing about its existence leaks.
                assert answer.status_code == 404 and repr(node) in answer.json()["detail"]
        assert client.get("/users").status_code == 403
        assert client.get("/api-keys").status_code == 403
        assert client.get("/audit").status_code == (200 if role == "hq" else 403)
        me = client.get("/me").json()
        assert me["role"] == role and me["kind"] == "key"


def test_scoping_for_signed_in_users_of_every_role(world: World) -> None:
    from tests.access.conftest import sign_in

    for role in GRANTS:
        with world.app_client() as client:
            sign_in(client, role)
            sees = SEES[role]
            assert [r["code"] for r in client.get("/regions").json()] == sees["regions"], role
            assert [s["code"] for s in client.get("/stores").json()] == sees["stores"], role
            assert [n["id"] for n in client.get("/nodes").json()] == sees["nodes"], role
            assert client.get("/users").status_code == (200 if role == "admin" else 403), role
            assert client.get("/audit").status_code == (200 if role in ("admin", "hq") else 403), role


def test_user_and_key_changes_are_audited_with_before_and_after(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    h = {"X-CSRF-Token": csrf}
    made = client.post("/users", json={"username": "wang", "password": PASSWORD, "role": "regional", "regions": ["south"]}, headers=h)
    assert made.status_code == 201, made.text
    assert made.json()["regions"] == ["south"]
    assert client.patch("/users/wang", json={"active": False}, headers=h).json()["active"] is False
    key = client.post("/api-keys", json={"name": "erp", "role": "store", "stores": ["st0001"]}, headers=h)
    assert key.status_code == 201 and key.json()["secret"].startswith("osk_")
    secret = key.json()["secret"]
    # Only the hash is stored: the secret appears nowhere in the database.
    with Session(world.engine) as s:
        assert all(secret not in (k.key_hash, k.prefix) for k in s.query(ApiKey))
    assert [st["code"] for st in client.get("/stores", headers={"Authorization": f"Bearer {secret}"}).json()] == ["st0001"]
    assert client.delete("/api-keys/erp", headers=h).status_code == 200
    assert client.get("/stores", headers={"Authorization": f"Bearer {secret}"}).status_code == 401

    log = client.get("/audit", params={"actor": "admin", "object_id": "wang"}).json()
    assert [e["action"] for e in log] == ["user.disable", "user.create"]
    assert log[0]["before"]["active"] is True and log[0]["after"]["active"] is False
    assert log[0]["actor"] == "user:admin" and log[0]["via"] == "console"
    keys = client.get("/audit", params={"object_type": "api_key", "object_id": "erp"}).json()
    assert [e["action"] for e in keys] == ["api_key.revoke", "api_key.create"]
    assert keys[0]["before"]["revoked_at"] is None and keys[0]["after"]["revoked_at"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/audit", params={"since": future}).json() == []
    assert client.get("/audit", params={"since": "yesterday"}).status_code == 422


def test_bearer_clients_need_no_csrf_but_cookie_clients_do(world: World, admin: tuple[TestClient, str]) -> None:
    client, _csrf = admin
    refused = client.post("/users", json={"username": "li", "password": PASSWORD, "role": "hq"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert row_count(world.engine, User) == len(GRANTS)


BAD = [
    ({"username": "x" * 65, "password": PASSWORD, "role": "hq"}, "username"),
    ({"username": "ok", "password": "short", "role": "hq"}, "password"),
    ({"username": "ok", "password": PASSWORD, "role": 5}, "role"),
    ({"username": "ok", "password": PASSWORD, "role": "king"}, "role"),
    ({"username": "ok", "password": PASSWORD, "role": "regional", "regions": ["north"]}, "regions"),
    ({"username": "ok", "password": PASSWORD, "role": "regional"}, "regions"),
    ({"username": "ok", "password": PASSWORD, "role": "store", "stores": ["st0001", "st9999"]}, "stores"),
    ({"username": "Bad Name", "password": PASSWORD, "role": "hq"}, "username"),
    ({"username": "admin", "password": PASSWORD, "role": "hq"}, "username"),
    ({"username": "ok", "password": PASSWORD, "role": "hq", "colour": "red"}, "colour"),
]


def test_bad_user_input_is_422_naming_the_field_and_writes_nothing(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    users, audit = row_count(world.engine, User), row_count(world.engine, AuditEntry)
    for body, field in BAD:
        answer = client.post("/users", json=body, headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 422, f"{body}: {answer.text}"
        assert any(field in err["loc"] for err in answer.json()["detail"]), (body, answer.json())
        assert (row_count(world.engine, User), row_count(world.engine, AuditEntry)) == (users, audit), body


def test_bad_key_input_and_unknown_ids(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    h = {"X-CSRF-Token": csrf}
    keys = row_count(world.engine, ApiKey)
    for body, field in (
        ({"name": "k" * 101, "role": "hq"}, "name"),
        ({"name": "k", "role": "admin"}, "role"),
        ({"name": "k", "role": "hq", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "role": "hq", "expires_at": "soon"}, "expires_at"),
        ({"name": "k", "role": "store", "stores": ["nope"]}, "stores"),
    ):
        answer = client.post("/api-keys", json=body, headers=h)
        assert answer.status_code == 422 and any(field in e["loc"] for e in answer.json()["detail"]), answer.text
    assert row_count(world.engine, ApiKey) == keys
    gone = client.delete("/api-keys/nope", headers=h)
    assert gone.status_code == 404 and "'nope'" in gone.json()["detail"]
    nobody = client.patch("/users/nobody", json={"active": True}, headers=h)
    assert nobody.status_code == 404 and "'nobody'" in nobody.json()["detail"]
    assert client.patch("/users/admin", json={"active": "maybe"}, headers=h).status_code == 422
    assert client.patch("/users/admin", json={}, headers=h).status_code == 422
    bad_scope = client.patch("/users/regional", json={"role": "regional", "regions": ["north"]}, headers=h)
    assert bad_scope.status_code == 422 and bad_scope.json()["detail"][0]["loc"] == ["body", "regions"]


def test_changing_a_users_role_changes_their_scope_at_once(world: World, admin: tuple[TestClient, str]) -> None:
    from tests.access.conftest import sign_in

    client, csrf = admin
    with world.app_client() as manager:
        sign_in(manager, "regional")
        assert [s["code"] for s in manager.get("/stores").json()] == ["st0001", "st0002"]
        moved = client.patch("/users/regional", json={"role": "regional", "regions": ["south"]}, headers={"X-CSRF-Token": csrf})
        assert moved.status_code == 200 and moved.json()["regions"] == ["south"]
        assert manager.get("/stores").status_code == 401  # the old sign-in (old scope) is over
        sign_in(manager, "regional")
        assert [s["code"] for s in manager.get("/stores").json()] == ["st0003"]
    entry = client.get("/audit", params={"actor": "admin", "object_id": "regional"}).json()[0]
    assert entry["action"] == "user.role" and entry["before"]["regions"] == ["east"] and entry["after"]["regions"] == ["south"]
