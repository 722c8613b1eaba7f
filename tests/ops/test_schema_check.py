"""No implicit migrations in production, automatic ones in development, rolling upgrades.

Every branch on SQLite and PostgreSQL: current, empty, older, newer and compatible, newer and not,
unknown; the record of revisions that older software reads; `omnishelf cloud migrate` in each case.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from broker.mosquitto import free_port
from cloud.db import make_engine, migrate
from cloud.schema_check import REVISIONS_TABLE, SchemaState, read_status
from omnishelf.cli import main
from tests.ops.conftest import REPO, Databases, apply_newer, cloud_env, omnishelf


def _errors(err: str) -> int:
    """Lines of stderr, not counting the catalogue commands' note of which database they use."""
    return sum(1 for line in err.splitlines() if not line.startswith("catalogue: database "))


def _head() -> str:
    from alembic.script import ScriptDirectory

    from cloud.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _chain() -> list[tuple[str, str | None, bool]]:
    """(revision, down_revision, compatible) of this code's migrations, oldest first."""
    from alembic.script import ScriptDirectory

    from cloud.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    revs = list(reversed(list(script.walk_revisions())))
    return [(r.revision, r.down_revision, bool(getattr(r.module, "compatible", False))) for r in revs]  # type: ignore[misc]

HEAD = _head()  # this code's newest revision
EXPAND = ("ops_expand", True, "op.add_column('regions', sa.Column('ops_note', sa.String(50), nullable=True))")
CONTRACT = ("ops_contract", False, "op.create_table('ops_contract_probe', sa.Column('id', sa.Integer, primary_key=True))")

# Every command that runs against the database, as a user types it (serve and worker never get
# past the check in these tests: the ones that must run do so in their own process below).
COMMANDS = [
    ["cloud", "serve", "--no-worker"],
    ["cloud", "worker"],
    ["cloud", "seed"],
    ["users", "list"],
    ["fleet", "failed", "list"],
    ["catalogue", "version"],
]


@pytest.fixture
def use_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the command line at the test's database; return a function setting OMNISHELF_ENV."""
    for key, value in cloud_env(tmp_path, db_url).items():
        monkeypatch.setenv(key, value)

    def env(name: str) -> None:
        monkeypatch.setenv("OMNISHELF_ENV", name)

    return env


