"""The catalogue's content-addressed file store: images, thumbnails and sync files by sha256.

A file's name is the sha256 of its bytes, so a download can be verified against the hash that came
over the authenticated bus, the same image used by many products is stored once, and a thumbnail
is generated once per image, whatever the number of imports.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["CHECKED_FORMATS", "FileStore", "ImageError", "ImageInfo", "check_image"]

CHECKED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 32, 8000
THUMB_SIDE = 256
_SHA = re.compile(r"^[0-9a-f]{64}$")


class ImageError(ValueError):
    """An image that cannot be used; the message says why (type, size, dimensions, not found)."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    sha256: str
    mime: str
    width: int
    height: int
    size: int
    thumb_sha256: str
    thumb_size: int


def _found(data: bytes) -> str:
    if not data:
        return "an empty file"
    return f"{len(data)} bytes starting {data[:8].hex(' ')}"


def check_image(data: bytes, what: str) -> tuple[str, int, int]:
    """(mime, width, height) of an acceptable image; `ImageError` otherwise."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{what} is {len(data) / 1e6:.1f} MB: at most {MAX_IMAGE_BYTES // 2**20} MB allowed")
    try:
        with warnings.catch_warnings():
            # PIL warns, then refuses, far above MAX_SIDE x MAX_SIDE: our own check below (or the
            # DecompressionBombError branch) says it in the user's terms.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                img.verify()
    except UnidentifiedImageError:
        # PIL's own message names only our in-memory buffer (<_io.BytesIO object at 0x…>).
        raise ImageError(f"{what} is not an image: expected JPEG, PNG or WebP, found {_found(data)}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{what} has too many pixels: each side must be {MIN_SIDE}-{MAX_SIDE} px") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{what} is not a readable image ({exc})") from None
    if fmt not in CHECKED_FORMATS:
        raise ImageError(f"{what} is {fmt or 'an unknown format'}: use JPEG, PNG or WebP")
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ImageError(f"{what} is {width}x{height} px: each side must be {MIN_SIDE}-{MAX_SIDE} px")
    return CHECKED_FORMATS[fmt], width, height


def _thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as src:
        src.thumbnail((THUMB_SIDE, THUMB_SIDE))
        thumb_img = src if src.mode in ("RGB", "L") else src.convert("RGB")
        out = io.BytesIO()
        thumb_img.save(out, "JPEG", quality=80)
    return out.getvalue()


class FileStore:
    """Files under `root/files/ab/abcdef…` (two-level fan-out keeps directories small)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.files / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a reader never sees a partial file under its hash.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                # On disk before the name is: the database row that names this file commits after
                # us, and a power cut must not leave an empty file under the hash.
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        return sha

    def put_image(self, data: bytes, what: str) -> ImageInfo:
        mime, width, height = check_image(data, what)
        try:
            thumb = _thumbnail(data)
        except (OSError, SyntaxError, ValueError) as exc:
            # verify() checks the structure, not the pixels: a JPEG cut short fails only when decoded.
            raise ImageError(f"{what} cannot be decoded: {exc}") from None
        # Stored only once it is known to decode: a refused image leaves no file behind.
        sha = self.put(data)
        return ImageInfo(sha, mime, width, height, len(data), self.put(thumb), len(thumb))


def read_image_source(ref: str, folder: Path | None, timeout: float = 10.0) -> bytes:
    """The bytes of an image named in an import row: a URL, or a file in `folder`."""
    if ref.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(ref, timeout=timeout) as resp:
                data: bytes = resp.read(MAX_IMAGE_BYTES + 1)
                return data
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ImageError(f"image URL {ref} is not reachable ({getattr(exc, 'reason', exc)})") from None
    if folder is None:
        raise ImageError(f"image {ref!r} is a file name but no image folder was given (--images DIR)")
    path = (folder / ref).resolve()
    if folder.resolve() not in path.parents:
        raise ImageError(f"image {ref!r} points outside the image folder {folder}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image {ref!r} not found in {folder}") from None
    except OSError as exc:
        raise ImageError(f"image {ref!r} cannot be read: {exc.strerror}") from None
