"""`omnishelf edge …`: run the box agent, check a config file, show the outbox for a technician."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
from pathlib import Path

from edge.lock import lock_holder
from edge.outbox_db import OutboxDb
from firmware_config import (
    PASSWORD_ENV,
    BoxPaths,
    ConfigError,
    NodeConfig,
    PathError,
    config_hash,
    load_config,
    resolve_paths,
)

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("edge", help="run the store box agent (bus client, durable outbox, devices)")
    cmds = p.add_subparsers(dest="edge_command", metavar="COMMAND", parser_class=type(p))
    run = cmds.add_parser("run", help="run the agent in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, required=True, help="the box's YAML config file")
    run.set_defaults(func=cmd_run)
    check = cmds.add_parser(
        "check-config", help="validate a config file; print OK, its hash and the paths it resolves to, or every problem"
    )
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check)
    status = cmds.add_parser("status", help="print the outbox's counters as JSON (works while the agent runs)")
    status.add_argument("--config", type=Path, required=True)
    status.set_defaults(func=cmd_status)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _load(path: Path) -> tuple[NodeConfig, BoxPaths]:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        # The dispatcher prints one line; a config can have several problems, so list them all in it.
        raise SystemExit("; ".join(exc.problems) if len(exc.problems) > 1 else exc.problems[0]) from None
    try:
        return cfg, resolve_paths(cfg)
    except PathError as exc:
        raise SystemExit(f"{path}: {exc}") from None


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        raise SystemExit(f"{args.file}: {len(exc.problems)} problem(s)") from None
    try:
        paths = resolve_paths(cfg)
    except PathError as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    from edge.agent import AgentConfigError, broker_address, broker_password
    from edge.components import clerks_enabled

    if cfg.broker.password is not None:
        secret = "in the config file"
    elif paths.password_file is not None:
        try:
            broker_password(cfg, paths)
        except AgentConfigError as exc:
            raise SystemExit(f"{args.file}: {exc}") from None
        secret = str(paths.password_file)
    else:
        # The technician's shell rarely has the service's environment: say so, do not fail.
        secret = f"${PASSWORD_ENV} ({'set' if os.environ.get(PASSWORD_ENV) else 'not set in this shell'})"
    try:
        tls = broker_address(cfg, paths).tls
    except AgentConfigError as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    from edge.network import NetworkCheckError, check_network, network_summary

    try:
        check_network(cfg, paths)
    except NetworkCheckError as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    api = cfg.local_api
    rows = [
        ("data_dir", f"{paths.data_dir}  (from {paths.data_dir_source})"),
        ("outbox", str(paths.outbox)),
        ("lock", str(paths.outbox_lock)),
        ("catalogue", str(paths.catalogue) if cfg.catalogue.cloud_url else "(no catalogue: catalogue.cloud_url not set)"),
        *([("station", str(paths.station))] if cfg.station.enabled else []),
        *([("clerks", str(paths.clerks))] if clerks_enabled(cfg) else []),
        *([("orders", str(paths.orders))] if cfg.orders.enabled else []),
        *([("kiosk", str(paths.kiosk))] if cfg.kiosk.enabled else []),
        *([("signage", str(paths.signage))] if cfg.signage.cloud_url else []),
        ("password", secret),
        *([("ca_file", str(paths.ca_file) if paths.ca_file else "(none: the system's CA store)")] if tls else []),
        ("local_api", f"http://{api.host}:{api.port}/status" if api.enabled else "(disabled)"),
        # Only a box whose file says something about its network (the rest have the image's).
        *([("network", network_summary(cfg))] if "network" in cfg.model_fields_set else []),
    ]
    print(f"OK {config_hash(cfg)}")
    for name, value in rows:
        print(f"  {name:<10} {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg, _paths = _load(args.config)
    from edge.agent import AgentStartError, OutboxInUse, run_agent

    try:
        run_agent(cfg)
    except (AgentStartError, OutboxInUse) as exc:
        raise SystemExit(f"{args.config}: {exc}") from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg, paths = _load(args.config)
    try:
        store = OutboxDb(paths.outbox, readonly=True)
        try:
            stats = store.stats()
            refused = store.refused_rows()[-10:]
        finally:
            store.close()
    except FileNotFoundError:
        raise SystemExit(f"no outbox at {paths.outbox}: the agent has not run with this config yet") from None
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        # The agent has made the file and not yet its tables: it is starting this very moment.
        raise SystemExit(f"no outbox at {paths.outbox} yet: the agent is creating it; try again in a moment") from None
    out = {"node_id": cfg.node_id, "outbox": str(paths.outbox), "agent_pid": lock_holder(paths.outbox_lock),
           **dataclasses.asdict(stats)}
    out["last_refused"] = [{"seq": s, "reason": r} for s, r in refused]
    print(json.dumps(out, indent=2))
    return 0
