"""The measured side of the Kivy app benches (bench/kiosk.py, bench/station_app.py), in its own
process under Xvfb.

The app is started exactly as `omnishelf kiosk` / `omnishelf station` starts it
(`omnishelf.cli.main([...,"--box", URL, "--windowed", "--size", "1080x1920"])`), so the process
imports what the product imports and its RSS is the app's: the box (the real edge agent, or the
box's local API) and everything that feeds it run in the bench's own process. This module imports
only the standard library at its top; the drivers below import Kivy once the app's start-up has
configured it (`kiosk.cli._configure` is wrapped to run them after it: the only thing the bench adds
to the start-up), and the process reports the top-level packages it ended up with.

End point of every frame time and latency: the end of that frame's buffer swap. Kivy dispatches
its `on_flip` event after drawing a frame and swaps the buffers only in that event's default handler
(`WindowBase.on_flip` calls `self.flip()`, which for SDL2 is `SDL_GL_SwapWindow`), after every
bound `on_flip` handler has run. With Mesa's llvmpipe the swap is where the frame is rasterised and
handed to the X server, most of a frame's cost, so a figure that ends at `on_flip` stops before the
pixels reach the screen. The window's `flip` is wrapped here (an attribute of the window object;
neither Kivy nor the product code changes), and each frame's time is taken when the provider's swap
returns. The `on_flip` event's time (the wrapper's entry: every bound handler has run by then) is
kept as a second figure, `..._to_flip_event_ms`, to compare with the figures measured before.

    python -m bench.app_drive SPEC.json   (written by the benches; not run by hand)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]

FLING_PX = 60
FLING_FRAMES = 150
UI_WORDS = ("longjing", "dami", "xhlj")
POLL_S = 1 / 60
"""The drivers' polling period. Not 0: an interval of 0 keeps Kivy's `interrupt` clock from ever
sleeping (each tick schedules the next at once), which would load the machine the app is measured on."""


def rss_mb() -> float:
    """Resident memory of this process (VmRSS), without psutil (the app does not import it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def packages() -> list[str]:
    """Top-level packages loaded in this process, outside the standard library."""
    tops = {name.split(".")[0] for name in list(sys.modules)}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_"))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * p))], 2)


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s if not math.isnan(v)]
    return {"p50": pct(ms, 0.5), "p99": pct(ms, 0.99), "max": pct(ms, 1.0), "n": len(ms)}


class Frames:
    """Every frame the window presents from now on: its `on_flip` event and the end of its swap."""

    def __init__(self, window: Any) -> None:
        self.events: list[float] = []
        """perf_counter() of each frame's `on_flip` event (before the swap)."""
        self.swaps: list[float] = []
        """perf_counter() when each frame's buffer swap returned (the frame presented)."""
        self.before: list[Callable[[], None]] = []
        """Called at a frame's `on_flip` event, before its swap (what was applied is in this frame)."""
        self.after: list[Callable[[], None]] = []
        """Called when a frame's swap has returned."""
        swap = window.flip  # the provider's bound method, resolved once

        def flip() -> None:
            self.events.append(time.perf_counter())
            for cb in list(self.before):
                cb()
            swap()
            self.swaps.append(time.perf_counter())
            for cb in list(self.after):
                cb()

        window.flip = flip

    def swap_s(self, since: int = 0, until: int | None = None) -> list[float]:
        return [b - a for a, b in zip(self.events[since:until], self.swaps[since:until], strict=False)]

    def frame_ms(self, since: int = 0, until: int | None = None) -> dict[str, Any]:
        """Frame times: from one presented frame to the next, and between their `on_flip` events."""
        return {**summary_ms([b - a for a, b in pairwise(self.swaps[since:until])]),
                "between_flip_events": summary_ms([b - a for a, b in pairwise(self.events[since:until])]),
                "swap": summary_ms(self.swap_s(since, until))}


# -- the clerk's station ------------------------------------------------------------------------------


