"""`omnishelf broker`: run Mosquitto with the generated omnishelf configuration.

The credentials file is the truth: at start the broker's dynsec file is generated from it, and on
SIGHUP the difference is applied to the running broker (boxes added, removed, passwords changed)
without dropping anyone whose credential did not change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from broker.mosquitto import BrokerLayout, MosquittoError, MosquittoProcess, check_port_free

log = logging.getLogger(__name__)


class Credentials(BaseModel):
    """The credentials file: usernames (= node/host ids) and their passwords, by role."""

    model_config = ConfigDict(extra="forbid")
    cloud: dict[str, str] = {}
    nodes: dict[str, str] = {}
    monitors: dict[str, str] = {}


def load_credentials(path: Path) -> Credentials:
    try:
        return Credentials.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise SystemExit(f"credentials file {path} does not exist") from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "(file)"
        raise SystemExit(f"credentials file {path}: field '{where}': {err['msg']}") from None


def _layout(base: BrokerLayout, creds: Credentials) -> BrokerLayout:
    """`base` with these credentials, validated (`ValueError` naming the first bad one)."""
    layout = dataclasses.replace(
        base, cloud_users=dict(creds.cloud), node_users=dict(creds.nodes), monitor_users=dict(creds.monitors)
    )
    layout.dynsec_config()
    return layout


def _reload(proc: MosquittoProcess, path: Path) -> None:
    try:
        layout = _layout(proc.layout, load_credentials(path))
    except (SystemExit, ValueError) as exc:
        # A broken edit must not take the bus down: keep serving with the credentials in force.
        log.error("credentials not reloaded, the previous ones stay in force: %s", exc)
        return
    proc.layout = layout
    try:
        applied = proc.reload()
    except MosquittoError as exc:
        log.error("credentials only partly applied (the broker keeps what it confirmed; SIGHUP again to retry): %s", exc)
        return
    log.info(
        "credentials reloaded: %d cloud, %d node and %d monitor users (%s, %.1f ms)",
        len(layout.cloud_users),
        len(layout.node_users),
        len(layout.monitor_users),
        applied.summary() if applied else "broker not running",
        applied.seconds * 1000 if applied else 0.0,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("broker", help="run a Mosquitto configured for the omnishelf bus")
    p.add_argument(
        "--data-dir", type=Path, default=Path("var/broker"), help="config, persistence and log (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=1883, help="listener port (default: %(default)s)")
    p.add_argument("--bind", default="127.0.0.1", help="listener address (default: %(default)s)")
    p.add_argument(
        "--credentials",
        type=Path,
        required=True,
        help='JSON file {"cloud": {"cloud-1": "pw"}, "nodes": {"st0001-k1": "pw"}, "monitors": {"ops": "pw"}}',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise SystemExit(f"--port {args.port} is not a TCP port (1-65535)")
    creds = load_credentials(args.credentials)
    try:
        layout = _layout(BrokerLayout(args.data_dir, args.port, args.bind), creds)
        # Before anything is started or printed: a busy port is the operator's to fix.
        check_port_free(args.bind, args.port)
    except (MosquittoError, ValueError) as exc:
        raise SystemExit(f"credentials file {args.credentials}: {exc}" if isinstance(exc, ValueError) else str(exc)) from None
    proc = MosquittoProcess(layout)
    try:
        proc.start()
    except (MosquittoError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        json.dumps({"broker": layout.url, "config": str(layout.conf_path), "log": str(layout.log_path), "pid": os.getpid()}),
        flush=True,
    )
    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # SIGHUP: re-read the credentials file (a box added or removed) and apply it live.
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    try:
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                _reload(proc, args.credentials)
            if not proc.running:
                raise SystemExit(f"Mosquitto stopped unexpectedly; see {layout.log_path}")
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()
    return 0
