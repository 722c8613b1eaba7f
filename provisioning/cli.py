"""`omnishelf provision …`: the technician's commands (discover, claim, printers, test-print) and the
box's setup mode (`setup-mode`)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

__all__ = ["add_parser"]

INTERFACE_ENV = "OMNISHELF_ZEROCONF_INTERFACE"
CLOUD_ENV = "OMNISHELF_CLOUD_URL"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("provision", help="claim boxes in setup mode for a store; a box's setup mode; LAN printers")
    cmds = p.add_subparsers(dest="provision_command", metavar="COMMAND", parser_class=type(p))
    iface = argparse.ArgumentParser(add_help=False)
    iface.add_argument("--interface", default=os.environ.get(INTERFACE_ENV) or None, metavar="IPV4",
                       help=f"the LAN address to use for zeroconf (default: ${INTERFACE_ENV}, else every interface)")

    d = cmds.add_parser("discover", parents=[iface], help="list boxes in setup mode on this LAN")
    d.add_argument("--timeout", type=float, default=2.0, help="seconds to listen (default: %(default)s)")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.set_defaults(func=cmd_discover)

    c = cmds.add_parser("claim", parents=[iface], help="enrol a box in setup mode as a node of a store")
    c.add_argument("serial")
    c.add_argument("--store", required=True, help="the store's code, e.g. st0042")
    c.add_argument("--role", required=True, choices=["kiosk", "scan-station", "signage", "gateway"])
    c.add_argument("--token", required=True, help="the enrolment token made in the console for this store and role")
    c.add_argument("--code", help="the pairing code the box shows (asked for when not given)")
    c.add_argument("--cloud", default=os.environ.get(CLOUD_ENV, "http://127.0.0.1:8000"),
                   help=f"the cloud's URL (default: ${CLOUD_ENV}, else %(default)s)")
    c.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the box to come online (0: do not wait)")
    c.set_defaults(func=cmd_claim)

    s = cmds.add_parser("setup-mode", parents=[iface], help="(on the box) advertise, show a pairing code, take a claim")
    s.add_argument("--serial", help="the box's hardware serial (default: read from the device tree, /proc/cpuinfo or DMI)")
    s.add_argument("--model", help="the box's hardware model, e.g. pi5 (default: read like the serial)")
    s.add_argument("--config-dir", type=Path, required=True, help="where the claimed config, password and CA go")
    s.add_argument("--port", type=int, default=0, help="the setup API's port (default: any free one)")
    s.add_argument("--then-run", action="store_true", help="once claimed (or if already), become the box agent")
    s.add_argument("--lockout", type=float, default=30.0, metavar="S",
                   help="after 5 wrong pairing codes, refuse pairing this long (default: %(default)s)")
    s.set_defaults(func=cmd_setup_mode)

    pr = cmds.add_parser("printers", parents=[iface], help="list network printers on this LAN (zeroconf)")
    pr.add_argument("--timeout", type=float, default=2.0)
    pr.set_defaults(func=cmd_printers)

    ap = cmds.add_parser("add-printer", help="push a printer found on the LAN into a claimed box's config")
    ap.add_argument("node", help="the box's node id, e.g. st0042-k1")
    ap.add_argument("printer", help="HOST or HOST:PORT of a raw-socket (ESC/POS) printer")
    ap.add_argument("--cloud", default=os.environ.get(CLOUD_ENV, "http://127.0.0.1:8000"))
    ap.add_argument("--rollback-after", type=float, default=300.0, metavar="S",
                    help="the box goes back to its config if it cannot reach the cloud this long after (default %(default)s)")
    ap.set_defaults(func=cmd_add_printer)

    tp = cmds.add_parser("test-print", help="print an ESC/POS test page on a raw-socket printer")
    tp.add_argument("printer", help="HOST or HOST:PORT (port 9100 by default)")
    tp.add_argument("--label", default="omnishelf test page")
    tp.set_defaults(func=cmd_test_print)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_discover(args: argparse.Namespace) -> int:
    from provisioning.technician import discover

    boxes = discover(args.interface, args.timeout)
    if args.json:
        print(json.dumps([{"serial": b.serial, "model": b.model, "address": f"{b.address}:{b.port}", "age_s": round(b.age_s)}
                          for b in boxes]))
        return 0
    if not boxes:
        print(f"no box in setup mode found in {args.timeout:.0f} s")
        return 0
    rows = [("SERIAL", "MODEL", "ADDRESS", "AGE")] + [(b.serial, b.model, f"{b.address}:{b.port}", _age(b.age_s)) for b in boxes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    from provisioning.technician import ClaimError, claim

    code = args.code or getpass.getpass(f"pairing code shown on box {args.serial}: ")
    try:
        done = claim(args.serial, store=args.store, role=args.role, token=args.token, code=code, cloud_url=args.cloud,
                     interface=args.interface, wait_online_s=args.wait)
    except ClaimError as exc:
        raise SystemExit(str(exc)) from None
    state = "online" if done.online else ("not online yet" if args.wait > 0 else "claimed (not waiting for it)")
    print(f"box {args.serial} claimed as {done.node_id} (store {done.store}, role {done.role}, profile {done.profile}): {state}")
    if args.wait > 0 and not done.online:
        raise SystemExit(f"{done.node_id} did not come online within {args.wait:.0f} s: check the box's /status")
    return 0


RESTART_MARKER = ".restart"
"""Left beside the config by the box agent when it stops to run again on a new config (a config
push, or its own rollback): the supervisor starts it again at once."""


def _run_agent(config: Path) -> int:
    """Supervise the box agent: run it again whenever it stopped for a config change."""
    marker = config.parent / RESTART_MARKER
    child: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        marker.unlink(missing_ok=True)  # a stop asked from outside is a stop, not a restart
        if child:
            child[0].send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        marker.unlink(missing_ok=True)
        sys.stdout.flush()
        child[:] = [subprocess.Popen([sys.executable, "-m", "omnishelf.cli", "edge", "run", "--config", str(config)])]
        rc = child[0].wait()
        if not marker.exists():
            return rc
        print(f"agent stopped for a config change (exit {rc}); starting it again", flush=True)


def _hardware(args: argparse.Namespace) -> tuple[str, str]:
    """The serial and model given, else read from the machine (one clear line when it has none)."""
    from provisioning.hardware import HardwareError, read_model, read_serial

    try:
        serial = args.serial or read_serial()[0]
        model = args.model or read_model()[0]
    except HardwareError as exc:
        raise SystemExit(str(exc)) from None
    return serial, model


def cmd_setup_mode(args: argparse.Namespace) -> int:
    from provisioning.setup_mode import SetupBox

    serial, model = _hardware(args)
    box = SetupBox(serial, model, args.config_dir, interface=args.interface, port=args.port, lockout_s=args.lockout)
    if box.config_path.exists():
        print(f"box {serial} is already claimed ({box.config_path}): not entering setup mode", flush=True)
        return _run_agent(box.config_path) if args.then_run else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    box.start()
    print(json.dumps({"setup_api": f"http://{args.interface or '0.0.0.0'}:{box.port}/setup"}), flush=True)
    try:
        while not stop.is_set() and not box.claimed.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()
    if box.claimed.is_set() and args.then_run:
        return _run_agent(box.config_path)
    return 0


def cmd_printers(args: argparse.Namespace) -> int:
    from provisioning.printers import find_printers

    printers = find_printers(args.interface, args.timeout)
    if not printers:
        print(f"no network printer found in {args.timeout:.0f} s")
        return 0
    for p in printers:
        print(f"{p.name}  {p.host}:{p.port}  {p.kind}")
    return 0


def cmd_test_print(args: argparse.Namespace) -> int:
    from provisioning.printers import PrinterError, test_print

    host, _, port = args.printer.partition(":")
    if port and not port.isdigit():
        raise SystemExit(f"{args.printer!r}: expected HOST or HOST:PORT")
    try:
        sent = test_print(host, int(port or 9100), args.label)
    except PrinterError as exc:
        raise SystemExit(str(exc)) from None
    print(f"test page sent to {host}:{port or 9100} ({sent} bytes)")
    return 0


API_KEY_ENV = "OMNISHELF_API_KEY"


def cmd_add_printer(args: argparse.Namespace) -> int:
    from firmware_config import ConfigError, PrinterDevice, parse_config
    from provisioning.printers import PrinterError, devices_with_printer, test_print
    from provisioning.technician import ClaimError, _http, _why

    host, _, port = args.printer.partition(":")
    if port and not port.isdigit():
        raise SystemExit(f"{args.printer!r}: expected HOST or HOST:PORT")
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise SystemExit(f"${API_KEY_ENV} is not set: an API key of a console user who may edit the fleet is needed")
    cloud = args.cloud.rstrip("/")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        # What HQ means the box to run now (its profile, the devices and settings pushed so far):
        # the printer is added to that, so nothing pushed before is lost.
        status, current = _http("GET", f"{cloud}/nodes/{args.node}/config", headers=auth)
        if status != 200:
            raise SystemExit(f"cannot read {args.node}'s config from the cloud: {_why(current)}")
        try:
            now = parse_config(yaml.safe_dump(current["config"], sort_keys=False), f"{args.node}'s config")
        except ConfigError as exc:
            raise SystemExit(f"{args.node}'s config on the cloud is not valid here: {exc.problems[0]}") from None
        test_print(host, int(port or 9100), f"omnishelf: printer for {args.node}")
        devices = devices_with_printer([d.model_dump(mode="json", exclude_defaults=True) for d in now.devices],
                                       PrinterDevice(kind="printer", host=host, port=int(port or 9100)))
        overrides = {k: v for k, v in current["config"].items() if k not in ("node_id", "store_id")} | {"devices": devices}
        status, answer = _http("POST", f"{cloud}/config-pushes",
                               {"nodes": [args.node], "overrides": overrides, "rollback_after_s": args.rollback_after},
                               headers=auth)
    except (PrinterError, ClaimError) as exc:
        raise SystemExit(str(exc)) from None
    if status != 201:
        raise SystemExit(f"the cloud refused the push: {_why(answer)}")
    print(f"test page printed; printer {host}:{port or 9100} pushed to {args.node} "
          f"(profile {current['profile']}, {len(devices)} devices; batch {answer['batch'][:8]})")
    return 0
