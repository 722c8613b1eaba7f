"""Textures made without holding up the UI thread: rendered text kept for reuse, pictures decoded
on a worker thread.

A grid card is a few canvas instructions, not a tree of labels: each of its texts comes from here,
rendered once (white; the card tints it) and kept in a small least-recently-used cache. On a
software-rendered screen a label's texture upload costs more than everything else a card does.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from typing import Any

from kivy.core.text import Label as CoreLabel
from kivy.graphics.texture import Texture

__all__ = ["TextTextures", "decode"]

log = logging.getLogger(__name__)


def decode(data: bytes, what: str) -> Any:
    """The picture's pixels (a Kivy image loader holding them; None if unreadable), decoded on the
    calling worker thread: only the texture upload is left for the UI thread
    (`kivy.core.image.Image(decoded).texture`)."""
    from kivy.core.image import ImageLoader

    ext = "png" if data[:4] == b"\x89PNG" else "gif" if data[:4] == b"GIF8" else "jpg"
    for loader in ImageLoader.loaders:
        if ext in loader.extensions() and loader.can_load_memory():
            try:
                return loader("__inline__", ext=ext, rawdata=io.BytesIO(data), inline=True, nocache=True)
            except Exception:  # a corrupt picture shows the placeholder, it does not stop the kiosk
                log.warning("kiosk: %s could not be decoded", what)
                return None
    return None


class TextTextures:
    def __init__(self, size: int = 600) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[str, int, int, int, bool, str], Texture | None] = OrderedDict()
        self.rendered = 0
        """Textures rendered (the rest came from the cache)."""

    def get(self, text: str, font_size: float, width: float, *, lines: int = 1, bold: bool = False,
            halign: str = "left") -> Texture | None:
        """`text` in the default font, wrapped to `width` px on at most `lines` lines, shortened with
        an ellipsis when longer; None for no text."""
        if not text:
            return None
        key = (text, round(font_size), max(1, round(width)), lines, bold, halign)
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        label = CoreLabel(text=text, font_size=key[1], text_size=(key[2], None), max_lines=lines, shorten=True,
                          shorten_from="right", halign=halign, bold=bold)
        label.refresh()
        tex: Texture | None = label.texture
        if tex is not None:
            # Drawn at its own size, a texel a pixel: sampled nearest, the glyphs stay sharp where the
            # grid's scrolling puts them between pixels (linear blurs them by that fraction), and a
            # software rasteriser reads one texel a pixel instead of four.
            tex.min_filter = tex.mag_filter = "nearest"
        self.rendered += 1
        self._kept[key] = tex
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return tex

    def clear(self) -> None:
        self._kept.clear()
