"""The rounded box's nine-patch corners (kiosk/rounded.py): their coverage is the rounded square's."""

from __future__ import annotations

import math

import pytest

from kiosk.rounded import corner_alpha


@pytest.mark.parametrize("radius", [4, 14, 24])
def test_the_corners_cover_what_a_rounded_square_covers(radius: int) -> None:
    alpha = corner_alpha(radius)
    side = 2 * radius + 1
    assert len(alpha) == side and all(len(row) == side for row in alpha)
    # The area: the square less its four corners' (1 - pi/4) r^2 each, to within the 16 sub-samples a pixel.
    area = sum(a for row in alpha for a in row) / 255
    assert area == pytest.approx(side * side - (4 - math.pi) * radius * radius, rel=0.01)
    # Symmetric in both axes; the outermost corner pixel empty, the middle row and column full.
    assert alpha == alpha[::-1] and all(row == row[::-1] for row in alpha)
    assert alpha[0][0] == 0
    assert all(v == 255 for v in alpha[radius]) and all(row[radius] == 255 for row in alpha)
    # Along the diagonal into the box, coverage never falls (an edge, not a ring).
    diagonal = [alpha[i][i] for i in range(radius + 1)]
    assert diagonal == sorted(diagonal) and 0 < diagonal[radius // 2] <= 255
