"""`omnishelf broker`: run Mosquitto with the generated omnishelf configuration.

The credentials file is the truth: at start the broker's dynsec file is generated from it, and on
SIGHUP the difference is applied to the running broker (boxes added, removed, passwords changed)
without dropping anyone whose credential did not change.

With `--tls-cert`/`--tls-key` the broker listens with TLS on `--tls-port`, and by default only
there: a plain listener beside it would let a box configured with mqtt:// (or someone in the path
who strips TLS) send its password in clear text. `--plain` keeps it, for the weeks in which boxes
move to mqtts:// one by one.
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

from broker.mosquitto import (
    BrokerLayout,
    MosquittoError,
    MosquittoProcess,
    TlsListener,
    check_port_free,
    check_tls_files,
)

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
    p.add_argument("--port", type=int, default=1883, help="plain MQTT listener port (default: %(default)s)")
    p.add_argument("--bind", default="127.0.0.1", help="listener address (default: %(default)s)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="the broker's certificate (PEM; intermediate CAs after it): adds a TLS listener")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM, unencrypted)")
    p.add_argument("--tls-port", type=int, default=8883, help="TLS listener port (default: %(default)s)")
    p.add_argument(
        "--plain",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the plain listener on --port (default: yes without TLS, no with TLS: boxes still on "
        "mqtt:// during a move to TLS need --plain)",
    )
    p.add_argument(
        "--credentials",
        type=Path,
        required=True,
        help='JSON file {"cloud": {"cloud-1": "pw"}, "nodes": {"st0001-k1": "pw"}, "monitors": {"ops": "pw"}}',
    )
    p.set_defaults(func=run)


def _listeners(args: argparse.Namespace) -> tuple[TlsListener | None, bool]:
    """(the TLS listener, whether the plain one stays) from the command line; one line per mistake."""
    for name in ("port", "tls_port"):
        if not 1 <= getattr(args, name) <= 65535:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)} is not a TCP port (1-65535)")
    if (args.tls_cert is None) != (args.tls_key is None):
        given, missing = ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        raise SystemExit(f"{given} needs {missing} too: expected the certificate and its private key, found only one")
    if args.tls_cert is None:
        if args.plain is False:
            raise SystemExit("--no-plain without --tls-cert/--tls-key leaves no listener: expected TLS files or --plain")
        return None, True
    plain = bool(args.plain)
    if plain and args.tls_port == args.port:
        raise SystemExit(f"--tls-port {args.tls_port} is also --port: expected two different ports")
    tls = TlsListener(args.tls_cert, args.tls_key, args.tls_port)
    try:
        check_tls_files(tls)
    except MosquittoError as exc:
        raise SystemExit(str(exc)) from None
    return tls, plain


def run(args: argparse.Namespace) -> int:
    tls, plain = _listeners(args)
    creds = load_credentials(args.credentials)
    try:
        layout = _layout(BrokerLayout(args.data_dir, args.port, args.bind, tls=tls, plain=plain), creds)
        # Before anything is started or printed: a busy port is the operator's to fix.
        for port in layout.ports:
            check_port_free(args.bind, port)
    except (MosquittoError, ValueError) as exc:
        raise SystemExit(f"credentials file {args.credentials}: {exc}" if isinstance(exc, ValueError) else str(exc)) from None
    # Under systemd the unit's cgroup goes with us; anywhere else (a shell, a test) a killed
    # supervisor must not leave Mosquitto holding the port.
    proc = MosquittoProcess(layout, die_with_parent=True)
    stop = threading.Event()
    reload = threading.Event()
    # Installed before the broker starts: a SIGHUP (systemctl reload) or SIGTERM arriving while it
    # starts must be handled, not kill this process with the broker still running.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # SIGHUP: re-read the credentials file (a box added or removed) and apply it live.
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    try:
        proc.start()
    except (MosquittoError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        json.dumps({"broker": layout.url, "listeners": layout.urls, "config": str(layout.conf_path),
                    "log": str(layout.log_path), "pid": os.getpid()}),
        flush=True,
    )
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
