"""`omnishelf cloud serve | worker | migrate | seed`.

Every command waits for the database and migrates it first, so a fresh PostgreSQL or an empty
SQLite file just works. User errors (bad settings, unreachable database, busy port) end as one
line via `SystemExit`; SIGTERM and SIGINT stop the worker cleanly (host state offline published).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import DatabaseUnavailable, make_engine, migrate, wait_for_db
from cloud.settings import Settings, SettingsError, load_settings

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "cloud",
        help="run the cloud core: API and bus workers; database migrations; seed data",
        description="The cloud core. Settings come from OMNISHELF_* environment variables "
        "(DATABASE_URL, BROKER_URL, BROKER_USERNAME, BROKER_PASSWORD, ENV, ...).",
    )
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND")

    serve = cmds.add_parser("serve", help="migrate, then run the API and console (and the cloud bus)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--no-worker", action="store_true", help="API only; run the bus with 'omnishelf cloud worker'")
    serve.set_defaults(func=_serve)

    worker = cmds.add_parser(
        "worker", help="migrate, then run the cloud bus (ingest, commands, engines' tasks) until SIGTERM/SIGINT"
    )
    worker.set_defaults(func=_worker)

    mig = cmds.add_parser("migrate", help="upgrade the database schema to the newest revision")
    mig.set_defaults(func=_migrate)

    seed = cmds.add_parser("seed", help="migrate, then add the demo regions, stores, nodes and products")
    seed.set_defaults(func=_seed)

    for p in (serve, worker, mig, seed):
        add_db_timeout(p)


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


def prepared_engine(settings: Settings, db_timeout: float) -> Engine:
    """Wait for the database, then migrate it to head."""
    try:
        engine = make_engine(settings.DATABASE_URL)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"OMNISHELF_DATABASE_URL: {exc}") from None
    try:
        wait_for_db(engine, db_timeout)
        migrate(engine)
    except DatabaseUnavailable as exc:
        engine.dispose()
        raise SystemExit(str(exc)) from None
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SystemExit(f"migrating {engine.url.render_as_string()} failed: {reason}") from None
    return engine


def _migrate(args: argparse.Namespace) -> int:
    settings = cli_settings()
    engine = prepared_engine(settings, args.db_timeout)
    print(f"database {engine.url.render_as_string()} is at the newest schema revision")
    engine.dispose()
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
    from cloud.bus.worker import CloudBus

    settings = cli_settings()
    engine = prepared_engine(settings, args.db_timeout)

    async def run() -> None:
        worker = CloudBus(settings, engine)
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

    from cloud.api import create_app

    settings = cli_settings()
    _check_port_free(args.host, args.port)
    prepared_engine(settings, args.db_timeout).dispose()
    app = create_app(settings, run_worker=not args.no_worker)
    # uvicorn turns SIGTERM/SIGINT into the lifespan shutdown (which stops the worker cleanly) and
    # then re-raises the signal to the previous handler; for SIGTERM that handler is a no-op here,
    # so a requested stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    # log_config=None keeps the logging the `omnishelf` command set up.
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


def _check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise SystemExit(f"--port {port}: expected a number from 1 to 65535")
    with contextlib.closing(socket.socket()) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
