"""Sign-in throttling per (account, source), per source and per account, on SQLite and PostgreSQL.

Requests come through uvicorn's proxy-headers middleware (as `omnishelf cloud serve` runs the app),
so each test picks its client address with X-Forwarded-For, as a trusted reverse proxy would send.
"""

from __future__ import annotations

import html
import io
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select, update
from sqlalchemy.orm import Session

from cloud.access import service, throttle
from cloud.access.models import AuditEntry, LoginThrottle
from cloud.api import create_app
from omnishelf.cli import main
from tests.access.conftest import PASSWORD, World, behind_proxy

ATTACKER, OWNER, OTHER = "203.0.113.5", "198.51.100.7", "192.0.2.44"
WRONG = "not the password"
GENERIC = ("Wrong username or password, or too many failed attempts: after repeated failures wait 15 minutes or "
           "ask an admin to unlock the account.")


def attempt(client: TestClient, username: str, password: str, source: str) -> tuple[int, str]:
    """One sign-in through the console form from `source`: (status, the error shown or '')."""
    h = {"X-Forwarded-For": source}
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/login", headers=h).text)
    assert token
    answer = client.post("/console/login", data={"username": username, "password": password, "csrf_token": token[1]},
                         headers=h, follow_redirects=False)
    error = re.search(r'<p class="error" role="alert">(.*?)</p>', answer.text)
    return answer.status_code, html.unescape(error[1]) if error else ""


def client_of(world: World, **settings: object) -> TestClient:
    app = create_app(world.settings.model_copy(update=settings), run_worker=False, engine=world.engine)
    return behind_proxy(app)


def actions(engine: Engine, *names: str) -> list[tuple[str, str, str]]:
    with Session(engine) as s:
        rows = s.execute(select(AuditEntry.action, AuditEntry.actor, AuditEntry.object_id)
                         .where(AuditEntry.action.in_(names)).order_by(AuditEntry.id)).all()
    return [(action, actor, object_id) for action, actor, object_id in rows]


