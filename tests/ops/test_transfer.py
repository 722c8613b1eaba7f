"""`omnishelf cloud move-to`: a SQLite installation moved to PostgreSQL serves the same data, and
new writes work there (sequences reset); refusals and an all-or-nothing move."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from cloud.access.models import User
from cloud.catalogue.models import products
from cloud.catalogue.sync import product_record
from cloud.db import make_engine, migrate
from cloud.models import DownlinkCommand, IngestedMessage
from cloud.seed import seed
from cloud.transfer import MoveError, MoveProblem, move
from omnishelf.cli import main
from tests.cloud.conftest import box, until
from tests.conftest import Broker
from tests.ops.conftest import Databases, cloud_env, omnishelf, serving, table_rows
from tests.ops.data import PASSWORD, populate
from tests.ops.test_schema_check import HEAD


def _no_txid(table: str, column: str) -> bool:
    return table == "ingested_messages" and column == "txid"


def _max_id(eng: Engine, table: str) -> int:
    with eng.connect() as conn:
        return int(conn.execute(text(f"SELECT max(id) FROM {table}")).scalar_one())


def _sign_in(base: str, username: str, password: str) -> dict[str, object]:
    with httpx.Client(base_url=base, timeout=10) as client:
        form = client.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        r = client.post("/console/login", data={"username": username, "password": password, "csrf_token": token[1]})
        assert r.status_code == 303, r.text
        me = client.get("/me")
        assert me.status_code == 200, me.text
        return dict(me.json())


@pytest.mark.postgres
def test_a_populated_sqlite_installation_moves_and_serves_from_postgresql(
    databases: Databases, broker: Broker, tmp_path: Path
) -> None:
    sqlite_url, pg_url = databases.new("sqlite"), databases.new("postgresql")
    cat = tmp_path / "catalogue"
    src = make_engine(sqlite_url)
    migrate(src)
    pop = populate(src, cat, tmp_path / "work", messages=50)

    done = omnishelf(["cloud", "move-to", pg_url], cloud_env(tmp_path, sqlite_url, catalogue=cat))
    assert done.returncode == 0, done.stderr
    tables = table_rows(src)
    rows = sum(len(v) for v in tables.values())
    assert f"moved {rows:,} rows in {len(tables)} tables to " in done.stdout
    assert "ingested_messages: 153 rows" in done.stdout

    dst = make_engine(pg_url)
    assert table_rows(dst, skip=_no_txid) == table_rows(src, skip=_no_txid)  # every row, every column
    with dst.connect() as conn:
        assert set(conn.execute(select(IngestedMessage.txid)).scalars()) == {0}  # before any new transaction
        catalog_before = conn.execute(
            select(func.count()).select_from(DownlinkCommand).where(DownlinkCommand.type == "catalog")
        ).scalar_one()
    ledger_top, user_top = _max_id(dst, "ingested_messages"), _max_id(dst, "users")

    cloud = broker.add_cloud("cloud-9")
    env = {
        **cloud_env(tmp_path, pg_url, catalogue=cat, env="production"),
        "OMNISHELF_BROKER_URL": broker.url, "OMNISHELF_BROKER_USERNAME": "cloud-9", "OMNISHELF_BROKER_PASSWORD": cloud,
        "OMNISHELF_COOKIE_SECURE": "false",  # plain http in this test
    }
    with serving(env) as base:
        auth = {"Authorization": f"Bearer {pop.keys['hq']}"}
        nodes = {n["id"]: n for n in httpx.get(f"{base}/nodes", headers=auth, timeout=10).json()}
        assert set(nodes) == {"st0001-k1", "st0002-k1", "st0003-k1"}
        assert all(n["seq_contig"] == 50 for n in nodes.values())
        east = httpx.get(f"{base}/nodes", headers={"Authorization": f"Bearer {pop.keys['east']}"}, timeout=10).json()
        assert sorted(n["id"] for n in east) == ["st0001-k1", "st0002-k1"]  # grants moved with their ids
        assert _sign_in(base, "ops-east", PASSWORD) == {
            "kind": "user", "name": "ops-east", "role": "regional", "regions": ["east"], "stores": []
        }
        sku = pop.skus[0]
        got = httpx.get(f"{base}/catalogue/products/{sku}", headers=auth, timeout=10).json()
        with src.connect() as conn:
            expected = product_record(conn.execute(select(products).where(products.c.sku == sku)).one())
        assert {k: got[k] for k in expected} == expected

        async def ingest() -> None:
            async with box(broker, "st0001-k1") as b:
                b.seq = 50
                await b.birth()
                await b.scan()
                await until(lambda: _max_id(dst, "ingested_messages") > ledger_top + 1, timeout=20, what="new scan stored")

        asyncio.run(ingest())
    with dst.connect() as conn:
        new = conn.execute(
            select(IngestedMessage.id, IngestedMessage.type, IngestedMessage.seq, IngestedMessage.txid)
            .where(IngestedMessage.id > ledger_top).order_by(IngestedMessage.id)
        ).all()
        # The ledger's sequence continues after the moved ids; new rows carry a real transaction id.
        assert [(m.id, m.type, m.seq) for m in new] == [(ledger_top + 1, "birth", 50), (ledger_top + 2, "scan", 51)]
        assert all(m.txid is not None and m.txid > 0 for m in new)
        # The catalogue's epoch moved with it: nothing was announced again.
        assert conn.execute(
            select(func.count()).select_from(DownlinkCommand).where(DownlinkCommand.type == "catalog")
        ).scalar_one() == catalog_before
    added = omnishelf(["users", "add", "--username", "ops-new", "--role", "hq", "--generate"], env)
    assert added.returncode == 0, added.stderr
    with dst.connect() as conn:
        assert conn.execute(select(User.id).where(User.username == "ops-new")).scalar_one() == user_top + 1
    src.dispose()
    dst.dispose()


@pytest.mark.postgres
def test_move_refusals(databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_url, pg_url = databases.new("sqlite"), databases.new("postgresql")

    def run(*args: str, source: str = sqlite_url) -> tuple[int, str]:
        for k, v in cloud_env(tmp_path, source).items():
            monkeypatch.setenv(k, v)
        code = main(["cloud", "move-to", *args])
        err = capsys.readouterr().err
        assert code == 0 or (err.count("\n") == 1 and "Traceback" not in err), err
        return code, err

    code, err = run(pg_url)
    assert code == 2 and "does not exist (nothing to move)" in err
    migrate(sqlite_url, "0003")
    code, err = run(pg_url)
    assert code == 2 and f"is at revision 0003, this software needs {HEAD}: run 'omnishelf cloud migrate'" in err
    migrate(sqlite_url)
    code, err = run(f"sqlite:///{tmp_path / 'other.db'}")
    assert code == 2 and "expected postgresql://user@host/db" in err
    code, err = run("mysql://x@y/z")
    assert code == 2 and "URL: Unsupported database 'mysql'" in err
    code, err = run(pg_url, "--batch", "0")
    assert code == 2 and "--batch 0: expected a positive number of rows" in err
    code, err = run("postgresql://nobody@127.0.0.1:1/none", "--db-timeout", "0")
    assert code == 2 and "not reachable" in err
    code, err = run(pg_url, source=pg_url)
    assert code == 2 and "move-to moves a SQLite installation" in err
    eng = make_engine(sqlite_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE site_notes (id INTEGER PRIMARY KEY, body TEXT)"))
    code, err = run(pg_url)
    assert code == 2 and "holds tables no engine declares (site_notes)" in err
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE site_notes"))
    seed(eng)
    eng.dispose()
    code, err = run(pg_url)
    assert code == 0, err
    code, err = run(pg_url)
    assert code == 2 and "is not empty (" in err and "move-to copies into an empty database only" in err


@pytest.mark.postgres
def test_a_write_to_the_source_during_the_move_commits_nothing(databases: Databases, tmp_path: Path) -> None:
    sqlite_url, pg_url = databases.new("sqlite"), databases.new("postgresql")
    src, dst = make_engine(sqlite_url), make_engine(pg_url)
    migrate(src)
    populate(src, tmp_path / "cat", tmp_path / "work", messages=5)
    wrote: list[str] = []

    def say(line: str) -> None:  # a cloud host still running: it stores a message mid-move
        if line.startswith("ingested_messages") and not wrote:
            with src.begin() as conn:
                conn.execute(text("UPDATE nodes SET lost_seqs = lost_seqs + 1"))
                conn.execute(text("INSERT INTO regions (code, name) VALUES ('late', 'Late region')"))
            wrote.append(line)

    with pytest.raises(MoveError) as caught:
        move(src, dst, say=say)
    assert wrote and caught.value.reason is MoveProblem.SOURCE_CHANGED
    assert "the source database changed during the move (regions: 2 → 3)" in str(caught.value)
    assert all(not rows for name, rows in table_rows(dst).items() if name not in ("catalogue_epoch", "orders_versions"))
    src.dispose()
    dst.dispose()