def _station(spec: dict[str, Any], out: Path, frames: Frames) -> None:
    """Sign in (the bench's parent signed in on the box: the answer is in `spec`), then `n` scanner
    lines typed through Kivy's keyboard event, each after the previous verdict was presented."""
    from kivy.app import App
    from kivy.clock import Clock
    from kivy.core.window import Window

    n = int(spec["n"])
    app: Any = None
    state: dict[str, Any] = {"i": 0, "ticks": 0, "typed": 0.0, "cpu": 0.0, "mark": 0}
    paired: list[tuple[float, float]] = []  # per shown verdict: (to on_flip event, to end of swap)
    seen = [0]

    def shown() -> None:
        # At the verdict frame's on_flip: the app has just recorded its latency to this event.
        if app is not None and len(app.latencies) > seen[0]:
            seen[0] = len(app.latencies)
            state["pending"] = (app.latencies[-1], app.paints[-1], time.perf_counter())

    def presented() -> None:
        p = state.pop("pending", None)
        if p is not None:
            extra = frames.swaps[-1] - p[2]
            paired.append((p[0], p[0] + extra))
            state.setdefault("paint", []).append(p[1] + extra)

    frames.before.append(shown)
    frames.after.append(presented)

    def type_line(line: str) -> None:
        for ch in line:
            Window.dispatch("on_key_down", ord(ch), 0, ch, [])
        Window.dispatch("on_key_down", 13, 40, None, [])

    def step(_dt: float) -> None:
        nonlocal app
        app = app or App.get_running_app()
        state["ticks"] += 1
        if app is None or not app.started:
            return
        if not app.session.token:
            app.session.signed_in(spec["signin"])
            return
        if state["ticks"] < 5 or app.screen != "verify":
            return
        if len(paired) < state["i"]:
            if time.monotonic() - state["typed"] < 15:
                return  # the last line's verdict is not presented yet
            paired.append((float("nan"), float("nan")))  # never answered: count it, go on
            seen[0] = len(app.latencies)
        if state["i"] == 0:
            state["cpu"], state["mark"] = time.process_time(), len(frames.swaps)
        if state["i"] >= n:
            cpu = time.process_time() - state["cpu"]
            result = {
                "latencies_s": [b for _a, b in paired],
                "to_flip_event_s": [a for a, _b in paired],
                "lost": sum(math.isnan(a) for a, _b in paired),
                # Of which drawing: from the verdict applied to the view-model to its frame presented.
                "paint": summary_ms(state.get("paint", [])),
                "paint_to_flip_event": summary_ms(list(app.paints)[-n:]),
                "http": summary_ms(list(app.verify.http_s)),
                "queued": summary_ms(list(app.verify.queued_s)),
                "handover": summary_ms(list(app.verify.handover_s)),
                # The frames' own swaps (a frame's interval to the next includes the wait for a scan).
                "swap": summary_ms(frames.swap_s(state["mark"])),
                "app_cpu_per_scan_ms": round(cpu / n * 1000, 1),
                "provisional": app.verify.verdict.get("provisional"),
                "rss_mb": rss_mb(),
                "packages": packages(),
            }
            out.write_text(json.dumps(result))
            Clock.unschedule(step)
            app.stop()
            return
        state["i"] += 1
        state["typed"] = time.monotonic()
        type_line(f"]d201{spec['gtin']}21B{time.time_ns() % 10**12:012d}")

    Clock.schedule_interval(step, POLL_S)


# -- the shopper's kiosk ------------------------------------------------------------------------------


def _kiosk(spec: dict[str, Any], out: Path, frames: Frames) -> None:
    """Cold start and memory at the first frame presented, then keystrokes on the on-screen keyboard
    until the new grid is presented, then a fling."""
    from kivy.app import App
    from kivy.clock import Clock

    started = float(spec["started"])
    result: dict[str, Any] = {}

    def first(_dt: float) -> None:
        app = App.get_running_app()
        if app is None or not app.started or not frames.swaps:
            Clock.schedule_once(first, POLL_S)
            return
        # The first frame after on_start, presented: wall time from the bench's spawn of the process.
        result["start_s"] = round(time.time() - (time.perf_counter() - frames.swaps[0]) - started, 2)
        result["rss_mb"] = rss_mb()
        result["packages"] = packages()
        _drive(app, result, frames, lambda: finish(app))

    def finish(app: Any) -> None:
        out.write_text(json.dumps(result))
        app.stop()

    Clock.schedule_once(first, 0)


