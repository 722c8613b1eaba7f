"""The product grid's layout: Kivy's `RecycleGridLayout`, with the pass that sizes its rows and
columns made proportional to the rows and columns when every item has the same size.

Kivy's pass looks at every item's size and hints each time the data changes; the kiosk appends a
page of 40 products as a shopper scrolls, so by the 2,000th product each page cost a pass over all
of them on the UI thread, 15-20 ms at 2,000 (measured with py-spy on `bench.kiosk`'s fling: most of
the layout's time, and the fling's slowest frames). The grid's items never set a size of their own
(every card takes the layout's default size), and then every row and column holds items of one
size: what the pass finds is the count of items in each, which is computed here from the fill
order alone. Items of different sizes (never the kiosk's) take Kivy's own pass.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import islice
from typing import Any

from kivy.factory import Factory
from kivy.uix.gridlayout import nmax, nmin
from kivy.uix.recyclegridlayout import RecycleGridLayout

__all__ = ["UniformGridLayout"]


class UniformGridLayout(RecycleGridLayout):  # type: ignore[misc]
    def _fill_rows_cols_sizes(self) -> None:
        opts: list[dict[str, Any]] = self.view_opts
        if not opts:
            super()._fill_rows_cols_sizes()
            return
        one = opts[0]
        sh, sh_min, sh_max = one["size_hint"], one["size_hint_min"], one["size_hint_max"]
        (shw, shh), (w, h), (shw_min, shh_min), (shw_max, shh_max) = sh, one["size"], sh_min, sh_max
        # Kivy's pass reads a size only where its hint is None: a laid-out card's width (its column's)
        # and a new one's (None) are the same item to it.
        for o in opts:  # a plain loop of a few comparisons: a tenth of Kivy's pass
            if (o["size_hint"] != sh or o["size_hint_min"] != sh_min or o["size_hint_max"] != sh_max
                    or (shw is None and o["size"][0] != w) or (shh is None and o["size"][1] != h)):
                super()._fill_rows_cols_sizes()
                return
        cols, rows = self._cols, self._rows
        col_n, row_n = [0] * len(cols), [0] * len(rows)
        for col, row in islice(self._create_idx_iter(len(cols), len(rows)), len(opts)):
            col_n[col] += 1
            row_n[row] += 1
        self._cols_count: list[defaultdict[Any, int]] = [defaultdict(int) for _ in cols]
        self._rows_count: list[defaultdict[Any, int]] = [defaultdict(int) for _ in rows]
        self._has_hint_bound_x = _fill(col_n, cols, self._cols_count, self._cols_sh, self._cols_sh_min,
                                       self._cols_sh_max, shw, w, shw_min, shw_max)
        self._has_hint_bound_y = _fill(row_n, rows, self._rows_count, self._rows_sh, self._rows_sh_min,
                                       self._rows_sh_max, shh, h, shh_min, shh_max)


def _fill(counts: list[int], sizes: list[Any], size_counts: list[defaultdict[Any, int]], sh: list[Any],
          sh_min: list[Any], sh_max: list[Any], hint: Any, size: Any, hint_min: Any, hint_max: Any) -> bool:
    """What Kivy's pass sets for each column (or row) holding `counts[i]` items of one size and hint;
    whether a hint bound was met."""
    bound = False
    for i, n in enumerate(counts):
        if not n:
            continue
        if hint is None:
            size_counts[i][size] += n
            sizes[i] = nmax(sizes[i], size)
            continue
        sh[i] = nmax(sh[i], hint)
        if hint_min is not None:
            bound = True
            sh_min[i] = nmax(sh_min[i], hint_min)
        if hint_max is not None:
            bound = True
            sh_max[i] = nmin(sh_max[i], hint_max)
    return bound


Factory.register("UniformGridLayout", cls=UniformGridLayout)
