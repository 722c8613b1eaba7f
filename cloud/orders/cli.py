"""`omnishelf orders stock-import FILE | inbox | rules [FILE] [--dry-run]` (settings from the
OMNISHELF_* variables, like `omnishelf cloud`)."""

from __future__ import annotations

import argparse
import json
import os
import pwd
from pathlib import Path

from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("orders", help="orders and stock: warehouse stock import (CSV), the inbox, routing rules",
                            description="The orders engine of the cloud core (settings from OMNISHELF_* variables).")
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="orders_command", metavar="SUBCOMMAND")
    imp = cmds.add_parser("stock-import", help="set stock levels from a CSV: location,sku,on_hand[,safety][,min_level]",
                          description="The whole file is refused at its first bad row (named by line).")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.set_defaults(func=_stock_import)
    inbox = cmds.add_parser("inbox", help="payloads that could not be accepted as orders (fix and replay in the console)")
    inbox.add_argument("--limit", type=int, default=50)
    inbox.set_defaults(func=_inbox)
    rules = cmds.add_parser("rules", help="show the routing rules in force, or validate and save a new version")
    rules.add_argument("file", type=Path, nargs="?", metavar="FILE", help="a rule set (JSON) to save")
    rules.add_argument("--dry-run", action="store_true", help="show what FILE would do to the last 50 orders; save nothing")
    rules.set_defaults(func=_rules)
    for p in (imp, inbox, rules):
        add_db_timeout(p)


def _actor() -> str:
    return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


def _stock_import(args: argparse.Namespace) -> int:
    from cloud.db import write_transaction
    from cloud.orders import service
    from cloud.orders.stock import StockError, apply_levels, parse_csv

    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{args.file}: cannot read it ({exc})") from None
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with write_transaction(engine) as conn:
            n = 0
            for code, levels in parse_csv(text).items():
                n += apply_levels(conn, service.location_id(conn, code), levels, source=f"csv:{args.file.name}",
                                  now=service._now(), kind="adjust")
            service.audit(conn, _actor(), "stock.csv", args.file.name, detail=f"{n} rows", via="cli",
                          object_type="stock")
    except (StockError, LookupError) as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    finally:
        engine.dispose()
    print(f"{n} stock rows changed")
    return 0


def _inbox(args: argparse.Namespace) -> int:
    from cloud.orders import service

    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with engine.connect() as conn:
            items = service.inbox(conn, "open", args.limit)
    finally:
        engine.dispose()
    for i in items:
        print(f"{i['id']:>6}  {i['received_at'][:19]}  {i['channel']:<12} {i['source']:<8} {i['reason']:<16} {i['detail']}")
    if not items:
        print("the inbox is empty")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from cloud.db import write_transaction
    from cloud.orders import dryrun, service
    from cloud.orders.rules import RuleError

    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        if args.file is None:
            with engine.connect() as conn:
                version, rules = service.current_rules(conn)
            print(json.dumps({"version": version, "rules": rules.model_dump(mode="json")}, indent=2, ensure_ascii=False))
            return 0
        try:
            spec = json.loads(args.file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{args.file}: not a JSON rule set ({exc})") from None
        try:
            if args.dry_run:
                with engine.connect() as conn:
                    print(json.dumps(dryrun.dry_run(conn, spec, 50), indent=2, ensure_ascii=False))
                return 0
            with write_transaction(engine) as conn:
                version = service.save_rules(conn, spec, actor=_actor(), via="cli")
        except RuleError as exc:
            raise SystemExit(f"{args.file}: {exc}") from None
        print(f"saved as version {version}")
        return 0
    finally:
        engine.dispose()
