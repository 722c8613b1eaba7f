"""Operations fixtures: fresh databases (SQLite files, PostgreSQL databases of their own), the
`omnishelf` command as a subprocess, newer migrations than the code's, and table snapshots."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from broker.mosquitto import free_port
from cloud.db import MIGRATIONS, alembic_config, write_transaction
from cloud.transfer import moved_tables
from tests.cloud.conftest import _pg_unreachable, db_url, engine  # noqa: F401 - fixtures
from tests.conftest import PG_URL, broker  # noqa: F401 - fixture

__all__ = ["Databases", "apply_newer", "omnishelf", "table_rows"]

REPO = Path(__file__).resolve().parents[2]


def require_pg() -> None:
    problem = _pg_unreachable()
    if problem:
        pytest.skip(problem)


class Databases:
    """Fresh databases for one test: SQLite files under tmp, PostgreSQL databases of their own
    (pg_dump and pg_restore work on whole databases), dropped afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.created: list[str] = []

    def new(self, kind: str, *, schema: str | None = None) -> str:
        name = f"ops_{secrets.token_hex(5)}"
        if kind == "sqlite":
            return f"sqlite:///{self.tmp / name / 'omnishelf.db'}"
        require_pg()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        url = make_url(PG_URL).set(database=name)
        if schema is not None:
            with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            url = url.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(psycopg.Error), psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[Databases]:
    dbs = Databases(tmp_path)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_pg()
    return str(request.param)


def omnishelf(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `omnishelf` command as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "omnishelf.cli", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cloud_env(tmp: Path, url: str, *, catalogue: Path | None = None, env: str = "development") -> dict[str, str]:
    """The environment of a cloud host on `url` (nothing inherited from the machine's own settings)."""
    return {
        "OMNISHELF_DATA_DIR": str(tmp / "data"),
        "OMNISHELF_DATABASE_URL": url,
        "OMNISHELF_CATALOGUE_DIR": str(catalogue or tmp / "catalogue"),
        "OMNISHELF_ENV": env,
        "OMNISHELF_BROKER_PASSWORD": "not-the-default",
    }


# -- newer software's migrations -------------------------------------------------------------------

_TEMPLATE = '''\
"""{doc}"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
compatible = {compatible!r}


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def apply_newer(url: str | Engine, where: Path, steps: list[tuple[str, Any, str]]) -> list[str]:
    """Upgrade the database with migrations newer than this code's, as newer software would:
    `steps` are (revision, compatible flag, upgrade body), chained from the code's head. The
    Alembic environment is the real one, so the revision record is written as in production."""
    from alembic import command
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    where.mkdir(parents=True, exist_ok=True)
    down = head
    for rev, compatible, body in steps:
        (where / f"{rev}.py").write_text(
            _TEMPLATE.format(doc=f"test migration {rev}", rev=rev, down=down, compatible=compatible,
                             body=textwrap.indent(body, "    "))
        )
        down = rev
    cfg = alembic_config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join([str(MIGRATIONS / "versions"), str(where)]))
    from cloud.db import make_engine

    eng = url if isinstance(url, Engine) else make_engine(url)
    try:
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
    finally:
        if not isinstance(url, Engine):
            eng.dispose()
    return [rev for rev, _, _ in steps]


# -- table contents --------------------------------------------------------------------------------


def table_rows(eng: Engine, *, skip: Callable[[str, str], bool] = lambda _t, _c: False) -> dict[str, list[tuple[Any, ...]]]:
    """Every engine table's rows (all columns but the skipped ones), in primary-key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with eng.connect() as conn:
        for table in moved_tables():
            cols = [c for c in table.columns if not skip(table.name, c.name)]
            rows = conn.execute(select(*cols).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str, timeout: float = 30) -> Iterator[str]:
    """`omnishelf cloud serve` in its own process until the block ends; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "cloud", "serve", "--port", str(port), *args],
        env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"serve exited: {proc.communicate()[0]}"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def named_files(eng: Engine) -> set[str]:
    """The content-addressed catalogue files a database names (images, thumbnails, sync files)."""
    from cloud.catalogue.models import Artifact, ImageFile

    with eng.connect() as conn:
        names = {sha for row in conn.execute(select(ImageFile.sha256, ImageFile.thumb_sha256)) for sha in row}
        names |= set(conn.execute(select(Artifact.sha256)).scalars())
    return names