def _drive(app: Any, result: dict[str, Any], frames: Frames, finish: Callable[[], None]) -> None:
    """Keystrokes to a presented grid, then a fling; every wait is on a condition checked each tick."""
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.tests.common import UnitTestTouch

    def tap(w: Any) -> None:
        x, y = w.to_window(w.center_x, w.center_y)
        t = UnitTestTouch(x, y)
        t.touch_down()
        t.touch_up()

    keys: list[tuple[float, float]] = []  # (to on_flip event, to end of swap) per keystroke
    state: dict[str, Any] = {"phase": "start", "i": 0, "t": 0.0, "loads": 0, "words": list(UI_WORDS)}
    app.touched()

    def at_flip() -> None:
        # This frame was drawn after the answer was applied: it is the one that shows the new grid.
        if state["phase"] == "wait-key" and app.browse.loads > state["loads"]:
            state.update(phase="drawn", frame=len(frames.events) - 1)

    frames.before.append(at_flip)

    def step(_dt: float) -> None:
        browse: Any = app.sm.get_screen("browse") if app.sm else None
        if state["phase"] == "start":
            if app.screen == "browse" and app.browse.loads >= 1 and not app.sm.transition.is_active:
                state["phase"] = "type"
            return
        if state["phase"] == "type":
            word = state["words"][0]
            if state["i"] == len(word):
                state["words"].pop(0)
                before = app.browse.loads  # counted before load(): its answer counts however soon it comes
                app.browse.query = ""
                app.browse.load()
                state.update(phase="wait-reset", loads=before, i=0)
                return
            state["loads"] = app.browse.loads
            state["t"] = time.perf_counter()
            tap(browse.ids.keyboard.keys[word[state["i"]]])
            state["i"] += 1
            state["phase"] = "wait-key"
            return
        if state["phase"] == "wait-key":
            if app.browse.loads > state["loads"] and app.worker.pending == 0 and not Window.canvas.needs_redraw:
                # The answer changed nothing on screen (the grid already showed it): shown when applied.
                now = time.perf_counter() - state["t"]
                keys.append((now, now))
                state["phase"] = "type"
            return
        if state["phase"] == "drawn":
            i = state["frame"]
            if len(frames.swaps) > i:
                keys.append((frames.events[i] - state["t"], frames.swaps[i] - state["t"]))
                state["phase"] = "type"
            return
        if (state["phase"] == "wait-reset" and app.browse.loads > state["loads"] and app.worker.pending == 0
                and len(app.browse.items) >= 40):
            if state["words"]:
                state["phase"] = "type"
                return
            state["phase"] = "fling"
            Clock.unschedule(step)
            Clock.schedule_once(lambda _dt: fling(browse), 0.3)

    def fling(browse: Any) -> None:
        mark = len(frames.swaps)

        def done(end: int, cpu_ms: float) -> None:
            result["keystroke_repaint_ms"] = summary_ms([b for _a, b in keys])
            result["keystroke_repaint_to_flip_event_ms"] = summary_ms([a for a, _b in keys])
            result["fling_frame_ms"] = frames.frame_ms(mark, end) | {"items_loaded": len(app.browse.items),
                                                                     "cpu_per_frame_ms": cpu_ms}
            result["text_textures_rendered"] = app.texts.rendered
            result["window"] = list(Window.size)
            finish()

        _fling(browse.ids.grid, FLING_FRAMES, frames, done)

    Clock.schedule_interval(step, POLL_S)


def _fling(grid: Any, count: int, frames: Frames, done: Callable[[int, float], None]) -> None:
    """Scroll `grid` down FLING_PX a frame for `count` frames (pages may load meanwhile): each step
    after the previous frame was presented, as a finger's moves come one a frame. `done(end, cpu)`:
    the fling's frames end before `frames.swaps[end]` (a frame drawn later is not the fling's); `cpu`
    is the process's CPU per frame meanwhile, ms, every thread's (the GL driver's rasteriser threads
    included): what a frame costs whatever else the machine is doing."""
    from kivy.clock import Clock

    left = [count]
    seen = [len(frames.swaps), time.perf_counter()]
    start = (len(frames.swaps), time.process_time())

    def step(_dt: float) -> None:
        if len(frames.swaps) == seen[0] and left[0] < count and time.perf_counter() - seen[1] < 0.5:
            # The previous step's frame is not presented yet (a step that changed nothing on
            # screen, at the end of the list, draws none: the deadline).
            Clock.schedule_once(step, POLL_S / 4)
            return
        seen[:] = [len(frames.swaps), time.perf_counter()]
        if left[0] <= 0:
            end = len(frames.swaps)
            done(end, round((time.process_time() - start[1]) * 1000 / max(1, end - start[0]), 2))
            return
        scrollable = max(1.0, grid.children[0].height - grid.height)
        grid.scroll_y = max(0.0, grid.scroll_y - FLING_PX / scrollable)
        left[0] -= 1
        Clock.schedule_once(step, 0)

    Clock.schedule_once(step, 0)


# -- the empty app (the baseline: any Kivy window here) -----------------------------------------------


