"""The whole agent: in process, and as `omnishelf edge …` subprocesses (signals, RSS, CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from broker.envelope import MessageType
from edge.agent import EdgeAgent
from edge.devices import UNAVAILABLE, no_driver
from firmware_config import NodeConfig, config_hash, load_config, resolve_paths
from firmware_config import write_config as write_config_file
from gs1 import GS, is_valid_gtin
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, until

OMNISHELF = [sys.executable, "-m", "omnishelf.cli"]


def box_config(tmp: Path, mosquitto: Broker, password: str | None, *, burst: int = 0, **over: Any) -> NodeConfig:
    """The test box: a simulator (a burst only) and a printer (no driver in this version)."""
    data: dict[str, Any] = {
        "node_id": NODE,
        "store_id": "st1",
        "data_dir": str(tmp / "data"),
        "telemetry_every_s": 0,
        "broker": {"url": mosquitto.url, "keepalive_s": 5, **({"password": password} if password else {})},
        "backoff": {"base_s": 0.05, "cap_s": 0.5},
        "devices": [
            {"kind": "simulator", "scans_per_s": 0, "orders_per_min": 0, "stock_every_s": 0, "burst": burst},
            {"kind": "printer", "host": "10.0.0.9"},
        ],
        "local_api": {"port": 0},
    }
    data.update(over)
    return NodeConfig.model_validate(data)


def write_config(tmp: Path, mosquitto: Broker, password: str | None, **kw: Any) -> Path:
    return write_config_file(box_config(tmp, mosquitto, password, **kw), tmp / "box.yaml")


def test_agent_drains_a_burst_reports_devices_and_stops_cleanly(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_node(NODE)
    cfg = load_config(write_config(tmp_path, broker, password, burst=500))

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await until(lambda: len(cloud.data_seqs()) >= 500, what="burst delivered")
        birth = cloud.of(MessageType.BIRTH)[0]
        kinds = {d.kind: (d.state, d.detail) for d in birth.data.devices}  # type: ignore[attr-defined]
        assert kinds == {"simulator": ("ok", None), "printer": (UNAVAILABLE, no_driver("printer"))}
        assert birth.data.config_hash == agent.config_hash  # type: ignore[attr-defined]
        scans = cloud.of(MessageType.SCAN)
        assert sorted(e.seq for e in scans) == list(range(1, 501))
        code = scans[0].data.code  # type: ignore[attr-defined]
        assert code.startswith("01") and is_valid_gtin(code[2:16]) and GS in code
        # A ping command is answered with an ack that correlates to it.
        await cloud.send(NODE, MessageType.COMMAND, {"name": "ping"})
        await until(lambda: bool(cloud.of(MessageType.ACK)), what="ack")
        assert cloud.of(MessageType.ACK)[0].data.ok  # type: ignore[attr-defined]
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await until(lambda: bool(cloud.of(MessageType.DEATH)), what="death")
        assert cloud.of(MessageType.DEATH)[0].session == birth.session
        await cloud.close()

    arun(main())


def test_cli_run_stays_light_and_stops_on_sigterm(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_node(NODE)
    config = write_config(tmp_path, broker, password)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        proc = await asyncio.create_subprocess_exec(
            *OMNISHELF, "edge", "run", "--config", str(config), stderr=asyncio.subprocess.PIPE
        )
        try:
            await until(lambda: bool(cloud.of(MessageType.BIRTH)), timeout=20, what="birth")
            await asyncio.sleep(1.0)  # idle for a moment, then measure
            rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
            print(f"agent idle RSS: {rss_mb:.1f} MB")
            assert rss_mb < 60
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await until(lambda: bool(cloud.of(MessageType.DEATH)), what="death")
        assert b"Traceback" not in err
        await cloud.close()

    arun(main())


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OMNISHELF, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_cli_check_config_prints_the_hash_and_the_paths_resolved_against_the_file(broker: Broker, tmp_path: Path) -> None:
    cfg = box_config(tmp_path, broker, None, data_dir="state",
                     broker={"url": broker.url, "password_file": "secrets/box.secret"})
    config = write_config_file(cfg, tmp_path / "etc" / "box.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("OMNISHELF_DATA_DIR", "STATE_DIRECTORY", "OMNISHELF_EDGE_PASSWORD")}
    res = _run("edge", "check-config", str(config), cwd=Path("/"), env=env)
    assert res.returncode == 2
    assert res.stderr == f"omnishelf: error: {config}: cannot read broker.password_file {tmp_path}/etc/secrets/box.secret: No such file or directory\n"
    (tmp_path / "etc" / "secrets").mkdir()
    (tmp_path / "etc" / "secrets" / "box.secret").write_text("pw\n")
    node_dir = tmp_path / "etc" / "state" / "edge" / NODE
    # From another directory, by a relative name: the same paths.
    res = _run("edge", "check-config", "etc/box.yaml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"OK {config_hash(load_config(config))}",
        f"  data_dir   {tmp_path}/etc/state  (from config)",
        f"  outbox     {node_dir}/outbox.db",
        f"  lock       {node_dir}/outbox.db.lock",
        "  catalogue  (no catalogue: catalogue.cloud_url not set)",
        f"  password   {tmp_path}/etc/secrets/box.secret",
        "  local_api  http://127.0.0.1:0/status",
    ]


def test_cli_check_config_names_every_file_of_the_enabled_components(broker: Broker, tmp_path: Path) -> None:
    """The technician's list of what a box keeps (docs/technician.md) comes from here: each enabled
    component's file, its relative path resolved against the config file like the others."""
    cfg = box_config(tmp_path, broker, "pw", data_dir="state", station={"enabled": True}, orders={"enabled": True},
                     kiosk={"enabled": True, "path": "shelf/kiosk.db"},
                     signage={"cloud_url": "http://127.0.0.1:9", "path": "/srv/signage"})
    config = write_config_file(cfg, tmp_path / "etc" / "box.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("OMNISHELF_DATA_DIR", "STATE_DIRECTORY")}
    res = _run("edge", "check-config", str(config), cwd=Path("/"), env=env)
    assert res.returncode == 0, res.stderr
    node_dir = tmp_path / "etc" / "state" / "edge" / NODE
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines()[1:])
    assert rows["station"] == f"{node_dir}/station.db"
    assert rows["clerks"] == f"{node_dir}/clerks.db"  # on by default with a station or an order desk
    assert rows["orders"] == f"{node_dir}/orders.db"
    assert rows["kiosk"] == f"{tmp_path}/etc/shelf/kiosk.db"
    assert rows["signage"] == "/srv/signage"


