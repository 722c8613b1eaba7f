"""How the touchscreen apps (the kiosk and the clerk's station) open and draw their Kivy window.

Kivy reads these settings once, when `kivy.core.window` is first imported and the window opens, so
they are set before that: by the `omnishelf kiosk` and `omnishelf station` commands, and by the test
drives and the benches, which must draw what the product draws.
"""

from __future__ import annotations

__all__ = ["MULTISAMPLES", "MULTISAMPLE_CHOICES", "drawing", "plain_fills_sampled_nearest", "window"]

# Kivy asks the GL driver for 2 samples per pixel (MSAA) unless told otherwise, and Mesa's software
# GL (llvmpipe) gives 4, its only multisampled mode. A box without a strong GPU pays for them on every
# frame: the whole window is rasterised at 4 samples and resolved on each buffer swap, and the
# multisample buffers are resident memory. Measured at 1080x1920 (docs/kiosk.md, "Drawing without
# multisampling"): an empty window's swap 20 -> 3.5 ms, an empty Kivy app's memory 209 -> 140 MB.
# The apps' shapes that are not axis-aligned antialias their own edges (Kivy's smoothed
# instructions, the cards' nine-patch corners: kiosk/rounded.py); text is textures, never sampled.
MULTISAMPLES = 0
MULTISAMPLE_CHOICES = (0, 2, 4, 8)


def drawing(multisamples: int = MULTISAMPLES) -> None:
    """The samples per pixel the window asks for (0: none; a box with a GPU that does MSAA for free
    may ask for more)."""
    if multisamples not in MULTISAMPLE_CHOICES:
        raise ValueError(f"multisamples must be one of {', '.join(map(str, MULTISAMPLE_CHOICES))}, not {multisamples}")
    from kivy.config import Config

    Config.set("graphics", "multisamples", str(multisamples))


def window(*, windowed: bool, size: tuple[int, int]) -> None:
    """Full screen without a pointer (a box's touchscreen), or a `size` window for development."""
    from kivy.config import Config

    if windowed:
        Config.set("graphics", "fullscreen", "0")
        Config.set("graphics", "width", str(size[0]))
        Config.set("graphics", "height", str(size[1]))
    else:
        Config.set("graphics", "fullscreen", "auto")
        Config.set("graphics", "show_cursor", "0")
    # A keyboard-wedge scanner types into the station's window, and a shopper may find a keyboard
    # on a kiosk: Escape closes neither.
    Config.set("kivy", "exit_on_escape", "0")


def plain_fills_sampled_nearest() -> None:
    """Kivy draws a shape given no texture (a card, a panel, a bar) with its default texture, a white
    64x64 picture, sampled with linear filtering: for every pixel of every fill the GL driver blends
    four texels of white. Sampled nearest it is the same white, one texel, and on Mesa's software GL
    a fill costs about a third less CPU (docs/kiosk.md, "Plain fills sampled nearest"). Called once
    the window exists (the texture is made with the GL context); it changes no pixel drawn."""
    from kivy.graphics import Rectangle

    default = Rectangle().texture  # an instruction given no texture reads back the default one
    default.min_filter = "nearest"
    default.mag_filter = "nearest"
