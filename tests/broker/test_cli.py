from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_broker_command_reloads_credentials_on_sighup(tmp_path: Path) -> None:
    """`omnishelf broker` as operators run it: a box added to the file and SIGHUP lets it in; a
    broken edit is refused and the credentials in force stay."""
    import asyncio
    import signal
    import subprocess
    import sys

    from broker.client import BrokerAddress, BusAuthError, MqttConnection
    from broker.mosquitto import free_port

    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"nodes": {"n1": "pw1"}}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "broker", "--credentials", str(creds), "--port", str(port),
         "--data-dir", str(tmp_path / "b")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["broker"] == f"mqtt://127.0.0.1:{port}"

        async def can_connect(user: str, password: str) -> bool:
            conn = MqttConnection(BrokerAddress("127.0.0.1", port), user, password)
            try:
                await conn.connect()
            except BusAuthError:
                return False
            await conn.disconnect()
            return True

        async def eventually(user: str, password: str, want: bool) -> None:
            for _ in range(100):
                if await can_connect(user, password) is want:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{user} connect != {want}")

        assert asyncio.run(can_connect("n1", "pw1"))
        assert not asyncio.run(can_connect("n2", "pw2"))
        creds.write_text(json.dumps({"nodes": {"n1": "pw1", "n2": "pw2"}}))
        proc.send_signal(signal.SIGHUP)
        asyncio.run(eventually("n2", "pw2", True))
        creds.write_text(json.dumps({"nodes": {"Bad Name": "x"}}))
        proc.send_signal(signal.SIGHUP)
        # Wait for the command to say it refused the edit (not a fixed sleep: it polls its signals).
        assert proc.stderr is not None
        for line in proc.stderr:
            if "credentials not reloaded, the previous ones stay in force" in line:
                break
        else:
            raise AssertionError(f"no refusal logged; exit code {proc.poll()}")
        assert proc.poll() is None
        assert asyncio.run(can_connect("n1", "pw1")) and asyncio.run(can_connect("n2", "pw2"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
