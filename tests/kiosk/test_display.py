"""How the touchscreen apps' window is drawn (kiosk/display.py): the GL context really has the samples
per pixel the command asked for (none by default: multisampling costs a software-GL box most of each
frame), and a sample count the driver is not asked for is refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omnishelf.cli import main

ROOT = Path(__file__).resolve().parents[2]

# The command's own configuration step, then the window it opens: what the GL context reports.
SCRIPT = """
import argparse, json, sys
import kiosk.cli
from kiosk.cli import add_parser
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
args = parser.parse_args(["kiosk", "--windowed", "--size", "320x480", *sys.argv[1:]])
kiosk.cli._configure(args)
from kivy.core.window import Window
from kivy.graphics.opengl import GL_SAMPLES, glGetIntegerv
print(json.dumps({"samples": glGetIntegerv(GL_SAMPLES)[0], "size": list(Window.size)}))
"""


def _window(*argv: str) -> dict[str, int]:
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KCFG_KIVY_LOG_LEVEL": "error"}
    env.pop("KCFG_GRAPHICS_MULTISAMPLES", None)
    out = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 640x640x24", sys.executable, "-c", SCRIPT, *argv],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")
def test_the_window_is_drawn_without_multisampling_unless_asked() -> None:
    assert _window()["samples"] == 0
    # The option reaches the driver: the same window asked for 4 samples has them.
    assert _window("--multisamples", "4")["samples"] == 4


@pytest.mark.parametrize("command", ["kiosk", "station"])
def test_a_sample_count_the_driver_is_not_asked_for_is_refused_in_one_line(command: str,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--multisamples", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'3' is not a sample count: expected one of 0, 2, 4, 8" in err, err
    assert "\n" not in err
