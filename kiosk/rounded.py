"""Rounded boxes drawn as nine quads of one small texture (a nine-patch), for the shapes drawn many
times a frame (the grid's cards).

Kivy's `RoundedRectangle` is a fan of thin triangles meeting at the box's centre, about forty for
a card. A software rasteriser (Mesa's llvmpipe) sorts every triangle into each 64x64 tile its
bounds touch, so the tiles of a card work through every triangle: measured on the kiosk's fling,
the cards' rounded backgrounds took 9 of a frame's 29 ms of CPU, and plain rectangles of the same
area about 4 (docs/kiosk.md, "Rounded cards as nine quads"). A nine-patch is two triangles for
the middle and small quads for the edges and corners, and its corners carry their own
antialiasing, computed here once per radius.
"""

from __future__ import annotations

from functools import cache

from kivy.graphics import BorderImage
from kivy.graphics.texture import Texture

__all__ = ["corner_alpha", "rounded_box", "rounded_texture"]

_SUB = 4
"""Sub-samples per pixel side for a corner pixel's coverage (16 a pixel)."""


def corner_alpha(radius: int) -> list[list[int]]:
    """Coverage (0-255) of each pixel of a (2r+1)-square by the rounded square of radius r whose
    corners are its own: rows from the bottom, as GL reads a texture."""
    side = 2 * radius + 1
    rows: list[list[int]] = []
    for y in range(side):
        row = []
        for x in range(side):
            # Distance is measured to the nearest corner's centre; the middle row/column is inside.
            cx = radius if x < radius else (radius + 1 if x > radius else None)
            cy = radius if y < radius else (radius + 1 if y > radius else None)
            if cx is None or cy is None:
                row.append(255)
                continue
            inside = 0
            for sy in range(_SUB):
                for sx in range(_SUB):
                    px = x + (sx + 0.5) / _SUB
                    py = y + (sy + 0.5) / _SUB
                    dx = max(0.0, cx - px) if x < radius else max(0.0, px - cx)
                    dy = max(0.0, cy - py) if y < radius else max(0.0, py - cy)
                    inside += dx * dx + dy * dy <= radius * radius
            row.append(round(255 * inside / (_SUB * _SUB)))
        rows.append(row)
    return rows


@cache
def rounded_texture(radius: int) -> Texture:
    """White, its alpha the rounded square's coverage (tinted by the Color before it). Sampled
    nearest: the corners are drawn at one texel a pixel and the edges stretch uniform texels, so
    linear filtering would change nothing but the cost. Needs the GL context (the window open)."""
    alpha = corner_alpha(radius)
    side = len(alpha)
    buf = bytes(v for row in alpha for a in row for v in (255, 255, 255, a))
    tex = Texture.create(size=(side, side), colorfmt="rgba")
    tex.blit_buffer(buf, colorfmt="rgba", bufferfmt="ubyte")
    tex.min_filter = "nearest"
    tex.mag_filter = "nearest"
    return tex


def rounded_box(radius: int) -> BorderImage:
    """A box with corners of `radius` px, drawn in the current Color; set its pos and size."""
    return BorderImage(texture=rounded_texture(radius), border=(radius, radius, radius, radius))
