"""The verification's few statements, compiled once per dialect and run on the DBAPI cursor.

A scan's verdict costs three statements (read the unit, record the scan, update the unit); through
`Connection.execute` each paid ~10 x the driver's own time in SQLAlchemy's per-execution work
(execution context, cache key, result metadata), which made the verification a third as fast as
its statements. `Prepared` keeps SQLAlchemy for what it is good at (the statement is Core, compiled
by the dialect; values go through each column type's own bind and result processors, so a
`UtcDateTime`, a UUID or a JSON column are stored and read exactly as `execute` would) and only
skips the per-execution machinery. It runs in the caller's transaction, on its connection.

Only plain statements: no expanding `IN`, no literal-execute parameters, no Python-side column
defaults (each is refused when compiled). `InsertRows` and `UpdateRows` write a batch's rows in one
statement each the same way (rows of `VALUES` / an executemany on SQLite, one array per column and
`unnest` on PostgreSQL); `InsertRowsUpdating` does both in one statement on PostgreSQL. SQLAlchemy's
cursor events do not see these statements; `tests/trace/test_statements.py` counts them at the
driver.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, Table, bindparam, cast, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import ClauseElement

__all__ = ["InsertRows", "InsertRowsUpdating", "Prepared", "UpdateRows"]

_NAMED = re.compile(r"%\((\w+)\)s")
"""A pyformat placeholder (psycopg's, as SQLAlchemy renders it): made positional (`%s`) in a multi-row INSERT."""
_ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT: 500 x a scan's 16 values stays far below SQLite's and PostgreSQL's
limits on bound parameters (32,766 and 65,535)."""


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

    def __init__(self, statement: ClauseElement, *, binary: bool = False) -> None:
        self.statement = statement
        self.binary = binary
        """psycopg sends the values in binary form (`%b`): an array's strings then go as they are,
        where its text form escapes every quote of every element (a JSON document has dozens)."""
        self._by_dialect: dict[str, _Compiled] = {}
        self._many: dict[tuple[str, int], tuple[str, Sequence[str]]] = {}

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
        sql = compiled.string
        if self.binary and dialect.name == "postgresql":
            sql = _NAMED.sub(r"%(\1)b", sql)
        return _Compiled(sql, names, positional, binds, results, row)

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

    def execute_columns(self, conn: Connection, columns: Mapping[str, Sequence[Any]]) -> None:
        """`execute_many` with the parameter sets given column-wise (bind name → one value per set):
        each column's processor mapped over it, the sets made by one transposition."""
        c = self._prepared(conn)
        binds = c.binds
        values = [list(map(binds[n], columns[n])) if n in binds else columns[n] for n in c.names]
        sets: list[Any] = list(zip(*values, strict=True))
        if not sets:
            return
        if not c.positional:
            sets = [dict(zip(c.names, one, strict=True)) for one in sets]
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(c.sql, sets)
        finally:
            cursor.close()

    def _rows_sql(self, c: _Compiled, n: int) -> tuple[str, Sequence[str]]:
        """The single-row INSERT's SQL with `n` rows of VALUES, positional, and the bind names of one row."""
        found = self._many.get((c.sql, n))
        if found is None:
            head, tail = c.sql.split(" VALUES (", 1)
            row, returning, columns = tail.partition(") RETURNING ")
            row, end = (row, returning[1:] + columns) if returning else (tail[:-1], "")
            names = _NAMED.findall(row) or list(c.names)
            row = "(" + _NAMED.sub("%s", row) + ")"
            found = self._many[(c.sql, n)] = (f"{head} VALUES {', '.join([row] * n)}{end}", names)
        return found

    def insert_rows(self, conn: Connection, params: Sequence[Any], columns: Sequence[str] | None = None) -> list[Any]:
        """Run a single-row `INSERT … VALUES` (compiled from `insert().values({c: bindparam(c)})`) for
        every parameter set as one multi-row INSERT per `_ROWS_PER_INSERT` sets; its RETURNING rows as
        the driver gives them (raw values, no result processing; the order is the database's). Each
        set is a mapping by bind name, or with `columns` a sequence of values in that order."""
        c = self._prepared(conn)
        binds, out = c.binds, []
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for start in range(0, len(params), _ROWS_PER_INSERT):
                chunk = params[start:start + _ROWS_PER_INSERT]
                sql, names = self._rows_sql(c, len(chunk))
                plan = [(binds.get(n), n if columns is None else columns.index(n)) for n in names]
                args = [p[k] if f is None else f(p[k]) for p in chunk for f, k in plan]
                cursor.execute(sql, args)
                if cursor.description is not None:
                    out.extend(cursor.fetchall())
        finally:
            cursor.close()
        return out

    def raw(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row as the driver gives it (no result processing)."""
        _c, cursor = self._run(conn, params)
        try:
            return list(cursor.fetchall()) if cursor.description is not None else []
        finally:
            cursor.close()

    def dicts(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row as a dict of column name → value (the columns' result processors applied; one
        that maps NULL to NULL, asked once, is not called for a NULL: a unit's times are often unset)."""
        c, cursor = self._run(conn, params)
        try:
            raw = cursor.fetchall()
        finally:
            cursor.close()
        keys = c.row._fields
        processed = [(keys[i], p, p(None) is None) for i, p in enumerate(c.results) if p is not None]
        out = []
        for r in raw:
            row = dict(zip(keys, r, strict=True))
            for key, p, null_safe in processed:
                value = row[key]
                if value is not None or not null_safe:
                    row[key] = p(value)
            out.append(row)
        return out

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


def _array_of(table: Table, column: str) -> ARRAY[Any]:
    """An array of the column's type; a string without its length (a cast to `varchar(n)` would cut
    a longer value silently, where the column refuses it)."""
    kind = table.c[column].type
    return ARRAY(String() if isinstance(kind, String) else kind)


class InsertRows:
    """Many rows into one table in one statement: a multi-row `VALUES` on SQLite; on PostgreSQL an
    `INSERT … SELECT * FROM unnest(one array per column)`, whose text is the same whatever the number
    of rows (psycopg converts and caches a query's placeholders only below 4 KB of text, so a
    100-row VALUES was re-parsed on every batch, and the server plans it once)."""

    def __init__(self, table: Table, columns: Sequence[str], returning: Sequence[str] = (), *,
                 json_text: Sequence[str] = ()) -> None:
        """`json_text`: JSON columns whose values come already encoded (a `str` each, stored as
        given: on PostgreSQL sent as text and cast to the column's type)."""
        self.columns = tuple(columns)
        texts = set(json_text)
        values = table.insert().values({c: bindparam(c, type_=String()) if c in texts else bindparam(c)
                                        for c in columns})
        arrays = func.unnest(*[bindparam(c, type_=ARRAY(String()) if c in texts else _array_of(table, c))
                               for c in columns]).table_valued(*columns).render_derived(name="v")
        unnest = table.insert().from_select(list(columns), select(
            *[cast(arrays.c[c], table.c[c].type) if c in texts else arrays.c[c] for c in columns]))
        if returning:
            values = values.returning(*[table.c[c] for c in returning])
            unnest = unnest.returning(*[table.c[c] for c in returning])
        self._values, self._unnest = Prepared(values), Prepared(unnest, binary=True)
        self.unnest_statement = unnest
        # One row with plain values, for PostgreSQL (`InsertRowsUpdating`): psycopg dumps each
        # array in Python, looking up its element type per array; for one row that cost more CPU
        # than the statement.
        self.one_statement = table.insert().values(
            {c: cast(bindparam(c, type_=String()), table.c[c].type) if c in texts else bindparam(c) for c in columns})
        if returning:
            self.one_statement = self.one_statement.returning(*[table.c[c] for c in returning])

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Insert `rows` (each a mapping with every column); the RETURNING rows as the driver gives
        them, in the database's order (match them back by a unique column)."""
        if not rows:
            return []
        if conn.dialect.name == "postgresql":
            return self._unnest.raw(conn, {c: [r[c] for r in rows] for c in self.columns})
        return self._values.insert_rows(conn, rows)

    def run_tuples(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """`run` for rows given as tuples in `columns`' order: on PostgreSQL they are turned into
        the arrays in one transposition, no mapping built per row."""
        if not rows:
            return []
        if conn.dialect.name == "postgresql":
            return self._unnest.raw(conn, dict(zip(self.columns, map(list, zip(*rows, strict=True)), strict=True)))
        return self._values.insert_rows(conn, rows, self.columns)


class UpdateRows:
    """One UPDATE per row by primary key, many rows at a time: an executemany on SQLite (one
    prepared statement, in-process); on PostgreSQL one `UPDATE … FROM unnest(arrays)` (one statement
    the server plans once, not one per row through the pipeline)."""

    def __init__(self, table: Table, key: str, columns: Sequence[str]) -> None:
        self.columns = (key, *columns)
        self._one = Prepared(update(table).where(table.c[key] == bindparam("key_")).values(
            {c: bindparam(c) for c in columns}))
        arrays = func.unnest(*[bindparam(c, type_=_array_of(table, c)) for c in self.columns]) \
            .table_valued(*self.columns).render_derived(name="v")
        self._unnest = Prepared(update(table).where(table.c[key] == arrays.c[key]).values(
            {c: arrays.c[c] for c in columns}), binary=True)
        self._key = key

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            self._unnest.execute(conn, {c: [r[c] for r in rows] for c in self.columns})
            return
        key = self._key
        self._one.execute_many(conn, [{**r, "key_": r[key]} for r in rows])

    def run_columns(self, conn: Connection, columns: Mapping[str, Sequence[Any]]) -> None:
        """`run` for rows given column-wise (column → one value per row, the key's included)."""
        if not columns[self._key]:
            return
        if conn.dialect.name == "postgresql":
            self._unnest.execute(conn, columns)
            return
        self._one.execute_columns(conn, {**columns, "key_": columns[self._key]})


class InsertRowsUpdating:
    """PostgreSQL: an `InsertRows` and an `UpdateRows` of another table in one statement, each
    updated row taking the key of the inserted row it names (a scan's unit points at the scan):
    `WITH s AS (INSERT … RETURNING …), u AS (UPDATE … FROM unnest(…), s WHERE …) SELECT … FROM s`.
    Both run whatever the other changed, and the statement returns the insert's RETURNING rows. One
    round trip instead of two, for most of the verification's batches."""

    def __init__(self, insert: InsertRows, match: str, table: Table, key: str, pointer: str, columns: Sequence[str],
                 ) -> None:
        """`match`: the inserted rows' unique column an updated row names (it must be RETURNED);
        `pointer`: the updated table's column that takes the inserted row's first RETURNING column."""
        self._insert_columns = insert.columns
        self._update_columns = (key, match, *columns)
        ins = insert.unnest_statement.cte("s")
        inserted_table = insert.unnest_statement.table
        arrays = func.unnest(
            bindparam("u_" + key, type_=_array_of(table, key)),
            bindparam("u_" + match, type_=_array_of(inserted_table, match)),  # type: ignore[arg-type]
            *[bindparam("u_" + c, type_=_array_of(table, c)) for c in columns],
        ).table_valued(key, match, *columns).render_derived(name="w")
        returned = list(ins.c)
        upd = (update(table).where(table.c[key] == arrays.c[key], arrays.c[match] == ins.c[match])
               .values({pointer: returned[0], **{c: arrays.c[c] for c in columns}}).cte("u"))
        self._statement = Prepared(select(*returned).add_cte(upd), binary=True)
        # One row updated after one inserted, with plain values (see `InsertRows.one_statement`).
        one = insert.one_statement.cte("s")
        returned = list(one.c)
        upd = (update(table).where(table.c[key] == bindparam("u_" + key, type_=table.c[key].type),
                                   one.c[match] == bindparam("u_" + match, type_=inserted_table.c[match].type))
               .values({pointer: returned[0], **{c: bindparam("u_" + c, type_=table.c[c].type) for c in columns}})
               .cte("u"))
        self._one = Prepared(select(*returned).add_cte(upd))

    def run_tuples(self, conn: Connection, rows: Sequence[Sequence[Any]], updates: Mapping[str, Sequence[Any]],
                   ) -> list[Any]:
        """Insert `rows` (tuples in the insert's column order) and update by `updates` (the update's
        columns without their `u_` prefix → one value per updated row; the match column names the
        inserted row each takes); the insert's RETURNING rows as the driver gives them."""
        if len(rows) == 1 and len(updates[self._update_columns[0]]) == 1:
            one = dict(zip(self._insert_columns, rows[0], strict=True))
            one.update({"u_" + c: updates[c][0] for c in self._update_columns})
            return self._one.raw(conn, one)
        params: dict[str, Any] = dict(zip(self._insert_columns, map(list, zip(*rows, strict=True)), strict=True))
        params.update({"u_" + c: list(v) for c, v in updates.items()})
        return self._statement.raw(conn, params)
