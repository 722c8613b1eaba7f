"""The whole agent: in process, and as `omnishelf edge …` subprocesses (signals, RSS, CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from broker.envelope import MessageType
from edge.agent import EdgeAgent
from edge.devices import UNSUPPORTED
from edge.gs1 import GS, is_valid_gtin
from firmware_config import load_config
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, until

OMNISHELF = [sys.executable, "-m", "omnishelf.cli"]


def write_config(tmp: Path, broker: Broker, password: str, *, burst: int = 0, extra: str = "") -> Path:
    path = tmp / "box.yaml"
    path.write_text(
        f"""\
node_id: {NODE}
store_id: st1
broker:
  url: {broker.url}
  password: {password}
  keepalive_s: 5
outbox:
  path: {tmp / "outbox.db"}
backoff:
  base_s: 0.05
  cap_s: 0.5
devices:
  - kind: simulator
    scans_per_s: 0
    orders_per_min: 0
    telemetry_every_s: 0
    burst: {burst}
  - kind: printer
    host: 10.0.0.9
{extra}"""
    )
    return path


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
        kinds = {d.kind: d.state for d in birth.data.devices}  # type: ignore[attr-defined]
        assert kinds == {"simulator": "ok", "printer": UNSUPPORTED}
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


def test_cli_check_config_and_status(broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker, "secret")
    ok = subprocess.run([*OMNISHELF, "edge", "check-config", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK sha256:")

    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("keepalive_s: 5", "keepalive_s: 1\n  colour: red"))
    res = subprocess.run([*OMNISHELF, "edge", "check-config", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stdout.splitlines() == [
        f"{bad}:6: field 'broker.keepalive_s': Input should be greater than or equal to 5 (got 1)",
        f"{bad}:7: field 'broker.colour': unknown key (expected one of: url, password, password_file, "
        "keepalive_s, keepalive_check_slack_s, session_expiry_s)",
    ]
    assert res.stderr == f"omnishelf: error: {bad}: 2 problem(s)\n"

    res = subprocess.run([*OMNISHELF, "edge", "status", "--config", str(config)], capture_output=True, text=True)
    assert res.returncode == 2 and "no outbox at" in res.stderr

    # Created by a run that could not reach the cloud: the messages wait on disk.
    env = {**os.environ}
    cfg_text = config.read_text().replace("burst: 0", "burst: 7")
    config.write_text(cfg_text.replace(broker.url, "mqtt://127.0.0.1:1"))
    proc = subprocess.Popen([*OMNISHELF, "edge", "run", "--config", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        status: dict[str, object] = {}
        while time.monotonic() < deadline and status.get("pending") != 7:
            res = subprocess.run(
                [*OMNISHELF, "edge", "status", "--config", str(config)], capture_output=True, text=True
            )
            status = json.loads(res.stdout) if res.returncode == 0 else {}
            time.sleep(0.1)
        assert status["pending"] == 7 and status["last_seq"] == 7 and status["node_id"] == NODE
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == 0
