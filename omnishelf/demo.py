"""`omnishelf demo`: the whole system on one machine with embedded defaults.

Starts a private Mosquitto, the cloud core on SQLite (migrated and seeded with the demo regions,
stores and products) and one simulated box per demo store, each as its own process, exactly as
they run in production. Ctrl-C stops them in reverse order (boxes first, so their deaths reach the
cloud), and a child that dies unexpectedly stops the demo with the tail of its log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from broker import topics
from broker.mosquitto import BrokerLayout, MosquittoError, MosquittoProcess, die_with_parent, free_port
from firmware_config import (
    BrokerConfig,
    CatalogueConfig,
    LocalApiConfig,
    NodeConfig,
    OrderDeskConfig,
    SignageConfig,
    SimulatorDevice,
    write_config,
)

CLOUD_USER = "cloud-1"
MONITOR_USER = "ops"
ADMIN_USER = "admin"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole system on this machine with embedded defaults")
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="state of the demo (default: %(default)s)")
    p.add_argument("--mqtt-port", type=int, default=1883, help="broker port; a free one if taken (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000, help="cloud API port; a free one if taken (default: %(default)s)")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=run)


def _port(wanted: int, what: str) -> int:
    if not 0 <= wanted <= 65535:
        raise SystemExit(f"--{what}-port {wanted} is not a TCP port (1-65535, or 0 for any free port)")
    if wanted:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", wanted))
                return wanted
            except OSError:
                pass
    return free_port()


def _secrets(path: Path, users: list[str]) -> dict[str, str]:
    """Passwords kept across runs so that boxes and broker agree after a restart of the demo."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for user in users:
        known.setdefault(user, secrets.token_urlsafe(18))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2))
    path.chmod(0o600)
    return known


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "omnishelf.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
                preexec_fn=die_with_parent,  # and if we are killed outright, they go too
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def run_once(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        child = self.start(name, *args, env=env)
        code = child.proc.wait()
        self.children.remove(child)
        if code != 0:
            raise SystemExit(f"'omnishelf {' '.join(args)}' failed with code {code}: {tail(child.log)}")

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop_all(self, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        self.children.clear()


def _console_access(db_url: str, secrets_file: Path, passwords: dict[str, str]) -> str:
    """Make sure the console has the demo admin, and return an API key for curl (kept across runs
    in the secrets file, replaced when the database no longer accepts it)."""
    from cloud.access import service
    from cloud.access.bootstrap import create_api_key, ensure_admin
    from cloud.db import make_engine

    engine = make_engine(db_url)
    try:
        ensure_admin(engine, ADMIN_USER, passwords[ADMIN_USER])
        key = passwords.get("api-key", "")
        with service.write_session(engine) as session:
            valid = bool(key) and service.principal_for_key(session, key) is not None
        if not valid:
            key = create_api_key(engine, f"demo-{int(time.time())}", "hq")
            passwords["api-key"] = key
            secrets_file.write_text(json.dumps(passwords, indent=2))
        return key
    finally:
        engine.dispose()


# -- provisioning: one box goes through setup mode and is claimed ----------------------------------

DEMO_SERIAL = "DEMO-0001"


def _provision_demo_box(sup: Supervisor, data: Path, api: str, api_key: str) -> str:
    """A simulated factory-fresh box in setup mode (zeroconf on loopback only), claimed for store
    st0001 with an enrolment token and its pairing code, as a technician would; on later runs of the
    demo the box is already claimed and starts as an agent. Returns the banner's description."""
    from provisioning.technician import ClaimError, claim

    config_dir = (data / "provisioned" / DEMO_SERIAL).resolve()
    already = (config_dir / "box.yaml").exists()
    sup.start("setup-mode", "provision", "setup-mode", "--serial", DEMO_SERIAL, "--model", "pi5", "--config-dir",
              str(config_dir), "--interface", "127.0.0.1", "--then-run")
    if already:
        return f"{DEMO_SERIAL} (claimed on an earlier run; {config_dir / 'box.yaml'})"
    code_file = config_dir / "pairing-code"
    deadline = time.monotonic() + 30
    while not code_file.exists():
        if time.monotonic() > deadline:
            return f"{DEMO_SERIAL}: setup mode did not start (see {data / 'logs'})"
        time.sleep(0.05)
    request = urllib.request.Request(
        f"{api}/enrolment-tokens", data=json.dumps({"store": "st0001", "role": "kiosk"}).encode(), method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        token = json.loads(answer.read())["token"]
    try:
        done = claim(DEMO_SERIAL, store="st0001", role="kiosk", token=token, code=code_file.read_text().strip(),
                     cloud_url=api, interface="127.0.0.1", wait_online_s=30)
    except ClaimError as exc:
        return f"{DEMO_SERIAL}: claim failed: {exc}"
    return f"{DEMO_SERIAL} -> {done.node_id} ({'online' if done.online else 'not online yet'}, claimed in {done.seconds:.1f} s)"


def tail(log: Path, lines: int = 8) -> str:
    if not log.exists():
        return "(no log)"
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty log)"


def _wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise SystemExit(f"the cloud core exited with code {child.proc.returncode}: {tail(child.log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the cloud core did not answer {url} within {timeout:.0f} s: {tail(child.log)}")


def box_config(
    node: str, store: str, mqtt_port: int, password_file: Path, data_dir: Path, cloud_url: str, local_api_port: int
) -> NodeConfig:
    """A simulated demo box: its outbox and catalogue under `data_dir`/edge/<node>/."""
    return NodeConfig(
        node_id=node,
        store_id=store,
        data_dir=data_dir.resolve(),
        telemetry_every_s=10,
        broker=BrokerConfig(url=f"mqtt://127.0.0.1:{mqtt_port}", password_file=password_file.resolve(), keepalive_s=10),
        catalogue=CatalogueConfig(cloud_url=cloud_url, image_budget_mb=64),
        signage=SignageConfig(cloud_url=cloud_url, media_budget_mb=64),
        orders=OrderDeskConfig(enabled=True),
        local_api=LocalApiConfig(port=local_api_port),
        devices=(SimulatorDevice(kind="simulator", scans_per_s=0.5, orders_per_min=2),),
    )


def with_kiosk(cfg: NodeConfig, cloud_url: str, api_key: str) -> NodeConfig:
    """The cloud shelf's box side on the first demo box: search with pinyin, availability, orders.
    It reads stock figures with the demo's API key (a real box gets a key of its own, read-only)."""
    from firmware_config import KioskConfig

    return cfg.model_copy(update={"kiosk": KioskConfig(enabled=True, stock_url=cloud_url, stock_api_key=api_key)})


def with_station(cfg: NodeConfig, data: Path) -> NodeConfig:
    """The demo's scanning station: the box's camera reads a generated video of unit codes (looped)
    that the traceability demo commissioned and received at the box's store; scans go to the cloud,
    whose verdicts come back (the box answers provisionally from its lists if the cloud is slow or
    away), and receipts print to a file."""
    from edge.station.testcard import Symbol, write_video
    from firmware_config import PrinterDevice, ScannerDevice, StationConfig
    from omnishelf.demo_trace import STATION_ITEMS, station_gtin

    folder = (data / "station").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "counter.avi"
    if not video.exists():
        symbols: list[Symbol | None] = [
            Symbol(f"(01){station_gtin(i)}(17)281231(10)L{i:03d}(21)DEMO{i:04d}", gs1=True) for i in STATION_ITEMS]
        write_video(video, symbols, hold=8, gap=8, fps=5)
    scanner = ScannerDevice(kind="scanner", name="counter-camera", source="camera", path=video, loop=True, max_fps=5,
                            formats=("datamatrix", "qrcode"), purpose="sell")
    printer = PrinterDevice(kind="printer", name="till", connection="file", path=folder / "receipts.bin")
    return cfg.model_copy(update={
        "station": StationConfig(enabled=True, final_wait_s=2, receipt_header="omnishelf demo", auto_print=True),
        "devices": (*cfg.devices, scanner, printer),
    })


def _trace(api: str, key: str, broker_url: str, password: str) -> list[str]:
    """Traceability in the demo (see omnishelf/demo_trace.py); a failure there is reported, not fatal."""
    from omnishelf import demo_trace

    try:
        return demo_trace.run(api, key, broker_url, password)
    except Exception as exc:  # the rest of the demo is worth running anyway
        return [f"  traceability demo failed: {type(exc).__name__}: {exc}"]


def _signage(db_url: str, data: Path) -> None:
    """Signage content for the demo boxes, published once (see cloud.signage.demo)."""
    from cloud.db import make_engine
    from cloud.signage.demo import setup
    from cloud.signage.media import MEDIA_SUBDIR

    engine = make_engine(db_url)
    try:
        setup(engine, data / "catalogue" / MEDIA_SUBDIR)
    finally:
        engine.dispose()


# -- orders: a kiosk order at one store, routed to another that has the stock, accepted there --------


def _http(method: str, url: str, body: object = None, key: str | None = None) -> object:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def orders_demo(api: str, key: str, stores: dict[str, str], ports: dict[str, int], timeout: float = 30.0) -> str:
    """The first store's kiosk orders tea for pickup at the second store, which alone has it: the
    cloud routes it there, the second box gets the assignment and accepts it. Returns the banner
    line (or why it did not happen: the rest of the demo runs regardless)."""
    from cloud.seed import DEMO_STORE_DETAILS

    (a_store, a_node), (b_store, b_node) = list(stores.items())[:2]
    try:
        for code, node in stores.items():
            d = DEMO_STORE_DETAILS[code]
            _http("PUT", f"{api}/locations/{code}", {"kind": "store", "store": code, "node": node, "lat": d.lat,
                                                      "lon": d.lon, "region": d.region}, key)
        _http("PUT", f"{api}/stock/{b_store}", [{"sku": "TEA-LJ-250", "on_hand": 10, "min_level": 3}], key)
        order_id = f"K-{a_node}-demo-{int(time.time())}"
        deadline = time.monotonic() + timeout
        while True:  # the box's order desk answers once the agent runs
            try:
                _http("POST", f"http://127.0.0.1:{ports[a_node]}/desk/kiosk-order", {
                    "order_id": order_id, "channel": "kiosk", "fulfilment": "pickup", "pickup_store": b_store,
                    "lines": [{"sku": "TEA-LJ-250", "qty": 1, "price": 168}]})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        while True:
            held = _http("GET", f"http://127.0.0.1:{ports[b_node]}/desk/orders")
            if isinstance(held, list) and held:
                break
            if time.monotonic() > deadline:
                return f"  orders: the kiosk order did not reach {b_node} within {timeout:.0f} s (see {api}/console/orders)"
            time.sleep(0.3)
        assignment = held[0]["assignment"]
        _http("POST", f"http://127.0.0.1:{ports[b_node]}/desk/orders/{assignment}/accept", {})
    except (OSError, ValueError) as exc:
        return f"  orders: the demo order could not be placed ({exc})"
    return (f"  orders: a kiosk order at {a_store} was routed to {b_store} (which has the stock) and accepted there:\n"
            f"    {api}/console/orders   and on {b_node}: curl -s http://127.0.0.1:{ports[b_node]}/desk/orders")


# -- clerks: the first store's clerk, whose PIN works at its station box even offline --------------

DEMO_CLERK_PIN = "2580"


def clerks_demo(api: str, key: str, store: str, node: str, port: int) -> str:
    """A clerk for `store`, made before its boxes start (the roster reaches them with their birth).
    Returns the banner lines."""
    try:
        clerk = _http("POST", f"{api}/staff/clerks", {"store": store, "name": "Demo Clerk", "staff_number": "D-1",
                                                      "pin": DEMO_CLERK_PIN}, key)
    except (OSError, ValueError) as exc:
        return f"  clerks: the demo clerk could not be created ({exc})"
    assert isinstance(clerk, dict)
    return (f"  clerks: {store}'s boxes hold its roster (console: {api}/console/staff); sign in at {node} with the PIN, offline too:\n"
            f"    curl -s http://127.0.0.1:{port}/clerks\n"
            f"    curl -s -X POST -d '{{\"clerk_id\": {clerk['id']}, \"pin\": \"{DEMO_CLERK_PIN}\"}}' "
            f"http://127.0.0.1:{port}/clerks/sign-in")


def run(args: argparse.Namespace) -> int:
    from cloud.seed import DEMO_STORES  # the demo boxes are the seeded demo stores' nodes

    data: Path = args.data_dir
    mqtt_port = _port(args.mqtt_port, "mqtt")
    http_port = _port(args.http_port, "http")
    stores: dict[str, str] = dict(DEMO_STORES)  # store code -> node id
    nodes = list(stores.values())
    from omnishelf import demo_trace

    passwords = _secrets(data / "secrets.json", [CLOUD_USER, MONITOR_USER, ADMIN_USER, *nodes, demo_trace.STATION])

    layout = BrokerLayout(
        data / "broker",
        mqtt_port,
        cloud_users={CLOUD_USER: passwords[CLOUD_USER]},
        node_users={n: passwords[n] for n in [*nodes, demo_trace.STATION]},
        monitor_users={MONITOR_USER: passwords[MONITOR_USER]},
    )
    broker = MosquittoProcess(layout, die_with_parent=True)
    try:
        broker.start()
    except MosquittoError as exc:
        raise SystemExit(str(exc)) from None

    db_url = f"sqlite:///{(data / 'omnishelf.db').resolve()}"
    env = {
        **os.environ,
        # Everything of the demo under its data dir: the catalogue files (sync files, images, import
        # reports) too, not in the user's default data dir where another database's would mix with them.
        "OMNISHELF_DATA_DIR": str(data.resolve()),
        "OMNISHELF_DATABASE_URL": db_url,
        "OMNISHELF_BROKER_URL": layout.url,
        "OMNISHELF_BROKER_USERNAME": CLOUD_USER,
        "OMNISHELF_BROKER_PASSWORD": passwords[CLOUD_USER],
        # Provisioning: the cloud grants claimed boxes their credentials as the broker's admin.
        "OMNISHELF_BROKER_ADMIN_SECRET_FILE": str(layout.admin_secret_path.resolve()),
        "OMNISHELF_PROVISION_LOCAL_API_PORT": "0",
    }
    sup = Supervisor(data / "logs", env)
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        sup.run_once("cloud-migrate", "cloud", "migrate")
        sup.run_once("cloud-seed", "cloud", "seed")
        api_key = _console_access(db_url, data / "secrets.json", passwords)
        _signage(db_url, data)
        cloud = sup.start("cloud", "cloud", "serve", "--host", "127.0.0.1", "--port", str(http_port))
        api = f"http://127.0.0.1:{http_port}"
        _wait_http(f"{api}/health", cloud)
        # Before the boxes: the camera station's first scans must find their units commissioned.
        trace_lines = _trace(api, api_key, layout.url, passwords[demo_trace.STATION])
        local_ports: dict[str, int] = {node: free_port() for node in nodes}
        clerks_line = clerks_demo(api, api_key, next(iter(stores)), nodes[0], local_ports[nodes[0]])
        for store, node in stores.items():
            secret = data / "secrets" / node
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(passwords[node])
            secret.chmod(0o600)
            cfg = data / "edge" / f"{node}.yaml"
            config = box_config(node, store, mqtt_port, secret, data, api, local_ports[node])
            write_config(
                with_kiosk(with_station(config, data), api, api_key) if node == nodes[0] else config,
                cfg,
                header="generated by `omnishelf demo`: a simulated box",
            )
            sup.start(f"edge-{node}", "edge", "run", "--config", str(cfg))
        first = nodes[0]
        kiosk_cmd = f"omnishelf kiosk --windowed --size 540x960 --box http://127.0.0.1:{local_ports[first]}"
        if os.environ.get("DISPLAY"):
            sup.start("kiosk", "kiosk", "--windowed", "--size", "540x960", "--box", f"http://127.0.0.1:{local_ports[first]}")
            kiosk_line = f"  the cloud shelf (kiosk) of {first} is open in a window; another one: {kiosk_cmd}"
        else:
            kiosk_line = (f"  the cloud shelf (kiosk) of {first}: no display here; on a desktop: {kiosk_cmd}\n"
                          f"    what it asks the box (pinyin initials find 龙井): "
                          f"curl -s 'http://127.0.0.1:{local_ports[first]}/shelf/products?q=lj'")
        kiosk_line += (f"\n    where a product is (this store, nearby stores, the warehouse: the cloud's stock figures): "
                       f"curl -s 'http://127.0.0.1:{local_ports[first]}/shelf/availability/TEA-LJ-250'")
        box_url = f"http://127.0.0.1:{local_ports[first]}"
        station_cmd = f"omnishelf station --windowed --size 960x540 --box {box_url}"
        if os.environ.get("DISPLAY"):
            sup.start("station", "station", "--windowed", "--size", "960x540", "--box", box_url)
            station_line = (f"  the clerk's station of {first} is open in a window (sign in with PIN {DEMO_CLERK_PIN});"
                            f" another one: {station_cmd}")
        else:
            station_line = (f"  the clerk's station of {first}: no display here; on a desktop: {station_cmd}"
                            f" (sign in with PIN {DEMO_CLERK_PIN})")
        orders_line = orders_demo(api, api_key, stores, local_ports)
        claimed = _provision_demo_box(sup, data, api, api_key)

        print(
            "\n".join(
                [
                    "omnishelf demo is running:",
                    f"  broker      {layout.url}  (config {layout.conf_path}, log {layout.log_path})",
                    f"  cloud core  {api}   database {db_url}",
                    f"  boxes       {', '.join(nodes)}  (configs in {data / 'edge'})",
                    f"  logs        {data / 'logs'}",
                    "",
                    f"  HQ console:                    {api}/console/   (sign in as {ADMIN_USER} / {passwords[ADMIN_USER]})",
                    f"  nodes and their online state:  curl -s -H 'Authorization: Bearer {api_key}' {api}/nodes",
                    "  a box, its devices and the commands sent to it (each acknowledged by the box):",
                    f"    {api}/console/nodes/{first}",
                    f"    curl -s -H 'Authorization: Bearer {api_key}' {api}/nodes/{first}/commands",
                    f"  a box claimed from setup mode (technician's flow, docs/technician.md): {claimed}",
                    f"    tokens, enrolled boxes, revocation, config pushes: {api}/console/enrolment",
                    f"  messages an engine could not process (replay them there): {api}/console/bus/failed",
                    kiosk_line,
                    station_line,
                    orders_line,
                    clerks_line,
                    f"  health and ingest counters:    curl -s {api}/health",
                    f"  API documentation:             {api}/docs",
                    f"  a box's local API (what its kiosk uses, works offline): http://127.0.0.1:{local_ports[first]}/status",
                    f"    curl -s 'http://127.0.0.1:{local_ports[first]}/search?q=tea'   ({first})",
                    f"    curl -sG --data-urlencode 'q=龙井' http://127.0.0.1:{local_ports[first]}/search",
                    f"  its scanning station (a camera reading a generated video of five units received at {first}'s store;"
                    f" first pass genuine, then already sold): curl -s 'http://127.0.0.1:{local_ports[first]}/station/verdicts?limit=5'",
                    f"  signage: what {first}'s screen shows, line by line:  tail -f {data / 'edge' / first / 'signage' / 'screen.log'}",
                    f"    now playing and next: curl -s http://127.0.0.1:{local_ports[first]}/signage/now;"
                    f"  calendar: {api}/console/signage/calendar?node={first}",
                    "  watch the bus:",
                    f"    mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -V mqttv5 -u {MONITOR_USER} -i {MONITOR_USER} "
                    f"-P '{passwords[MONITOR_USER]}' -t '{topics.everything_filter()}' -v",
                    *trace_lines,
                    "",
                    "Ctrl-C stops everything.",
                ]
            ),
            flush=True,
        )
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while not stopping and (deadline is None or time.monotonic() < deadline):
            dead = sup.dead()
            if dead is not None:
                raise SystemExit(f"{dead.name} exited with code {dead.proc.returncode}: {tail(dead.log)}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # Stop first, report after: printing can itself fail (e.g. stdout piped into `head`).
        sup.stop_all()
        broker.stop()
        with contextlib.suppress(OSError):
            print("stopped: boxes, cloud core, broker.", flush=True)
    return 0
