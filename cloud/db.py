"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL (psycopg 3).

Nothing here runs at import time: `make_engine(url)` is called by the command that needs it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "DatabaseUnavailable",
    "after_commit",
    "insert_for",
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "normalize_url",
    "wait_for_db",
    "write_transaction",
]

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK_KEY = 0x6F6D6E69_6D696772  # "omnimigr": one PostgreSQL advisory lock, held while migrating


class DatabaseUnavailable(RuntimeError):
    """The database did not answer within the start-up timeout."""


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain `postgresql://` (and `postgres://`) mean psycopg 3.

    Raises `ValueError` naming the URL and what is accepted.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise ValueError(
            f"Invalid database URL {str(url)!r}: expected sqlite:///path or postgresql://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise ValueError(f"Unsupported database {parsed.drivername!r} in {parsed.render_as_string()!r}: use sqlite or postgresql")


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine with the settings omnishelf relies on (see the SQLite notes below)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(parsed, **kwargs)
        _ping_when_idle(engine)
        return engine
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)
    gate = _WriteGate(engine)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", gate.begin)
    return engine


PING_AFTER_IDLE_S = 5.0
"""A pooled PostgreSQL connection that sat idle this long is pinged before use."""


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for PING_AFTER_IDLE_S.

    What `pool_pre_ping` does for every checkout, and a round trip each time: one in six of a
    small ingest batch's (the worker takes a connection per batch, hundreds a second). A connection
    in steady use proved itself a moment ago; the one a restarted database or a dropped link has
    broken is the one that waited. If the ping fails, the pool throws that connection away and
    gives a new one (SQLAlchemy's "pessimistic disconnect handling" by event)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            # The ping opened a transaction (psycopg is not in autocommit): end it, or the
            # first BEGIN would be inside it.
            dbapi_conn.rollback()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (below), so the driver must not start transactions on its own.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (API) never wait for the ingest writer
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; no fsync per commit in WAL
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


class _WriteGate:
    """One SQLite writer at a time per process, queued on a lock rather than on SQLite's busy handler.

    A deferred transaction that reads and then writes cannot wait for SQLite's lock (SQLITE_BUSY at
    once), so writers ask for it up front (`BEGIN IMMEDIATE`). Threads of one process that contend
    for it (the ingest batch, the relay's claim and mark-sent, a handler's command, the API) would
    otherwise wait in the busy handler, which sleeps 1, 2, 5 … 100 ms between tries whatever the
    holder does: measured here, three threads writing 300-row transactions waited p99 3.5 ms and up
    to 129 ms that way, against p99 0.3 ms and 5.5 ms behind this lock. Other processes on the same
    file still meet in SQLite's busy handler. The lock is released after COMMIT or ROLLBACK (the
    dialect's own calls, wrapped), including the pool's rollback of a connection given back.
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()  # released by whichever thread ends the transaction
        self._holder: int | None = None  # id() of the DBAPI connection in a write transaction
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_conn: Any) -> None:
            try:
                commit(dbapi_conn)
            finally:
                self._release(dbapi_conn)

        def do_rollback(dbapi_conn: Any) -> None:
            try:
                rollback(dbapi_conn)
            finally:
                self._release(dbapi_conn)

        dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]
        # A connection thrown away in a transaction (invalidated) never commits or rolls back.
        event.listen(engine, "invalidate", lambda dbapi_conn, _rec, _exc: self._release(dbapi_conn))
        event.listen(engine, "close", lambda dbapi_conn, _rec: self._release(dbapi_conn))

    def begin(self, conn: Connection) -> None:
        if not conn.get_execution_options().get("omnishelf_write", False):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_conn = conn.connection.dbapi_connection
        if not self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise OperationalError("BEGIN IMMEDIATE", None,
                                   Exception("database is locked (another writer of this process held it too long)"))
        self._holder = id(dbapi_conn)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._release(dbapi_conn)
            raise

    def _release(self, conn: Any) -> None:
        # The dialect gets the pool's proxy, the pool events the DBAPI connection itself.
        dbapi_conn = getattr(conn, "dbapi_connection", conn)
        if self._holder is not None and self._holder == id(dbapi_conn):
            self._holder = None
            self._lock.release()


def insert_for(conn: Connection, table: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT for `table` (both have `on_conflict_do_nothing/do_update`)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {conn.dialect.name!r}")


_AFTER_COMMIT = "omnishelf.after_commit"


def after_commit(target: Connection | Session, fn: Callable[[], None]) -> None:
    """Call `fn` once the transaction of `target` has committed (not if it rolls back). For
    in-process notifications that must not fire before the data is visible (e.g. wake the relay
    after a command was written). Works for `write_transaction` connections and for sessions."""
    hooks: list[Callable[[], None]] = target.info.setdefault(_AFTER_COMMIT, [])
    if fn not in hooks:
        hooks.append(fn)


def _run_after_commit(info: dict[Any, Any]) -> None:
    for fn in info.pop(_AFTER_COMMIT, []):
        try:
            fn()
        except Exception:
            log.exception("an after-commit hook failed")


event.listen(Session, "after_commit", lambda session: _run_after_commit(session.info))
event.listen(Session, "after_rollback", lambda session: session.info.pop(_AFTER_COMMIT, None))


def _forget_after_commit(conn: Connection) -> None:
    # A `write_transaction` whose caller rolls back without raising must not run its hooks (they
    # would publish commands that were never committed). An invalidated connection has no info.
    if not conn.invalidated:
        conn.info.pop(_AFTER_COMMIT, None)


event.listen(Engine, "rollback", _forget_after_commit)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn = conn.execution_options(omnishelf_write=True)
        try:
            with conn.begin():
                yield conn
        except BaseException:
            conn.info.pop(_AFTER_COMMIT, None)
            raise
        _run_after_commit(conn.info)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def wait_for_db(engine: Engine, timeout: float = 30.0) -> None:
    """Return once the database answers; raise `DatabaseUnavailable` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"database {engine.url.render_as_string()} not reachable after {timeout:.0f} s: {reason}"
                ) from None
            log.info("waiting for database %s: %s", engine.url.render_as_string(), reason)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def alembic_config() -> Config:
    """Alembic configuration built in code: no alembic.ini is needed at run time."""
    # Imported here: Alembic is only needed to migrate, and importing it pulls in autogenerate.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database schema to `revision` (default: the newest)."""
    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        from alembic import command

        cfg = alembic_config()
        with write_transaction(engine) as conn:
            if conn.dialect.name == "postgresql":
                # Several hosts started at once each migrate an empty database: one does, the
                # others wait here and then find nothing left to do (instead of a duplicate key).
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()
