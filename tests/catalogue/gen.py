"""Generated catalogue files for tests and the benchmark (deterministic, no randomness needed)."""

from __future__ import annotations

import csv
from pathlib import Path

from gs1 import check_digit

HEADER = ["sku", "gtin", "name_en", "name_zh", "brand", "category", "list_price", "price_east", "attr_size",
          "attr_colour", "status", "serialised", "images"]

_ZH = ["绿茶", "红茶", "大米", "酱油", "月饼", "牛肉面", "矿泉水", "饼干", "巧克力", "咖啡"]
_EN = ["green tea", "black tea", "rice", "soy sauce", "mooncake", "beef noodles", "mineral water", "biscuits", "chocolate", "coffee"]


def gtin_for(i: int) -> str:
    body = f"690{i:09d}"
    return body + check_digit(body)


def product_row(i: int, *, price: str | None = None, images: str = "") -> list[str]:
    k = i % len(_ZH)
    return [
        f"SKU-{i:07d}", gtin_for(i), f"{_EN[k].title()} no. {i}", f"{_ZH[k]}{i}号", f"Brand{i % 50}",
        f"Food > {_EN[k].split()[-1].title()}", price or f"{(i % 997) + 0.5:.2f}", f"{(i % 997) + 0.25:.2f}",
        ["S", "M", "L"][i % 3], ["red", "blue"][i % 2], "active", "yes" if i % 10 == 0 else "no", images,
    ]


def broken_row(i: int) -> tuple[list[str], str]:
    """A row with one problem; returns (row, the field the report must name)."""
    row = product_row(i)
    kind = i % 4
    if kind == 0:
        row[1] = row[1][:-1] + str((int(row[1][-1]) + 1) % 10)
        return row, "gtin"
    if kind == 1:
        row[6] = "twelve"
        return row, "list_price"
    if kind == 2:
        row[3] = ""
        return row, "name_zh"
    row[11] = "maybe"
    return row, "serialised"


def write_csv(path: Path, n: int, *, broken_every: int = 0, start: int = 0) -> dict[int, str]:
    """`n` rows; every `broken_every`-th is broken. Returns {row number: field} of the broken ones."""
    broken: dict[int, str] = {}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in range(1, n + 1):
            i = start + r
            if broken_every and r % broken_every == 0:
                row, field = broken_row(i)
                broken[r] = field
            else:
                row = product_row(i)
            w.writerow(row)
    return broken
