"""The list of engines: the one place that says what the cloud core is made of.

The app factory, the cloud bus, Alembic and the command line all read it; an engine that is not
listed here does not exist, and adding one is adding a line here (and its folder).

Kept light to import: the `omnishelf` command reads `COMMANDS` for its help without loading any
engine; `load_engines()` imports the descriptors when something needs them.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.engine import EngineSpec

__all__ = ["COMMANDS", "ENGINE_MODULES", "load_engines"]

ENGINE_MODULES: tuple[str, ...] = (
    "cloud.access.engine",
    "cloud.fleet.engine",
    "cloud.catalogue.engine",
)
"""Each module holds `ENGINE: EngineSpec`. Order: handlers of one type run in this order."""

COMMANDS: dict[str, tuple[str, str]] = {
    "users": ("cloud.access.cli", "console users and API keys (create the first admin here)"),
    "fleet": ("cloud.fleet.cli", "operate the bus: failed messages and their replay, commands sent to boxes"),
    "catalogue": ("cloud.catalogue.cli", "product master data: bulk import (CSV/JSON), import history, catalogue version"),
}
"""`omnishelf <name>` → (module with `add_parser(subparsers)`, help line), for the engines' commands."""


@functools.cache
def load_engines() -> tuple[EngineSpec, ...]:
    engines = tuple(importlib.import_module(m).ENGINE for m in ENGINE_MODULES)
    names = [e.name for e in engines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"two engines are named {', '.join(duplicates)}: engine names must be unique")
    return engines
