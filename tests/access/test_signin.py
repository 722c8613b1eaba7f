"""Sign-in, sessions and the `omnishelf users` command, over a real database (lockout: test_lockout.py)."""

from __future__ import annotations

import io
import re

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.models import AuditEntry, User, WebSession
from omnishelf.cli import main
from tests.access.conftest import PASSWORD, World, row_count, sign_in


def test_session_cookie_flags_sign_out_and_disabled_users(world: World) -> None:
    with world.app_client() as client:
        page = client.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        answer = client.post("/console/login", data={"username": "regional", "password": PASSWORD, "csrf_token": token[1]},
                             follow_redirects=False)
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain http in development only
        assert client.get("/console/fleet").status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/fleet").text)
        assert csrf
        assert client.post("/console/logout", data={"csrf_token": csrf[1]}, follow_redirects=False).status_code == 303
        assert row_count(world.engine, WebSession) == 0
        after = client.get("/console/fleet", follow_redirects=False)
        assert after.status_code == 303 and after.headers["location"].startswith("/console/login")

    with world.app_client() as client:
        sign_in(client, "store")
        with service.write_session(world.engine) as s, s.begin():
            service.set_user_active(s, "cli:test", "store", False, via="cli")
        assert client.get("/stores").status_code == 401


def test_login_form_without_its_csrf_token_is_refused(world: World) -> None:
    with world.app_client() as client:
        answer = client.post("/console/login", data={"username": "admin", "password": PASSWORD}, follow_redirects=False)
        assert answer.status_code == 403 and "sign in again" in answer.text
        assert row_count(world.engine, WebSession) == 0


def test_production_cookies_are_secure(engine: Engine) -> None:
    from tests.access.conftest import make_world

    world = make_world(engine)
    world.settings = world.settings.model_copy(update={"ENV": "production", "BROKER_PASSWORD": "x"})
    with world.app_client() as client:
        page = client.get("/console/login")
        assert "secure" in page.headers["set-cookie"].lower()


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, stdin: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", url)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_creates_the_first_admin_and_keys(engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.seed import seed

    seed(engine)
    url = engine.url.render_as_string(hide_password=False)
    code, out, _ = _cli(monkeypatch, capsys, url, PASSWORD + "\n", "users", "add", "--username", "root", "--role", "admin", "--password-stdin")
    assert code == 0 and "root" in out
    code, out, _ = _cli(monkeypatch, capsys, url, "", "users", "add", "--username", "li", "--role", "regional", "--region", "east", "--generate")
    assert code == 0
    generated = re.search(r"password \(shown once\): (\S+)", out)
    assert generated
    with Session(engine) as s:
        assert service.verify_password(s, "li", generated[1]) is not None
        assert service.verify_password(s, "root", PASSWORD) is not None

    code, _, err = _cli(monkeypatch, capsys, url, "", "users", "add", "--username", "wu", "--role", "regional", "--region", "north", "--generate")
    assert code == 2 and "--region: unknown region code(s): north" in err and "Traceback" not in err
    code, _, err = _cli(monkeypatch, capsys, url, "", "users", "add", "--username", "root", "--role", "hq", "--generate")
    assert code == 2 and "already exists" in err

    code, out, _ = _cli(monkeypatch, capsys, url, "", "users", "list")
    assert code == 0 and "li\tregional\teast\tactive" in out

    code, out, _ = _cli(monkeypatch, capsys, url, "", "users", "api-key", "create", "--name", "erp", "--role", "hq")
    assert code == 0 and out.startswith("osk_")
    with Session(engine) as s:
        assert service.principal_for_key(s, out.strip()) is not None
    code, _, _ = _cli(monkeypatch, capsys, url, "", "users", "api-key", "revoke", "--name", "erp")
    assert code == 0
    with Session(engine) as s:
        assert service.principal_for_key(s, out.strip()) is None
    code, _, err = _cli(monkeypatch, capsys, url, "", "users", "api-key", "revoke", "--name", "nope")
    assert code == 2 and "'nope'" in err
    code, _, err = _cli(monkeypatch, capsys, url, "short\n", "users", "passwd", "--username", "li", "--password-stdin")
    assert code == 2 and "--password-stdin: at least 10 characters" in err
    with Session(engine) as s:
        actions = s.scalars(select(AuditEntry.action).where(AuditEntry.via == "cli").order_by(AuditEntry.id)).all()
    assert actions == ["user.create", "user.create", "api_key.create", "api_key.revoke"]


def test_bootstrap_for_the_demo(engine: Engine) -> None:
    from cloud.access.bootstrap import create_api_key, ensure_admin

    assert ensure_admin(engine, "admin", PASSWORD) is True
    assert ensure_admin(engine, "admin", "another password") is False
    secret = create_api_key(engine, "demo", "hq")
    with Session(engine) as s:
        principal = service.principal_for_key(s, secret)
        assert principal is not None and principal.scope.all
        assert service.verify_password(s, "admin", PASSWORD) is not None
        stored = s.scalars(select(User.password_hash).where(User.username == "admin")).one()
        assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_sign_in_returns_only_to_console_pages(world: World) -> None:
    with world.app_client() as client:
        for next_, expected in (("/console/audit", "/console/audit"), ("https://evil.example/", "/console/"),
                                ("//evil.example/console/", "/console/"), ("/docs", "/console/")):
            page = client.get("/console/login", params={"next": next_})
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token
            answer = client.post("/console/login", follow_redirects=False, data={
                "username": "hq", "password": PASSWORD, "csrf_token": token[1], "next": next_})
            assert answer.headers["location"] == expected, next_