def test_cli_check_config_lists_every_problem_with_its_line(broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker, "secret")
    lines = config.read_text().splitlines()
    at = lines.index("  keepalive_s: 5")
    lines[at : at + 1] = ["  keepalive_s: 1", "  colour: red"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join(lines) + "\n")
    res = _run("edge", "check-config", str(bad))
    assert res.returncode == 2
    assert res.stdout.splitlines() == [
        f"{bad}:{at + 1}: field 'broker.keepalive_s': Input should be greater than or equal to 5 (got 1)",
        f"{bad}:{at + 2}: field 'broker.colour': unknown key (expected one of: url, password, password_file, "
        "keepalive_s, keepalive_check_slack_s, session_expiry_s, ca_file)",
    ]
    assert res.stderr == f"omnishelf: error: {bad}: 2 problem(s)\n"


def test_the_shipped_example_passes_check_config_on_a_fresh_machine(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "edge" / "examples" / "kiosk.yaml"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}  # no omnishelf variables, an empty home
    res = _run("edge", "check-config", str(example), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0].startswith("OK sha256:")
    assert f"  data_dir   {tmp_path}/.local/state/omnishelf  (from default)" in out
    assert "  password   $OMNISHELF_EDGE_PASSWORD (not set in this shell)" in out


def test_cli_status_reads_the_outbox_of_a_running_agent(broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker, "secret", broker={"url": "mqtt://127.0.0.1:1", "password": "x"}, burst=7)
    res = _run("edge", "status", "--config", str(config))
    assert res.returncode == 2 and "no outbox at" in res.stderr and "the agent has not run with this config yet" in res.stderr
    # Asked while an agent starts: the file exists, its tables do not yet.
    outbox = resolve_paths(load_config(config)).outbox
    outbox.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(outbox).execute("PRAGMA user_version = 0").connection.close()
    res = _run("edge", "status", "--config", str(config))
    assert res.returncode == 2 and "the agent is creating it" in res.stderr and "internal error" not in res.stderr, res.stderr
    # Created by a run that cannot reach the broker: the messages wait on disk.
    proc = subprocess.Popen([*OMNISHELF, "edge", "run", "--config", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        status: dict[str, object] = {}
        while time.monotonic() < deadline and status.get("pending") != 7:
            res = _run("edge", "status", "--config", str(config))
            status = json.loads(res.stdout) if res.returncode == 0 else {}
            time.sleep(0.1)
        assert status["pending"] == 7 and status["last_seq"] == 7 and status["node_id"] == NODE
        assert status["agent_pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == 0
    assert json.loads(_run("edge", "status", "--config", str(config)).stdout)["agent_pid"] is None


def test_a_second_agent_on_the_same_outbox_refuses_to_start_naming_the_first(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_node(NODE)
    config = write_config(tmp_path, broker, password)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(True)
        first = await asyncio.create_subprocess_exec(*OMNISHELF, "edge", "run", "--config", str(config),
                                                     stderr=asyncio.subprocess.DEVNULL)
        try:
            await until(lambda: bool(cloud.of(MessageType.BIRTH)), timeout=20, what="the first agent's birth")
            second = await asyncio.create_subprocess_exec(*OMNISHELF, "edge", "run", "--config", str(config),
                                                          stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 2
            lock = tmp_path / "data" / "edge" / NODE / "outbox.db.lock"
            assert err.decode() == (
                f"omnishelf: error: {config}: outbox {lock.with_suffix('')} is in use by another agent "
                f"(pid {first.pid}): stop that one first, or give this box its own node_id and outbox\n"
            )
            # The first was never kicked off the broker: one birth, one session.
            await cloud.send(NODE, MessageType.COMMAND, {"name": "ping"})
            await until(lambda: bool(cloud.of(MessageType.ACK)), what="the first agent still answering")
            assert len(cloud.of(MessageType.BIRTH)) == 1 and not cloud.of(MessageType.DEATH)
            assert first.returncode is None
        finally:
            first.send_signal(signal.SIGTERM)
            await asyncio.wait_for(first.wait(), 15)
        await cloud.close()

    arun(main())
