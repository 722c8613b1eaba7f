"""The real wheel, installed per role into fresh virtualenvs, running the real command.

The wheel is built once from the checkout's files (a copy, so a stale build/ cannot leak into it);
each venv gets the wheel with one extra and its dependencies from the package index pip is
configured with. `omnishelf[edge]` alone must run the box's commands and the broker, leave the
cloud's web stack out, and answer a cloud command with the one line naming the extra.
`omnishelf[cloud]` alone must migrate and serve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]
CLOUD_MISSING = "omnishelf: error: the cloud role is not installed: pip install 'omnishelf[cloud]'\n"


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def omnishelf(self) -> Path:
        return self.path / "bin" / "omnishelf"

    def run(self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.omnishelf), *map(str, args)], capture_output=True, text=True, env=env or clean_env(), timeout=timeout
        )

    def distributions(self) -> set[str]:
        script = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
        out = subprocess.run([str(self.python), "-c", script], capture_output=True, text=True, check=True, timeout=60)
        return {name.lower().replace("_", "-") for name in json.loads(out.stdout)}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the OMNISHELF_* settings a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISHELF_") and k != "VIRTUAL_ENV"}
    return {**env, **extra}


def make_venv(tmp: Path, wheel: Path, extras: str) -> Venv:
    venv = Venv(tmp / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.path)], check=True, timeout=120)
    # This process's pip installs into the new venv: no pip of its own needed there. Without
    # compiling every module to bytecode first: what is tested is what gets installed, and
    # compiling was half of the install's CPU time.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--quiet", "--no-compile",
         f"{wheel}[{extras}]"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    return make_venv(tmp_path_factory.mktemp("box"), wheel, "edge")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    return make_venv(tmp_path_factory.mktemp("cloud"), wheel, "cloud")


def box_config(tmp: Path, url: str = "mqtts://mqtt.example.com:8883", password: str = "s3cret-box") -> Path:
    """packaging/box/box.yaml (what a box image gets) with this test's paths and broker."""
    secret = tmp / "box.secret"
    secret.write_text(password + "\n")
    text = (ROOT / "packaging/box/box.yaml").read_text()
    for old, new in (
        ("/etc/omnishelf/box.secret", str(secret)),
        ("/var/lib/omnishelf", str(tmp / "state")),
        ("mqtts://mqtt.example.com:8883", url),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "box.yaml"
    path.write_text(text)
    return path


# -- omnishelf[edge] alone ------------------------------------------------------------------------


def test_box_install_leaves_the_cloud_and_the_kiosk_out(box: Venv) -> None:
    installed = box.distributions()
    assert "omnishelf" in installed and "paho-mqtt" in installed and "pydantic" in installed
    # Pillow is not in the list: python-escpos (the box's receipt printing) needs it.
    for dist in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "jinja2", "kivy"):
        assert dist not in installed
    done = subprocess.run([str(box.python), "-c", "import fastapi"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("ModuleNotFoundError: No module named 'fastapi'")


def test_box_help_lists_every_command(box: Venv) -> None:
    done = box.run("--help")
    assert done.returncode == 0, done.stderr
    for command in ("broker", "cloud", "edge", "demo", "users", "fleet", "catalogue"):
        assert f"    {command} " in done.stdout


def test_box_checks_the_image_config(box: Venv, tmp_path: Path) -> None:
    done = box.run("edge", "check-config", box_config(tmp_path))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("OK sha256:")


@pytest.mark.parametrize(
    "args",
    [("cloud", "serve"), ("cloud", "migrate"), ("cloud", "--help"), ("users", "--help"), ("fleet", "failed", "list"),
     ("catalogue", "--help"), ("demo",)],
    ids=" ".join,
)  # fmt: skip
def test_box_refuses_cloud_commands_in_one_line(box: Venv, args: Sequence[str]) -> None:
    done = box.run(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", CLOUD_MISSING)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM `proc` and expect a clean exit within `timeout`, reading its output meanwhile: a
    process whose pipe nobody reads blocks in its next write once the pipe is full, and never exits.
    Fails with the output's tail."""
    said: list[str] = []

    def drain(pipe: Any) -> None:
        os.set_blocking(pipe.fileno(), True)  # `wait_for_line` left it non-blocking
        for line in pipe:
            said.append(line)

    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            threading.Thread(target=drain, args=(pipe,), daemon=True).start()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args!r} did not exit within {timeout} s of SIGTERM; it said:\n{''.join(said)[-3000:]}")
    assert code == 0, f"{proc.args!r} exited with {code}; it said:\n{''.join(said)[-3000:]}"


def wait_for_line(proc: subprocess.Popen[str], stream: str, needle: str, timeout: float = 30) -> str:
    """Read `proc`'s stdout or stderr until a line holds `needle`; fail with what was read."""
    pipe = getattr(proc, stream)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(pipe.fileno(), False)
    while time.monotonic() < deadline:
        line: str = pipe.readline()
        if line:
            seen.append(line)
            if needle in line:
                return line
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    pytest.fail(f"no line with {needle!r} from {proc.args!r} (exit {proc.poll()}):\n{''.join(seen)[-3000:]}")


def test_box_venv_runs_the_broker_and_the_agent(box: Venv, tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    """The broker role needs nothing beyond the core: a box venv runs it, and the agent connects."""
    port = free_port()
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"nodes": {"st0001-k1": "s3cret-box"}, "cloud": {"cloud-1": "s3cret-cloud"}}))
    broker = subprocess.Popen(
        [str(box.omnishelf), "broker", "--credentials", str(creds), "--port", str(port), "--data-dir", str(tmp_path / "broker")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    spawn.append(broker)
    started = json.loads(wait_for_line(broker, "stdout", '"broker"'))
    assert started["broker"] == f"mqtt://127.0.0.1:{port}"

    config = box_config(tmp_path, url=f"mqtt://127.0.0.1:{port}")
    agent = subprocess.Popen(
        [str(box.omnishelf), "edge", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    spawn.append(agent)
    wait_for_line(agent, "stderr", f"st0001-k1: connected to mqtt://127.0.0.1:{port}")

    status = box.run("edge", "status", "--config", config)
    assert status.returncode == 0, status.stderr
    counters = json.loads(status.stdout)
    assert counters["session"] >= 1
    assert counters["outbox"] == str(tmp_path / "state" / "edge" / "st0001-k1" / "outbox.db")

    for proc in (agent, broker):
        stop(proc)


# -- omnishelf[cloud] alone -----------------------------------------------------------------------


def test_cloud_install_leaves_the_kiosk_out_and_serves(cloud: Venv, tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    installed = cloud.distributions()
    assert {"fastapi", "sqlalchemy", "psycopg", "pillow"} <= installed
    assert "kivy" not in installed

    env = clean_env(OMNISHELF_DATA_DIR=str(tmp_path / "data"))
    migrated = cloud.run("cloud", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"sqlite:///{tmp_path / 'data' / 'omnishelf.db'}" in migrated.stdout

    port = free_port()
    server = subprocess.Popen(
        [str(cloud.omnishelf), "cloud", "serve", "--no-worker", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    spawn.append(server)
    wait_for_line(server, "stderr", "Uvicorn running on")
    for path in ("/health", "/console/login", "/docs"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            assert answer.status == 200, path
    stop(server)
