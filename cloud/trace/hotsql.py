"""The verification's few statements, compiled once per dialect and run on the DBAPI cursor.

A scan's verdict costs three statements (read the unit, record the scan, update the unit); through
`Connection.execute` each paid ~10 x the driver's own time in SQLAlchemy's per-execution work
(execution context, cache key, result metadata), which made the verification a third as fast as
its statements. `Prepared` keeps SQLAlchemy for what it is good at (the statement is Core, compiled
by the dialect; values go through each column type's own bind and result processors, so a
`UtcDateTime`, a UUID or a JSON column are stored and read exactly as `execute` would) and only
skips the per-execution machinery. It runs in the caller's transaction, on its connection.

Only plain statements: no expanding `IN`, no literal-execute parameters, no Python-side column
defaults (each is refused when compiled). SQLAlchemy's cursor events do not see these statements;
`tests/trace/test_statements.py` counts them at the driver.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import ClauseElement

__all__ = ["Prepared"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: Sequence[str]
    """Bind names in the order a positional paramstyle needs them (all of them otherwise)."""
    positional: bool
    binds: Mapping[str, Callable[[Any], Any]]
    results: Sequence[Callable[[Any], Any] | None]
    row: Any
    """A namedtuple class with the selected columns' names (attribute access like a Row)."""


class Prepared:
    """A Core statement run with its dialect's SQL and its types' processors, without SQLAlchemy's
    per-execution work."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self.statement.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("Prepared statements take plain bound parameters only")
        positional = bool(compiled.positional)
        names = list(compiled.positiontup) if positional else list(compiled.binds)
        binds: dict[str, Callable[[Any], Any]] = {}
        for name in names:
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binds[name] = processor
        columns = list(getattr(self.statement, "selected_columns", None) or [])
        returning = getattr(compiled, "returning", None) or []
        columns = columns or list(returning)
        results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        row = namedtuple("row", [c.key for c in columns]) if columns else None
        return _Compiled(compiled.string, names, positional, binds, results, row)

    def _prepared(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        found = self._by_dialect.get(dialect.name)
        if found is None:
            found = self._by_dialect[dialect.name] = self._compile(dialect)
        return found

    @staticmethod
    def _args(c: _Compiled, params: Mapping[str, Any]) -> Any:
        binds = c.binds
        if c.positional:
            return [binds[n](params[n]) if n in binds else params[n] for n in c.names]
        return {n: binds[n](params[n]) if n in binds else params[n] for n in c.names}

    def _run(self, conn: Connection, params: Mapping[str, Any]) -> tuple[_Compiled, Any]:
        c = self._prepared(conn)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(c.sql, self._args(c, params))
        return c, cursor

    def execute_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement without rows once per parameter set, in one driver call (`executemany`:
        one prepared statement on SQLite, pipelined on psycopg)."""
        if not params:
            return
        c = self._prepared(conn)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(c.sql, [self._args(c, p) for p in params])
        finally:
            cursor.close()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row (attribute access by column name), or None."""
        c, cursor = self._run(conn, params)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        return c.row._make([v if p is None else p(v) for p, v in zip(c.results, raw, strict=True)])

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row (attribute access by column name)."""
        c, cursor = self._run(conn, params)
        try:
            raw = cursor.fetchall()
        finally:
            cursor.close()
        make, results = c.row._make, c.results
        if not any(results):
            return [make(r) for r in raw]
        return [make([v if p is None else p(v) for p, v in zip(results, r, strict=True)]) for r in raw]

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run a statement without rows; the number of rows it changed."""
        _c, cursor = self._run(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()
