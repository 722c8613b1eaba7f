"""Cloud shelf figures, each next to a baseline measured in the same run (JSON on stdout).

A box's catalogue of `--products` products (50,000 by default) with the kiosk component's search
index, served by the box's real local API (catalogue and kiosk routes; no bus: nothing here
publishes). Then, under Xvfb at 1080x1920:

- index: first build of the search index (pinyin of every name), and a rebuild with the pinyin cache;
- keystroke, box API: `GET /shelf/products?q=` for each prefix of a few pinyin/English words,
  p50/p99 ms; baseline: `GET /status` on the same API (the HTTP round trip alone);
- kiosk app: cold start to first frame and resident memory after it, next to an empty Kivy app
  (a Label) started the same way; targets: start < 5 s, RSS < 250 MB;
- keystroke to repainted grid: a key tapped on the on-screen keyboard until the new grid has been
  drawn, p50/p99 ms (target < 50 ms); the empty app's frame (its label changed every frame) is what
  one repaint of the window costs here at all;
- fling: the time of each frame drawn while the grid scrolls 60 px a frame through the catalogue
  (pages load as it goes), p50/p99 ms (target p99 < 33 ms), next to the same fling over an empty
  app's RecycleView of plain labels.

Frames are timed on the window's `on_flip` (a frame actually drawn), not on clock ticks: a tick that
draws nothing would count as a fast frame.

    python -m bench.kiosk [--products N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from itertools import pairwise
from pathlib import Path
from typing import Any

WORDS = ("longjing", "lj", "dami", "green tea", "xhlj")
UI_WORDS = ("longjing", "dami", "xhlj")
FLING_PX = 60
FLING_FRAMES = 150


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * p))], 2)


def _catalogue(directory: Path, n: int) -> None:
    from edge.catalogue.store import CatalogueStore

    kinds = [("西湖龙井茶", "Longjing green tea"), ("五常大米", "Wuchang rice"), ("祁门红茶", "Keemun black tea"),
             ("青瓷茶杯", "Celadon tea mug"), ("芝麻小吃", "Sesame snack"), ("东北木耳", "Black fungus"),
             ("云南普洱", "Yunnan pu-erh"), ("手工挂面", "Hand-made noodles")]
    store = CatalogueStore(directory)
    lines = [json.dumps({"format": 1, "kind": "snapshot", "from": 0, "to": 1})]
    for i in range(n):
        zh, en = kinds[i % len(kinds)]
        lines.append(json.dumps({"op": "put", "p": {
            "sku": f"SKU-{i:06d}", "name_en": f"{en} no. {i}", "name_zh": f"{zh} {i} 号",
            "list_price": f"{5 + i % 300}.00", "brand": f"Brand {i % 97}", "category": f"Food > Kind {i % 8}"}},
            ensure_ascii=False))
    store.apply(lines, expect_from=0, expect_to=1, region=None)
    store.close()


def _box(tmp: Path, n: int) -> tuple[Any, dict[str, Any]]:
    """The box's local API with the catalogue and kiosk routes, and the index build figures."""
    from edge.catalogue.api import catalogue_routes
    from edge.catalogue.store import CatalogueStore
    from edge.component import ComponentContext
    from edge.kiosk.component import KioskComponent
    from edge.localapi import LocalApi, Route
    from firmware_config import LocalApiConfig, NodeConfig, resolve_paths

    cfg = NodeConfig.model_validate({"node_id": "bench-k1", "store_id": "st1", "data_dir": str(tmp),
                                     "broker": {"url": "mqtt://127.0.0.1:9"}, "kiosk": {"enabled": True}})
    paths = resolve_paths(cfg)
    t = time.perf_counter()
    _catalogue(paths.catalogue, n)
    seeded = time.perf_counter() - t

    async def no_publish(*_a: Any) -> Any:
        raise RuntimeError("the bench places no orders")

    kiosk = KioskComponent(ComponentContext(config=cfg, paths=paths, publish=no_publish))
    t = time.perf_counter()
    kiosk.refresh_index()
    first = time.perf_counter() - t
    kiosk.db._conn().execute("DELETE FROM meta WHERE key = 'indexed'")
    t = time.perf_counter()
    kiosk.refresh_index()
    again = time.perf_counter() - t
    store = CatalogueStore(paths.catalogue)
    routes = [*catalogue_routes(store), *kiosk.routes(), Route("GET", "/status", lambda _r: {"ok": True})]
    api = LocalApi(LocalApiConfig(port=0), routes)
    api.start()
    return api, {"products": n, "catalogue_apply_s": round(seeded, 2), "index_first_build_s": round(first, 2),
                 "index_rebuild_cached_s": round(again, 2)}


