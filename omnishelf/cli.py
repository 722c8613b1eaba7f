"""`omnishelf <command>`: dispatches to each package's own command module.

Each package exposes `add_parser(subparsers)` in its `cli` module and signals a user error by
raising `SystemExit("one clear line")`; this dispatcher prints such errors as one line and exits
with code 2. Packages are imported only when their command runs, so `--help` is fast and a missing
optional dependency of one command does not break the others.

Each command belongs to one or more roles, installed as extras (`pip install 'omnishelf[edge]'`).
Before a command's module is imported, the installed package's metadata is checked for its roles'
requirements, so `omnishelf cloud serve` on a store box says which extra is missing in one line
instead of failing on the first import of the cloud's web stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata

from cloud.engines import EngineListError, cli_commands

CORE_COMMANDS: dict[str, tuple[str, str]] = {  # name → ("module" or "module:function", help line)
    "broker": ("broker.cli", "run a Mosquitto configured for the omnishelf bus (ACL, credentials, persistence)"),
    "pki": ("broker.pki", "the deployment's CA and the broker's TLS certificate"),
    "cloud": ("cloud.cli", "run the cloud core: API and bus workers; database migrations; seed data"),
    "backup": ("cloud.cli:add_backup_parser", "back up the cloud's database and catalogue files (while it runs)"),
    "restore": ("cloud.cli:add_restore_parser", "restore a cloud backup into an empty database and catalogue directory"),
}
BOX_COMMANDS: dict[str, tuple[str, str]] = {
    "edge": ("edge.cli", "run the store box agent (bus client, durable outbox, devices)"),
    "provision": ("provisioning.cli", "claim boxes in setup mode for a store (technician); a box's setup mode"),
    "demo": ("omnishelf.demo", "run the whole system on this machine with embedded defaults"),
    "kiosk": ("kiosk.cli", "run the cloud shelf touchscreen (Kivy) against a box's local API"),
    "station": ("kiosk.cli:add_station_parser", "run the clerk's station touchscreen (Kivy) against a box's local API"),
}
"""Besides these, each cloud engine declares its own commands in its `EngineSpec(cli=…)`."""
WITHOUT_ENGINES = frozenset({"broker", "pki", "edge", "provision", "kiosk", "station"})
"""Commands that run no cloud engine: they run even when the engine list cannot be read."""


def commands() -> dict[str, tuple[str, str]]:
    """Every command, in the order --help lists them: the core's, the engines' (read from their
    descriptors without importing them: `cloud.engines.cli_commands`), the box's. Raises
    `SystemExit` with one line when an engine's declaration cannot be read or takes a name in use."""
    try:
        engines = cli_commands()
    except EngineListError as exc:
        raise SystemExit(str(exc)) from None
    taken = sorted(set(engines) & (set(CORE_COMMANDS) | set(BOX_COMMANDS)))
    if taken:
        raise SystemExit(f"an engine declares the command {taken[0]!r}, which omnishelf has already")
    return {**CORE_COMMANDS, **engines, **BOX_COMMANDS}


ROLE_PACKAGES = ("broker", "cloud", "edge", "kiosk")
"""A command whose module is in one of these packages needs that role's extra (see pyproject.toml)."""
ROLES: dict[str, tuple[str, ...]] = {"demo": ("broker", "cloud", "edge"), "provision": ("edge",)}
"""Commands that need other roles than their module's package says."""


def roles_of(command: str) -> tuple[str, ...]:
    """The extras `command` needs: its own entry in ROLES, else its module's package (an engine's
    command needs the cloud, wherever its module lives: a site's engine may be its own package)."""
    if command in ROLES:
        return ROLES[command]
    if command not in CORE_COMMANDS and command not in BOX_COMMANDS:
        return ("cloud",)
    package = {**CORE_COMMANDS, **BOX_COMMANDS}[command][0].split(".")[0]
    return (package,) if package in ROLE_PACKAGES else ()


DISTRIBUTION = "omnishelf"

# A Requires-Dist line of an extra, as setuptools writes it: `fastapi>=0.110; extra == "cloud"`.
# Only a bare `extra == "…"` marker matches: a requirement with further markers (a platform, a
# Python version) might rightly be absent, and guessing would refuse a working install.
_EXTRA_REQUIREMENT = re.compile(r"""\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;\s*extra\s*==\s*["']([^"']+)["']\s*""")


def missing_roles(roles: Iterable[str]) -> list[str]:
    """The roles among `roles` whose extra is not fully installed in this environment."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed: no metadata to compare against, and
        # the imports will tell.
        return []
    needed: dict[str, list[str]] = {}
    for line in requires:
        if m := _EXTRA_REQUIREMENT.fullmatch(line):
            needed.setdefault(m.group(2), []).append(m.group(1))
    return [role for role in roles if not all(_installed(name) for name in needed.get(role, ()))]


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def require_roles(command: str) -> None:
    """Raise `SystemExit` with one line naming the extra to install when `command`'s roles are missing."""
    missing = missing_roles(roles_of(command))
    if not missing:
        return
    what = f"the {missing[0]} role is" if len(missing) == 1 else f"the {' and '.join(missing)} roles are"
    raise SystemExit(f"{what} not installed: pip install '{DISTRIBUTION}[{','.join(missing)}]'")


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(f"{message} (see '{self.prog} --help')")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="omnishelf", description="omnishelf: omnichannel retail boxes and cloud core")
    parser.add_argument("--version", action="version", version=f"omnishelf {_version()}")
    parser.add_argument("--debug", action="store_true", help="log debug detail and show tracebacks")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    try:
        every = commands()
    except SystemExit:
        # The cloud's engine list is the cloud's business: a box's command (a technician's shell
        # may have the variable set for the cloud on the same machine) runs without it.
        if next((a for a in argv if a in {**CORE_COMMANDS, **BOX_COMMANDS}), None) not in WITHOUT_ENGINES:
            raise
        every = {**CORE_COMMANDS, **BOX_COMMANDS}
    wanted = next((a for a in argv if a in every), None)
    for name, (spec, help_text) in every.items():
        if name == wanted:
            require_roles(name)
            # "module" or "module:function"; the function adds the command to `sub`.
            module, _, function = spec.partition(":")
            getattr(importlib.import_module(module), function or "add_parser")(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        # Flushed here, not at exit: a closed pipe must surface as the BrokenPipeError below.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`omnishelf … | head`): stop quietly, as a tool killed by SIGPIPE
        # would, and keep the interpreter's final flush from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.debug else getattr(logging, args.log_level),
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
        if not args.debug:
            # Alembic narrates every plugin it loads and every step it checks: noise on each command.
            logging.getLogger("alembic").setLevel(logging.WARNING)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        return int(func(args) or 0)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(f"omnishelf: error: {exc.code}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:
        if debug:
            raise
        print(f"omnishelf: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
