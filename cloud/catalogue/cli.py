"""`omnishelf catalogue import FILE | history | version`.

Settings come from the same OMNISHELF_* variables as `omnishelf cloud` (DATABASE_URL,
CATALOGUE_DIR). The running `omnishelf cloud serve` announces a new version to the boxes within
OMNISHELF_CATALOGUE_POLL_S seconds of an import that changed something.

Every command first says on stderr which database and catalogue directory it uses: a relative
default run from another folder is a different (new, empty) database, and nothing else would say so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "catalogue",
        help="product master data: bulk import (CSV/JSON), import history, catalogue version",
        description="The product catalogue of the cloud core (settings from OMNISHELF_* variables).",
    )
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="catalogue_command", metavar="SUBCOMMAND")
    imp = cmds.add_parser(
        "import",
        help="import products from a CSV, JSON (array) or JSON Lines file; upsert by SKU",
        description="Rows with problems are written to a CSV report (row, field, problem, value); the valid "
        "rows are stored. Re-importing the same file changes nothing.",
    )
    imp.add_argument("file", type=Path, metavar="FILE", help=".csv, .json, .jsonl or .ndjson")
    imp.add_argument("--images", type=Path, metavar="DIR", help="folder holding the image files the rows name")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in cron jobs)")
    imp.set_defaults(func=_import)
    hist = cmds.add_parser("history", help="the latest imports with their counts and report files")
    hist.add_argument("--limit", type=int, default=20)
    hist.set_defaults(func=_history)
    ver = cmds.add_parser("version", help="the newest catalogue version and its sync files")
    ver.set_defaults(func=_version)
    for p in (imp, hist, ver):
        add_db_timeout(p)


def _database_shown(url: str) -> str:
    """`url` as the user should see it: no password, and a SQLite file as an absolute path."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database:
        if database == ":memory:" or database.startswith("file:"):
            return f"sqlite:///{database}"
        # Written out rather than rendered: SQLAlchemy would percent-encode a space in the path.
        return f"sqlite:///{Path(database).resolve()}"
    return parsed.render_as_string(hide_password=True)


def _engine(args: argparse.Namespace) -> tuple[Engine, Path, str]:
    """(engine, catalogue directory, the database as shown to the user), announced on stderr."""
    settings = cli_settings()
    shown = _database_shown(settings.DATABASE_URL)
    catalogue_dir = Path(settings.CATALOGUE_DIR)
    print(f"catalogue: database {shown}, catalogue directory {catalogue_dir.resolve()}", file=sys.stderr)
    return prepared_engine(settings, args.db_timeout), catalogue_dir, shown


def _count_lines(path: Path) -> int | None:
    if path.suffix.lower() == ".json":
        return None
    try:
        with path.open("rb") as f:
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None
    return max(n - (1 if path.suffix.lower() == ".csv" else 0), 0)


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloud.catalogue.importer import ImportError_, import_file
    from cloud.catalogue.sync import ensure_artifacts

    path: Path = args.file
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    if args.images is not None and not args.images.is_dir():
        raise SystemExit(f"--images {args.images}: not a directory")
    from cloud.catalogue.importer import iter_records

    try:
        iter_records(path)
    except ImportError_ as exc:
        raise SystemExit(f"{path}: {exc}") from None
    engine, catalogue_dir, shown = _engine(args)
    bar = None if args.no_progress else tqdm(total=_count_lines(path), unit="rows", unit_scale=True, desc=path.name, file=sys.stderr)
    try:
        result = import_file(engine, path, catalogue_dir, image_dir=args.images, progress=(lambda n: bar.update(n)) if bar else None)
        if result.version is not None:
            # Built here so that the serving process only has to announce them.
            ensure_artifacts(engine, catalogue_dir)
    except ImportError_ as exc:
        raise SystemExit(f"{path}: {exc}") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SystemExit(f"import of {path} failed in the database: {reason}") from None
    finally:
        if bar is not None:
            bar.close()
        engine.dispose()
    version = f"new catalogue version {result.version}" if result.version else "no change, catalogue version unchanged"
    print(
        f"import {result.import_id}: {result.rows_ok} rows ok ({result.rows_changed} changed), "
        f"{result.rows_failed} rows failed; {version}"
    )
    if result.rows_failed:
        print(f"error report: {result.report_path}")
    if result.unknown_regions and not result.known_regions:
        print(f"no regions are defined in {shown}: is this the database you meant?", file=sys.stderr)
    return 1 if result.rows_failed and not result.rows_ok else 0


def _history(args: argparse.Namespace) -> int:
    from cloud.catalogue.models import CatalogueImport

    engine, _, _ = _engine(args)
    try:
        with Session(engine) as conn:
            rows = conn.scalars(select(CatalogueImport).order_by(CatalogueImport.id.desc()).limit(args.limit)).all()
    finally:
        engine.dispose()
    for r in rows:
        print(
            f"{r.id:>5}  {r.started_at:%Y-%m-%d %H:%M}  {r.status:<8} ok {r.rows_ok:>8}  failed {r.rows_failed:>6}  "
            f"changed {r.rows_changed:>8}  version {r.version or '-':>5}  {r.file}  report {r.report_path or '-'}"
        )
    return 0


def _version(args: argparse.Namespace) -> int:
    from cloud.catalogue.sync import ensure_artifacts

    engine, catalogue_dir, _ = _engine(args)
    try:
        ann = ensure_artifacts(engine, catalogue_dir)
    finally:
        engine.dispose()
    if ann is None:
        print("the catalogue is empty (no version yet)")
        return 0
    print(f"catalogue version {ann.version}")
    print(f"  snapshot {ann.snapshot.path} ({ann.snapshot.size} bytes)")
    for d in ann.deltas:
        print(f"  delta from {d.from_version}: {d.path} ({d.size} bytes)")
    return 0
