"""Schema, migrations and seed data on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

import cloud.db as cloud_db
from cloud.catalogue.models import Product
from cloud.db import alembic_config, make_engine, migrate, normalize_url, write_transaction
from cloud.models import Base, Node, Region, Store
from cloud.schema_check import include_name
from cloud.seed import DEMO_STORE_DETAILS, DEMO_STORES, seed


def test_migrated_schema_equals_models(engine: Engine) -> None:
    with engine.connect() as conn:
        # include_name: what env.py compares (the revision record is bookkeeping, like alembic_version).
        opts = {"compare_type": True, "compare_server_default": False, "include_name": include_name}
        ctx = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(ctx, Base.metadata) == []


def test_migrate_twice_is_a_no_op(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head


def test_seed_is_idempotent(engine: Engine) -> None:
    first = seed(engine)
    assert (first.regions, first.stores, first.nodes) == (2, 3, 3)
    assert first.products >= 3
    assert seed(engine).total == 0
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Store)) == 3
        assert s.scalar(select(func.count()).select_from(Region)) == 2
        assert s.scalar(select(func.count()).select_from(Product)) == first.products
        shanghai = s.scalars(select(Store).where(Store.code == "st0001")).one()
        assert (shanghai.lat, shanghai.lon, shanghai.timezone) == (31.2350, 121.4740, "Asia/Shanghai")
        assert shanghai.region.code == "east"
        for code, node_id in DEMO_STORES.items():
            node = s.get(Node, node_id)
            assert node is not None and node.store is not None and node.store.code == code
        assert all(p.name_zh and p.name_en for p in s.scalars(select(Product)))
    assert all(DEMO_STORE_DETAILS[c].node == n for c, n in DEMO_STORES.items())


def test_store_rejects_unknown_time_zone() -> None:
    with pytest.raises(ValueError, match="IANA"):
        Store(code="x", name="x", region_id=1, lat=0.0, lon=0.0, timezone="China/Beijing")


def test_sqlite_pragmas_and_parent_dir(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}"
    eng = make_engine(url)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() > 0
    finally:
        eng.dispose()
    assert (tmp_path / "deep" / "er" / "x.db").exists()


def test_url_rules() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(ValueError, match="Unsupported database"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(ValueError, match="Invalid database URL"):
        normalize_url("not a url")


def _no_busy_wait(engine: Engine) -> None:
    # busy_timeout=0: a writer that meets SQLite's lock fails at once instead of sleeping in the
    # busy handler, so these tests see whether writers of one process ever meet it.
    event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA busy_timeout=0"))


def test_sqlite_writers_of_one_process_queue_before_sqlite_lock(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    _no_busy_wait(engine)
    with write_transaction(engine) as db:
        db.execute(text("CREATE TABLE t (x INTEGER)"))
    holding, trying = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second_writer() -> None:
        holding.wait()
        trying.set()
        try:
            with write_transaction(engine) as db:
                db.execute(text("INSERT INTO t VALUES (2)"))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=second_writer)
    t.start()
    with write_transaction(engine) as db:
        db.execute(text("INSERT INTO t VALUES (1)"))
        holding.set()
        assert trying.wait(5)
        # Hold on long enough for the second writer to reach BEGIN IMMEDIATE (microseconds after
        # `trying`): without the gate it meets SQLite's lock and fails at once (busy_timeout=0).
        time.sleep(0.2)
    t.join(10)
    assert errors == []
    with engine.connect() as db:
        assert db.execute(text("SELECT x FROM t ORDER BY x")).scalars().all() == [1, 2]


@pytest.mark.parametrize("ending", ["commit", "error", "session-rollback", "invalidate"])
def test_sqlite_write_gate_is_released_however_a_transaction_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    monkeypatch.setattr(cloud_db, "SQLITE_BUSY_TIMEOUT_MS", 500)  # a leaked gate fails fast
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with write_transaction(engine) as db:
        db.execute(text("CREATE TABLE t (x INTEGER)"))
    if ending == "commit":
        with write_transaction(engine) as db:
            db.execute(text("INSERT INTO t VALUES (1)"))
    elif ending == "error":
        with pytest.raises(ZeroDivisionError), write_transaction(engine) as db:
            db.execute(text("INSERT INTO t VALUES (1)"))
            _ = 1 / 0
    elif ending == "session-rollback":
        session = Session(engine.execution_options(omnishelf_write=True))
        session.execute(text("INSERT INTO t VALUES (1)"))
        session.close()  # never committed: the pool rolls the connection back
    else:
        conn = engine.connect().execution_options(omnishelf_write=True)
        conn.begin()
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.invalidate()
        conn.close()
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(_write_once(engine)))
    t.start()
    t.join(5)
    assert done == [True]


def _write_once(engine: Engine) -> bool:
    with write_transaction(engine) as db:
        db.execute(text("INSERT INTO t VALUES (9)"))
    return True


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_not_used(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping on every checkout (a round trip each): a connection idle for PING_AFTER_IDLE_S is
    pinged, and one the server ended meanwhile (a restart, a dropped link) is thrown away for a new
    one instead of failing the caller's first statement."""
    import psycopg

    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engine.connect() as conn:  # back at once: the same connection
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first
    # The server ends it while it waits in the pool.
    with psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    monkeypatch.setattr(cloud_db, "PING_AFTER_IDLE_S", 0.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first
