"""Cloud shelf figures, each next to a baseline measured in the same run (JSON on stdout).

A box's catalogue of `--products` products (50,000 by default) with the kiosk component's search
index, served by the box's real local API (catalogue and kiosk routes; no bus: nothing here
publishes). Then, under Xvfb at 1080x1920:

- index: first build of the search index (pinyin of every name), and a rebuild with the pinyin cache;
- keystroke, box API: `GET /shelf/products?q=` for each prefix of a few pinyin/English words,
  p50/p99 ms; baseline: `GET /status` on the same API (the HTTP round trip alone);
- kiosk app: cold start to its first frame presented and resident memory then, next to an empty
  Kivy app (a Label) started the same way, twice: with Kivy's defaults (`empty_kivy_app`, 2 samples
  per pixel) and drawn as the kiosk draws (`empty_kivy_app_as_drawn`, no multisampling); targets:
  start < 5 s, RSS < 250 MB. The kiosk runs as `omnishelf kiosk --box URL` runs it, in a process
  that imports only what that imports (the box's API is served from this process;
  bench/app_drive.py reports the app process's packages);
- keystroke to repainted grid: a key tapped on the on-screen keyboard until the frame showing the
  new grid has been presented, p50/p99 ms (target < 50 ms); the empty app's frame (its label
  changed every frame) is what one repaint of the window costs here at all;
- fling: the time from each frame presented to the next while the grid scrolls 60 px a frame
  through the catalogue (pages load as it goes), p50/p99 ms (target p99 < 33 ms), next to the same
  fling over an empty app's RecycleView of plain labels.

Frames are timed on the frames actually drawn, not on clock ticks (a tick that draws nothing would
count as a fast frame), and each ends when its buffer swap has returned: the frame presented.
Kivy's `on_flip` event comes before the swap, and with software GL (Mesa's llvmpipe under Xvfb)
the swap is where the frame is rasterised and handed to the X server, most of its cost; the figure
to the `on_flip` event is kept beside each (`..._to_flip_event_ms`, `between_flip_events`) to
compare with older runs.

    python -m bench.kiosk [--products N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import app_drive

WORDS = ("longjing", "lj", "dami", "green tea", "xhlj")


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


def _run_child(kind: str, box_url: str, tmp: Path) -> dict[str, Any]:
    """The kiosk as `omnishelf kiosk` runs it, in its own process under Xvfb."""
    argv = ["kiosk", "--box", box_url, "--windowed", "--size", "1080x1920", "--idle", "3600"]  # no idle reset mid-run
    return app_drive.run(kind, {"driver": "kiosk", "argv": argv}, tmp, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="5,000 products, one round")
    args = parser.parse_args()
    if shutil.which("xvfb-run") is None:
        raise SystemExit("bench.kiosk needs Xvfb: sudo apt-get install xvfb")
    n = 5_000 if args.quick else args.products
    with tempfile.TemporaryDirectory(prefix="bench-kiosk-") as d:
        tmp = Path(d)
        api, figures = _box(tmp, n)
        try:
            figures.update(_api_keystrokes(api.url, 1 if args.quick else 3))
            figures.update(app_drive.empty_baselines(tmp))
            figures["kiosk_app"] = _run_child("kiosk", api.url, tmp)
        finally:
            api.stop()
    figures["targets"] = {"start_s": 5, "rss_mb": 250, "keystroke_repaint_ms": 50, "fling_p99_ms": 33}
    print(json.dumps(figures, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
