"""Signage media: images and videos checked, hashed and stored in the catalogue's content-addressed
`FileStore` (the same code, under its own root), each with a JPEG thumbnail.

Images go through the catalogue's own checks (`check_image`: type, size, dimensions). Videos are
recognised by their container's magic bytes and opened with OpenCV to read the dimensions and the
duration (frames / fps) and to take the first frame as the thumbnail: a file OpenCV cannot decode
is refused, because a box could not play it either.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloud.catalogue.files import MAX_SIDE, MIN_SIDE, FileStore, ImageError, check_image

__all__ = ["MAX_VIDEO_BYTES", "MEDIA_SUBDIR", "MediaError", "MediaInfo", "MediaStore"]

MEDIA_SUBDIR = "signage"
"""Where signage media live, inside the catalogue directory (`<catalogue>/signage/files/ab/abcd…`);
backups read them there too (cloud.backup)."""

MAX_VIDEO_BYTES = 512 * 1024**2
MAX_VIDEO_S = 3600.0
_VIDEO_MAGIC = (
    (4, b"ftyp", "video/mp4"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"RIFF", "video/x-msvideo"),
)


class MediaError(ValueError):
    """A file that cannot be used as signage media; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    sha256: str
    kind: str
    mime: str
    size: int
    width: int
    height: int
    duration_s: float | None
    thumb_sha256: str


def _video_mime(data: bytes) -> str | None:
    for offset, magic, mime in _VIDEO_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return mime
    return None


class MediaStore:
    """Media under `root/files/ab/abcdef…` (see `cloud.catalogue.files.FileStore`)."""

    def __init__(self, root: str | Path) -> None:
        self.files = FileStore(root)

    def path(self, sha256: str) -> Path:
        return self.files.path(sha256)

    def put(self, data: bytes, what: str) -> MediaInfo:
        mime = _video_mime(data)
        if mime is None:
            try:
                img = self.files.put_image(data, what)
            except ImageError as exc:
                raise MediaError(f"{exc} (or a video: MP4, WebM or AVI)") from None
            mime_, _, _ = check_image(data, what)
            return MediaInfo(img.sha256, "image", mime_, img.size, img.width, img.height, None, img.thumb_sha256)
        return self._video(data, mime, what)

    def _video(self, data: bytes, mime: str, what: str) -> MediaInfo:
        import cv2  # the API process only: boxes never decode video here

        if len(data) > MAX_VIDEO_BYTES:
            raise MediaError(f"{what} is {len(data) / 1e6:.0f} MB: at most {MAX_VIDEO_BYTES // 2**20} MB allowed")
        fd, tmp = tempfile.mkstemp(suffix=".video")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            cap = cv2.VideoCapture(tmp)
            try:
                if not cap.isOpened():
                    raise MediaError(f"{what} looks like {mime} but cannot be decoded")
                fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
                frames = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
                height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
                ok, frame = cap.read()
            finally:
                cap.release()
        finally:
            Path(tmp).unlink(missing_ok=True)
        if not ok or fps <= 0 or frames <= 0:
            raise MediaError(f"{what} looks like {mime} but has no readable frames (fps {fps:g}, {frames:g} frames)")
        duration = round(frames / fps, 3)
        if not 0.5 <= duration <= MAX_VIDEO_S:
            raise MediaError(f"{what} lasts {duration:g} s: a video must last 0.5 s to {MAX_VIDEO_S:g} s")
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise MediaError(f"{what} is {width}x{height} px: each side must be {MIN_SIDE}-{MAX_SIDE} px")
        scale = 256 / max(width, height)
        thumb = cv2.resize(frame, (max(1, int(width * scale)), max(1, int(height * scale))))
        ok, jpeg = cv2.imencode(".jpg", thumb, [int(cv2.IMWRITE_JPEG_QUALITY), 80])
        if not ok:
            raise MediaError(f"{what}: no thumbnail could be made of its first frame")
        sha = self.files.put(data)
        return MediaInfo(sha, "video", mime, len(data), width, height, duration, self.files.put(jpeg.tobytes()))
