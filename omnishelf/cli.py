"""`omnishelf <command>`: dispatches to each package's own command module.

Each package exposes `add_parser(subparsers)` in its `cli` module and signals a user error by
raising `SystemExit("one clear line")`; this dispatcher prints such errors as one line and exits
with code 2. Packages are imported only when their command runs, so `--help` is fast and a missing
optional dependency of one command does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cloud.engines import COMMANDS as ENGINE_COMMANDS

COMMANDS: dict[str, tuple[str, str]] = {  # name → ("module" or "module:function", help line)
    "broker": ("broker.cli", "run a Mosquitto configured for the omnishelf bus (ACL, credentials, persistence)"),
    "cloud": ("cloud.cli", "run the cloud core: API and bus workers; database migrations; seed data"),
    "backup": ("cloud.cli:add_backup_parser", "back up the cloud's database and catalogue files (while it runs)"),
    "restore": ("cloud.cli:add_restore_parser", "restore a cloud backup into an empty database and catalogue directory"),
    **ENGINE_COMMANDS,
    "edge": ("edge.cli", "run the store box agent (bus client, durable outbox, devices)"),
    "demo": ("omnishelf.demo", "run the whole system on this machine with embedded defaults"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(f"{message} (see '{self.prog} --help')")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="omnishelf", description="omnishelf: omnichannel retail boxes and cloud core")
    parser.add_argument("--debug", action="store_true", help="log debug detail and show tracebacks")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (spec, help_text) in COMMANDS.items():
        if name == wanted:
            # "module" or "module:function"; the function adds the command to `sub`.
            module, _, function = spec.partition(":")
            getattr(importlib.import_module(module), function or "add_parser")(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.debug else getattr(logging, args.log_level),
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
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
    except Exception as exc:
        if debug:
            raise
        print(f"omnishelf: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
