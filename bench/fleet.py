"""Fleet benchmark: claim time, revocation-to-disconnect, credential rotation, and 200 boxes
reconnecting after a broker restart. Prints one JSON document; each figure has a baseline measured in
the same run:

- claim (discover → online, a box in setup mode in this process, its agent a real `omnishelf edge
  run` process): next to the irreducible part, the broker creating a credential (dynsec) plus one
  MQTT login with it;
- revocation (API call → the live connection dropped): next to a bare dynsec `disableClient`;
- credential rotation of one box streaming 20 scans a second (a real agent under its supervisor):
  the box's offline time per rotation (from losing its connection to its birth on the new password,
  from its /status), messages lost and deaths the cloud processed; next to plain reconnects of the
  same box, dropped by the broker the same way (a dynsec change, DISCONNECT 152) without a rotation;
- reconnection of N boxes after a broker restart (time until all are connected again, peak
  connects per second in 100 ms buckets): with the boxes' jittered backoff, next to the same boxes
  retrying on a fixed 1 s timer (what a fleet without jitter does).

    python -m bench.fleet [--quick] [--boxes 200] [--rotations 20]

Measured with everything on one machine; the broker is a private Mosquitto on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.client import BrokerAddress, BusError, JitteredBackoff, MqttConnection
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.sealing import open_sealed, public_key_of
from cloud.access.bootstrap import create_api_key
from cloud.access.service import write_session
from cloud.api import create_app
from cloud.db import make_engine, migrate
from cloud.fleet import enrolment
from cloud.fleet.identity import BrokerAdmin
from cloud.fleet.models import Identity
from cloud.models import IngestedMessage, Node
from cloud.seed import seed
from cloud.settings import Settings
from provisioning import technician
from provisioning.setup_mode import SetupBox

LOOPBACK = "127.0.0.1"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Cloud:
    def __init__(self, tmp: Path, broker: MosquittoProcess) -> None:
        layout = broker.layout
        cloud_pw = secrets.token_urlsafe(12)
        layout.cloud_users["cloud-1"] = cloud_pw
        broker.reload()
        self.engine = make_engine(f"sqlite:///{tmp / 'cloud.db'}")
        migrate(self.engine)
        seed(self.engine)
        self.settings = Settings(DATABASE_URL=f"sqlite:///{tmp / 'cloud.db'}", BROKER_URL=layout.url,
                                 BROKER_USERNAME="cloud-1", BROKER_PASSWORD=cloud_pw,
                                 BROKER_ADMIN_SECRET_FILE=str(layout.admin_secret_path), PROVISION_LOCAL_API_PORT=0,
                                 DATA_DIR=str(tmp / "cloud"))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.settings, run_worker=True, engine=self.engine),
                                                    host=LOOPBACK, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.api = httpx.Client(base_url=self.url, timeout=30,
                                headers={"Authorization": f"Bearer {create_api_key(self.engine, 'bench', 'hq')}"})

    def close(self) -> None:
        self.api.close()
        self.server.should_exit = True
        self.thread.join(15)
        self.engine.dispose()


def bench_claims(cloud: _Cloud, broker: MosquittoProcess, tmp: Path, n: int) -> dict[str, Any]:
    took: list[float] = []
    agents: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            box = SetupBox(f"BENCH-{i:04d}", "pi5", tmp / f"box-{i}", interface=LOOPBACK,
                           screen=lambda line: print(line, file=sys.stderr))
            box.start()
            try:
                token = cloud.api.post("/enrolment-tokens", json={"store": "st0002", "role": "kiosk"}).json()["token"]
                # The agent starts as soon as the box is claimed (its supervisor, in the field).
                def start_agent(box: SetupBox = box, i: int = i) -> None:
                    box.claimed.wait(60)
                    agents.append(subprocess.Popen(
                        [sys.executable, "-m", "omnishelf.cli", "edge", "run", "--config", str(box.config_path)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env={"OMNISHELF_DATA_DIR": str(tmp / f"data-{i}"), "PATH": "/usr/bin:/bin"}))

                starter = threading.Thread(target=start_agent, daemon=True)
                starter.start()
                done = technician.claim(box.serial, store="st0002", role="kiosk", token=token, code=box.pairing_code,
                                        cloud_url=cloud.url, interface=LOOPBACK, wait_online_s=60)
                assert done.online, f"{done.node_id} did not come online"
                took.append(done.seconds)
            finally:
                box.stop()
    finally:
        for a in agents:
            a.terminate()
            a.wait(15)
    # Baseline: the broker making a credential, then one login with it.
    base: list[float] = []
    admin = BrokerAdmin(broker.layout.local_address, broker.layout.admin_password())

    async def login(user: str, pw: str) -> None:
        c = MqttConnection(BrokerAddress.from_url(broker.layout.url), user, pw)
        await c.connect()
        await c.disconnect()

    for i in range(max(n, 5)):
        t = time.perf_counter()
        admin.grant(f"base-{i}", "pw-base")
        asyncio.run(login(f"base-{i}", "pw-base"))
        base.append(time.perf_counter() - t)
    return {"claims": n, "claim_discover_to_online_p50_s": round(statistics.median(took), 3),
            "claim_max_s": round(max(took), 3),
            "baseline_grant_and_login_p50_ms": round(statistics.median(base) * 1000, 2)}


def bench_revocation(cloud: _Cloud, broker: MosquittoProcess, n: int) -> dict[str, Any]:
    keys = [X25519PrivateKey.generate() for _ in range(n)]
    admin = BrokerAdmin.from_settings(cloud.settings)
    creds: list[tuple[str, str]] = []
    for i, key in enumerate(keys):
        token = cloud.api.post("/enrolment-tokens", json={"store": "st0003", "role": "signage"}).json()["token"]
        with write_session(cloud.engine) as s, s.begin():
            res = enrolment.claim(s, cloud.settings, admin, token=token, serial=f"REV-{i}", model="pi5", store="st0003",
                                  role="signage", public_key=public_key_of(key))
        creds.append((res.node_id, open_sealed(key, res.sealed_password).decode()))

    async def measure() -> tuple[list[float], list[float]]:
        address = BrokerAddress.from_url(broker.layout.url)
        ours: list[float] = []
        for node, pw in creds:
            conn = MqttConnection(address, node, pw)
            await conn.connect()
            t = time.perf_counter()
            r = await asyncio.to_thread(cloud.api.post, f"/nodes/{node}/revoke", json={"reason": "bench"})
            assert r.status_code == 200, r.text
            await asyncio.wait_for(asyncio.shield(conn.closed), 10)
            ours.append(time.perf_counter() - t)
        base: list[float] = []
        for i in range(len(creds)):
            await asyncio.to_thread(admin.grant, f"rb-{i}", "pw")
            conn = MqttConnection(address, f"rb-{i}", "pw")
            await conn.connect()
            t = time.perf_counter()
            await asyncio.to_thread(admin.revoke, f"rb-{i}")
            await asyncio.wait_for(asyncio.shield(conn.closed), 10)
            base.append(time.perf_counter() - t)
        return ours, base

    ours, base = asyncio.run(measure())
    return {"revocations": n, "revocation_to_disconnect_p50_ms": round(_pct(ours, 0.5) * 1000, 2),
            "revocation_to_disconnect_p99_ms": round(_pct(ours, 0.99) * 1000, 2),
            "baseline_dynsec_disable_p99_ms": round(_pct(base, 0.99) * 1000, 2)}


class _SupervisedBox:
    """A claimed box run as in a store: `omnishelf provision setup-mode --then-run` (its supervisor
    starts the agent again after a config push), its output kept to find its local API."""

    def __init__(self, serial: str, config_dir: Path, data_dir: Path) -> None:
        self.config_dir = config_dir
        self.lines: list[str] = []
        env = {**os.environ, "OMNISHELF_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "omnishelf.cli", "provision", "setup-mode", "--serial", serial, "--model", "pi5",
             "--config-dir", str(config_dir), "--interface", LOOPBACK, "--then-run"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def status(self) -> dict[str, Any]:
        """The agent's /status (its newest local API: the port changes when the agent restarts)."""
        urls = [m.group(1) for ln in list(self.lines) if (m := re.search(r"local API (http://[^\s,]+)", ln))]
        if not urls:
            return {}
        try:
            out: dict[str, Any] = httpx.get(f"{urls[-1]}/status", timeout=5).json()
        except httpx.HTTPError:
            return {}  # restarting
        return out

    def wait(self, cond: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st and cond(st):
                return st
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise SystemExit(f"bench: the box did not {what} within {timeout:.0f} s:\n" + "".join(self.lines[-20:]))
            time.sleep(0.02)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _count(cloud: _Cloud, node: str, type: str) -> int:
    with Session(cloud.engine) as s:
        return s.scalar(select(func.count()).where(IngestedMessage.node == node, IngestedMessage.type == type)) or 0


def bench_rotation(cloud: _Cloud, broker: MosquittoProcess, tmp: Path, n: int, plain: int) -> dict[str, Any]:
    box_dir = tmp / "rot-box"
    setup = SetupBox("ROT-0001", "pi5", box_dir, interface=LOOPBACK, screen=lambda line: print(line, file=sys.stderr))
    setup.start()
    try:
        token = cloud.api.post("/enrolment-tokens", json={"store": "st0002", "role": "kiosk"}).json()["token"]
        node = technician.claim(setup.serial, store="st0002", role="kiosk", token=token, code=setup.pairing_code,
                                cloud_url=cloud.url, interface=LOOPBACK, wait_online_s=0).node_id
    finally:
        setup.stop()
    box = _SupervisedBox(setup.serial, box_dir, tmp / "rot-data")
    try:
        box.wait(lambda st: st["bus"]["connected"], 60, "come online")
        stream = {"kind": "simulator", "scans_per_s": 20, "orders_per_min": 0, "stock_every_s": 0}
        r = cloud.api.post("/config-pushes", json={"nodes": [node], "overrides": {"devices": [stream]}, "rollback_after_s": 0})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 60
        while _count(cloud, node, "scan") < 20:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the box sent no scans after the config push")
            time.sleep(0.1)
        deaths = _count(cloud, node, "death")  # the restart on the pushed config sent one

        offline: list[float] = []
        took: list[float] = []
        refused = 0
        for i in range(n):
            st = box.wait(lambda st: st["bus"]["connected"], 30, "be connected")
            reconnects, mark = st["bus"]["reconnects"], len(box.lines)
            t = time.perf_counter()
            r = cloud.api.post(f"/nodes/{node}/rotate-credential")
            assert r.status_code == 202, r.text

            def switched(st: dict[str, Any], version: int = i + 2, reconnects: int = reconnects) -> bool:
                with Session(cloud.engine) as s:
                    identity = s.get(Identity, node)
                    done = identity is not None and identity.credential_version == version
                return done and st["bus"]["connected"] and st["bus"]["reconnects"] > reconnects

            st = box.wait(switched, 30, f"switch to its new password (rotation {i + 1})")
            took.append(time.perf_counter() - t)
            offline.append(float(st["bus"]["last_offline_s"]))
            assert st["bus"]["reconnects"] == reconnects + 1, st["bus"]
            refused += sum("login refused" in ln for ln in box.lines[mark:])
        rotation_deaths = _count(cloud, node, "death") - deaths

        # Plain reconnects of the same box: the broker drops it the same way (a dynsec change,
        # DISCONNECT 152, no will), with no new password. Each from a connection of 10 s or more, so
        # the box's backoff starts from its base, as after any drop of a healthy connection.
        admin = BrokerAdmin.from_settings(cloud.settings)
        base: list[float] = []
        for i in range(plain):
            st = box.wait(lambda st: st["bus"]["connected"] and (st["bus"]["connected_for_s"] or 0) >= 10.5, 60,
                          "hold a stable connection")
            reconnects = st["bus"]["reconnects"]
            admin.run([{"command": "modifyClient", "username": node, "textname": f"bench reconnect {i}"}])
            st = box.wait(lambda st, r=reconnects: st["bus"]["connected"] and st["bus"]["reconnects"] > r, 30, "reconnect")
            base.append(float(st["bus"]["last_offline_s"]))

        # The fence: every message the box made up to now must be stored once, none lost.
        fence = int(box.status()["outbox"]["last_seq"])
        deadline = time.monotonic() + 60
        while True:
            with Session(cloud.engine) as s:
                row = s.get(Node, node)
                assert row is not None
                if row.seq_contig >= fence or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        with Session(cloud.engine) as s:
            rows = s.execute(select(IngestedMessage.seq, func.count()).where(
                IngestedMessage.node == node, IngestedMessage.seq <= fence,
                IngestedMessage.type.not_in(("birth", "death"))).group_by(IngestedMessage.seq)).all()
            row = s.get(Node, node)
            assert row is not None
            online, lost_seqs = row.online, row.lost_seqs
        stored = {seq: c for seq, c in rows}
        scans = _count(cloud, node, "scan")
    finally:
        box.stop()
    ms = [x * 1000 for x in offline]
    base_ms = [x * 1000 for x in base]
    return {
        "rotations": n, "stream_scans_per_s": 20,
        "rotation_offline_p50_ms": round(_pct(ms, 0.5), 1), "rotation_offline_p99_ms": round(_pct(ms, 0.99), 1),
        "rotation_offline_max_ms": round(max(ms), 1),
        "rotation_api_to_new_password_p50_s": round(_pct(took, 0.5), 3),
        "logins_refused": refused, "deaths_processed": rotation_deaths, "node_online_after": online,
        "messages_up_to_fence": fence, "scans_stored": scans,
        "messages_lost": fence - len(stored) + lost_seqs, "messages_stored_twice": sum(c - 1 for c in stored.values()),
        "baseline_plain_reconnects": plain,
        "baseline_plain_reconnect_offline_p50_ms": round(_pct(base_ms, 0.5), 1),
        "baseline_plain_reconnect_offline_p99_ms": round(_pct(base_ms, 0.99), 1),
    }


async def _reconnect_run(broker: MosquittoProcess, users: dict[str, str], jitter: bool) -> dict[str, Any]:
    address = BrokerAddress.from_url(broker.layout.url)
    connected: dict[str, float] = {}
    attempts = Counter[str]()
    stop = asyncio.Event()
    broker_down = asyncio.Event()

    async def box(user: str, pw: str) -> None:
        backoff = JitteredBackoff(0.5, 30.0)
        while not stop.is_set():
            conn = MqttConnection(address, user, pw, connect_timeout=5)
            attempts[user] += 1
            try:
                await conn.connect()
            except BusError:
                conn.abort()
                await asyncio.sleep(backoff.next_delay() if jitter else 1.0)
                continue
            if broker_down.is_set():
                connected.setdefault(user, time.monotonic())
            backoff.reset()
            lost: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(conn.closed))
            stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait([lost, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                await conn.disconnect(timeout=1)
                return
            await asyncio.sleep(backoff.next_delay() if jitter else 1.0)

    tasks = [asyncio.create_task(box(u, p)) for u, p in users.items()]
    # Everyone online first (each box made its first attempt, then time for the logins).
    while len(attempts) < len(users):  # noqa: ASYNC110 - a count, not an event
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(broker.stop)
    broker_down.set()
    await asyncio.sleep(2.0)  # the boxes retry against a dead port meanwhile
    attempts.clear()
    # Counted from the start of the broker's start: it accepts logins before start() returns.
    back = time.monotonic()
    await asyncio.to_thread(broker.start)
    deadline = back + 60
    while len(connected) < len(users) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    times = [t - back for t in connected.values()]
    buckets = Counter(int(t * 10) for t in times)
    return {"all_online_s": round(max(times), 3) if len(times) == len(users) else None,
            "online": len(times), "peak_connects_per_s": max(buckets.values()) * 10 if buckets else 0,
            "connect_attempts_after_restart": sum(attempts.values())}


def bench_reconnect(tmp: Path, boxes: int) -> dict[str, Any]:
    users = {f"rc{i:04d}": secrets.token_urlsafe(8) for i in range(boxes)}
    layout = BrokerLayout(tmp / "reconnect-broker", free_port(), node_users=dict(users))
    broker = MosquittoProcess(layout)
    broker.start()
    try:
        jittered = asyncio.run(_reconnect_run(broker, users, jitter=True))
        fixed = asyncio.run(_reconnect_run(broker, users, jitter=False))
    finally:
        broker.stop()
    return {"boxes": boxes, "broker_down_s": 2.0, "with_jitter": jittered, "baseline_fixed_1s_retry": fixed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 claims, 20 revocations (the reconnection keeps its boxes)")
    ap.add_argument("--boxes", type=int, default=200, help="boxes reconnecting after a broker restart (default 200)")
    ap.add_argument("--rotations", type=int, default=None, help="credential rotations of one box (default 20, --quick 5)")
    ap.add_argument("--only", choices=("claim", "revocation", "rotation", "reconnect"), action="append",
                    help="run only these parts (repeatable; default: all)")
    args = ap.parse_args()
    claims, revocations = (3, 20) if args.quick else (10, 100)
    rotations = args.rotations if args.rotations is not None else (5 if args.quick else 20)
    if rotations < 1:
        raise SystemExit(f"--rotations must be at least 1, got {rotations}")
    plain = 3 if args.quick else 5
    parts = set(args.only or ("claim", "revocation", "rotation", "reconnect"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    result: dict[str, Any] = {"machine": "measured on a busy shared 2-core machine; everything on loopback",
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        broker = MosquittoProcess(BrokerLayout(tmp / "broker", free_port()))
        broker.start()
        cloud = _Cloud(tmp, broker)
        try:
            if "claim" in parts:
                result["claim"] = bench_claims(cloud, broker, tmp, claims)
            if "revocation" in parts:
                result["revocation"] = bench_revocation(cloud, broker, revocations)
            if "rotation" in parts:
                result["rotation"] = bench_rotation(cloud, broker, tmp, rotations, plain)
        finally:
            cloud.close()
            broker.stop()
        if "reconnect" in parts:
            result["reconnect"] = bench_reconnect(tmp, args.boxes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
