"""Times of backup, restore and move-to for a ledger of N rows (not a test: run it by hand).

    .venv/bin/python -m tests.ops.bench_ops --rows 1000000

Builds a SQLite installation (the demo seed, N scans in the ledger, a small catalogue), then times
`backup` and `restore` on SQLite, `move-to` PostgreSQL, and `backup` and `restore` on PostgreSQL,
each through the library function the command calls. PostgreSQL from OMNISHELF_TEST_PG_URL (its
databases are created and dropped here). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from cloud.backup import backup, restore
from cloud.db import make_engine, migrate, write_transaction
from cloud.models import IngestedMessage
from cloud.seed import DEMO_STORES, seed
from cloud.transfer import move
from tests.conftest import PG_URL
from tests.ops.data import catalogue_import


def fill_ledger(eng: Any, rows: int, chunk: int = 20_000) -> None:
    nodes = list(DEMO_STORES.values())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for first in range(0, rows, chunk):
        batch = []
        for i in range(first, min(first + chunk, rows)):
            node = nodes[i % len(nodes)]
            at = start + timedelta(milliseconds=i * 10)
            batch.append({
                "msg_id": uuid.uuid4(), "node": node, "type": "scan", "session": 1, "seq": i // len(nodes) + 1,
                "ts": at, "received_at": at + timedelta(milliseconds=3), "historical": False, "corr": None,
                "data": {"code": f"0690123456789{i % 10}", "symbology": "ean13", "station": "s1", "purpose": "verify"},
            })
        with write_transaction(eng) as conn:
            conn.execute(insert(IngestedMessage), batch)


def new_pg_database() -> tuple[str, str]:
    name = f"ops_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(fn: Any, *args: Any, **kw: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kw)
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    out: dict[str, Any] = {"ledger_rows": args.rows}
    created: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        cat = tmp / "catalogue"
        src = make_engine(f"sqlite:///{tmp / 'src.db'}")
        migrate(src)
        seed(src)
        t0 = time.perf_counter()
        fill_ledger(src, args.rows)
        out["fill_s"] = round(time.perf_counter() - t0, 1)
        catalogue_import(src, cat, tmp / "work", 1, 50)
        out["sqlite_file_mb"] = round((tmp / "src.db").stat().st_size / 1e6, 1)
        say = lambda _line: None  # noqa: E731

        out["sqlite_backup_s"] = timed(backup, src, cat, tmp / "b-sqlite", say=say)
        dst = make_engine(f"sqlite:///{tmp / 'restored.db'}")
        out["sqlite_restore_s"] = timed(restore, tmp / "b-sqlite", dst, tmp / "cat-restored", say=say)
        dst.dispose()
        try:
            name, pg_url = new_pg_database()
            created.append(name)
            pg = make_engine(pg_url)
            out["move_to_postgresql_s"] = timed(move, src, pg, say=say)
            out["move_rows_per_s"] = round(args.rows / out["move_to_postgresql_s"])
            out["pg_backup_s"] = timed(backup, pg, cat, tmp / "b-pg", say=say)
            out["pg_dump_mb"] = round((tmp / "b-pg" / "database.pgdump").stat().st_size / 1e6, 1)
            name2, pg_url2 = new_pg_database()
            created.append(name2)
            pg2 = make_engine(pg_url2)
            out["pg_restore_s"] = timed(restore, tmp / "b-pg", pg2, tmp / "cat-pg-restored", say=say)
            pg.dispose()
            pg2.dispose()
        finally:
            src.dispose()
            for name in created:
                drop_pg_database(name)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
