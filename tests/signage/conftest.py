"""Signage fixtures: media made on the spot (PNG with PIL, a video with OpenCV's VideoWriter)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.access.conftest import world  # noqa: F401 - fixtures
from tests.cloud.conftest import db_url, engine  # noqa: F401 - fixtures


def png(colour: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def video(tmp: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (64, 48)) -> bytes:
    import cv2
    import numpy as np

    path = tmp / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    for i in range(int(seconds * fps)):
        frame = np.full((size[1], size[0], 3), (i * 7) % 255, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return path.read_bytes()
