"""A real cloud (API + bus in one uvicorn server on a free port) on a real broker, and boxes in setup
mode as real processes (`omnishelf provision setup-mode --then-run`) with zeroconf on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from broker.mosquitto import free_port
from cloud.access.bootstrap import create_api_key
from cloud.api import create_app
from cloud.seed import seed
from cloud.settings import Settings
from tests.cloud.conftest import cloud_settings, db_url, engine  # noqa: F401 - fixtures
from tests.conftest import Broker

LOOPBACK = "127.0.0.1"
DISCOVER_S = 20.0
"""How long a claim in the tests looks for the box (it stops as soon as the box answers): a loaded
machine answered zeroconf after more than the 5 s a technician waits."""


@dataclass
class Cloud:
    url: str
    settings: Settings
    engine: Engine
    api: httpx.Client
    broker: Broker

    def token(self, store: str = "st0001", role: str = "kiosk", ttl_s: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"store": store, "role": role}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        r = self.api.post("/enrolment-tokens", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="cloud", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the cloud did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture
def cloud_overrides() -> dict[str, Any]:
    """Extra cloud settings (a test module overrides this fixture, e.g. for a TLS broker)."""
    return {}


@pytest.fixture
def cloud(broker: Broker, engine: Engine, cloud_overrides: dict[str, Any]) -> Iterator[Cloud]:  # noqa: F811
    seed(engine)
    settings = asyncio.run(cloud_settings(
        broker, engine, BROKER_ADMIN_SECRET_FILE=str(broker.layout.admin_secret_path), PROVISION_LOCAL_API_PORT=0,
        REVOKE_SYNC_S=0.5, **cloud_overrides,
    ))
    port = free_port()
    server, thread = _serve(create_app(settings, run_worker=True, engine=engine), port)
    url = f"http://{LOOPBACK}:{port}"
    key = create_api_key(engine, "hq-tester", "hq")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        try:
            yield Cloud(url, settings, engine, api, broker)
        finally:
            server.should_exit = True
            thread.join(20)


@dataclass
class BoxProc:
    """A box process: setup mode, then (after the claim) the agent in the same process."""

    serial: str
    config_dir: Path
    popen: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)

    def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"box {self.serial} printed no {prefix!r} line; output:\n" + "".join(self.log[-30:]))

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """The first output line (so far or to come) containing `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((ln for ln in self.log if text in ln), None)
            if found is not None:
                return found
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"box {self.serial} printed nothing with {text!r}; output:\n" + "".join(self.log[-30:]))

    @property
    def pairing_code(self) -> str:
        return self.wait_line("SETUP MODE").split("pairing code ")[1].strip()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_box(tmp: Path, serial: str, model: str = "pi5", *, then_run: bool = True, tag: str = "",
              lockout_s: float | None = None) -> BoxProc:
    """A box process in setup mode (`tag`: a second life of the same hardware, e.g. after a repair)."""
    config_dir = tmp / f"box-{serial}{tag}"
    env = {**os.environ, "OMNISHELF_DATA_DIR": str(tmp / f"data-{serial}{tag}"), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "omnishelf.cli", "provision", "setup-mode", "--serial", serial, "--model", model,
            "--config-dir", str(config_dir), "--interface", LOOPBACK, *(["--then-run"] if then_run else []),
            *(["--lockout", str(lockout_s)] if lockout_s is not None else [])]
    popen = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    box = BoxProc(serial, config_dir, popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            box.log.append(line)
            box.lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return box


@pytest.fixture
def boxes(tmp_path: Path) -> Iterator[list[BoxProc]]:
    started: list[BoxProc] = []
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def claim_box(cloud: Cloud, box: BoxProc, *, store: str = "st0001", role: str = "kiosk", wait: float = 30.0) -> str:
    """Claim `box` with a fresh token (confirming its pairing code); the node id."""
    from provisioning import technician

    token = cloud.token(store, role)
    done = technician.claim(box.serial, store=store, role=role, token=token["token"], code=box.pairing_code,
                            cloud_url=cloud.url, interface=LOOPBACK, wait_online_s=wait,
                            discover_timeout=DISCOVER_S)
    assert wait == 0 or done.online, f"{done.node_id} did not come online:\n" + "".join(box.log[-30:])
    return done.node_id


def local_api(box: BoxProc) -> str:
    """The agent's local API URL, from its start line."""
    line = next((ln for ln in box.log if "local API http://" in ln), None)
    deadline = time.monotonic() + 20
    while line is None and time.monotonic() < deadline:
        time.sleep(0.05)
        line = next((ln for ln in box.log if "local API http://" in ln), None)
    assert line is not None, "the agent never logged its local API:\n" + "".join(box.log[-30:])
    return line.split("local API ")[1].split(",")[0].strip()
