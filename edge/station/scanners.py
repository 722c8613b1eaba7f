"""Scanner drivers: one interface (a driver that hands each new code to the station), three sources.

- `camera`: OpenCV frames (a video device, a capture index or a video file) decoded by zxing-cpp,
  restricted to the configured formats, rotation and inversion off unless asked; zxing-cpp gives the
  AIM symbology identifier and keeps GS separators. pyzbar is an optional fallback for 1-D codes,
  always with an explicit symbol list (asked for everything, it has reported ITF codes in DataMatrix
  frames). Capture and decoding run on a thread of their own; the event loop only gets codes.
- `hid`: a keyboard-wedge scanner read from its Linux input device (evdev `input_event` records,
  US layout, Ctrl+] is GS), one code per Enter.
- `serial`: a scanner on a serial port, or any file of lines (demos, tests), one code per CR/LF.

A code seen again within `debounce_s` of its last sighting is the same scan. A device that cannot be
opened, or stops answering, makes the driver raise: the supervisor reports it `unavailable` and
runs it again after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.drivers import DriverContext
from edge.station.codes import split_aim
from firmware_config import ScannerDevice

__all__ = [
    "CameraScanner",
    "Debouncer",
    "Decoded",
    "FrameDecoder",
    "HidScanner",
    "LineScanner",
    "ScanSink",
    "keystrokes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    code: str
    """The content, GS separators included, without the AIM identifier."""
    symbology: str | None
    """The AIM identifier (`]d2`, `]Q1`, `]E0`, …) when the scanner or decoder gave one."""


ScanSink = Callable[[ScannerDevice, Decoded], Awaitable[None]]


class Debouncer:
    """Says whether a sighting is a new scan: not if the same code was seen within `window` s."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._last: dict[str, float] = {}

    def new(self, code: str, t: float) -> bool:
        last = self._last.get(code)
        self._last[code] = t
        if len(self._last) > 1000:  # forget codes long gone
            self._last = {c: s for c, s in self._last.items() if t - s <= self.window}
        return last is None or t - last > self.window or t < last


# -- camera ----------------------------------------------------------------------------------------

_ZXING_FORMATS = {
    "datamatrix": "DataMatrix", "qrcode": "QRCode", "ean13": "EAN13", "ean8": "EAN8", "upca": "UPCA", "upce": "UPCE",
    "code128": "Code128", "databar": "DataBar", "databar_expanded": "DataBarExp", "itf": "ITF",
}
_ZBAR_SYMBOLS = {"ean13": ("EAN13", "]E0"), "ean8": ("EAN8", "]E4"), "upca": ("UPCA", "]E0"), "upce": ("UPCE", "]E0"),
                 "code128": ("CODE128", "]C0"), "itf": ("I25", "]I0"), "databar": ("DATABAR", "]e0"),
                 "databar_expanded": ("DATABAR_EXP", "]e0")}


class FrameDecoder:
    """zxing-cpp on one frame, restricted as configured; pyzbar for 1-D codes when asked."""

    def __init__(self, formats: Iterable[str], *, try_rotate: bool = False, try_invert: bool = False,
                 fallback_1d: bool = False) -> None:
        import zxingcpp

        self._zx = zxingcpp
        wanted = tuple(formats)
        self.formats = zxingcpp.BarcodeFormats([getattr(zxingcpp.BarcodeFormat, _ZXING_FORMATS[n]) for n in wanted])
        self.try_rotate = try_rotate
        self.try_invert = try_invert
        self._zbar: tuple[list[Any], dict[str, str]] | None = None
        one_d = [n for n in wanted if n in _ZBAR_SYMBOLS]
        if fallback_1d and one_d:
            from pyzbar import pyzbar  # needs libzbar0

            self._pyzbar = pyzbar
            symbols = [getattr(pyzbar.ZBarSymbol, _ZBAR_SYMBOLS[n][0]) for n in one_d]
            self._zbar = (symbols, {_ZBAR_SYMBOLS[n][0]: _ZBAR_SYMBOLS[n][1] for n in one_d})

    def decode(self, frame: Any) -> list[Decoded]:
        zx = self._zx
        found = zx.read_barcodes(frame, formats=self.formats, try_rotate=self.try_rotate, try_invert=self.try_invert,
                                 text_mode=zx.TextMode.Plain)
        out = [Decoded(b.text, b.symbology_identifier or None) for b in found if b.valid and b.text]
        if not out and self._zbar is not None:
            symbols, aim = self._zbar
            for r in self._pyzbar.decode(frame, symbols=symbols):
                out.append(Decoded(r.data.decode("utf-8", "replace"), aim.get(r.type)))
        return out


