"""The CJK font, loaded by path from a Debian package (packaging/debian/kiosk.txt): nothing downloaded.

Kivy's bundled Roboto has no Chinese glyphs (they would draw as empty boxes), so a font that covers
both scripts becomes Kivy's default for every label.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CANDIDATES", "FONT_ENV", "find_cjk_font", "install_cjk_font"]

FONT_ENV = "OMNISHELF_KIOSK_FONT"
CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # fonts-wqy-microhei
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),  # fonts-noto-cjk
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # fonts-wqy-zenhei
)


class FontMissing(RuntimeError):
    pass


def find_cjk_font() -> Path:
    override = os.environ.get(FONT_ENV)
    if override:
        if not Path(override).is_file():
            raise FontMissing(f"{FONT_ENV}={override}: no such font file")
        return Path(override)
    for path in CANDIDATES:
        if path.is_file():
            return path
    raise FontMissing("no CJK font found (looked for " + ", ".join(str(p) for p in CANDIDATES)
                      + "): install Debian's fonts-wqy-microhei (sudo apt-get install fonts-wqy-microhei)")


def install_cjk_font() -> Path:
    """Make the CJK font Kivy's default (call before any label is drawn)."""
    from kivy.core.text import DEFAULT_FONT, LabelBase

    path = find_cjk_font()
    LabelBase.register(DEFAULT_FONT, str(path))
    LabelBase.register("Shelf", str(path))
    return path
