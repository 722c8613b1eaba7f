"""`omnishelf fleet failed list|show|replay|discard`, `fleet commands`, `fleet reset-gap`.

For operators on the cloud host: the bus's failed messages and the commands sent to boxes,
straight on the database (OMNISHELF_* settings), audited as `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import getpass
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access.scope import NotFound, Principal, Role, Scope
from cloud.access.service import write_session
from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage
from cloud.fleet import enrol_cli, service
from cloud.models import IngestedMessage

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "fleet", help="operate the bus: failed messages and their replay, commands sent to boxes",
        description="Failed messages (an engine could not process them) and commands to boxes.",
    )
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")

    failed = cmds.add_parser("failed", help="messages an engine could not process")
    failed.set_defaults(func=usage(failed))
    fcmds = failed.add_subparsers(dest="failed_command", metavar="SUBCOMMAND")
    fl = fcmds.add_parser("list", help="list failed messages (newest first)")
    fl.add_argument("--status", choices=["failed", "replayed", "discarded", "all"], default="failed")
    fl.add_argument("--node", metavar="NODE")
    fl.add_argument("--engine", metavar="ENGINE")
    fl.add_argument("--limit", type=_limit, default=100)
    fl.set_defaults(func=_failed_list)
    fs = fcmds.add_parser("show", help="one failed message: the error, the traceback, the message's data")
    fs.add_argument("id", type=_id)
    fs.set_defaults(func=_failed_show)
    fr = fcmds.add_parser("replay", help="run the handler again (once the engine is fixed); exactly once each")
    target = fr.add_mutually_exclusive_group(required=True)
    target.add_argument("ids", nargs="*", type=_id, default=[], metavar="ID")
    target.add_argument("--all", action="store_true", help="every message still failed (of --node/--engine)")
    fr.add_argument("--node", metavar="NODE")
    fr.add_argument("--engine", metavar="ENGINE")
    fr.set_defaults(func=_failed_replay)
    fd = fcmds.add_parser("discard", help="drop a failed message on purpose (it stays listed as discarded)")
    fd.add_argument("ids", nargs="+", type=_id, metavar="ID")
    fd.set_defaults(func=_failed_discard)

    cm = cmds.add_parser("commands", help="commands sent to boxes, newest first")
    cm.add_argument("--node", metavar="NODE")
    cm.add_argument("--status", choices=["pending", "sent", "delivered", "failed", "expired", "superseded", "cancelled"])
    cm.add_argument("--limit", type=_limit, default=50)
    cm.set_defaults(func=_commands)

    rg = cmds.add_parser("reset-gap", help="ask a box again for messages the cloud gave up on")
    rg.add_argument("node", metavar="NODE")
    rg.set_defaults(func=_reset_gap)

    for p in (fl, fs, fr, fd, cm, rg, *enrol_cli.add_parsers(cmds)):
        add_db_timeout(p)


def _id(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) < 2**63:
        raise argparse.ArgumentTypeError(f"{value!r} is not a message number (a whole number from 1)")
    return int(value)


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a limit from 1 to 10000")
    return int(value)


def _operator() -> Principal:
    # The command line runs on the cloud host with the database's own credentials: all regions.
    name = getpass.getuser()
    return Principal(kind="cli", id=0, name=name, role=Role.ADMIN, scope=Scope(all=True))


def _failed_list(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with Session(engine) as session:
            f = service.FailedFilter(None if args.status == "all" else args.status, args.node, args.engine, args.limit)
            rows = service.list_failed(session, Scope(all=True), f)
    finally:
        engine.dispose()
    if not rows:
        print("no failed messages" if args.status == "failed" else f"no {args.status} messages")
        return 0
    print(f"{'#':>6}  {'box':<16} {'type':<9} {'engine/handler':<40} {'tries':>5}  {'state':<9} error")
    for r in rows:
        print(f"{r.id:>6}  {r.node:<16} {r.type:<9} {(r.engine + '/' + r.handler.rsplit('.', 1)[-1])[:40]:<40} "
              f"{r.attempts:>5}  {r.status:<9} {r.error}")
    return 0


def _failed_show(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with Session(engine) as session:
            try:
                row = service.get_failed(session, Scope(all=True), args.id)
            except NotFound as exc:
                raise SystemExit(str(exc)) from None
            ledger = session.scalars(select(IngestedMessage).where(IngestedMessage.msg_id == row.msg_id)).one_or_none()
    finally:
        engine.dispose()
    print(f"#{row.id} {row.status}: {row.type} {row.msg_id} from {row.node}")
    print(f"engine {row.engine}, handler {row.handler}; {row.attempts} tries, last {row.last_failed_at:%Y-%m-%d %H:%M:%S} UTC")
    print(f"error: {row.error}")
    if ledger is not None:
        print(f"message: session {ledger.session}, seq {ledger.seq}, data {json.dumps(ledger.data, ensure_ascii=False)}")
    print(row.detail.rstrip())
    return 0


def _failed_replay(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        ids = list(args.ids)
        if args.all:
            ids = service.replay_ids(engine, Scope(all=True), service.FailedFilter("failed", args.node, args.engine, 10_000))
        if not ids:
            print("nothing to replay")
            return 0
        try:
            results = service.replay_failed(engine, _operator(), ids, via="cli")
        except NotFound as exc:
            raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    for r in results:
        print(f"#{r.id}: {r.outcome}" + (f" ({r.error})" if r.error else ""))
    return 0 if all(r.outcome == "replayed" for r in results) else 1


def _failed_discard(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    code = 0
    try:
        for failed_id in args.ids:
            with write_session(engine) as session, session.begin():
                try:
                    done = service.discard_failed(session, _operator(), failed_id, via="cli")
                except NotFound as exc:
                    raise SystemExit(str(exc)) from None
            print(f"#{failed_id}: {'discarded' if done else 'not in the failed state; unchanged'}")
            code = code or (0 if done else 1)
    finally:
        engine.dispose()
    return code


def _commands(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with Session(engine) as session:
            try:
                rows = service.list_commands(session, Scope(all=True), node=args.node, status=args.status, limit=args.limit)
            except NotFound as exc:
                raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    if not rows:
        print("no commands")
        return 0
    for c in rows:
        print(f"{c.id:>7}  {c.created_at:%Y-%m-%d %H:%M:%S}  {c.node:<16} {c.type:<9} {c.engine:<10} {c.status:<10} "
              f"tries {c.attempts}  {c.detail or ''}")
    return 0


def _reset_gap(args: argparse.Namespace) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with write_session(engine) as session, session.begin():
            try:
                service.reset_node_gap(session, _operator(), args.node, via="cli")
            except NotFound as exc:
                raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    print(f"{args.node}: the cloud will ask for the missing messages again")
    return 0