def revision(db_url: str) -> str | None:
    eng = make_engine(db_url)
    try:
        with eng.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    finally:
        eng.dispose()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    if args[:2] == ["cloud", "serve"]:
        args = [*args, "--port", str(free_port())]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_code_head_is_what_these_tests_assume() -> None:
    from alembic.script import ScriptDirectory

    from cloud.db import alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_migrate_records_every_revision_with_its_flag(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    apply_newer(db_url, tmp_path / "newer", [EXPAND, CONTRACT])
    eng = make_engine(db_url)
    try:
        with eng.connect() as conn:
            rows = conn.execute(text(f"SELECT revision, down_revision, compatible FROM {REVISIONS_TABLE} ORDER BY revision")).all()
    finally:
        eng.dispose()
    assert [tuple(r) for r in rows] == [
        *_chain(), ("ops_contract", "ops_expand", False), ("ops_expand", HEAD, True),
    ]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_production_refuses_an_empty_database_and_leaves_it_alone(
    args: list[str], db_url: str, use_db, capsys: pytest.CaptureFixture[str]
) -> None:
    use_db("production")
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.strip().endswith(
        f"has no omnishelf schema yet (empty), this software needs {HEAD}: run 'omnishelf cloud migrate'"
    ), err
    assert _errors(err) == 1 and "Traceback" not in err
    assert revision(db_url) is None


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_production_refuses_an_older_database_and_leaves_it_alone(
    args: list[str], db_url: str, use_db, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(db_url, "0003")
    use_db("production")
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.strip().endswith(f"is at revision 0003, this software needs {HEAD}: run 'omnishelf cloud migrate'"), err
    assert "omnishelf: error: database " in err and _errors(err) == 1
    assert revision(db_url) == "0003"


def test_production_migrate_then_run(db_url: str, use_db, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(db_url, "0003")
    use_db("production")
    code, out, _ = run(["cloud", "migrate"], capsys)
    after = [rev for rev, _down, _c in _chain()][3:]  # what comes after 0003
    assert code == 0 and out.strip().endswith(f"migrated from 0003 to {HEAD} (applied {', '.join(after)})"), out
    assert revision(db_url) == HEAD
    code, out, _ = run(["cloud", "migrate"], capsys)
    assert code == 0 and f"is at the newest schema revision ({HEAD}); nothing to migrate" in out
    code, out, err = run(["cloud", "seed"], capsys)
    assert code == 0 and "added 2 regions" in out, err


def test_production_migrate_creates_an_empty_database(db_url: str, use_db, capsys: pytest.CaptureFixture[str]) -> None:
    use_db("production")
    code, out, _ = run(["cloud", "migrate"], capsys)
    assert code == 0 and out.strip().endswith(f"migrated from empty to {HEAD} (applied every revision)"), out
    assert revision(db_url) == HEAD


@pytest.mark.parametrize("start", ["empty", "0002"])
def test_development_migrates_by_itself_and_says_so(
    start: str, db_url: str, use_db, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    if start != "empty":
        migrate(db_url, start)
    use_db("development")
    with caplog.at_level(logging.INFO, logger="cloud.cli"):
        code, out, err = run(["cloud", "seed"], capsys)
    assert code == 0 and "added 2 regions" in out, err
    said = [r.getMessage() for r in caplog.records if r.name == "cloud.cli"]
    assert any(
        f"migrated from {start} to {HEAD} (OMNISHELF_ENV=development migrates on start; in production only "
        "'omnishelf cloud migrate' does)" in m for m in said
    ), said
    assert revision(db_url) == HEAD


@pytest.mark.parametrize("env", ["production", "development"])
def test_a_compatible_newer_database_runs_with_a_warning(
    env: str, db_url: str, tmp_path: Path, use_db, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    migrate(db_url)
    apply_newer(db_url, tmp_path / "newer", [EXPAND])
    use_db(env)
    with caplog.at_level(logging.WARNING, logger="cloud.cli"):
        code, out, err = run(["cloud", "seed"], capsys)
    assert code == 0 and "added 2 regions" in out, err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "cloud.cli"]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"is at revision ops_expand, newer than this software ({HEAD}); ops_expand is backward compatible, so this "
        "software runs against it: upgrade omnishelf on this host when you can"
    ), warnings
    assert revision(db_url) == "ops_expand"  # never "migrated" back or sideways
    code, out, _ = run(["cloud", "migrate"], capsys)
    assert code == 0 and out.strip().endswith("; nothing to migrate") and "ops_expand is backward compatible" in out
    assert revision(db_url) == "ops_expand"


@pytest.mark.parametrize("env", ["production", "development"])
@pytest.mark.parametrize("args", [*COMMANDS, ["cloud", "migrate"]], ids=lambda a: " ".join(a))
def test_an_incompatible_newer_database_is_refused(
    args: list[str], env: str, db_url: str, tmp_path: Path, use_db, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(db_url)
    apply_newer(db_url, tmp_path / "newer", [EXPAND, CONTRACT])
    use_db(env)
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert err.strip().endswith(
        f"revision ops_contract is newer than this software ({HEAD}) and ops_contract is not backward compatible: "
        "upgrade omnishelf on this host"
    ), err
    assert _errors(err) == 1
    assert revision(db_url) == "ops_contract"


def test_a_revision_nobody_recorded_is_refused(db_url: str, use_db, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(db_url)
    eng = make_engine(db_url)
    with eng.begin() as conn:  # as if a newer release migrated it without keeping the record
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    eng.dispose()
    assert read_status(make_engine(db_url)).state is SchemaState.UNKNOWN
    use_db("production")
    code, _, err = run(["cloud", "seed"], capsys)
    assert code == 2 and f"is at revision f00d, which this software ({HEAD}) cannot place" in err, err
    use_db("development")
    code, _, err = run(["cloud", "migrate"], capsys)
    assert code == 2 and "cannot place" in err and "Traceback" not in err


def test_a_migration_with_a_bad_flag_is_named(db_url: str, tmp_path: Path, use_db, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(db_url)
    with pytest.raises(ValueError, match=r"migration ops_bad: 'compatible' must be True or False, got 'yes'"):
        apply_newer(db_url, tmp_path / "newer", [("ops_bad", "yes", "pass")])
    assert revision(db_url) == HEAD  # the upgrade rolled back with it


def test_older_software_serves_during_a_rolling_upgrade(db_url: str, tmp_path: Path) -> None:
    """Production: a host still on this software keeps starting (and serving) after newer software
    applied an expand step; once a contract step is applied it stops starting."""
    migrate(db_url)
    apply_newer(db_url, tmp_path / "newer", [EXPAND])
    env = cloud_env(tmp_path, db_url, env="production")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "cloud", "serve", "--no-worker", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["database"] == "ok"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "WARNING" in out and "ops_expand is backward compatible" in out, out
    apply_newer(db_url, tmp_path / "newer", [EXPAND, CONTRACT])
    done = omnishelf(["cloud", "serve", "--no-worker", "--port", str(port)], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("ops_contract is not backward compatible: upgrade omnishelf on this host")


def test_the_record_survives_outside_the_models(db_url: str) -> None:
    """schema_revisions is bookkeeping: not a model, not copied by move-to, invisible to autogenerate."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cloud.models import Base
    from cloud.schema_check import include_name
    from cloud.transfer import moved_tables

    migrate(db_url)
    assert REVISIONS_TABLE not in {t.name for t in moved_tables()}
    eng = create_engine(make_engine(db_url).url)
    try:
        with eng.connect() as conn:
            assert inspect(conn).has_table(REVISIONS_TABLE)
            ctx = MigrationContext.configure(conn, opts={"include_name": include_name})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        eng.dispose()


_MIGRATE_AT_SIGNAL = """
import sys, time
from pathlib import Path
from cloud.db import migrate
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
migrate(sys.argv[1])
"""


@pytest.mark.postgres
def test_hosts_migrating_an_empty_database_at_once_all_succeed(databases: Databases, tmp_path: Path) -> None:
    # Imports done, every process waits for one file: they reach PostgreSQL within a millisecond
    # or two of each other, as hosts started together by configuration management do.
    url = databases.new("postgresql")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _MIGRATE_AT_SIGNAL, url, str(go)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    status = read_status(make_engine(url))
    assert status.state is SchemaState.CURRENT
