"""`omnishelf cloud serve | worker | migrate | seed | move-to`, and `omnishelf backup | restore`.

Every command waits for the database, then checks its schema revision against this software's
(`cloud.schema_check`). In development (the default) an empty or older database is migrated on the
spot, so the demo and a first run just work. With OMNISHELF_ENV=production only `omnishelf cloud
migrate` changes the schema: the other commands refuse an older or empty database, and a newer one
unless every newer revision is backward compatible (then they run, with a warning). User errors
(bad settings, unreachable database, busy port, schema mismatch) end as one line via `SystemExit`;
SIGTERM and SIGINT stop the worker cleanly (host state offline published).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import DatabaseUnavailable, make_engine, migrate, normalize_url, wait_for_db
from cloud.settings import Settings, SettingsError, load_settings

__all__ = ["add_backup_parser", "add_parser", "add_restore_parser", "prepared_engine"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "cloud",
        help="run the cloud core: API and bus workers; database migrations; seed data",
        description="The cloud core. Settings come from OMNISHELF_* environment variables "
        "(DATABASE_URL, BROKER_URL, BROKER_USERNAME, BROKER_PASSWORD, ENV, ...).",
    )
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND")

    serve = cmds.add_parser("serve", help="check the schema, then run the API and console (and the cloud bus)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--no-worker", action="store_true", help="API only; run the bus with 'omnishelf cloud worker'")
    serve.set_defaults(func=_serve)

    worker = cmds.add_parser(
        "worker", help="check the schema, then run the cloud bus (ingest, commands, engines' tasks) until SIGTERM/SIGINT"
    )
    worker.set_defaults(func=_worker)

    mig = cmds.add_parser(
        "migrate",
        help="upgrade the database schema to the newest revision (the only command that does in production)",
    )
    mig.set_defaults(func=_migrate)

    seed = cmds.add_parser("seed", help="check the schema, then add the demo regions, stores, nodes and products")
    seed.set_defaults(func=_seed)

    move = cmds.add_parser(
        "move-to",
        help="copy this SQLite installation's database into an empty PostgreSQL database (ids kept)",
        description="Copies every table of every engine from OMNISHELF_DATABASE_URL (SQLite) into URL "
        "(PostgreSQL, empty), resets its sequences and checks the row counts. Stop every cloud host first. "
        "The catalogue files stay where they are. A password is better given in PGPASSWORD or ~/.pgpass "
        "than in the URL.",
    )
    move.add_argument("url", metavar="URL", help="postgresql://user@host[:port]/database")
    move.add_argument("--batch", type=int, default=5000, metavar="N", help="rows read from SQLite at a time (default 5000)")
    move.set_defaults(func=_move_to)

    for p in (serve, worker, mig, seed, move):
        add_db_timeout(p)


def add_backup_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`omnishelf backup DIR`."""
    parser = sub.add_parser(
        "backup",
        help="back up the cloud's database and catalogue files into a new directory (while it runs)",
        description="Writes DIR/manifest.json, the database (SQLite online backup, or pg_dump -Fc) and the "
        "catalogue files (OMNISHELF_CATALOGUE_DIR). Safe while the cloud runs: the database is one snapshot "
        "and every catalogue file it names is copied. The broker's persistence only with --broker-data; "
        "its other files and the credentials file are not included: see docs/operator.md.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a new (or empty) directory")
    parser.add_argument("--broker-data", type=Path, metavar="BROKER_DIR",
                        help="also copy the broker's persistence (mosquitto.db) from this --data-dir of 'omnishelf "
                        "broker' on this host, e.g. /var/lib/omnishelf-broker; a running broker is asked to save "
                        "it first (SIGUSR1)")
    add_db_timeout(parser)
    parser.set_defaults(func=_backup)


