"""Move an installation's database from SQLite to PostgreSQL: every table of every engine, ids kept.

The tables are those the engines declare (`load_engines()` registers them on
`cloud.models.Base.metadata`), copied in foreign-key order from one read transaction on the source
(a consistent snapshot) into one transaction on the target, with COPY (the ledger can hold
millions of rows; rows are streamed, never loaded whole). The target's schema is made by the same
Alembic migrations as any other database, then its sequences are set past the copied ids, the row
counts of every table are compared with the source's, and only then is it committed: a failed move
leaves an empty target.

The catalogue's epoch is a row like any other and moves with the data, so the boxes keep their
catalogue (a new database would have a new epoch, and every box would resync from a snapshot).

Ledger rows carry the id of the PostgreSQL transaction that stored them (`txid`, for followers
reading in commit order; null on SQLite). Moved rows get 0: older than any transaction of the new
server, in id order (SQLite's commit order), which is what a follower cursor moved with them
(txid 0, last id) expects.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy import Connection, Engine, Integer, Table, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import migrate
from cloud.engines import load_engines
from cloud.models import Base
from cloud.schema_check import REVISIONS_TABLE, SchemaState, read_status

__all__ = ["MoveError", "MoveProblem", "MoveResult", "TableMoved", "move", "moved_tables"]

log = logging.getLogger(__name__)

# Tables a fresh migration fills by itself: a target holding only these is still empty.
_BOOKKEEPING = {"alembic_version", REVISIONS_TABLE, "catalogue_epoch", "orders_versions"}
_NOT_COPIED = {"alembic_version", REVISIONS_TABLE}
"""Written by the target's own migration (same revision as the source's, checked)."""


class MoveProblem(enum.Enum):
    SOURCE_NOT_SQLITE = "source-not-sqlite"
    TARGET_NOT_POSTGRESQL = "target-not-postgresql"
    SOURCE_SCHEMA = "source-schema"
    """The source is not at this software's revision."""
    TARGET_SCHEMA = "target-schema"
    """The target holds a schema this software cannot migrate (newer, unknown)."""
    TARGET_NOT_EMPTY = "target-not-empty"
    UNKNOWN_TABLES = "unknown-tables"
    """The source holds tables no engine declares: they would be left behind."""
    SOURCE_CHANGED = "source-changed"
    """Rows were written to the source during the move."""
    MISMATCH = "mismatch"
    """The target's row counts differ from the source's."""
    COPY_FAILED = "copy-failed"
    """The target refused a row or went away."""


class MoveError(RuntimeError):
    def __init__(self, reason: MoveProblem, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TableMoved:
    name: str
    rows: int
    seconds: float


@dataclass(frozen=True, slots=True)
class MoveResult:
    tables: tuple[TableMoved, ...]
    seconds: float
    revision: str

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


def moved_tables() -> list[Table]:
    """Every engine's tables, parents before children."""
    load_engines()
    return list(Base.metadata.sorted_tables)


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _count(conn: Connection, name: str) -> int:
    return int(conn.execute(text(f"SELECT count(*) FROM {_quote(conn, name)}")).scalar_one())


def _check_source(source: Engine, tables: Sequence[Table]) -> str:
    status = read_status(source)
    if status.state is not SchemaState.CURRENT:
        raise MoveError(MoveProblem.SOURCE_SCHEMA, status.describe(f"source database {source.url}"))
    with source.connect() as conn:
        present = set(inspect(conn).get_table_names())
    unknown = sorted(present - {t.name for t in tables} - _NOT_COPIED)
    if unknown:
        raise MoveError(
            MoveProblem.UNKNOWN_TABLES,
            f"source database {source.url} holds tables no engine declares ({', '.join(unknown)}): they would be "
            f"left behind; load the engine that owns them (OMNISHELF_EXTRA_ENGINES) and run move-to again",
        )
    return status.code


def _prepare_target(target: Engine) -> None:
    status = read_status(target)
    if status.state in (SchemaState.NEWER_COMPATIBLE, SchemaState.NEWER_INCOMPATIBLE, SchemaState.UNKNOWN):
        raise MoveError(MoveProblem.TARGET_SCHEMA, status.describe(f"target database {target.url}"))
    with target.connect() as conn:
        full = []
        for name in inspect(conn).get_table_names():
            if name not in _BOOKKEEPING and conn.execute(text(f"SELECT 1 FROM {_quote(conn, name)} LIMIT 1")).first():
                full.append(name)
    if full:
        raise MoveError(
            MoveProblem.TARGET_NOT_EMPTY,
            f"target database {target.url} is not empty ({', '.join(sorted(full)[:4])}{'…' if len(full) > 4 else ''} "
            f"hold rows): move-to copies into an empty database only",
        )
    if status.state is not SchemaState.CURRENT:
        migrate(target)


def _copy_table(src: Connection, dst: Connection, table: Table, batch: int) -> int:
    """Stream one table with COPY, in primary-key order.

    Values go as SQLite holds them, for PostgreSQL to parse: SQLAlchemy stores JSON as its text,
    UUIDs as 32 hex digits, instants as naive UTC text (the target session's time zone is UTC) and
    booleans as 0/1, all of which PostgreSQL's input functions read as the same values. Skipping
    SQLAlchemy's conversions both ways is ~3x faster, and a value PostgreSQL cannot read fails the
    COPY, hence the whole move, naming the table and the value; nothing is guessed.
    """
    columns = list(table.columns)
    # See the module doc: moved ledger rows are older than any transaction of the new server.
    txid_at = next((i for i, c in enumerate(columns) if table.name == "ingested_messages" and c.name == "txid"), None)
    names = ", ".join(_quote(dst, c.name) for c in columns)
    order = ", ".join(_quote(src, c.name) for c in table.primary_key.columns)
    rows = src.execution_options(yield_per=batch).exec_driver_sql(
        f"SELECT {names} FROM {_quote(src, table.name)} ORDER BY {order}"
    )
    raw = dst.connection.driver_connection
    assert raw is not None
    n = 0
    with raw.cursor() as cur, cur.copy(f"COPY {_quote(dst, table.name)} ({names}) FROM STDIN") as copy:
        if txid_at is None:
            for row in rows:
                copy.write_row(row)
                n += 1
        else:
            for row in rows:
                values = list(row)
                if values[txid_at] is None:
                    values[txid_at] = 0
                copy.write_row(values)
                n += 1
    return n


def _reset_sequences(conn: Connection, tables: Sequence[Table]) -> int:
    """Set each serial/identity sequence past the largest id copied (ids were given explicitly)."""
    n = 0
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": _quote(conn, table.name), "c": pk[0].name}
        ).scalar_one_or_none()
        if seq is None:
            continue
        top = conn.execute(select(func.max(pk[0]))).scalar_one_or_none()
        # is_called=false: the next nextval() returns exactly this value.
        conn.execute(text("SELECT setval(:s, :v, false)"), {"s": seq, "v": int(top or 0) + 1})
        n += 1
    return n


