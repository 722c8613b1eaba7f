"""`omnishelf trace capture FILE | commission FILE | verify CODE --location L [--purpose P]`.

Settings come from the same OMNISHELF_* variables as `omnishelf cloud` (DATABASE_URL). Problems end
as one line on stderr (exit 1), never a traceback."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from broker.payloads import ScanPurpose
from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("trace", help="traceability: capture EPCIS documents, commission units from CSV, verify a code",
                            description="Traceability (settings from OMNISHELF_* variables).")
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    cap = cmds.add_parser("capture", help="capture an EPCIS 2.0 JSON-LD document (checked whole, stored in batches)")
    cap.add_argument("file", type=Path, metavar="FILE")
    cap.add_argument("--batch", type=int, default=1000, help="events per transaction (default 1000)")
    cap.add_argument("--no-progress", action="store_true")
    cap.set_defaults(func=_capture)
    com = cmds.add_parser("commission", help="commission units from CSV: gtin,serial,batch,expiry,location")
    com.add_argument("file", type=Path, metavar="FILE")
    com.set_defaults(func=_commission)
    ver = cmds.add_parser("verify", help="verify a code at a location as a station would (prints the verdict as JSON)")
    ver.add_argument("code")
    ver.add_argument("--location", required=True, help="a store or location code")
    ver.add_argument("--purpose", choices=[p.value for p in ScanPurpose], default="verify")
    ver.add_argument("--station", default="cli")
    ver.set_defaults(func=_verify)
    for p in (cap, com, ver):
        add_db_timeout(p)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None


def _capture(args: argparse.Namespace) -> int:
    from cloud.trace import epcis

    # Two passes over the file, event by event: the first checks the whole document (an invalid one
    # stores nothing), the second stores it in batches with progress. Memory stays flat.
    try:
        total = epcis.check_file(args.file)
    except OSError as exc:
        raise SystemExit(f"cannot read {args.file}: {exc}") from None
    except epcis.EpcisError as exc:
        raise SystemExit(f"{args.file}: refused, nothing stored: {exc}") from None
    except Exception as exc:  # ijson's parse errors (not JSON, truncated): one line, not a traceback
        raise SystemExit(f"{args.file}: not a JSON document ({type(exc).__name__}: {exc})") from None
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        capture_id = epcis.start(engine, "cli", total, datetime.now(UTC))
        bar = tqdm(total=total, unit="event", disable=args.no_progress, file=sys.stderr)

        def advance(n: int) -> None:
            bar.update(n)

        epcis.capture(engine, capture_id, epcis.file_events(args.file), batch=args.batch, progress=advance)
        bar.close()
        from sqlalchemy.orm import Session

        from cloud.trace.models import Capture

        with Session(engine) as s:
            job = s.get(Capture, capture_id)
            assert job is not None
            print(f"capture {capture_id}: {total} events, {job.status}; {job.stored} new"
                  + (f"; {job.errors[0]}" if job.errors else ""))
            return 0 if job.status == "succeeded" else 1
    finally:
        engine.dispose()


def _commission(args: argparse.Namespace) -> int:
    from cloud.access.service import InputError, write_session
    from cloud.trace import service

    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with write_session(engine) as s, s.begin():
            n = service.commission_csv(s.connection(), _read(args.file), "cli", datetime.now(UTC))
    except InputError as exc:
        raise SystemExit(f"{args.file}: refused, nothing stored: {exc.message}") from None
    finally:
        engine.dispose()
    print(f"commissioned {n} units")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cloud.access.scope import NotFound, Principal, Role, Scope
    from cloud.access.service import InputError, write_session
    from cloud.trace import service
    from cloud.trace.handlers import RULES

    cli = Principal(kind="user", id=0, name="cli", role=Role.ADMIN, scope=Scope(all=True))
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with write_session(engine) as s, s.begin():
            verdict = service.scan(s, cli, code=args.code, station=args.station, purpose=ScanPurpose(args.purpose),
                                   node=None, location=args.location, at=None, rules=RULES)
    except (InputError, NotFound) as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    print(verdict.model_dump_json(indent=1))
    return 0
