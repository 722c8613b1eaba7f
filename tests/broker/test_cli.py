from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker import topics
from broker.client import BrokerAddress, BusAuthError, MqttConnection
from broker.mosquitto import free_port
from omnishelf.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_missing_credentials_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "broker", "--credentials", str(tmp_path / "none.json"))
    assert code == 2
    assert err == f"omnishelf: error: credentials file {tmp_path / 'none.json'} does not exist\n"


def test_bad_credentials_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"nodes": {"n1": 5}}))
    code, err = run(capsys, "broker", "--credentials", str(f))
    assert code == 2
    assert err == f"omnishelf: error: credentials file {f}: field 'nodes.n1': Input should be a valid string\n"


def test_bad_port(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text("{}")
    code, err = run(capsys, "broker", "--credentials", str(f), "--port", "70000")
    assert (code, err) == (2, "omnishelf: error: --port 70000 is not a TCP port (1-65535)\n")


def test_bad_usernames_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"nodes": {"Bad/Name": "pw"}}))
    code, err = run(capsys, "broker", "--credentials", str(f), "--data-dir", str(tmp_path / "b"), "--port", "1")
    assert code == 2
    assert "Invalid username 'Bad/Name'" in err


def test_unknown_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "frobnicate")
    assert code == 2
    assert err.startswith("omnishelf: error: argument COMMAND: invalid choice: 'frobnicate'")
    code, err = run(capsys, "broker", "--colour", "red")
    assert code == 2
    assert "unrecognized arguments: --colour red" in err or "required" in err


def test_busy_port_refused_before_anything_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"nodes": {"n1": "pw"}}))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        code = main(["broker", "--credentials", str(f), "--port", str(port), "--data-dir", str(tmp_path / "b")])
        out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (
        f"omnishelf: error: Cannot listen on 127.0.0.1:{port}: expected a free port, found one already in use "
        "(another broker?)\n"
    )
    assert not (tmp_path / "b" / "mosquitto.db").exists()


class BrokerCommand:
    """`omnishelf broker` as operators run it, in its own process; its log lines are read as they come."""

    def __init__(self, creds: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnishelf.cli", "broker", "--credentials", str(creds), "--port", str(self.port),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stdout is not None
        started = json.loads(self.proc.stdout.readline())
        assert started["broker"] == f"mqtt://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def sighup_and_wait(self, wanted: str, timeout: float = 15.0) -> str:
        """SIGHUP, then the first log line containing `wanted` (the command logs once it is done)."""
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if wanted in line:
                return line
        raise AssertionError(f"no log line with {wanted!r} within {timeout} s; exit code {self.proc.poll()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        return self.proc.returncode


async def can_connect(port: int, user: str, password: str) -> bool:
    conn = MqttConnection(BrokerAddress("127.0.0.1", port), user, password)
    try:
        await conn.connect()
    except BusAuthError:
        return False
    await conn.disconnect()
    return True


def test_broker_command_applies_credentials_live_on_sighup(tmp_path: Path) -> None:
    """A box added to the file can connect as soon as the command says so; a box removed is dropped and
    refused; everyone else stays connected; a broken edit is refused and the credentials in force stay;
    a restart takes the file as it is."""
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"nodes": {"n1": "pw1"}}))
    cmd = BrokerCommand(creds, tmp_path / "b")
    port = cmd.port
    try:

        async def body() -> None:
            n1 = MqttConnection(BrokerAddress("127.0.0.1", port), "n1", "pw1")
            await n1.connect()
            assert not await can_connect(port, "n2", "pw2")

            creds.write_text(json.dumps({"nodes": {"n1": "pw1", "n2": "pw2"}}))
            line = await asyncio.to_thread(cmd.sighup_and_wait, "credentials reloaded")
            assert "0 cloud, 2 node and 0 monitor users (createClient x1, createRole x1," in line
            n2 = MqttConnection(BrokerAddress("127.0.0.1", port), "n2", "pw2")
            await n2.connect()  # at once: the command logged only after the broker confirmed

            creds.write_text(json.dumps({"nodes": {"n1": "pw1"}}))
            line = await asyncio.to_thread(cmd.sighup_and_wait, "credentials reloaded")
            assert "(deleteClient x1, deleteRole x1," in line
            assert await asyncio.wait_for(asyncio.shield(n2.closed), 5) == "disconnected: Administrative action"
            assert not await can_connect(port, "n2", "pw2")

            creds.write_text(json.dumps({"nodes": {"Bad Name": "x"}}))
            await asyncio.to_thread(cmd.sighup_and_wait, "credentials not reloaded, the previous ones stay in force")
            assert cmd.proc.poll() is None
            assert not await can_connect(port, "n2", "pw2")

            # n1 was never dropped: its first connection still publishes (16: accepted, no subscribers).
            assert n1.is_connected
            assert (await n1.publish(topics.up("n1", "scan"), b"still here")).value == 16
            await n1.disconnect()

        asyncio.run(body())
    finally:
        assert cmd.stop() == 0

    creds.write_text(json.dumps({"nodes": {"n1": "new-pw", "n3": "pw3"}}))
    cmd = BrokerCommand(creds, tmp_path / "b")
    try:

        async def after_restart() -> None:
            assert await can_connect(cmd.port, "n3", "pw3")
            assert await can_connect(cmd.port, "n1", "new-pw")
            assert not await can_connect(cmd.port, "n1", "pw1")

        asyncio.run(after_restart())
    finally:
        assert cmd.stop() == 0


def test_a_killed_broker_command_takes_mosquitto_with_it(tmp_path: Path) -> None:
    """Outside systemd (a shell, the demo, a test run cut short) nothing else would stop Mosquitto:
    left running, it would hold the port and refuse the next start."""
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"nodes": {"n1": "pw1"}}))
    cmd = BrokerCommand(creds, tmp_path / "b")
    assert asyncio.run(can_connect(cmd.port, "n1", "pw1"))
    cmd.proc.kill()
    cmd.proc.wait(5)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", cmd.port), timeout=0.5).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, f"Mosquitto still listens on {cmd.port} after its supervisor was killed"
        time.sleep(0.05)
