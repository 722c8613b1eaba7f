"""`omnishelf fake WORD`: the fake engine's command (declared in tests.cloud.fake_engine's spec).

It says which of the engine's modules were loaded when it ran: the command line imports this
module and nothing else of the engine."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fake", help="the fake engine's command (tests)")
    parser.add_argument("word")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    loaded = sorted(m for m in sys.modules if m in ("tests.cloud.fake_engine", "cloud.fleet.engine", "fastapi"))
    print(f"fake says {args.word}; loaded: {', '.join(loaded) or 'none of the engines'}")
    return 0