def add_restore_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`omnishelf restore DIR`."""
    parser = sub.add_parser(
        "restore",
        help="restore a backup into the configured (empty) database and catalogue directory",
        description="Verifies every file of the backup against its manifest, restores the database "
        "(OMNISHELF_DATABASE_URL, same kind as the backup's) and the catalogue files "
        "(OMNISHELF_CATALOGUE_DIR), then checks every table's row count. Stop the cloud first.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a directory written by 'omnishelf backup'")
    parser.add_argument("--force", action="store_true",
                        help="replace a database that holds data (its tables are dropped) and move the catalogue "
                        "directory's files (and the broker's mosquitto.db) aside")
    parser.add_argument("--broker-data", type=Path, metavar="BROKER_DIR",
                        help="also put the backup's broker persistence (mosquitto.db) into this --data-dir of "
                        "'omnishelf broker' on this host; the broker must be stopped")
    add_db_timeout(parser)
    parser.set_defaults(func=_restore)


# -- shared by every cloud command module (cloud.access.cli, cloud.catalogue.cli, …) ---------------


def add_db_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for the database to answer (default 30)")


def usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The handler of a command group run without a sub-command: its help, exit code 2."""
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def cli_settings() -> Settings:
    """The settings, or one clear line naming the bad variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None


def reachable_engine(url: str, db_timeout: float, what: str = "OMNISHELF_DATABASE_URL") -> Engine:
    """An engine on `url` once the database answers; one line naming `what` otherwise."""
    try:
        engine = make_engine(url)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{what}: {exc}") from None
    try:
        wait_for_db(engine, db_timeout)
    except DatabaseUnavailable as exc:
        engine.dispose()
        raise SystemExit(str(exc)) from None
    return engine


def _db_error(engine: Engine, doing: str, exc: SQLAlchemyError) -> SystemExit:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return SystemExit(f"{doing} {engine.url.render_as_string()} failed: {reason}")


def prepared_engine(settings: Settings, db_timeout: float) -> Engine:
    """Wait for the database and make sure this software may run against its schema.

    Development: an empty or older database is migrated here (and the log says so). Production:
    nothing but `omnishelf cloud migrate` changes the schema; an older, empty or incompatible newer
    one is refused with one line saying what to run. A newer database whose newer revisions are all
    backward compatible is accepted with a warning naming them (a rolling upgrade in progress).
    """
    from cloud.schema_check import SchemaState, read_status

    engine = reachable_engine(settings.DATABASE_URL, db_timeout)
    what = f"database {engine.url.render_as_string()}"
    try:
        status = read_status(engine)
        if status.state in (SchemaState.OLDER, SchemaState.EMPTY) and settings.ENV == "development":
            migrate(engine)
            log.info(
                "%s migrated from %s to %s (OMNISHELF_ENV=development migrates on start; in production "
                "only 'omnishelf cloud migrate' does)", what, status.database or "empty", status.code,
            )
        elif status.state is SchemaState.NEWER_COMPATIBLE:
            log.warning("%s", status.describe(what))
        elif status.state is not SchemaState.CURRENT:
            engine.dispose()
            raise SystemExit(status.describe(what))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _db_error(engine, "preparing", exc) from None
    except ValueError as exc:  # a migration script with a bad `compatible` flag
        engine.dispose()
        raise SystemExit(str(exc)) from None
    return engine


def _migrate(args: argparse.Namespace) -> int:
    from cloud.schema_check import SchemaState, read_status

    settings = cli_settings()
    engine = reachable_engine(settings.DATABASE_URL, args.db_timeout)
    what = f"database {engine.url.render_as_string()}"
    try:
        status = read_status(engine)
        if status.state is SchemaState.NEWER_COMPATIBLE:
            print(f"{status.describe(what)}; nothing to migrate")
            return 0
        if status.state in (SchemaState.NEWER_INCOMPATIBLE, SchemaState.UNKNOWN):
            raise SystemExit(status.describe(what))
        # Also when current: it completes the revision record of a database migrated before it existed.
        migrate(engine)
    except SQLAlchemyError as exc:
        raise _db_error(engine, "migrating", exc) from None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    if status.state is SchemaState.CURRENT:
        print(f"{what} is at the newest schema revision ({status.code}); nothing to migrate")
    else:
        applied = ", ".join(status.pending) if status.pending else "every revision"
        print(f"{what} migrated from {status.database or 'empty'} to {status.code} (applied {applied})")
    return 0


def _move_to(args: argparse.Namespace) -> int:
    from cloud.transfer import MoveError, move

    if args.batch < 1:
        raise SystemExit(f"--batch {args.batch}: expected a positive number of rows")
    settings = cli_settings()
    try:
        target_url = normalize_url(args.url)
    except ValueError as exc:
        raise SystemExit(f"URL: {exc}") from None
    if target_url.get_backend_name() != "postgresql":
        raise SystemExit(f"URL {target_url.render_as_string()}: expected postgresql://user@host/db, the database to move into")
    source_url = normalize_url(settings.DATABASE_URL)
    if source_url.get_backend_name() == "sqlite":
        _require_sqlite_file(source_url, "nothing to move")
    source = reachable_engine(settings.DATABASE_URL, args.db_timeout)
    target = reachable_engine(args.url, args.db_timeout, what="URL")
    try:
        result = move(source, target, batch=args.batch, say=print)
    except MoveError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        source.dispose()
        target.dispose()
    print(
        f"moved {result.rows:,} rows in {len(result.tables)} tables to {target.url.render_as_string()} in "
        f"{result.seconds:.1f} s (schema {result.revision}; row counts checked, sequences reset). Next: set "
        f"OMNISHELF_DATABASE_URL to it on every cloud host (OMNISHELF_CATALOGUE_DIR stays as it is) and start them."
    )
    return 0


def _require_sqlite_file(url: URL, why: str) -> None:
    # Connecting would create an empty database file: say that the configured one is not there.
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:") and not Path(database).is_file():
        raise SystemExit(
            f"OMNISHELF_DATABASE_URL: SQLite file {database} does not exist ({why}); check OMNISHELF_DATA_DIR"
        )


def _backup(args: argparse.Namespace) -> int:
    from cloud.backup import BackupError, backup

    settings = cli_settings()
    url = normalize_url(settings.DATABASE_URL)
    if url.get_backend_name() == "sqlite":
        _require_sqlite_file(url, "nothing to back up")
    engine = reachable_engine(settings.DATABASE_URL, args.db_timeout)
    try:
        manifest = backup(engine, Path(settings.CATALOGUE_DIR), args.dir, broker_dir=args.broker_data, say=print)
    except BackupError as exc:
        raise SystemExit(str(exc)) from None
    except OSError as exc:
        raise SystemExit(f"backup into {args.dir} failed: {exc.strerror or exc} ({exc.filename or args.dir})") from None
    finally:
        engine.dispose()
    rows = sum(n for _, n in manifest.rows)
    broker = [manifest.broker_file] if manifest.broker_file is not None else []
    size = manifest.database_file.size + sum(f.size for f in [*manifest.files, *broker])
    print(
        f"backup {args.dir}: database at revision {manifest.schema_revision} ({rows:,} rows, snapshot "
        f"{manifest.snapshot_at}), {len(manifest.files)} catalogue files{', the broker persistence' if broker else ''}, "
        f"{size / 1e6:.1f} MB in all"
    )
    for rel in manifest.missing:
        print(f"warning: {rel} is named by the database but was not in the catalogue directory", file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    from cloud.backup import BackupError, restore
    from cloud.schema_check import read_status

    settings = cli_settings()
    engine = reachable_engine(settings.DATABASE_URL, args.db_timeout)
    what = f"database {engine.url.render_as_string()}"
    try:
        result = restore(args.dir, engine, Path(settings.CATALOGUE_DIR), force=args.force,
                         broker_dir=args.broker_data, say=print)
        status = read_status(engine)
    except BackupError as exc:
        raise SystemExit(str(exc)) from None
    except OSError as exc:
        raise SystemExit(f"restore from {args.dir} failed: {exc.strerror or exc} ({exc.filename or args.dir})") from None
    finally:
        engine.dispose()
    m = result.manifest
    print(
        f"restored {args.dir} (taken {m.snapshot_at} by omnishelf {m.software_version}): {result.rows:,} rows, "
        f"{result.files} catalogue files; row counts and catalogue epoch {m.catalogue_epoch} checked"
    )
    if result.moved_aside is not None:
        print(f"the catalogue directory's previous files are in {result.moved_aside} (delete it once satisfied)")
    if result.broker_moved_aside is not None:
        print(f"the broker's previous persistence file is {result.broker_moved_aside} (delete it once satisfied)")
    for note in result.notes:
        print(f"note: {note}")
    print(status.describe(what))
    return 0


def _seed(args: argparse.Namespace) -> int:
    from cloud.seed import seed

    settings = cli_settings()
    engine = prepared_engine(settings, args.db_timeout)
    try:
        result = seed(engine)
    finally:
        engine.dispose()
    print(
        f"seeded {engine.url.render_as_string()}: added {result.regions} regions, {result.stores} stores, "
        f"{result.nodes} nodes, {result.products} products"
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from broker.runtime import freeze_startup_objects
    from cloud.bus.worker import CloudBus

    settings = cli_settings()
    _check_bus_secret(settings)
    engine = prepared_engine(settings, args.db_timeout)

    async def run() -> None:
        worker = CloudBus(settings, engine)
        freeze_startup_objects()
        loop = asyncio.get_running_loop()
        stopping: set[asyncio.Task[None]] = set()

        def request_stop() -> None:
            stopping.add(asyncio.ensure_future(worker.stop()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        await worker.run()

    try:
        asyncio.run(run())
    finally:
        engine.dispose()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from broker.runtime import freeze_startup_objects
    from cloud.api import create_app

    settings = cli_settings()
    if not args.no_worker:
        _check_bus_secret(settings)
    _check_port_free(args.host, args.port)
    prepared_engine(settings, args.db_timeout).dispose()
    app = create_app(settings, run_worker=not args.no_worker)
    freeze_startup_objects()
    # uvicorn turns SIGTERM/SIGINT into the lifespan shutdown (which stops the worker cleanly) and
    # then re-raises the signal to the previous handler; for SIGTERM that handler is a no-op here,
    # so a requested stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    # log_config=None keeps the logging the `omnishelf` command set up.
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


def _check_bus_secret(settings: Settings) -> None:
    try:
        settings.check_bus_secret()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None


def _check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise SystemExit(f"--port {port}: expected a number from 1 to 65535")
    with contextlib.closing(socket.socket()) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
