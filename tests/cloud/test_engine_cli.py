"""An engine declares its `omnishelf` commands in its own `EngineSpec(cli=…)`, a site's engine
(OMNISHELF_EXTRA_ENGINES) too; the command line reads the declarations without importing any
engine, and imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.engines import ENGINE_MODULES, EXTRA_ENV, EngineListError, cli_commands, declared_cli
from omnishelf.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_statically_read_declarations_are_the_specs_own() -> None:
    for module in ENGINE_MODULES:
        spec = importlib.import_module(module).ENGINE
        assert declared_cli(module) == [(c.name, c.module, c.help) for c in spec.cli], module
    assert list(cli_commands()) == ["users", "fleet", "catalogue", "trace", "signage", "orders"]
    assert cli_commands()["fleet"][0] == "cloud.fleet.cli"


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, check=True)


def test_help_lists_every_engines_commands_and_imports_no_engine() -> None:
    done = _fresh(
        "import contextlib, io, json, sys\n"
        "from omnishelf.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['--help'])\n"
        "loaded = sorted(m for m in sys.modules if m.endswith('.engine') or m.split('.')[0] in ('fastapi', 'sqlalchemy'))\n"
        "print(json.dumps({'code': code, 'help': out.getvalue(), 'loaded': loaded}))\n",
        **{EXTRA_ENV: "tests.cloud.fake_engine"},
    )
    answer = json.loads(done.stdout)
    assert answer["code"] == 0 and answer["loaded"] == []
    listed = [line.split()[0] for line in answer["help"].splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ["broker", "pki", "cloud", "backup", "restore", "users", "fleet", "catalogue", "trace", "signage",
                      "orders", "fake", "edge", "provision", "demo", "kiosk", "station"]


def test_an_extra_engines_command_runs_importing_its_module_only() -> None:
    done = subprocess.run([sys.executable, "-m", "omnishelf.cli", "fake", "hello"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), EXTRA_ENV: "tests.cloud.fake_engine"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "fake says hello; loaded: none of the engines\n", "")
    without = subprocess.run([sys.executable, "-m", "omnishelf.cli", "fake", "hello"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), EXTRA_ENV: ""})
    assert without.returncode == 2 and "invalid choice: 'fake'" in without.stderr


ENGINE_SOURCE = """
from cloud.engine import CliCommand, EngineSpec
NAME = "x"
ENGINE = EngineSpec(name={name!r}, cli={cli})
"""
CASES = [
    pytest.param('(CliCommand(NAME, "m", "h"),)', "line 4: write cli= as a tuple of CliCommand(name, module, help) with "
                 "string literals (the omnishelf command reads it without importing the engine)", id="a variable"),
    pytest.param("COMMANDS", "line 4: write cli= as a tuple of CliCommand", id="a name for the tuple"),
    pytest.param('(CliCommand("x", "m"),)', "line 4: write cli= as a tuple", id="help missing"),
    pytest.param('(CliCommand("x", "m", f"{NAME}"),)', "line 4: write cli= as a tuple", id="an f-string"),
    pytest.param('(("x", "m", "h"),)', "line 4: write cli= as a tuple", id="a bare tuple"),
    pytest.param('(CliCommand("users", "m", "h"),)', "engine modules 'cloud.access.engine' and '{module}' both declare "
                 "the command 'users'", id="an engine's name"),
    pytest.param('(CliCommand("cloud", "m", "h"),)', "an engine declares the command 'cloud', which omnishelf has already",
                 id="a core command's name"),
]


@pytest.mark.parametrize(("cli", "error"), CASES)
def test_a_declaration_the_command_line_cannot_use_is_one_line_naming_it(
    cli: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    module = "site_engine_" + re.sub(r"\W", "_", request.node.callspec.id)
    (tmp_path / f"{module}.py").write_text(ENGINE_SOURCE.format(name=module, cli=cli), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(EXTRA_ENV, module)
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnishelf: error: ") and err.count("\n") == 1, err
    expected = error.format(module=module)
    assert expected in err and (expected.startswith(("engine modules", "an engine")) or f"'{module}'" in err), err


def test_an_engine_module_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(EXTRA_ENV, "cloud.nothing_here.engine")
    assert main(["--help"]) == 2
    assert capsys.readouterr().err.startswith(
        f"omnishelf: error: engine module 'cloud.nothing_here.engine' cannot be found (No module named 'cloud.nothing_here'); "
        f"check {EXTRA_ENV}")
    with pytest.raises(EngineListError, match="has no 'ENGINE = EngineSpec"):
        declared_cli("cloud.engines")


def test_a_box_command_runs_whatever_the_engine_list_says(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The list is the cloud's: `omnishelf edge …` on a machine whose shell names a missing engine
    runs; the cloud's commands still refuse to start with it."""
    monkeypatch.setenv(EXTRA_ENV, "cloud.nothing_here.engine")
    assert main(["edge", "--help"]) == 0
    assert "usage: omnishelf edge" in capsys.readouterr().out
    assert main(["cloud", "migrate"]) == 2
    assert "engine module 'cloud.nothing_here.engine' cannot be found" in capsys.readouterr().err
