"""`omnishelf users add | list | passwd | unlock | enable | disable | api-key create | revoke | list`.

Works straight on the database (OMNISHELF_DATABASE_URL, migrated first), so the first admin can be
created before anyone can sign in. Changes are audited as `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.scope import NotFound, Role
from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("users", help="console users and API keys (create the first admin here)")
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="users_command", metavar="SUBCOMMAND")
    roles = [r.value for r in Role]

    add = cmds.add_parser("add", help="create a user")
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=roles)
    add.add_argument("--region", action="append", default=[], metavar="CODE", help="region code (repeat)")
    add.add_argument("--store", action="append", default=[], metavar="CODE", help="store code (repeat)")
    _password_args(add)
    add.set_defaults(func=_add)

    ls = cmds.add_parser("list", help="list users")
    ls.set_defaults(func=_list)

    pw = cmds.add_parser("passwd", help="set a user's password (ends their sign-ins, clears a lockout)")
    pw.add_argument("--username", required=True)
    _password_args(pw)
    pw.set_defaults(func=_passwd)

    unlock = cmds.add_parser("unlock", help="lift a user's sign-in lockout (from every address)")
    unlock.add_argument("name", metavar="NAME", help="the username")
    unlock.set_defaults(func=_unlock)

    for name, active in (("enable", True), ("disable", False)):
        p = cmds.add_parser(name, help=f"{name} a user")
        p.add_argument("--username", required=True)
        p.set_defaults(func=_set_active(active))

    key = cmds.add_parser("api-key", help="API keys for machine clients")
    key.set_defaults(func=usage(key))
    kcmds = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    kc = kcmds.add_parser("create", help="create a key; its secret is printed once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--role", required=True, choices=[r for r in roles if r != "admin"])
    kc.add_argument("--region", action="append", default=[], metavar="CODE")
    kc.add_argument("--store", action="append", default=[], metavar="CODE")
    kc.add_argument("--expires-days", type=int, metavar="N", help="expire after N days (default: never)")
    kc.set_defaults(func=_key_create)
    kr = kcmds.add_parser("revoke", help="revoke a key")
    kr.add_argument("--name", required=True)
    kr.set_defaults(func=_key_revoke)
    kl = kcmds.add_parser("list", help="list keys (never their secrets)")
    kl.set_defaults(func=_key_list)

    for p in (add, ls, pw, unlock, kc, kr, kl, *(cmds.choices[n] for n in ("enable", "disable"))):
        add_db_timeout(p)


def _password_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    g.add_argument("--generate", action="store_true", help="generate a password and print it once")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _password(args: argparse.Namespace) -> tuple[str, bool, str]:
    """The password, whether it was generated, and where it came from (for error messages)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False, "--password-stdin"
    if args.generate or not sys.stdin.isatty():
        return secrets.token_urlsafe(15), True, "--generate"
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("password typed at the prompt: the two entries differ; nothing was changed")
    return first, False, "password typed at the prompt"


# The option that supplies each field the service layer names in an `InputError`.
OPTIONS = {
    "username": "--username",
    "active": "--username",
    "role": "--role",
    "regions": "--region",
    "stores": "--store",
    "name": "--name",
    "expires_at": "--expires-days",
}


@contextmanager
def _db(args: argparse.Namespace, *, password_from: str = "password") -> Iterator[Session]:
    """A write transaction; a service error becomes one line naming the option the user gave."""
    engine: Engine = prepared_engine(cli_settings(), args.db_timeout)
    try:
        with service.write_session(engine) as session, session.begin():
            yield session
    except service.InputError as exc:
        option = password_from if exc.field == "password" else OPTIONS.get(exc.field, exc.field)
        raise SystemExit(f"{option}: {exc.message}") from None
    except NotFound as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()


def _add(args: argparse.Namespace) -> int:
    password, generated, source = _password(args)
    with _db(args, password_from=source) as s:
        service.create_user(s, _actor(), args.username, password, args.role, regions=args.region, stores=args.store, via="cli")
    print(f"created {args.role} user {args.username!r}")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _db(args) as s:
        users = service.list_users(s)
        locks = service.lock_states(s, [u.username for u in users])
        for u in users:
            scope = ",".join([r.code for r in u.regions] + [st.code for st in u.stores]) or "-"
            state = "active" if u.active else "disabled"
            lock = locks.get(u.username)
            if lock and lock.everywhere_until:
                state += f", locked everywhere until {lock.everywhere_until:%Y-%m-%d %H:%M} UTC"
            elif lock:
                state += f", locked from {', '.join(src for src, _ in lock.sources)}"
            print(f"{u.username}\t{u.role}\t{scope}\t{state}")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    with _db(args) as s:
        service.unlock_user(s, _actor(), args.name, via="cli")
    print(f"user {args.name!r} unlocked: sign-ins from every address are accepted again")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    password, generated, source = _password(args)
    with _db(args, password_from=source) as s:
        service.set_password(s, _actor(), args.username, password, via="cli")
    print(f"password of {args.username!r} changed")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def _set_active(active: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _db(args) as s:
            service.set_user_active(s, _actor(), args.username, active, via="cli")
        print(f"user {args.username!r} {'enabled' if active else 'disabled'}")
        return 0

    return run


def _key_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_days is not None:
        if not 1 <= args.expires_days <= service.KEY_EXPIRY_MAX_DAYS:
            raise SystemExit(f"--expires-days {args.expires_days}: expected a whole number of days from 1 to "
                             f"{service.KEY_EXPIRY_MAX_DAYS} (omit it for a key that does not expire)")
        expires = datetime.now(UTC) + timedelta(days=args.expires_days)
    with _db(args) as s:
        _key, secret = service.create_api_key(
            s, _actor(), args.name, args.role, regions=args.region, stores=args.store, expires_at=expires, via="cli"
        )
    print(secret)
    print(f"API key {args.name!r} ({args.role}) created; the line above is its secret, shown once", file=sys.stderr)
    return 0


def _key_revoke(args: argparse.Namespace) -> int:
    with _db(args) as s:
        service.revoke_api_key(s, _actor(), args.name, via="cli")
    print(f"API key {args.name!r} revoked")
    return 0


def _key_list(args: argparse.Namespace) -> int:
    with _db(args) as s:
        for k in service.list_api_keys(s):
            state = "revoked" if k.revoked_at else ("expires " + k.expires_at.isoformat() if k.expires_at else "active")
            scope = ",".join([r.code for r in k.regions] + [st.code for st in k.stores]) or "-"
            print(f"{k.name}\tosk_{k.prefix}_…\t{k.role}\t{scope}\t{state}")
    return 0
