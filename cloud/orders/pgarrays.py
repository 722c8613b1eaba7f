"""PostgreSQL array literals, for statements that take a column's values as one parameter
(`CAST(:locs AS integer[])`): the statement's text stays the same whatever the number of values,
so it is parsed and prepared once."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["int_array", "text_array"]


def int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def text_array(values: Iterable[str]) -> str:
    """Each string quoted, its quotes and backslashes escaped."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"
