"""Codes printed to images and videos, for tests, benchmarks and the demo's simulated camera.

zxing-cpp writes the symbols (a GS1 DataMatrix from an HRI string `(01)…(21)…`, a QR code, an
EAN-13, a GS1-128); OpenCV assembles frames into a video file that `CameraScanner` reads as if it
were a camera.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Symbol", "code_frame", "write_video"]


@dataclass(frozen=True, slots=True)
class Symbol:
    content: str
    """What to encode; for a GS1 symbol, the HRI form `(01)09506000134352(21)S1`."""
    format: str = "datamatrix"
    """datamatrix, qrcode, ean13 or code128."""
    gs1: bool = False


_FORMATS = {"datamatrix": "DataMatrix", "qrcode": "QRCode", "ean13": "EAN13", "code128": "Code128"}


def code_frame(symbol: Symbol | None, size: tuple[int, int] = (640, 480), *, noise: int = 12, seed: int = 0) -> Any:
    """One grey 8-bit frame: the symbol (if any) on a noisy light background, as a camera sees it."""
    import numpy as np
    import zxingcpp

    w, h = size
    rng = np.random.default_rng(seed)
    frame = np.clip(rng.normal(225, noise, (h, w)), 0, 255).astype(np.uint8)
    if symbol is None:
        return frame
    fmt = getattr(zxingcpp.BarcodeFormat, _FORMATS[symbol.format])
    kwargs: dict[str, Any] = {"gs1": True} if symbol.gs1 else {}
    barcode = zxingcpp.create_barcode(symbol.content, fmt, **kwargs)
    linear = symbol.format in ("ean13", "code128")
    img = np.asarray(barcode.to_image(scale=3 if linear else 5))
    if linear and img.shape[0] < 80:
        img = np.repeat(img, max(1, 80 // img.shape[0]), axis=0)
    scale = min(1.0, (w - 20) / img.shape[1], (h - 20) / img.shape[0])
    if scale < 1.0:
        import cv2

        img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)), interpolation=cv2.INTER_NEAREST)
    y, x = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
    frame[y : y + img.shape[0], x : x + img.shape[1]] = img
    return frame


def write_video(path: Path, symbols: Sequence[Symbol | None], *, hold: int = 6, gap: int = 4, fps: float = 15.0,
                size: tuple[int, int] = (640, 480)) -> int:
    """Each symbol held in view for `hold` frames, `gap` empty frames between them; returns the
    number of frames written. MJPG in an .avi (OpenCV's own encoder, on every build)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size, isColor=False)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write a video to {path}")
    frames = 0
    try:
        for i, symbol in enumerate(symbols):
            for j in range(hold):
                writer.write(code_frame(symbol, size, seed=i * 1000 + j))
                frames += 1
            for j in range(gap):
                writer.write(code_frame(None, size, seed=i * 1000 + 500 + j))
                frames += 1
    finally:
        writer.release()
    return frames