def _get_ms(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    return (time.perf_counter() - t) * 1000


def _api_keystrokes(base: str, rounds: int) -> dict[str, Any]:
    search: list[float] = []
    status: list[float] = []
    for _ in range(rounds):
        for word in WORDS:
            for i in range(1, len(word) + 1):
                search.append(_get_ms(f"{base}/shelf/products?limit=40&q={urllib.parse.quote(word[:i])}"))
                status.append(_get_ms(f"{base}/status"))
    return {"keystroke_api_ms": {"p50": _pct(search, 0.5), "p99": _pct(search, 0.99), "n": len(search)},
            "baseline_status_ms": {"p50": _pct(status, 0.5), "p99": _pct(status, 0.99)}}


# -- the UI side, in a child process under Xvfb (one Kivy window per process) -------------------------


def _child(kind: str, box_url: str, out: Path, started: float) -> None:
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    import psutil
    from kivy.app import App
    from kivy.clock import Clock
    from kivy.uix.boxlayout import BoxLayout
    from kivy.uix.label import Label

    result: dict[str, Any] = {}
    proc = psutil.Process()

    if kind == "empty":
        class Empty(App):  # type: ignore[misc]
            def build(self) -> BoxLayout:
                root = BoxLayout()  # holds the label, then the RecycleView baseline
                root.add_widget(Label(text="empty"))
                return root

        app: Any = Empty()
    else:
        from kiosk.app import KioskApp

        app = KioskApp(box_url, idle_s=3600)  # a slow run must not meet the idle reset

    frames = {"n": 0}

    def first_frame(_dt: float) -> None:
        frames["n"] += 1
        if frames["n"] == 2 and "start_s" not in result:  # the frame after on_start has been drawn
            result["start_s"] = round(time.time() - started, 2)
            result["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
            if kind == "empty":
                Clock.schedule_once(lambda _dt: _repaint_baseline(app, result, lambda: _rv_baseline(app, result, finish)), 0)
            else:
                Clock.schedule_once(lambda _dt: _drive(app, result, finish), 0)

    def finish() -> None:
        out.write_text(json.dumps(result))
        app.stop()

    Clock.schedule_interval(first_frame, 0)
    app.run()


def _flips() -> list[float]:
    """Times of the frames the window draws from now on."""
    from kivy.core.window import Window

    out: list[float] = []
    Window.bind(on_flip=lambda *_: out.append(time.perf_counter()))
    return out


def _frame_ms(flips: list[float]) -> dict[str, Any]:
    ft = [(b - a) * 1000 for a, b in pairwise(flips)]
    return {"p50": _pct(ft, 0.5), "p99": _pct(ft, 0.99), "n": len(ft)}


def _fling(grid: Any, frames: int, done: Any) -> None:
    """Scroll `grid` down FLING_PX a frame for `frames` frames (pages may load meanwhile)."""
    from kivy.clock import Clock

    left = [frames]

    def step(_dt: float) -> None:
        scrollable = max(1.0, grid.children[0].height - grid.height)
        grid.scroll_y = max(0.0, grid.scroll_y - FLING_PX / scrollable)
        left[0] -= 1
        if left[0] <= 0:
            Clock.unschedule(step)
            done()

    Clock.schedule_interval(step, 0)


def _rv_baseline(app: Any, result: dict[str, Any], finish: Any) -> None:
    """The same fling over an empty app's RecycleView of 5,000 one-line labels."""
    from kivy.clock import Clock
    from kivy.lang import Builder

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
        flips = _flips()

        def done() -> None:
            result["rv_fling_frame_ms"] = _frame_ms(flips)
            finish()

        _fling(grid, FLING_FRAMES, done)

    Clock.schedule_once(go, 0.5)


def _repaint_baseline(app: Any, result: dict[str, Any], finish: Any) -> None:
    """The empty app's frame time when its one label changes every frame: what a repaint of the
    whole window costs here (Xvfb's software GL), with no app around it."""
    from kivy.clock import Clock

    label = app.root.children[0]
    flips = _flips()
    state = {"n": 0}

    def step(_dt: float) -> None:
        label.text = f"frame {state['n']}"
        state["n"] += 1
        if len(flips) > 60:
            result["repaint_frame_ms"] = _frame_ms(flips)
            Clock.unschedule(step)
            finish()

    Clock.schedule_interval(step, 0)


def _drive(app: Any, result: dict[str, Any], finish: Any) -> None:
    """Keystrokes to repaint, then a fling; every wait is on a condition checked each frame."""
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.tests.common import UnitTestTouch

    def tap(w: Any) -> None:
        x, y = w.to_window(w.center_x, w.center_y)
        t = UnitTestTouch(x, y)
        t.touch_down()
        t.touch_up()

    keys: list[float] = []
    flips = _flips()
    state: dict[str, Any] = {"phase": "start", "i": 0, "t": 0.0, "loads": 0, "words": list(UI_WORDS), "mark": 0}
    app.touched()

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
            if app.browse.loads > state["loads"] and app.worker.pending == 0:
                # Applied in this tick: the frame this tick draws shows the new grid.
                state.update(phase="drawn", mark=len(flips), applied=time.perf_counter())
            return
        if state["phase"] == "drawn":
            if len(flips) > state["mark"]:
                keys.append((flips[state["mark"]] - state["t"]) * 1000)
                state["phase"] = "type"
            elif not Window.canvas.needs_redraw:
                # The answer changed nothing on screen (the grid already showed it): shown when applied.
                keys.append((state["applied"] - state["t"]) * 1000)
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
        mark = len(flips)

        def done() -> None:
            result["keystroke_repaint_ms"] = {"p50": _pct(keys, 0.5), "p99": _pct(keys, 0.99), "n": len(keys)}
            result["fling_frame_ms"] = _frame_ms(flips[mark:]) | {"items_loaded": len(app.browse.items)}
            result["text_textures_rendered"] = app.texts.rendered
            result["window"] = list(Window.size)
            finish()

        _fling(browse.ids.grid, FLING_FRAMES, done)

    Clock.schedule_interval(step, 0)


def _run_child(kind: str, box_url: str, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{kind}.json"
    env = {**os.environ, "KIVY_NO_ARGS": "1", "KIVY_HOME": str(tmp / "kivy"), "KCFG_KIVY_LOG_LEVEL": "warning",
           "KCFG_GRAPHICS_WIDTH": "1080", "KCFG_GRAPHICS_HEIGHT": "1920", "KCFG_GRAPHICS_MAXFPS": "60"}
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1080x1920x24", sys.executable, "-m", "bench.kiosk", "--child", kind,
           box_url, str(out), str(time.time())]
    subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], timeout=300, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not out.exists():
        return {"error": f"the {kind} app did not report (see KIVY_HOME logs under {tmp})"}
    return dict(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="5,000 products, one round")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, url, out, started = args.child
        _child(kind, url, Path(out), float(started))
        return
    if shutil.which("xvfb-run") is None:
        raise SystemExit("bench.kiosk needs Xvfb: sudo apt-get install xvfb")
    n = 5_000 if args.quick else args.products
    with tempfile.TemporaryDirectory(prefix="bench-kiosk-") as d:
        tmp = Path(d)
        api, figures = _box(tmp, n)
        try:
            figures.update(_api_keystrokes(api.url, 1 if args.quick else 3))
            figures["empty_kivy_app"] = _run_child("empty", api.url, tmp)
            figures["kiosk_app"] = _run_child("kiosk", api.url, tmp)
        finally:
            api.stop()
    figures["targets"] = {"start_s": 5, "rss_mb": 250, "keystroke_repaint_ms": 50, "fling_p99_ms": 33}
    print(json.dumps(figures, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