def test_a_pair_lock_refuses_the_right_password_from_that_address_only(world: World) -> None:
    with client_of(world) as client:
        for _ in range(4):
            assert attempt(client, "hq", WRONG, ATTACKER) == (401, GENERIC)
        assert attempt(client, "hq", PASSWORD, ATTACKER)[0] == 303  # a success before the limit starts afresh
        for _ in range(5):
            assert attempt(client, "hq", WRONG, ATTACKER) == (401, GENERIC)
        assert attempt(client, "hq", PASSWORD, ATTACKER) == (401, GENERIC)  # locked: the same answer
        # The owner, elsewhere, is not locked out by someone else's guessing.
        assert attempt(client, "hq", PASSWORD, OWNER)[0] == 303
    assert actions(world.engine, "user.lockout") == [("user.lockout", f"source:{ATTACKER}", "hq")]
    # Time passing (the lock expiring) lets the right password in from there again.
    with service.write_session(world.engine) as s, s.begin():
        s.execute(update(LoginThrottle).values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    with client_of(world) as client:
        assert attempt(client, "hq", PASSWORD, ATTACKER)[0] == 303


def test_unknown_wrong_disabled_and_locked_answer_alike(world: World) -> None:
    with service.write_session(world.engine) as s, s.begin():
        service.create_user(s, "cli:test", "gone", PASSWORD, "hq", via="cli")
        service.set_user_active(s, "cli:test", "gone", False, via="cli")
    with client_of(world) as client:
        answers = {
            "unknown user": attempt(client, "nobody", WRONG, ATTACKER),
            "wrong password": attempt(client, "hq", WRONG, ATTACKER),
            "disabled user, right password": attempt(client, "gone", PASSWORD, ATTACKER),
        }
        for name in ("nobody", "hq"):
            for _ in range(5):
                attempt(client, name, WRONG, OTHER)
        answers["locked unknown user"] = attempt(client, "nobody", WRONG, OTHER)
        answers["locked user, right password"] = attempt(client, "hq", PASSWORD, OTHER)
    assert set(answers.values()) == {(401, GENERIC)}, answers
    # Unknown names are counted and locked exactly like real ones.
    assert [a[2] for a in actions(world.engine, "user.lockout")] == ["nobody", "hq"]


def test_an_address_trying_many_accounts_is_throttled_naming_none(world: World) -> None:
    # LOGIN_MAX_FAILURES=2: a pair locks after 2, an address after 20, an account after 40.
    with client_of(world, LOGIN_MAX_FAILURES=2) as client:
        for i in range(20):
            assert attempt(client, f"guess{i}", WRONG, ATTACKER) == (401, GENERIC)
        h = {"X-Forwarded-For": ATTACKER}
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/login", headers=h).text)
        assert token
        answer = client.post("/console/login", headers=h, follow_redirects=False,
                             data={"username": "admin", "password": PASSWORD, "csrf_token": token[1]})
        assert answer.status_code == 429
        assert 800 <= int(answer.headers["retry-after"]) <= 900
        error = re.search(r'<p class="error" role="alert">(.*?)</p>', answer.text)
        assert error and error[1].startswith("Too many failed sign-ins from your network address: try again after ")
        assert "admin" not in error[1]
        # Other addresses are not affected, and the throttle is about the address, not an account.
        assert attempt(client, "admin", PASSWORD, OWNER)[0] == 303
    assert actions(world.engine, "source.throttle") == [("source.throttle", f"source:{ATTACKER}", ATTACKER)]


def test_an_account_is_locked_everywhere_only_after_many_addresses(world: World, admin: tuple[TestClient, str]) -> None:
    with client_of(world, LOGIN_MAX_FAILURES=2) as client:
        for i in range(19):
            for _ in range(2):
                attempt(client, "hq", WRONG, f"10.0.{i}.1")
        assert attempt(client, "hq", PASSWORD, OWNER)[0] == 303  # 38 failures: not yet
        for _ in range(2):
            attempt(client, "hq", WRONG, "10.0.99.1")
        assert attempt(client, "hq", PASSWORD, OWNER) == (401, GENERIC)
        assert actions(world.engine, "user.lockout_all") == [("user.lockout_all", "source:10.0.99.1", "hq")]
        # The admin sees it and lifts it.
        admin_client, csrf = admin
        listed = {u["username"]: u for u in admin_client.get("/users").json()}
        assert listed["hq"]["locked_until"] is not None and len(listed["hq"]["locked_from"]) == 20
        assert listed["admin"]["locked_until"] is None and listed["admin"]["locked_from"] == {}
        unlocked = admin_client.post("/users/hq/unlock", headers={"X-CSRF-Token": csrf})
        assert unlocked.status_code == 200 and unlocked.json()["locked_until"] is None and unlocked.json()["locked_from"] == {}
        assert attempt(client, "hq", PASSWORD, OWNER)[0] == 303


def test_admin_unlocks_in_the_api_the_console_and_the_cli_audited(
    world: World, admin: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    admin_client, csrf = admin

    def lock_regional() -> None:
        with client_of(world) as c:
            for _ in range(5):
                attempt(c, "regional", WRONG, ATTACKER)
            assert attempt(c, "regional", PASSWORD, ATTACKER) == (401, GENERIC)

    # API: only admins; a lock shows in the user's record and the audit entry's "before".
    lock_regional()
    regional = next(u for u in admin_client.get("/users").json() if u["username"] == "regional")
    assert list(regional["locked_from"]) == [ATTACKER] and regional["locked_until"] is None
    with TestClient(admin_client.app, headers={"Authorization": f"Bearer {world.keys['hq']}"}) as hq:
        assert hq.post("/users/regional/unlock").status_code == 403
    assert admin_client.post("/users/regional/unlock").status_code == 403  # cookie without its CSRF token
    assert admin_client.post("/users/nobody/unlock", headers={"X-CSRF-Token": csrf}).status_code == 404
    answer = admin_client.post("/users/regional/unlock", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200 and answer.json()["locked_from"] == {}
    with client_of(world) as c:
        assert attempt(c, "regional", PASSWORD, ATTACKER)[0] == 303

    # Console: the user page shows where from, and its button unlocks.
    lock_regional()
    page = admin_client.get("/console/users/regional").text
    assert "Locked after failed sign-ins from:" in page and ATTACKER in page
    assert "locked from 1 address" in admin_client.get("/console/users").text
    assert admin_client.post("/console/users/regional/unlock", data={}).status_code == 403
    done = admin_client.post("/console/users/regional/unlock", data={"csrf_token": csrf})
    assert done.status_code == 200 and "Unlocked: regional can sign in again" in done.text and "Not locked." in done.text

    # CLI.
    lock_regional()
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", world.engine.url.render_as_string(hide_password=False))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["users", "list"]) == 0
    assert f"regional\tregional\teast\tactive, locked from {ATTACKER}" in capsys.readouterr().out
    assert main(["users", "unlock", "regional"]) == 0
    assert "unlocked" in capsys.readouterr().out
    assert main(["users", "unlock", "nobody"]) == 2
    assert capsys.readouterr().err == "omnishelf: error: No user 'nobody'\n"
    with client_of(world) as c:
        assert attempt(c, "regional", PASSWORD, ATTACKER)[0] == 303

    with Session(world.engine) as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "user.unlock").order_by(AuditEntry.id)).all()
    assert [(e.actor, e.via) for e in entries] == [("user:admin", "console"), ("user:admin", "console"),
                                                   (entries[2].actor, "cli")]
    assert entries[2].actor.startswith("cli:")
    before = entries[0].before
    assert before is not None and list(before["locked_from"]) == [ATTACKER]
    assert entries[0].after == {"locked_until": None, "locked_from": {}}


def test_a_new_password_lifts_the_lock(world: World) -> None:
    with client_of(world) as client:
        for _ in range(5):
            attempt(client, "store", WRONG, ATTACKER)
        with service.write_session(world.engine) as s, s.begin():
            service.set_password(s, "cli:test", "store", "a brand new passphrase", via="cli")
        assert attempt(client, "store", "a brand new passphrase", ATTACKER)[0] == 303


def test_parallel_attempts_cannot_get_more_guesses_than_the_limit(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each attempt counts itself before its (slow) hash check: 12 guesses at once get 5 checks."""
    checked: list[str] = []
    real = service.verify_password
    gate = threading.Barrier(5, timeout=10)

    def slow(session: Session, username: str, password: str) -> object:
        checked.append(password)
        gate.wait()  # every admitted attempt is in its hash check at the same time
        return real(session, username, password)

    monkeypatch.setattr(service, "verify_password", slow)
    results: list[str | None] = []
    policy = service.Policy()

    def guess(i: int) -> None:
        results.append(service.sign_in(world.engine, "admin", f"guess {i}", ATTACKER, policy))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [None] * 12
    assert len(checked) == 5
    assert actions(world.engine, "user.lockout") == [("user.lockout", f"source:{ATTACKER}", "admin")]
    with Session(world.engine) as s:
        assert s.scalars(select(LoginThrottle.failures).where(LoginThrottle.scope == "source")).one() == 12


SOURCES = [
    ("203.0.113.5", "203.0.113.5"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same subscriber's /64
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("testclient", "testclient"),
    ("a\x00b", "a?b"),
    (None, "unknown"),
]


@pytest.mark.parametrize(("host", "key"), SOURCES)
def test_source_keys(host: str | None, key: str) -> None:
    assert throttle.source_key(host) == key


def test_quiet_counters_are_forgotten(world: World) -> None:
    with client_of(world) as client:
        for _ in range(4):
            attempt(client, "hq", WRONG, ATTACKER)
        attempt(client, "ghost", WRONG, OTHER)
        with service.write_session(world.engine) as s, s.begin():
            s.execute(update(LoginThrottle).values(last_failure_at=datetime.now(UTC) - timedelta(minutes=16)))
        attempt(client, "hq", WRONG, ATTACKER)  # starts a new count
        for _ in range(3):
            attempt(client, "hq", WRONG, ATTACKER)
        assert attempt(client, "hq", PASSWORD, ATTACKER)[0] == 303  # 4 in this window: not locked
    assert actions(world.engine, "user.lockout") == []
    with Session(world.engine) as s:  # the quiet rows are gone, unknown names' with them
        assert s.scalars(select(LoginThrottle).where(LoginThrottle.account == "ghost")).all() == []
        assert s.scalars(select(LoginThrottle).where(LoginThrottle.source == OTHER)).all() == []


def test_sign_in_with_a_nul_in_the_name_is_an_ordinary_failure(world: World) -> None:
    with client_of(world) as client:
        assert attempt(client, "ad\x00min", PASSWORD, ATTACKER) == (401, GENERIC)
        assert attempt(client, "admin", PASSWORD, ATTACKER)[0] == 303
    with Session(world.engine) as s:
        assert "ad?min" in s.scalars(select(LoginThrottle.account)).all()


def test_the_migration_goes_down_and_up(engine: Engine) -> None:
    from alembic import command

    from cloud.db import alembic_config, write_transaction

    cfg = alembic_config()
    for step, revision, throttled in ((command.downgrade, "0004", False), (command.upgrade, "head", True)):
        with write_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)
        schema = inspect(engine)
        assert schema.has_table("login_throttle") is throttled
        assert ("failed_logins" in {c["name"] for c in schema.get_columns("users")}) is not throttled
    with Session(engine) as s:
        assert s.scalars(select(LoginThrottle)).all() == []


def test_concurrent_sign_ins_on_shared_rows_never_fail(world: World) -> None:
    """Attempts sharing an address, an account or both, at once: each ends in a session, a refusal
    or a throttle, never a database error (the rows are always taken in one order)."""
    policy = service.Policy(max_failures=3, source_max_failures=12, account_max_failures=8)
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def one(i: int) -> None:
        name, source = ("admin", "hq", "nobody")[i % 3], (ATTACKER, OWNER)[i % 2]
        try:
            token = service.sign_in(world.engine, name, PASSWORD if i % 4 == 0 else WRONG, source, policy)
            outcomes.append("session" if token else "refused")
        except service.Throttled:
            outcomes.append("throttled")
        except BaseException as exc:  # any error is the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(36)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(outcomes) == 36 and "refused" in outcomes
