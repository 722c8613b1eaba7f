"""A QR code drawn on the kiosk from its module matrix (the `qrcode` package; nothing fetched)."""

from __future__ import annotations

from typing import Any

import qrcode
from kivy.graphics import Color, Rectangle
from kivy.graphics.texture import Texture
from kivy.properties import StringProperty
from kivy.uix.widget import Widget

__all__ = ["QrCode", "qr_matrix"]


def qr_matrix(data: str) -> list[list[bool]]:
    """The modules of `data`'s QR code, with the 4-module quiet zone the standard asks for."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    qr.add_data(data)
    qr.make(fit=True)
    return [[bool(m) for m in row] for row in qr.get_matrix()]


class QrCode(Widget):  # type: ignore[misc]
    data = StringProperty("")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.modules = 0
        self.bind(data=self._redraw, pos=self._redraw, size=self._redraw)

    def _redraw(self, *_: Any) -> None:
        self.canvas.clear()
        if not self.data:
            self.modules = 0
            return
        matrix = qr_matrix(self.data)
        n = len(matrix)
        self.modules = n
        # One texel per module, scaled up with nearest filtering: crisp edges at any size.
        # RGBA: 4 bytes a texel keeps every row aligned whatever the module count (GL's unpack alignment).
        dark_px, light_px = b"\x00\x00\x00\xff", b"\xff\xff\xff\xff"
        buf = b"".join(dark_px if dark else light_px for row in reversed(matrix) for dark in row)
        tex = Texture.create(size=(n, n), colorfmt="rgba")
        tex.blit_buffer(buf, colorfmt="rgba", bufferfmt="ubyte")
        tex.mag_filter = "nearest"
        tex.min_filter = "nearest"
        side = min(self.width, self.height)
        with self.canvas:
            Color(1, 1, 1, 1)
            Rectangle(texture=tex, pos=(self.center_x - side / 2, self.center_y - side / 2), size=(side, side))
