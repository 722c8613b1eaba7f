"""`omnishelf edge …`: run the box agent, check a config file, show the outbox for a technician."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from edge.store import Store
from firmware_config import ConfigError, NodeConfig, config_hash, load_config

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("edge", help="run the store box agent (bus client, durable outbox, devices)")
    cmds = p.add_subparsers(dest="edge_command", metavar="COMMAND", parser_class=type(p))
    run = cmds.add_parser("run", help="run the agent in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, required=True, help="the box's YAML config file")
    run.set_defaults(func=cmd_run)
    check = cmds.add_parser("check-config", help="validate a config file; print OK and its hash, or every problem")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check)
    status = cmds.add_parser("status", help="print the outbox's counters as JSON (works while the agent runs)")
    status.add_argument("--config", type=Path, required=True)
    status.set_defaults(func=cmd_status)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _load(path: Path) -> NodeConfig:
    try:
        return load_config(path, env=os.environ)
    except ConfigError as exc:
        # The dispatcher prints one line; a config can have several problems, so list them all in it.
        raise SystemExit("; ".join(exc.problems) if len(exc.problems) > 1 else exc.problems[0]) from None


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file, env=os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        raise SystemExit(f"{args.file}: {len(exc.problems)} problem(s)") from None
    from edge.agent import AgentConfigError, broker_password

    try:
        broker_password(cfg)
    except AgentConfigError as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    print(f"OK {config_hash(cfg)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from edge.agent import AgentConfigError, run_agent

    try:
        run_agent(cfg)
    except AgentConfigError as exc:
        raise SystemExit(f"{args.config}: {exc}") from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    path = cfg.outbox_path
    try:
        store = Store(path, readonly=True)
    except FileNotFoundError:
        raise SystemExit(f"no outbox at {path}: the agent has not run with this config yet") from None
    try:
        stats = store.stats()
        refused = store.refused_rows()[-10:]
    finally:
        store.close()
    out = {"node_id": cfg.node_id, "outbox": str(path), **dataclasses.asdict(stats)}
    out["last_refused"] = [{"seq": s, "reason": r} for s, r in refused]
    print(json.dumps(out, indent=2))
    return 0
