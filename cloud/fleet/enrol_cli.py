"""`omnishelf fleet token create|list|revoke`, `fleet identities`, `fleet revoke|reinstate NODE`:
enrolment on the cloud host, straight on the database, audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access.scope import NotFound, Scope
from cloud.access.service import InputError, write_session
from cloud.cli import cli_settings, prepared_engine, usage
from cloud.fleet import enrolment
from cloud.fleet.identity import BrokerAdmin, BrokerAdminError
from cloud.fleet.models import Identity

__all__ = ["add_parsers"]


def add_parsers(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> list[argparse.ArgumentParser]:
    tok = cmds.add_parser("token", help="enrolment tokens: single-use permission to claim one box for a store and role")
    tok.set_defaults(func=usage(tok))
    tcmds = tok.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    tc = tcmds.add_parser("create", help="make a token (shown once)")
    tc.add_argument("--store", required=True)
    tc.add_argument("--role", required=True, choices=list(enrolment.ROLES))
    tc.add_argument("--ttl-min", type=int, default=60, help="minutes it stays usable (default %(default)s)")
    tc.set_defaults(func=_token_create)
    tl = tcmds.add_parser("list", help="tokens, newest first")
    tl.set_defaults(func=_token_list)
    tr = tcmds.add_parser("revoke", help="make an unused token unusable")
    tr.add_argument("id", type=int)
    tr.set_defaults(func=_token_revoke)
    ids = cmds.add_parser("identities", help="enrolled boxes and the state of their broker credential")
    ids.set_defaults(func=_identities)
    rv = cmds.add_parser("revoke", help="disable a box's broker credential now (it is dropped at once)")
    rv.add_argument("node")
    rv.add_argument("--reason", required=True)
    rv.set_defaults(func=_revoke)
    ri = cmds.add_parser("reinstate", help="enable a revoked box's credential again")
    ri.add_argument("node")
    ri.set_defaults(func=_reinstate)
    return [tc, tl, tr, ids, rv, ri]


def _operator() -> Any:
    from cloud.fleet.cli import _operator as op

    return op()


def _with_engine(args: argparse.Namespace, work: Callable[[Any], int]) -> int:
    engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        return work(engine)
    except (InputError, NotFound) as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()


def _admin() -> BrokerAdmin | None:
    try:
        return BrokerAdmin.from_settings(cli_settings())
    except BrokerAdminError:
        return None


def _token_create(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with write_session(engine) as session, session.begin():
            token, secret = enrolment.create_token(session, _operator(), args.store, args.role, ttl_s=args.ttl_min * 60, via="cli")
            print(f"token #{token.id} for {token.store.code} ({token.role}), usable once until {token.expires_at:%Y-%m-%d %H:%M} UTC:")
            print(secret)
        return 0

    return _with_engine(args, work)


def _token_list(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with Session(engine) as session:
            rows = [enrolment.token_view(t) for t in enrolment.list_tokens(session, Scope(all=True))]
        if not rows:
            print("no enrolment tokens")
        for t in rows:
            used = f"  {t['node']} ({t['used_serial']})" if t["node"] else ""
            print(f"#{t['id']:<4} {t['hint']}…  {t['store']:<8} {t['role']:<12} {t['state']:<8} until {t['expires_at'][:16]}{used}")
        return 0

    return _with_engine(args, work)


def _token_revoke(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with write_session(engine) as session, session.begin():
            enrolment.revoke_token(session, _operator(), args.id, via="cli")
        print(f"token #{args.id} revoked")
        return 0

    return _with_engine(args, work)


def _identities(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with Session(engine) as session:
            rows = session.scalars(select(Identity).order_by(Identity.node_id)).all()
            if not rows:
                print("no enrolled boxes")
            for i in rows:
                why = f"  ({i.revoked_reason})" if i.revoked_reason else ""
                print(f"{i.node_id:<14} {i.serial:<12} {i.model:<8} {i.role:<12} {i.status:<8} "
                      f"broker {'confirmed' if i.broker_synced else 'pending'}{why}")
        return 0

    return _with_engine(args, work)


def _revoke(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with write_session(engine) as session, session.begin():
            _identity, problem = enrolment.revoke_node(session, _operator(), _admin(), args.node, reason=args.reason, via="cli")
        print(f"{args.node} revoked: " + ("the broker dropped it" if problem is None
                                          else f"the broker has not confirmed yet ({problem}); the cloud bus retries"))
        return 0

    return _with_engine(args, work)


def _reinstate(args: argparse.Namespace) -> int:
    def work(engine: Any) -> int:
        with write_session(engine) as session, session.begin():
            _identity, problem = enrolment.reinstate_node(session, _operator(), _admin(), args.node, via="cli")
        print(f"{args.node} reinstated" + ("" if problem is None else f" (the broker has not confirmed yet: {problem})"))
        return 0

    return _with_engine(args, work)
