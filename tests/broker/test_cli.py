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
