"""The app benches' end point (bench/app_drive.py `Frames`): a frame's time is taken after its
buffer swap, which Kivy runs after every bound `on_flip` handler (where the apps stop their own
clocks). Checked on a real window under Xvfb, so a Kivy that reorders the two fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                reason="needs Xvfb (packaging/debian/test.txt: sudo apt-get install xvfb)")

SCRIPT = """
import json, sys, time
from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.uix.label import Label
from bench.app_drive import Frames

frames = Frames(Window)
handlers = []
Window.bind(on_flip=lambda *_: handlers.append(time.perf_counter()))

class One(App):
    def build(self):
        return Label(text="0")

app = One()

def step(_dt):
    app.root.text = str(len(frames.swaps))
    if len(frames.swaps) >= 5:
        print(json.dumps({"handlers": handlers, "events": frames.events, "swaps": frames.swaps}))
        app.stop()
        return
    Clock.schedule_once(step, 1 / 60)

Clock.schedule_once(step, 0)
app.run()
"""


def test_a_frame_ends_after_its_swap_which_follows_the_on_flip_handlers(tmp_path: Path) -> None:
    script = tmp_path / "frames.py"  # a file: Kivy's App does not start from `python -c`
    script.write_text(SCRIPT)
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KIVY_HOME": str(tmp_path / "kivy"), "KCFG_KIVY_LOG_LEVEL": "error",
           "KCFG_GRAPHICS_WIDTH": "400", "KCFG_GRAPHICS_HEIGHT": "300", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["xvfb-run", "-a", sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = json.loads(lines[-1])
    handlers, events, swaps = found["handlers"], found["events"], found["swaps"]
    assert len(swaps) >= 5
    assert len(handlers) == len(events) == len(swaps)
    for h, e, s in zip(handlers, events, swaps, strict=True):
        assert h <= e < s  # bound handler, then the wrapper's entry, then the swap's end
