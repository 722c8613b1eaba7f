"""The product grid's layout (kiosk/grid.py) sizes its rows and columns exactly as Kivy's
RecycleGridLayout does, for every fill order and hint, whether its items are uniform (its own
pass) or not (Kivy's)."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("KIVY_NO_ARGS", "1")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kivy.uix.recyclegridlayout import RecycleGridLayout

from kiosk.grid import UniformGridLayout

ORIENTATIONS = ["lr-tb", "tb-lr", "rl-tb", "tb-rl", "lr-bt", "bt-lr", "rl-bt", "bt-rl"]
STATE = ("_cols", "_rows", "_cols_sh", "_rows_sh", "_cols_sh_min", "_rows_sh_min", "_cols_sh_max", "_rows_sh_max",
         "_has_hint_bound_x", "_has_hint_bound_y")

hints = st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0]))
bounds = st.one_of(st.none(), st.sampled_from([10.0, 80.0]))
opt = st.fixed_dictionaries({
    "size_hint": st.tuples(hints, hints).map(list),
    "size": st.tuples(st.sampled_from([50.0, 120.0]), st.sampled_from([40.0, 300.0])).map(list),
    "size_hint_min": st.tuples(bounds, bounds).map(list),
    "size_hint_max": st.tuples(bounds, bounds).map(list),
})


def _sized(cls: type, opts: list[dict[str, Any]], cols: int, orientation: str) -> dict[str, Any]:
    layout = cls(cols=cols, orientation=orientation, col_default_width=30, row_default_height=20)
    layout.view_opts = [dict(o) for o in opts]
    assert layout._init_rows_cols_sizes(len(opts)) is not False
    layout._fill_rows_cols_sizes()
    got = {k: getattr(layout, k) for k in STATE}
    got["_cols_count"] = [dict(c) for c in layout._cols_count]
    got["_rows_count"] = [dict(c) for c in layout._rows_count]
    return got


@settings(max_examples=150, deadline=None)
@given(one=opt, n=st.integers(1, 60), cols=st.integers(1, 5), orientation=st.sampled_from(ORIENTATIONS))
def test_uniform_items_are_sized_as_kivy_sizes_them(one: dict[str, Any], n: int, cols: int, orientation: str) -> None:
    opts = [one] * n
    assert _sized(UniformGridLayout, opts, cols, orientation) == _sized(RecycleGridLayout, opts, cols, orientation)


@settings(max_examples=60, deadline=None)
@given(opts=st.lists(opt, min_size=2, max_size=30), cols=st.integers(1, 4), orientation=st.sampled_from(ORIENTATIONS))
def test_mixed_items_take_kivys_own_pass(opts: list[dict[str, Any]], cols: int, orientation: str) -> None:
    assert _sized(UniformGridLayout, opts, cols, orientation) == _sized(RecycleGridLayout, opts, cols, orientation)


def test_the_kiosks_grid_is_sized_without_a_pass_over_its_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kiosk's cards: one default size for all; Kivy's per-item pass must not run.
    one = {"size_hint": [1, None], "size": [None, 250.0], "size_hint_min": [None, None], "size_hint_max": [None, None]}

    def per_item(_self: Any) -> None:
        raise AssertionError("Kivy's pass over every item ran")

    monkeypatch.setattr(RecycleGridLayout, "_fill_rows_cols_sizes", per_item)
    got = _sized(UniformGridLayout, [one] * 2000, 3, "lr-tb")
    assert got["_rows"] == [250.0] * 667 and got["_rows_count"][-1] == {250.0: 2}
    # After a layout the cards on the grid carry their column's width; a page appended after them
    # does not yet. Their widths are hinted, so they are still one kind of item.
    laid_out = {**one, "size": [355.3, 250.0]}
    assert _sized(UniformGridLayout, [laid_out] * 1960 + [one] * 40, 3, "lr-tb")["_rows"] == [250.0] * 667
