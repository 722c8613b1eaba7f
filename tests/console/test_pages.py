"""Console pages over HTTP (no browser): CSRF, scoping, navigation per role, offline assets."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from cloud.access.models import ApiKey, User
from cloud.models import Region
from tests.access.conftest import GRANTS, PASSWORD, World, row_count, sign_in

PAGES = ["fleet", "orders", "stock", "trace", "signage", "devices", "users", "users/regional", "api-keys", "audit",
         "stores/st0001"]


def test_every_page_renders_and_loads_nothing_from_outside(world: World, admin: tuple[TestClient, str]) -> None:
    client, _ = admin
    for page in PAGES:
        answer = client.get(f"/console/{page}")
        assert answer.status_code == 200, f"{page}: {answer.status_code}"
        assets = re.findall(r"""(?:src|href)=["']([^"'#]+)["']""", answer.text)
        for url in assets:
            assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url} from outside"
            if url.startswith("/console/static/"):
                assert client.get(url).status_code == 200, url
    fleet = client.get("/console/fleet").text
    for label in ("Orders", "Stock", "Traceability", "Signage", "Devices", "Users", "Audit"):
        assert f">{label}</a>" in fleet


def test_navigation_and_pages_follow_the_role(world: World) -> None:
    for role in GRANTS:
        with world.app_client() as client:
            sign_in(client, role)
            fleet = client.get("/console/fleet").text
            assert (">Users</a>" in fleet) is (role == "admin"), role
            assert (">Audit</a>" in fleet) is (role in ("admin", "hq")), role
            assert (">Orders</a>" in fleet) is (role != "technician"), role
            assert client.get("/console/users").status_code == (200 if role == "admin" else 403), role
            assert client.get("/console/orders").status_code == (403 if role == "technician" else 200), role


def test_a_regional_manager_cannot_open_another_regions_store(world: World) -> None:
    with world.app_client() as client:
        sign_in(client, "regional")
        assert client.get("/console/stores/st0001").status_code == 200
        other = client.get("/console/stores/st0003")
        assert other.status_code == 404 and "st0003" in other.text and "Shenzhen" not in other.text
        fleet = client.get("/console/fleet").text
        assert "st0001-k1" in fleet and "st0003" not in fleet
        state = client.get("/console/fleet/state.json").json()
        assert sorted(n["id"] for n in state["nodes"]) == ["st0001-k1", "st0002-k1"]


def test_a_regional_manager_is_told_a_new_region_is_not_theirs_to_make(world: World) -> None:
    with world.app_client() as client:
        csrf = sign_in(client, "regional")
        answer = client.post("/console/regions", data={"code": "west", "name": "West", "csrf_token": csrf})
        # The regions page again, saying why (not a bare "not allowed" page).
        assert answer.status_code == 403 and "<h1>Regions" in answer.text
        assert "creating a region needs a principal that sees every region (admin or hq)" in answer.text
        assert row_count(world.engine, Region) == 2


def test_form_posts_without_the_csrf_token_are_refused(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    form = {"username": "zhao", "password": PASSWORD, "role": "hq"}
    for token in (None, "", "forged"):
        data = form if token is None else {**form, "csrf_token": token}
        assert client.post("/console/users", data=data).status_code == 403
    assert client.post("/console/api-keys", data={"name": "x", "role": "hq"}).status_code == 403
    assert client.post("/console/logout", data={}).status_code == 403
    assert row_count(world.engine, User) == len(GRANTS)
    assert row_count(world.engine, ApiKey) == len(GRANTS) - 1
    made = client.post("/console/users", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303 and row_count(world.engine, User) == len(GRANTS) + 1


def test_console_forms_report_bad_input_by_field(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    answer = client.post("/console/users", data={"username": "u" * 70, "password": PASSWORD, "role": "hq", "csrf_token": csrf})
    assert answer.status_code == 422 and "username: 1 to 64 characters" in answer.text
    answer = client.post("/console/users", data={"username": "ok", "password": PASSWORD, "role": "regional", "csrf_token": csrf})
    assert answer.status_code == 422 and "regions: a regional user needs at least one region" in answer.text
    for days in ("soon", "0", "3651", "9999999999", "\N{SUPERSCRIPT TWO}", "\N{FULLWIDTH DIGIT ONE}"):
        answer = client.post("/console/api-keys", data={"name": "k", "role": "hq", "expires_days": days, "csrf_token": csrf})
        assert answer.status_code == 422 and "expires_days" in answer.text and "from 1 to 3650" in answer.text, days
    assert row_count(world.engine, User) == len(GRANTS)
    created = client.post("/console/api-keys", data={"name": "tmall", "role": "hq", "csrf_token": csrf})
    secret = re.search(r'id="new-secret">(osk_[^<]+)<', created.text)
    assert created.status_code == 200 and secret
    assert secret[1] not in client.get("/console/api-keys").text  # shown once
    assert client.get("/stores", headers={"Authorization": f"Bearer {secret[1]}"}).status_code == 200
    gone = client.post("/console/api-keys/nope/revoke", data={"csrf_token": csrf})
    assert gone.status_code == 404 and "nope" in gone.text
    audit = client.get("/console/audit", params={"object_type": "api_key"}).text
    assert "api_key.create" in audit and "tmall" in audit
    assert client.get("/console/audit", params={"since": "tuesday"}).status_code == 422


def test_admin_changes_a_users_role_scope_and_password_in_the_console(world: World, admin: tuple[TestClient, str]) -> None:
    client, csrf = admin
    bad = client.post("/console/users/regional", data={"role": "regional", "regions": ["nowhere"], "csrf_token": csrf})
    assert bad.status_code == 422 and "regions: unknown region code(s): nowhere" in bad.text
    short = client.post("/console/users/regional", data={"role": "hq", "password": "short", "csrf_token": csrf})
    assert short.status_code == 422 and "password: at least 10 characters" in short.text
    with world.app_client() as manager:
        sign_in(manager, "regional")  # the failed saves above changed nothing: same role, same password
        assert [s["code"] for s in manager.get("/stores").json()] == ["st0001", "st0002"]
    saved = client.post("/console/users/regional",
                        data={"role": "store", "stores": ["st0002"], "password": "a new long passphrase", "csrf_token": csrf})
    assert saved.status_code == 200 and "Saved." in saved.text
    with world.app_client() as manager:
        sign_in(manager, "regional", "a new long passphrase")
        assert [s["code"] for s in manager.get("/stores").json()] == ["st0002"]
    assert client.post("/console/users/nobody", data={"role": "hq", "csrf_token": csrf}).status_code == 404
    assert client.post("/console/users/regional", data={"role": "hq"}).status_code == 403


def test_the_root_address_leads_to_the_console(world: World) -> None:
    with world.app_client() as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code in (302, 303, 307) and root.headers["location"] == "/console/"
        assert client.get("/").url.path == "/console/login"  # followed: signed out, so the sign-in page
