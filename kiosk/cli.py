"""`omnishelf kiosk`: the cloud shelf on this box's screen (full-screen; `--windowed` for development)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from kiosk.display import MULTISAMPLE_CHOICES, MULTISAMPLES

__all__ = ["add_parser", "add_station_parser", "choose_box"]

BOX_ENV = "OMNISHELF_BOX_URL"
DEFAULT_BOX = "http://127.0.0.1:8480"
_SIZE = re.compile(r"([1-9][0-9]{2,4})x([1-9][0-9]{2,4})")


def _box_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not a box URL: expected http://host:port (the box's local API)")
    return value.rstrip("/")


def _size(value: str) -> tuple[int, int]:
    m = _SIZE.fullmatch(value)
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r} is not a window size: expected WIDTHxHEIGHT, e.g. 1080x1920")
    return int(m.group(1)), int(m.group(2))


def _multisamples(value: str) -> int:
    if not value.isdigit() or int(value) not in MULTISAMPLE_CHOICES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a sample count: expected one of {', '.join(map(str, MULTISAMPLE_CHOICES))}"
            f" ({MULTISAMPLES}, the default, draws without multisampling: see docs/kiosk.md)")
    return int(value)


def _add_drawing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--multisamples", type=_multisamples, default=MULTISAMPLES, metavar="N",
                   help="samples per pixel the window asks the GL driver for (default 0: a box without a strong GPU"
                        " spends most of each frame on them; 2, 4 or 8 for a GPU that does them for free)")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("kiosk", help="run the cloud shelf touchscreen (Kivy) against a box's local API")
    p.add_argument("--box", type=_box_url, default=None,
                   help=f"the box's local API (default: ${BOX_ENV}, else the box found by zeroconf on the LAN,"
                        f" else {DEFAULT_BOX})")
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen (development)")
    p.add_argument("--size", type=_size, default=(1080, 1920), help="window size with --windowed (default 1080x1920)")
    p.add_argument("--idle", type=float, default=90.0, help="seconds without a touch before the reset countdown")
    _add_drawing(p)
    p.set_defaults(func=cmd_kiosk)


def choose_box(configured: str | None, env: str | None, find: Callable[[], str | None]) -> tuple[str, str]:
    """(URL, how it was chosen): a configured URL wins; else zeroconf; else the box on this machine."""
    if configured:
        return configured, "--box"
    if env:
        return _box_url(env), f"${BOX_ENV}"
    found = find()
    if found:
        return found, "found by zeroconf"
    return DEFAULT_BOX, "no box found by zeroconf: trying this machine's"


def _resolve_box(args: argparse.Namespace, who: str) -> str:
    from kiosk.discover import find_box

    try:
        box, how = choose_box(args.box, os.environ.get(BOX_ENV), find_box)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"{who}: ${BOX_ENV}: {exc}") from None
    print(f"{who}: box {box} ({how})", file=sys.stderr)
    return box


def cmd_kiosk(args: argparse.Namespace) -> int:
    box = _resolve_box(args, "kiosk")
    # Kivy reads its configuration at import: set it before the first kivy import.
    _configure(args)
    from kiosk.app import KioskApp
    from kiosk.fonts import FontMissing

    try:
        KioskApp(box, idle_s=args.idle).run()
    except FontMissing as exc:
        raise SystemExit(f"kiosk: {exc}") from None
    return 0


def add_station_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("station", help="run the clerk's station touchscreen (Kivy) against a box's local API")
    p.add_argument("--box", type=_box_url, default=None,
                   help=f"the box's local API (default: ${BOX_ENV}, else the box found by zeroconf on the LAN,"
                        f" else {DEFAULT_BOX})")
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen (development)")
    p.add_argument("--size", type=_size, default=(1080, 1920),
                   help="window size with --windowed (default 1080x1920; 1920x1080 for landscape)")
    _add_drawing(p)
    p.set_defaults(func=cmd_station)


def _configure(args: argparse.Namespace) -> None:
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    from kiosk import display

    display.window(windowed=args.windowed, size=args.size)
    display.drawing(args.multisamples)


def cmd_station(args: argparse.Namespace) -> int:
    box = _resolve_box(args, "station")
    # Kivy reads its configuration at import: set it before the first kivy import.
    _configure(args)
    from kiosk.fonts import FontMissing
    from kiosk.station.app import StationApp

    try:
        StationApp(box).run()
    except FontMissing as exc:
        raise SystemExit(f"station: {exc}") from None
    return 0
