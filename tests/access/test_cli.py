"""`omnishelf users`: every user error is one line naming the option actually given."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from cloud.access.models import ApiKey, AuditEntry, User
from cloud.db import make_engine, migrate
from omnishelf.cli import main
from tests.access.conftest import make_world, row_count

# argv after `omnishelf users`, standard input, the exact error line.
ERRORS = [
    (["add", "--username", "wu", "--role", "hq", "--password-stdin"], "short\n",
     "--password-stdin: at least 10 characters are needed"),
    (["passwd", "--username", "admin", "--password-stdin"], "short\n",
     "--password-stdin: at least 10 characters are needed"),
    (["add", "--username", "Wu Li", "--role", "hq", "--generate"], "",
     "--username: 'Wu Li': use lower-case letters, digits, '.', '_' and '-'"),
    (["add", "--username", "wu", "--role", "hq", "--store", "st0001", "--generate"], "",
     "--store: role 'hq' sees every region; give no regions or stores"),
    (["add", "--username", "wu", "--role", "hq", "--region", "east", "--generate"], "",
     "--region: role 'hq' sees every region; give no regions or stores"),
    (["add", "--username", "wu", "--role", "store", "--store", "st0001", "--region", "east", "--generate"], "",
     "--region: a store user is scoped by stores only; give no regions"),
    (["add", "--username", "wu", "--role", "store", "--generate"], "",
     "--store: a store user needs at least one store"),
    (["add", "--username", "wu", "--role", "regional", "--region", "north", "--generate"], "",
     "--region: unknown region code(s): north"),
    (["add", "--username", "admin", "--role", "hq", "--generate"], "", "--username: 'admin' already exists"),
    (["passwd", "--username", "nobody", "--generate"], "", "No user 'nobody'"),
    (["disable", "--username", "nobody"], "", "No user 'nobody'"),
    (["disable", "--username", "admin"], "", "--username: 'admin' is the last active admin: make another user admin first"),
    (["api-key", "create", "--name", "k", "--role", "hq", "--expires-days", "0"], "",
     "--expires-days 0: expected a whole number of days from 1 to 3650 (omit it for a key that does not expire)"),
    (["api-key", "create", "--name", "k", "--role", "hq", "--expires-days", "99999999999"], "",
     "--expires-days 99999999999: expected a whole number of days from 1 to 3650 (omit it for a key that does not expire)"),
    (["api-key", "create", "--name", "hq-key", "--role", "hq"], "", "--name: an API key named 'hq-key' already exists"),
    (["api-key", "create", "--name", "k", "--role", "regional"], "", "--region: a regional user needs at least one region"),
    (["api-key", "revoke", "--name", "nope"], "", "No API key 'nope'"),
]


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One database for every case: a refused command writes nothing, which each case checks."""
    eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'cloud.db'}")
    migrate(eng)
    make_world(eng)
    yield eng
    eng.dispose()


@pytest.mark.parametrize(("argv", "stdin", "message"), ERRORS, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _, _) in enumerate(ERRORS)])
def test_cli_errors_name_the_option_given_and_write_nothing(
    cli_db: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str], stdin: str, message: str,
) -> None:
    before = row_count(cli_db, User), row_count(cli_db, ApiKey), row_count(cli_db, AuditEntry)
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", cli_db.url.render_as_string(hide_password=False))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["users", *argv])
    out, err = capsys.readouterr()
    assert (code, err) == (2, f"omnishelf: error: {message}\n"), out
    assert (row_count(cli_db, User), row_count(cli_db, ApiKey), row_count(cli_db, AuditEntry)) == before
