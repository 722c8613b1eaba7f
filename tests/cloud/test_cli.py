"""`omnishelf cloud …` commands: one-line user errors, and clean stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broker import topics
from broker.envelope import decode
from broker.mosquitto import free_port
from cloud.settings import DEFAULT_BROKER_PASSWORD
from omnishelf.cli import main
from tests.cloud.conftest import box, until
from tests.conftest import Broker


def test_migrate_and_seed_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", f"sqlite:///{tmp_path / 'db' / 'cloud.db'}")
    assert main(["cloud", "migrate"]) == 0
    assert main(["cloud", "seed"]) == 0
    assert "added 2 regions, 3 stores, 3 nodes" in capsys.readouterr().out
    assert main(["cloud", "seed"]) == 0
    assert "added 0 regions, 0 stores, 0 nodes, 0 products" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMNISHELF_DATABASE_URL": "mysql://u@h/db"}, "OMNISHELF_DATABASE_URL: Unsupported database"),
        ({"OMNISHELF_BROKER_URL": "http://x"}, "OMNISHELF_BROKER_URL: Invalid broker URL"),
        ({"OMNISHELF_BROKER_USERNAME": "Cloud_1"}, "OMNISHELF_BROKER_USERNAME: Invalid broker username"),
        ({"OMNISHELF_ENV": "production"}, "OMNISHELF_BROKER_PASSWORD is empty or the development default"),
        ({"OMNISHELF_ENV": "production", "OMNISHELF_BROKER_PASSWORD": ""}, "OMNISHELF_BROKER_PASSWORD is empty"),
        ({"OMNISHELF_KEEPALIVE_S": "soon"}, "OMNISHELF_KEEPALIVE_S:"),
    ],
)
def test_bad_settings_are_one_line_errors(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["cloud", "worker"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_unreachable_database_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["cloud", "migrate", "--db-timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and err.count("\n") == 1


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out.decode(errors="replace")


def test_worker_command_stops_cleanly_on_sigterm(broker: Broker, tmp_path: Path) -> None:
    password = broker.add_cloud("cloud-7")
    env = {
        "OMNISHELF_DATABASE_URL": f"sqlite:///{tmp_path / 'cloud.db'}",
        "OMNISHELF_BROKER_URL": broker.url,
        "OMNISHELF_BROKER_USERNAME": "cloud-7",
        "OMNISHELF_BROKER_PASSWORD": password,
    }

    async def body() -> tuple[int, str]:
        async with box(broker, "st1-k1") as b:
            state = topics.host_state("cloud-7")

            def last_state() -> bool | None:
                found = [decode(raw, t).data for t, raw in b.received if t == state]
                return getattr(found[-1], "online", None) if found else None

            proc = _spawn(["cloud", "worker"], env)
            try:
                await until(lambda: last_state() is True or proc.poll() is not None, timeout=20, what="worker online")
                assert proc.poll() is None, proc.communicate()[0].decode()
            finally:
                rc, out = _stop(proc)
            await until(lambda: last_state() is False, what="host state offline after SIGTERM")
            return rc, out

    rc, out = asyncio.run(body())
    assert rc == 0, out
    assert "Traceback" not in out


def test_serve_command_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = _spawn(
        ["cloud", "serve", "--no-worker", "--port", str(port)],
        {"OMNISHELF_DATABASE_URL": f"sqlite:///{tmp_path / 'cloud.db'}", "OMNISHELF_BROKER_PASSWORD": DEFAULT_BROKER_PASSWORD},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "API did not come up"
                time.sleep(0.05)
        assert r.status_code == 200 and r.json()["database"] == "ok"
    finally:
        rc, out = _stop(proc)
    assert rc == 0, out
    assert "Traceback" not in out


def test_serve_refuses_a_busy_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    monkeypatch.setenv("OMNISHELF_DATABASE_URL", f"sqlite:///{tmp_path / 'cloud.db'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["cloud", "serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`omnishelf … | head`: the pipe closes under the command; it stops as a tool killed by SIGPIPE
    does (141), with nothing on stderr (no traceback, no 'internal error')."""
    read_end, write_end = os.pipe()
    # A command that prints with print() (argparse's --help swallows the error by itself).
    proc = subprocess.Popen([sys.executable, "-m", "omnishelf.cli", "edge", "check-config", "edge/examples/kiosk.yaml"],
                            cwd=Path(__file__).resolve().parents[2], stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    os.close(read_end)  # long before the interpreter in the child has started
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, "")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"omnishelf {metadata.version('omnishelf')}\n"