def _empty(spec: dict[str, Any], out: Path) -> None:
    from kivy.app import App
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.lang import Builder
    from kivy.uix.boxlayout import BoxLayout
    from kivy.uix.label import Label

    frames = Frames(Window)
    started = float(spec["started"])
    result: dict[str, Any] = {}

    class Empty(App):  # type: ignore[misc]
        def build(self) -> BoxLayout:
            root = BoxLayout()  # holds the label, then the RecycleView baseline
            root.add_widget(Label(text="empty"))
            return root

        def on_start(self) -> None:
            Clock.schedule_once(first, 0)

    app = Empty()

    def first(_dt: float) -> None:
        if not frames.swaps:
            Clock.schedule_once(first, POLL_S)
            return
        result["start_s"] = round(time.time() - (time.perf_counter() - frames.swaps[0]) - started, 2)
        result["rss_mb"] = rss_mb()
        result["packages"] = packages()
        repaint()

    def repaint() -> None:
        """Its one label changed every frame: what a repaint of the whole window costs here."""
        label = app.root.children[0]
        mark = len(frames.swaps)

        def step(_dt: float) -> None:
            if len(frames.swaps) - mark > 60:
                result["repaint_frame_ms"] = frames.frame_ms(mark)
                Clock.schedule_once(lambda _dt: recycle(), 0)
                return
            label.text = f"frame {len(frames.swaps)}"
            Clock.schedule_once(step, POLL_S)

        Clock.schedule_once(step, 0)

    def recycle() -> None:
        """The same fling over a RecycleView of 5,000 one-line labels."""
        grid = Builder.load_string(
            "RecycleView:\n"
            "    viewclass: 'Label'\n"
            "    RecycleGridLayout:\n"
            "        cols: 3\n"
            "        default_size: None, 360\n"
            "        default_size_hint: 1, None\n"
            "        size_hint_y: None\n"
            "        height: self.minimum_height\n")
        grid.data = [{"text": f"product {i}"} for i in range(5000)]
        app.root.clear_widgets()
        app.root.add_widget(grid)

        def go(_dt: float) -> None:
            mark = len(frames.swaps)

            def done(end: int, cpu_ms: float) -> None:
                result["rv_fling_frame_ms"] = frames.frame_ms(mark, end) | {"cpu_per_frame_ms": cpu_ms}
                out.write_text(json.dumps(result))
                app.stop()

            _fling(grid, FLING_FRAMES, frames, done)

        Clock.schedule_once(go, 0.5)

    app.run()


# -- start-up -----------------------------------------------------------------------------------------


def run(name: str, spec: dict[str, Any], tmp: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """In the bench's process: run `spec` in a new process under Xvfb at 1080x1920; its figures."""
    out = tmp / f"{name}.json"
    spec_file = tmp / f"{name}.spec.json"
    spec_file.write_text(json.dumps({**spec, "out": str(out), "started": time.time()}))
    child_env = {**os.environ, "KIVY_NO_ARGS": "1", "KIVY_HOME": str(tmp / "kivy"), "KCFG_KIVY_LOG_LEVEL": "warning",
                 "KCFG_GRAPHICS_WIDTH": "1080", "KCFG_GRAPHICS_HEIGHT": "1920", "KCFG_GRAPHICS_MAXFPS": "60",
                 **(env or {})}
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1080x1920x24", sys.executable, "-m", "bench.app_drive", str(spec_file)]
    log = tmp / f"{name}.log"
    with log.open("wb") as sink, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(cmd, env=child_env, cwd=Path(__file__).resolve().parents[1], timeout=timeout, check=False,
                       stdout=sink, stderr=subprocess.STDOUT)
    if not out.exists():
        return {"error": f"the {name} app did not report: " + log.read_text(errors="replace")[-1500:]}
    return dict(json.loads(out.read_text()))



def empty_baselines(tmp: Path) -> dict[str, Any]:
    """The empty app twice: with Kivy's own defaults (2 samples per pixel), and drawn as the kiosk and
    the station draw (kiosk/display.py: no multisampling), so the apps' figures can be read against
    any Kivy window here and against one drawn like them."""
    from kiosk.display import MULTISAMPLES

    return {"empty_kivy_app": run("empty", {"driver": "empty"}, tmp, timeout=300),
            "empty_kivy_app_as_drawn": run("empty-as-drawn", {"driver": "empty"}, tmp, timeout=300,
                                           env={"KCFG_GRAPHICS_MULTISAMPLES": str(MULTISAMPLES)})}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    if spec["driver"] == "empty":
        _empty(spec, out)
        return
    drivers = {"station": _station, "kiosk": _kiosk}
    drive = drivers[spec["driver"]]
    import kiosk.cli

    configure = kiosk.cli._configure

    def configured(args: Any) -> None:
        configure(args)  # the product's Kivy configuration first: the clock's kind is read at import
        from kivy.core.window import Window

        drive(spec, out, Frames(Window))

    kiosk.cli._configure = configured
    from omnishelf.cli import main as omnishelf

    code = omnishelf(spec["argv"])
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