@dataclass
class CaptureStats:
    frames: int = 0
    decoded: int = 0
    emitted: int = 0
    decode_s: float = 0.0
    ended: bool = False
    fps: float = 0.0
    started: float = field(default_factory=time.monotonic)


class CameraScanner:
    """A camera (or a video file standing in for one) as a scanner."""

    def __init__(self, cfg: ScannerDevice, ctx: DriverContext, sink: ScanSink, path: Path | None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.sink = sink
        self.path = path
        self.stats = CaptureStats()
        self.decoder = FrameDecoder(cfg.formats, try_rotate=cfg.try_rotate, try_invert=cfg.try_invert,
                                    fallback_1d=cfg.fallback_1d)

    @property
    def what(self) -> str:
        return str(self.path) if self.path is not None else f"camera {self.cfg.camera}"

    def _open(self) -> Any:
        import cv2

        if self.path is not None and not self.path.exists():
            raise RuntimeError(f"{self.path} does not exist (camera unplugged?)")
        cap = cv2.VideoCapture(str(self.path) if self.path is not None else int(self.cfg.camera or 0))
        if not cap.isOpened():
            cap.release()
            raise RuntimeError(f"cannot open {self.what}")
        return cap

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Decoded | BaseException | str] = asyncio.Queue(maxsize=1000)
        stop = threading.Event()

        def put(item: Decoded | BaseException | str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        cap = await asyncio.to_thread(self._open)
        thread = threading.Thread(target=self._capture, args=(cap, stop, put), name=f"camera-{self.cfg.name}", daemon=True)
        thread.start()
        self.ctx.device.ok(f"reading {self.what}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, str):
                    self.ctx.device.ok(item)
                    continue
                self.stats.emitted += 1
                await self.sink(self.cfg, item)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5)

    def _read(self, cap: Any, stop: threading.Event, frames: queue.Queue[tuple[float, Any] | BaseException | str]) -> None:
        """Reader thread: frames (grey, with their time) while the decoder works on the previous one.
        A live camera's stale frames are dropped (the newest matters); a file's never are."""
        import cv2

        is_file = self.path is not None and self.path.is_file()

        def give(item: tuple[float, Any] | BaseException | str) -> None:
            while not stop.is_set():
                try:
                    frames.put(item, timeout=0.1)
                    return
                except queue.Full:
                    if not is_file:
                        with contextlib.suppress(queue.Empty):
                            frames.get_nowait()

        try:
            while not stop.is_set():
                ok, frame = cap.read()
                if not ok:
                    if is_file and self.cfg.loop:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    give("end" if is_file else RuntimeError(f"{self.what} stopped giving frames (unplugged?)"))
                    return
                # The video's own clock for files (read faster than real time), ours for cameras.
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if is_file else time.monotonic()
                give((t, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame))
        except Exception as exc:
            give(exc)
        finally:
            cap.release()

    def _capture(self, cap: Any, stop: threading.Event, put: Callable[[Decoded | BaseException | str], None]) -> None:
        frames: queue.Queue[tuple[float, Any] | BaseException | str] = queue.Queue(maxsize=4)
        reader = threading.Thread(target=self._read, args=(cap, stop, frames), name=f"camera-read-{self.cfg.name}", daemon=True)
        reader.start()
        debounce = Debouncer(self.cfg.debounce_s)
        gap = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        s = self.stats
        s.started = time.monotonic()
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    item = frames.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    put(item)
                    return
                if isinstance(item, str):
                    s.ended = True
                    put(f"end of {self.what} after {s.frames} frames; idle")
                    return
                t, frame = item
                started = time.perf_counter()
                found = self.decoder.decode(frame)
                s.decode_s += time.perf_counter() - started
                s.frames += 1
                s.fps = s.frames / max(1e-9, time.monotonic() - s.started)
                for d in found:
                    s.decoded += 1
                    if debounce.new(d.code, t):
                        put(d)
                if gap:
                    next_at += gap
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
                    else:
                        next_at = time.monotonic()
        except Exception as exc:  # handed to the driver, which raises it for the supervisor
            put(exc)
        finally:
            stop.set()
            reader.join(5)


# -- byte streams: hid and serial ------------------------------------------------------------------


async def _chunks(path: Path, *, baud: int | None = None, grab: bool = False) -> AsyncIterator[bytes]:
    """Bytes from a device (waiting for them) or from a file (followed as it grows); first an empty
    chunk once the device is open and set up. `grab` takes an input device for this process alone
    (EVIOCGRAB): scanned codes must not type into a console."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise RuntimeError(f"cannot open {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if baud is not None and os.isatty(fd):
            import termios
            import tty

            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{baud}", None)
            if speed is None:
                raise RuntimeError(f"{path}: baud rate {baud} is not supported by this system")
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        if grab and stat.S_ISCHR(mode):
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, _EVIOCGRAB, 1)
        yield b""
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            loop.add_reader(fd, ready.set)
            try:
                while True:
                    await ready.wait()
                    ready.clear()
                    try:
                        data = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # ENODEV: unplugged
                        raise RuntimeError(f"{path}: {exc.strerror}") from None
                    if not data and stat.S_ISFIFO(mode):
                        await asyncio.sleep(0.05)  # no writer at the moment
                        continue
                    if not data:
                        raise RuntimeError(f"{path}: the device went away")
                    yield data
            finally:
                loop.remove_reader(fd)
        else:
            while True:
                data = os.read(fd, 65536)
                if data:
                    yield data
                else:
                    await asyncio.sleep(0.02)
    finally:
        os.close(fd)


class LineScanner:
    """One code per line (CR, LF or both) from a serial port or a file."""

    def __init__(self, cfg: ScannerDevice, ctx: DriverContext, sink: ScanSink, path: Path | None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.sink = sink
        self.path = path or _first(("/dev/ttyACM0", "/dev/ttyUSB0"), "serial scanner")
        self.lines = 0

    async def run(self) -> None:
        debounce = Debouncer(self.cfg.debounce_s)
        buf = b""
        async for data in _chunks(self.path, baud=self.cfg.baud):
            if not data:
                self.ctx.device.ok(f"reading {self.path}")
                continue
            buf += data
            *lines, buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                text = raw.decode("utf-8", "replace").strip(" \t")
                if not text:
                    continue
                self.lines += 1
                aim, code = split_aim(text)
                if code and debounce.new(text, time.monotonic()):
                    await self.sink(self.cfg, Decoded(code, aim))


# Linux input event codes (linux/input-event-codes.h), US layout.
_EV_KEY = 1
_KEY_ENTER, _KEY_KPENTER = 28, 96
_SHIFTS = {42, 54}
_CTRLS = {29, 97}
_KEYS: dict[int, tuple[str, str]] = {}
for _codes, _plain, _shifted in (
    (range(2, 12), "1234567890", "!@#$%^&*()"),
    ((12, 13), "-=", "_+"),
    (range(16, 26), "qwertyuiop", "QWERTYUIOP"),
    ((26, 27), "[]", "{}"),
    (range(30, 39), "asdfghjkl", "ASDFGHJKL"),
    ((39, 40, 41, 43), ";'`\\", ':"~|'),
    (range(44, 51), "zxcvbnm", "ZXCVBNM"),
    ((51, 52, 53, 57), ",./ ", "<>? "),
    ((71, 72, 73, 75, 76, 77, 79, 80, 81, 82, 83, 74, 78, 55, 98), "789456123" + "0.-+*/", "789456123" + "0.-+*/"),
):
    for _code, _p, _s in zip(_codes, _plain, _shifted, strict=True):
        _KEYS[_code] = (_p, _s)
_BY_CHAR = {p: (c, False) for c, (p, _s) in _KEYS.items() if c < 71} | {s: (c, True) for c, (p, s) in _KEYS.items() if c < 71 and s != p}
_EVENT = struct.Struct("llHHi")
_EVIOCGRAB = 0x40044590


def keystrokes(text: str) -> bytes:
    """`text` and Enter as a keyboard-wedge scanner types them: evdev records (GS as Ctrl+])."""
    out = bytearray()

    def keys(*pairs: tuple[int, int]) -> None:
        for code, value in pairs:
            out.extend(_EVENT.pack(0, 0, _EV_KEY, code, value))

    for ch in text:
        if ch == "\x1d":
            keys((29, 1), (27, 1), (27, 0), (29, 0))
            continue
        if ch not in _BY_CHAR:
            raise ValueError(f"{ch!r} cannot be typed on a US keyboard")
        code, shift = _BY_CHAR[ch]
        keys(*(((42, 1),) if shift else ()), (code, 1), (code, 0), *(((42, 0),) if shift else ()))
    keys((_KEY_ENTER, 1), (_KEY_ENTER, 0))
    return bytes(out)


class HidScanner:
    """A keyboard-wedge scanner read from its input device, one code per Enter."""

    def __init__(self, cfg: ScannerDevice, ctx: DriverContext, sink: ScanSink, path: Path | None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.sink = sink
        self.path = path or _first_glob("/dev/input/by-id", "*-event-kbd", "keyboard-wedge scanner")
        self.lines = 0

    async def run(self) -> None:
        debounce = Debouncer(self.cfg.debounce_s)
        buf = b""
        typed: list[str] = []
        shift: set[int] = set()
        ctrl: set[int] = set()
        async for data in _chunks(self.path, grab=True):
            if not data:
                self.ctx.device.ok(f"reading {self.path}")
                continue
            buf += data
            n = len(buf) // _EVENT.size
            for i in range(n):
                _s, _us, type_, code, value = _EVENT.unpack_from(buf, i * _EVENT.size)
                if type_ != _EV_KEY:
                    continue
                if code in _SHIFTS or code in _CTRLS:
                    held = shift if code in _SHIFTS else ctrl
                    if value:
                        held.add(code)
                    else:
                        held.discard(code)
                    continue
                if value == 0:
                    continue
                if code in (_KEY_ENTER, _KEY_KPENTER):
                    text = "".join(typed)
                    typed.clear()
                    aim, content = split_aim(text)
                    if content:
                        self.lines += 1
                        if debounce.new(text, time.monotonic()):
                            await self.sink(self.cfg, Decoded(content, aim))
                elif ctrl and code == 27:
                    typed.append("\x1d")
                elif code in _KEYS:
                    typed.append(_KEYS[code][1 if shift else 0])
            buf = buf[n * _EVENT.size :]


def _first(candidates: Iterable[str], what: str) -> Path:
    for c in candidates:
        if Path(c).exists():
            return Path(c)
    raise RuntimeError(f"no {what} found (looked at {', '.join(candidates)}); set the device's 'path'")


def _first_glob(folder: str, pattern: str, what: str) -> Path:
    found = sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    if not found:
        raise RuntimeError(f"no {what} found ({folder}/{pattern}); set the device's 'path'")
    return found[0]