def move(source: Engine, target: Engine, *, batch: int = 5000, say: Callable[[str], None] = log.info) -> MoveResult:
    """Copy the SQLite database of `source` into the empty PostgreSQL database of `target`."""
    if source.dialect.name != "sqlite":
        raise MoveError(
            MoveProblem.SOURCE_NOT_SQLITE,
            f"source database {source.url} is {source.dialect.name}: move-to moves a SQLite installation; move a "
            f"PostgreSQL one with 'omnishelf backup' and 'omnishelf restore'",
        )
    if target.dialect.name != "postgresql":
        raise MoveError(
            MoveProblem.TARGET_NOT_POSTGRESQL,
            f"target {target.url} is {target.dialect.name}: move-to copies into PostgreSQL (postgresql://user@host/db)",
        )
    started = time.monotonic()
    tables = moved_tables()
    revision = _check_source(source, tables)
    _prepare_target(target)
    moved: list[TableMoved] = []
    try:
        with source.connect() as src, src.begin(), target.connect() as dst, dst.begin():
            # One read transaction on the source: every table as of one instant (WAL snapshot).
            expected = {t.name: _count(src, t.name) for t in tables}
            # SQLite's instants are naive UTC text (see _copy_table).
            dst.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
            # The target's migration made its own catalogue epoch and orders versions: the source's replace them.
            for t in reversed(tables):
                dst.execute(t.delete())
            for t in tables:
                t0 = time.monotonic()
                n = _copy_table(src, dst, t, batch)
                moved.append(TableMoved(t.name, n, time.monotonic() - t0))
                if n:
                    say(f"{t.name}: {n:,} rows ({moved[-1].seconds:.1f} s)")
            _reset_sequences(dst, tables)
            got = {t.name: _count(dst, t.name) for t in tables}
            wrong = [f"{name}: {got[name]} rows, source {expected[name]}" for name in expected if got[name] != expected[name]]
            if wrong:
                raise MoveError(MoveProblem.MISMATCH, f"target differs from the source: {'; '.join(wrong[:3])}")
            # A writer on the source during the move would leave its rows behind: refuse to commit.
            with source.connect() as now:
                changed = [
                    f"{name}: {expected[name]} → {c}" for name in expected if (c := _count(now, name)) != expected[name]
                ]
            if changed:
                raise MoveError(
                    MoveProblem.SOURCE_CHANGED,
                    f"the source database changed during the move ({'; '.join(changed[:3])}): stop every cloud host "
                    f"(serve, worker) and imports, then run move-to again (nothing was committed to the target)",
                )
    except (SQLAlchemyError, psycopg.Error) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise MoveError(MoveProblem.COPY_FAILED, f"copying into {target.url} failed: {reason}") from None
    return MoveResult(tuple(moved), time.monotonic() - started, revision)
