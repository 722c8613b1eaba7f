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


# Fills of every kind the apps draw (plain, rounded, smoothed, a circle, a button's), read back
# before and after the default texture is sampled nearest.
FILLS = """
import json
from kivy.base import EventLoop
from kivy.core.window import Window
from kivy.graphics import Color, Ellipse, Rectangle, RoundedRectangle, SmoothRoundedRectangle
from kivy.graphics.opengl import GL_RGBA, GL_UNSIGNED_BYTE, glReadPixels
from kivy.uix.button import Button
from kivy.uix.widget import Widget
from kiosk import display

root = Widget(size=Window.size)
with root.canvas:
    Color(0.18, 0.2, 0.24, 1); RoundedRectangle(pos=(10, 10), size=(200, 150), radius=[14])
    Color(1, 0.83, 0, 0.25); SmoothRoundedRectangle(pos=(60, 40), size=(200, 150), radius=[24])
    Color(0.9, 0.1, 0.1, 1); Ellipse(pos=(150, 150), size=(120, 90))
    Color(0.2, 0.6, 0.3, 0.5); Rectangle(pos=(0, 200), size=(320, 40))
root.add_widget(Button(pos=(20, 250), size=(140, 60), background_normal="", background_color=(0.22, 0.24, 0.28, 1)))
Window.add_widget(root)

def frame():
    EventLoop.idle()
    return glReadPixels(0, 0, 320, 320, GL_RGBA, GL_UNSIGNED_BYTE)

before = frame()
display.plain_fills_sampled_nearest()
root.canvas.ask_update()
after = frame()
tex = Rectangle().texture
print(json.dumps({"same": before == after, "differs_from_clear": len(set(before)) > 4,
                  "filters": [tex.min_filter, tex.mag_filter]}))
"""


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")
def test_plain_fills_sampled_nearest_change_no_pixel() -> None:
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KCFG_KIVY_LOG_LEVEL": "error", "KCFG_GRAPHICS_MULTISAMPLES": "0",
           "KCFG_GRAPHICS_WIDTH": "320", "KCFG_GRAPHICS_HEIGHT": "320"}
    out = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 640x640x24", sys.executable, "-c", FILLS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["filters"] == ["nearest", "nearest"]
    assert got["differs_from_clear"], "the scene drew nothing: the comparison would prove nothing"
    assert got["same"]
